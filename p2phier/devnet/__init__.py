"""The devnet: a whole hierarchy on one machine (scenarios, baselines, report).

``scenario`` (the TOML scenario model) and ``report`` (run records, report.json,
report.md, PNG plots) are pure and light; ``baselines`` builds the data shards
and runs the isolated and centralised baselines, importing :mod:`p2phier.learn`
(and so torch) only inside the functions that train.
"""
