"""Devnet benchmark: the default scenario end to end, as real node processes on this machine.

Run ``python bench/devnet.py`` (``--quick`` runs the 5-node CI scenario instead, ``--json`` ends
stdout with one JSON object; ``--wire fp16`` sends full fp16 adapters, ``--compare-wire`` runs
the scenario both ways).  It runs exactly what ``p2phier devnet up`` runs (every node its
own process on 127.0.0.1, rounds driven through the nodes, then the isolated and centralised
baselines) and reports:

* wall time per round (and the set-up: building the root tier, starting and forming);
* bytes on the wire, from every node's Bitswap ledgers (block payloads received, counted
  under what each fetch was for), round 0 (set-up) included: updates and versions per round as
  % of what exchanging full models would send over the same transfers (goal <= 1%:
  ``round_bytes_pct_of_full``); each update's bytes as % of its sender's full model, mean
  over every node and round (goal <= 0.1%: ``update_pct_of_full``); tier downloads (full
  models fetched to build or map a tier) apart (``tier_bytes``);
* what each node keeps on disk after the run (``store_mib_per_node``: its store after its own
  garbage collection; its learning directory beside it as information);
* announcement -> fetched and verified at the receiving node, per hop, p99 (goal < 3 s:
  ``propagation_p99_s``; rebase compute excluded), and the whole chain master -> last node
  applied per round (training and rebases included);
* peak RSS per node process;
* each parent's model on its children's pooled held-out data after round 1 and after the last
  round, against its children's mean accuracy on their own (``parents_vs_children_acc_pts``:
  the worst parent, goal >= 0; every parent better after the last round than after round 1);
* accuracy per tier and the hierarchy's mean accuracy vs each node alone and vs one central model
  on the pooled data (``hier_vs_isolated_acc_pts``, ``hier_vs_central_acc_pts``; positive = the
  hierarchy is better).

Every comparison is a ratio or difference against a baseline measured in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit_json, log, parser, print_table, verdict

BYTES_GOAL_PCT = 1.0
UPDATE_GOAL_PCT = 0.1
PROPAGATION_GOAL_S = 3.0
#: issue 15, section 4: the hierarchy against each node alone and against one central model
HIER_VS_ISOLATED_GOAL = 5.0
HIER_VS_CENTRAL_GOAL = -1.0


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _update_pct(rounds: list[dict[str, Any]]) -> float | None:
    """Each update's bytes as % of its sender's full model: mean over the rounds' means."""
    upd = [r["update_pct_of_full"] for r in rounds if r.get("update_pct_of_full") is not None]
    return sum(upd) / len(upd) if upd else None


def _run(scenario: Any, rounds: int, *, keep: bool) -> tuple[Any, dict[str, Any]]:
    """One devnet run of ``scenario`` (nodes, rounds, baselines): its record and summary."""
    from p2phier.devnet.report import summarise, write_report
    from p2phier.devnet.runner import run_devnet

    run_dir = Path(tempfile.mkdtemp(prefix="p2phier-bench-devnet-"))
    phases: list[str] = []

    def on_poll(phase: str, st: Any) -> None:
        if not phases or phases[-1] != phase:  # one progress line per phase
            phases.append(phase)
            log(f"  [{phase}] {sum(s is not None for s in st.values())}/{len(st)} nodes answering")

    try:
        log(f"devnet bench: scenario {scenario.name}, {rounds} rounds, "
            f"wire {scenario.learning.wire_encoding}, in {run_dir}")  # fmt: skip
        record = run_devnet(scenario, run_dir / "run", on_poll=on_poll)
        write_report(record, run_dir / "run")
        return record, summarise(record)
    finally:
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "devnet benchmark")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=None, help="the scenario's seed (shards, init)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument(
        "--compare-wire",
        action="store_true",
        help="run the scenario again with fp16 full adapters on the wire and compare",
    )
    p.add_argument(
        "--wire",
        choices=("int8-delta", "fp16"),
        default=None,
        help="the nodes' wire_encoding (default: the scenario's); --compare-wire runs both",
    )
    p.add_argument(
        "--answer-by",
        choices=("head", "validated"),
        default=None,
        help="the nodes' answer_by setting (default: the scenario's)",
    )
    p.add_argument(
        "--update-rms-steps",
        type=float,
        default=None,
        help="the nodes' update_rms_steps (0: updates at the finest int8 step; default: the "
        "scenario's)",
    )
    p.add_argument(
        "--tier-lora-r",
        action="append",
        default=[],
        metavar="TIER=R",
        help="that tier's nodes' LoRA rank ([tiers.TIER.training] lora_r; repeatable; "
        "information: the default scenario gives every tier the [training] rank)",
    )
    args = p.parse_args(argv)
    from p2phier.devnet.scenario import load_scenario
    from p2phier.errors import P2PHierError
    from p2phier.learnplan import parse_settings

    name = "ci.toml" if args.quick else "default.toml"
    scenario = load_scenario(ROOT / "devnet" / "scenarios" / name).with_rounds(args.rounds)
    if args.seed is not None:
        scenario = dataclasses.replace(scenario, seed=args.seed)
    if args.answer_by is not None:
        learning = dataclasses.replace(scenario.learning, answer_by=args.answer_by)
        scenario = dataclasses.replace(scenario, learning=learning)
    if args.wire is not None:
        learning = dataclasses.replace(scenario.learning, wire_encoding=args.wire)
        scenario = dataclasses.replace(scenario, learning=learning)
    if args.update_rms_steps is not None:
        learning = dataclasses.replace(scenario.learning, update_rms_steps=args.update_rms_steps)
        scenario = dataclasses.replace(scenario, learning=learning)
    for item in args.tier_lora_r:
        tier, _, rank = item.partition("=")
        if tier not in scenario.tiers or not rank.isdigit():
            p.error(f"--tier-lora-r {item!r}: want TIER=R with a tier of {sorted(scenario.tiers)}")
        try:  # the rank's one declared check (LearnSettings.lora_r)
            over = parse_settings({"lora_r": int(rank)}, f"--tier-lora-r {tier}", "training")
        except P2PHierError as exc:
            p.error(str(exc))
        spec = scenario.tiers[tier]
        spec = dataclasses.replace(spec, training={**spec.training, **over})
        scenario = dataclasses.replace(scenario, tiers={**scenario.tiers, tier: spec})
    t0 = time.perf_counter()
    record, summary = _run(scenario, args.rounds, keep=args.keep)
    total_s = time.perf_counter() - t0
    fp16: dict[str, Any] | None = None
    if args.compare_wire:
        # the same scenario and seeds, every update and version a full fp16 adapter: what the
        # int8 deltas cost in accuracy (goal: within 0.5 pt of this run's hierarchy accuracy)
        learning = dataclasses.replace(scenario.learning, wire_encoding="fp16")
        log("devnet bench: the same run again with wire_encoding = fp16 (comparison)")
        _, fp16_summary = _run(
            dataclasses.replace(scenario, learning=learning), args.rounds, keep=args.keep
        )
        fp16 = {
            "update_pct_of_full": _update_pct(fp16_summary["rounds"]),
            "round_bytes": {r["round"]: r["wire_bytes"] for r in fp16_summary["rounds"]},
            "hier_acc": fp16_summary["comparison"]["hierarchy"],
            "final_accuracy": fp16_summary["final_accuracy"],
        }
    every = summary["rounds"]  # bytes: round 0 (set-up: first versions, tiers) included
    rounds = [r for r in every if r["round"] >= 1]
    wire = sum(r["wire_bytes"] for r in every)
    full = sum(r["full_model_bytes"] for r in every)
    pct = 100.0 * wire / full if full else None
    update_pct = _update_pct(every)
    tier_bytes = sum(r.get("tier_bytes", 0) for r in every)
    res: dict[str, Any] = dict(record.resources)
    store_mib = res.get("store_mib", {})
    parents = summary["parents_vs_children_acc_pts"]
    gaps = [p["vs_children_pts"] for p in parents.values() if p["vs_children_pts"] is not None]
    parents_pts = min(gaps) if gaps else None  # the worst parent: the goal is for every one
    improved = {
        name: p["after_round_1"] is not None and p["after_last"] > p["after_round_1"]
        for name, p in parents.items()
    }
    hops = [d for r in rounds for d in res.get("hop_delays_s", {}).get(str(r["round"]), [])]
    prop = p99(hops)
    chains = {int(k): v for k, v in res.get("chain_s", {}).items()}
    rss = res.get("rss_max_mib", {})
    compare = summary["comparison"]
    hier, alone, central = compare["hierarchy"], compare["isolated"], compare["central"]
    vs_alone = 100.0 * (hier - alone) if hier is not None and alone is not None else None
    vs_central = 100.0 * (hier - central) if hier is not None and central is not None else None
    ci_alone, ci_central = compare.get("vs_isolated_ci_pts"), compare.get("vs_central_ci_pts")

    print_table(
        f"Devnet {scenario.name}: {len(record.nodes)} node processes, {args.rounds} rounds "
        f"(set-up {record.setup_s:.0f} s, total with baselines {total_s:.0f} s)",
        (
            "round",
            "wall s",
            "updates+versions B",
            "full models B",
            "% of full",
            "update % of full",
            "tier B",
            "chain s",
            "published",
        ),
        [
            (
                r["round"],
                f"{r['wall_s']:.1f}",
                r["wire_bytes"],
                r["full_model_bytes"],
                f"{r['pct_of_full']:.3f}" if r["pct_of_full"] is not None else "-",
                f"{r['update_pct_of_full']:.4f}"
                if r.get("update_pct_of_full") is not None
                else "-",
                r.get("tier_bytes", 0),
                f"{chains[r['round']]:.1f}" if chains.get(r["round"]) is not None else "-",
                ",".join(r["published"]) or "-",
            )
            for r in every
        ],
    )
    print_table(
        "Figures",
        ("measure", "value", "goal", ""),
        [
            ("round_bytes_pct_of_full", f"{pct:.3f}%" if pct is not None else "-",
             f"<= {BYTES_GOAL_PCT}%", verdict(pct is not None and pct <= BYTES_GOAL_PCT)),
            ("update_pct_of_full", f"{update_pct:.4f}%" if update_pct is not None else "-",
             f"<= {UPDATE_GOAL_PCT}%",
             verdict(update_pct is not None and update_pct <= UPDATE_GOAL_PCT)),
            ("tier_bytes (downloads of full tiers)", tier_bytes, "", ""),
            ("parents_vs_children_acc_pts (worst parent)",
             f"{parents_pts:+.1f}" if parents_pts is not None else "-", ">= 0",
             verdict(parents_pts is not None and parents_pts >= 0)),
            ("parents better after the last round than after round 1",
             f"{sum(improved.values())} of {len(improved)}", "every one",
             verdict(bool(improved) and all(improved.values()))),
            ("store_mib_per_node (max)", f"{max(store_mib.values()):.1f}" if store_mib else "-",
             "", ""),
            ("propagation_p99_s (per hop)", f"{prop:.2f}" if prop is not None else "-",
             f"< {PROPAGATION_GOAL_S}", verdict(prop is not None and prop < PROPAGATION_GOAL_S)),
            ("hier_vs_isolated_acc_pts (± 95% interval)", _gap(vs_alone, ci_alone),
             f">= +{HIER_VS_ISOLATED_GOAL:g}",
             verdict(vs_alone is not None and vs_alone >= HIER_VS_ISOLATED_GOAL)),
            ("hier_vs_central_acc_pts (± 95% interval)", _gap(vs_central, ci_central),
             f">= {HIER_VS_CENTRAL_GOAL:g}",
             verdict(vs_central is not None and vs_central >= HIER_VS_CENTRAL_GOAL)),
            ("peak RSS per node (MiB, max)", f"{max(rss.values()):.0f}" if rss else "-", "", ""),
            *_wire_rows(fp16, update_pct, hier),
        ],
    )  # fmt: skip
    print_table(
        "Final accuracy per tier (own held-out data)",
        ("tier", "accuracy"),
        [(t, f"{a:.3f}" if a is not None else "-")
         for t, a in summary["final_accuracy_per_tier"].items()],
    )  # fmt: skip
    print_table(
        "Peak RSS per node process (MiB)", ("node", "MiB"), [(k, rss[k]) for k in sorted(rss)]
    )
    print(summary["verdict"])
    if args.json:
        emit_json(
            {
                "bench": "devnet",
                "scenario": scenario.name,
                "rounds": args.rounds,
                "seconds": total_s,
                "setup_s": record.setup_s,
                "wall_per_round_s": {r["round"]: r["wall_s"] for r in rounds},
                "round_bytes_pct_of_full": pct,
                "round_bytes": {r["round"]: r["wire_bytes"] for r in every},
                "update_pct_of_full": update_pct,
                "parents_vs_children_acc_pts": parents_pts,
                "parents": parents,
                "tier_bytes": tier_bytes,
                "tier_bytes_per_round": {r["round"]: r.get("tier_bytes", 0) for r in every},
                "store_mib_per_node": store_mib,
                "learn_mib_per_node": res.get("learn_mib", {}),
                "propagation_p99_s": prop,
                "chain_s": chains,
                "rss_per_node_mib": rss,
                "accuracy_per_tier": summary["final_accuracy_per_tier"],
                "hier_acc": hier,
                "isolated_acc": alone,
                "central_acc": central,
                "hier_vs_isolated_acc_pts": vs_alone,
                "hier_vs_central_acc_pts": vs_central,
                # 95% half-widths from the held-out set sizes (p2phier/devnet/stats.py)
                "hier_vs_isolated_ci_pts": ci_alone,
                "hier_vs_central_ci_pts": ci_central,
                "wire_encoding": scenario.learning.wire_encoding,
                "update_rms_steps": scenario.learning.update_rms_steps,
                "tier_training": {
                    name: dict(t.training) for name, t in scenario.tiers.items() if t.training
                },
                "fp16_run": fp16,
                "int8_vs_fp16_acc_pts": _acc_pts(hier, fp16),
                "verdict": summary["verdict"],
                "goals": {
                    "round_bytes_pct_of_full": {
                        "goal": BYTES_GOAL_PCT,
                        "met": pct is not None and pct <= BYTES_GOAL_PCT,
                    },
                    "update_pct_of_full": {
                        "goal": UPDATE_GOAL_PCT,
                        "met": update_pct is not None and update_pct <= UPDATE_GOAL_PCT,
                    },
                    "propagation_p99_s": {
                        "goal": PROPAGATION_GOAL_S,
                        "met": prop is not None and prop < PROPAGATION_GOAL_S,
                    },
                    # the goals are means over 3 seeds: one run's figure is a sample
                    "hier_vs_isolated_acc_pts": {
                        "goal": HIER_VS_ISOLATED_GOAL,
                        "met": vs_alone is not None and vs_alone >= HIER_VS_ISOLATED_GOAL,
                    },
                    "hier_vs_central_acc_pts": {
                        "goal": HIER_VS_CENTRAL_GOAL,
                        "met": vs_central is not None and vs_central >= HIER_VS_CENTRAL_GOAL,
                    },
                },
            }
        )
    return 0


def _gap(pts: float | None, ci: float | None) -> str:
    if pts is None:
        return "-"
    return f"{pts:+.1f}" + (f" ± {ci:.1f}" if ci is not None else "")


def _acc_pts(hier: float | None, fp16: dict[str, Any] | None) -> float | None:
    if hier is None or fp16 is None or fp16["hier_acc"] is None:
        return None
    return 100.0 * (hier - float(fp16["hier_acc"]))


def _wire_rows(
    fp16: dict[str, Any] | None, update_pct: float | None, hier: float | None
) -> list[tuple[str, str, str, str]]:
    """The comparison with an fp16 run of the same scenario and seeds (``--compare-wire``)."""
    if fp16 is None:
        return []
    pts = _acc_pts(hier, fp16)
    pct = fp16["update_pct_of_full"]
    return [
        ("fp16 run: update_pct_of_full", f"{pct:.4f}%" if pct is not None else "-", "", ""),
        ("int8 deltas vs fp16: update bytes",
         f"{update_pct / pct:.2f}x" if update_pct and pct else "-", "", ""),
        ("int8 deltas vs fp16: hierarchy accuracy pts", f"{pts:+.1f}" if pts is not None else "-",
         ">= -0.5", verdict(pts is not None and pts >= -0.5)),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
