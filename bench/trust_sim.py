"""Global trust at scale: the pure EigenTrust core on a simulated network with attackers.

Run ``python bench/trust_sim.py`` (``--quick``: 1,000 nodes; ``--json``: the last stdout
line is one JSON object).  The network (seeded, so every run is the same):

* ``nodes`` identities (10,000): 70 % honest, 30 % *colluding slanderers*, plus a Sybil
  cluster of 1,000 more identities from one operator.  10 honest nodes are the anchors
  (the pre-trusted peers an operator names: a master and its language nodes).
* Every honest node dealt with 20 random peers.  Its local opinion (what
  ``LocalTrust`` would score) of an honest peer is positive (useful updates, a mishap
  now and then: ``1 + N(0, 0.3)``); of a colluder it is negative, because colluders
  attack what they touch (poisoned updates, wrong blocks), except that 20 % of them behave
  well to that node (camouflage, ``0.5 + N(0, 0.2)``).
* Colluders report the highest opinion of 20 fellow colluders and the lowest of 20
  honest nodes (slander).  Sybils report the highest opinion of 20 fellow Sybils; nobody
  honest has dealt with them.

Figures: ``iterations`` and ``seconds`` of :func:`~p2phier.trust.global_trust.global_trust`
from a cold start (goals: < 10 and < 60 s on 2 cores), ``peak_rss_mib`` of this process,
and ``malicious_trust_share``, the global trust held by colluders and Sybils together
(goal < 0.05).  For contrast (information, not a figure): the same share when every
report counts the same (each reporter's normalised opinions summed, no weighting by its
own trust), which is what a naive gossip average would give; and ``warm_iterations``,
the steps of a recomputation from the last result after 1 % of the opinions changed
(what a node does every round).

Standing (:mod:`p2phier.trust.standing`, negative opinions weighted by their
reporters' trust): ``false_distrusted``, the honest nodes whose verdict is
"distrusted" (goal 0: slander by the colluders must exclude nobody honest);
``reported_distrusted``, whether a fresh peer that ONE honest node reports at -10
(LocalTrust's isolation threshold) is distrusted, that node being the most trusted
non-anchor an anchor vouched for (goal: yes); and, for information, the share of
colluders distrusted (0: the honest nodes' opinions of them are mild, about -1, and a
stall or two is no testimony; only opinions at or below -5 speak against a peer).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
from _common import emit_json, log, parser, print_table, verdict

ITERATIONS_GOAL = 10
SECONDS_GOAL = 60.0
SHARE_GOAL = 0.05
DEGREE = 20
N_ANCHORS = 10


def build(nodes: int, sybils: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n_bad = int(0.3 * nodes)
    n_honest = nodes - n_bad
    n = nodes + sybils
    honest = np.arange(n_honest)
    bad = np.arange(n_honest, nodes)
    sybil = np.arange(nodes, n)
    rows, cols, vals = [], [], []
    # honest nodes' first-hand opinions of the peers they dealt with
    for_honest = rng.integers(0, nodes, size=(n_honest, DEGREE))
    r = np.repeat(honest, DEGREE)
    c = for_honest.ravel()
    is_bad = c >= n_honest
    camouflage = rng.random(len(c)) < 0.2
    v = np.where(
        is_bad,
        np.where(camouflage, 0.5 + rng.normal(0, 0.2, len(c)), -1.0 + rng.normal(0, 0.3, len(c))),
        1.0 + rng.normal(0, 0.3, len(c)),
    )
    rows.append(r)
    cols.append(c)
    vals.append(v)
    # colluders: the highest opinion of each other, the lowest of honest nodes
    rows += [np.repeat(bad, DEGREE), np.repeat(bad, DEGREE)]
    cols += [rng.choice(bad, size=n_bad * DEGREE), rng.choice(honest, size=n_bad * DEGREE)]
    vals += [np.full(n_bad * DEGREE, 10.0), np.full(n_bad * DEGREE, -10.0)]
    # Sybils vouch for each other
    if sybils:
        rows.append(np.repeat(sybil, DEGREE))
        cols.append(rng.choice(sybil, size=sybils * DEGREE))
        vals.append(np.full(sybils * DEGREE, 10.0))
    return {
        "n": n,
        "reporters": np.concatenate(rows).astype(np.int64),
        "subjects": np.concatenate(cols).astype(np.int64),
        "opinions": np.concatenate(vals).astype(np.float64),
        "anchors": np.arange(N_ANCHORS, dtype=np.int64),
        "honest": honest,
        "colluders": bad,
        "malicious": np.concatenate([bad, sybil]),
    }


def naive_share(net: dict[str, Any]) -> float:
    """Every reporter's normalised positive opinions summed, unweighted (contrast only)."""
    keep = net["opinions"] > 0
    rows, cols, vals = net["reporters"][keep], net["subjects"][keep], net["opinions"][keep]
    row_sum = np.bincount(rows, weights=vals, minlength=net["n"])
    score = np.bincount(cols, weights=vals / row_sum[rows], minlength=net["n"])
    return float(score[net["malicious"]].sum() / score.sum())


def verdicts(net: dict[str, Any], trust: Any) -> dict[str, Any]:
    """The standing figures (see the module docstring) from the global trust ``trust``."""
    from p2phier.trust.global_trust import GlobalTrustConfig, global_trust
    from p2phier.trust.standing import distrust, standings

    alpha = GlobalTrustConfig().alpha
    args = net["n"], net["reporters"], net["subjects"], net["opinions"]
    codes = standings(trust, distrust(*args, trust), alpha=alpha, anchors=N_ANCHORS)
    false_distrusted = int((codes[net["honest"]] == -1).sum())
    colluders_distrusted = float((codes[net["colluders"]] == -1).mean())
    # One honest node an anchor vouched for (the most trusted such) reports a newcomer at -10.
    vouched = np.unique(net["subjects"][np.isin(net["reporters"], net["anchors"])
                                        & (net["opinions"] > 0)])  # fmt: skip
    vouched = vouched[np.isin(vouched, net["honest"]) & ~np.isin(vouched, net["anchors"])]
    reporter = int(vouched[np.argmax(trust[vouched])])
    n = net["n"] + 1
    r = np.append(net["reporters"], reporter)
    c = np.append(net["subjects"], n - 1)
    v = np.append(net["opinions"], -10.0)
    t2 = global_trust(n, r, c, v, net["anchors"], warm=np.append(trust, 0.0)).trust
    codes2 = standings(t2, distrust(n, r, c, v, t2), alpha=alpha, anchors=N_ANCHORS)
    reported = bool(codes2[n - 1] == -1)
    return {
        "false_distrusted": false_distrusted,
        "reported_distrusted": reported,
        "colluders_distrusted": round(colluders_distrusted, 4),
    }


def main() -> None:
    args = parser(__doc__.split("\n", 1)[0]).parse_args()
    from p2phier.trust.global_trust import global_trust

    nodes, sybils = (1_000, 100) if args.quick else (10_000, 1_000)
    log(f"trust_sim: {nodes} nodes (30 % colluding slanderers) + {sybils} Sybils")
    net = build(nodes, sybils)
    began = time.perf_counter()
    result = global_trust(
        net["n"], net["reporters"], net["subjects"], net["opinions"], net["anchors"]
    )
    seconds = time.perf_counter() - began
    share = float(result.trust[net["malicious"]].sum())
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    naive = naive_share(net)
    # A node recomputes every round from its last result: 1 % of the opinions change.
    rng = np.random.default_rng(1)
    changed = rng.random(len(net["opinions"])) < 0.01
    opinions = np.where(
        changed, net["opinions"] * rng.uniform(0.5, 1.5, changed.size), net["opinions"]
    )
    warm = global_trust(
        net["n"], net["reporters"], net["subjects"], opinions, net["anchors"], warm=result.trust
    )
    standing = verdicts(net, result.trust)
    rows = [
        ("iterations", "< 10", result.iterations, verdict(result.iterations < ITERATIONS_GOAL)),
        ("seconds", "< 60", f"{seconds:.3f}", verdict(seconds < SECONDS_GOAL)),
        ("peak_rss_mib", "-", f"{rss_mib:.0f}", "-"),
        ("malicious_trust_share", "< 0.05", f"{share:.4f}", verdict(share < SHARE_GOAL)),
        ("naive_average_share (information)", "-", f"{naive:.4f}", "-"),
        ("warm_iterations (information)", "-", warm.iterations, "-"),
        ("false_distrusted", "0", standing["false_distrusted"],
         verdict(standing["false_distrusted"] == 0)),
        ("reported_distrusted", "yes", "yes" if standing["reported_distrusted"] else "no",
         verdict(standing["reported_distrusted"])),
        ("colluders_distrusted (information)", "-", standing["colluders_distrusted"], "-"),
    ]  # fmt: skip
    print_table(
        f"trust_sim: {nodes} nodes + {sybils} Sybils, {len(net['opinions'])} reported opinions",
        ["figure", "goal", "measured", "verdict"],
        rows,
    )
    if args.json:
        emit_json(
            {
                "nodes": nodes,
                "sybils": sybils,
                "iterations": result.iterations,
                "converged": result.converged,
                "seconds": round(seconds, 4),
                "peak_rss_mib": round(rss_mib, 1),
                "malicious_trust_share": round(share, 6),
                "naive_average_share": round(naive, 6),
                "warm_iterations": warm.iterations,
                **standing,
            }
        )


if __name__ == "__main__":
    main()
