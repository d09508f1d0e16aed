"""Fewer trainable parameters per update: what they save on the wire and cost in accuracy.

Run ``python bench/lora_size.py RUN_DIR --nodes dev-business,dev-tech --seeds 8`` on a kept
devnet run (``python bench/devnet.py --keep``); ``--json`` ends stdout with one JSON object.
Information for ``update_pct_of_full`` (a device's update is its LoRA and head): for each
named training node and each variant, a fresh LoRA is trained on the version the node last
trained on, as the node trains it (its plan's steps, batch, learning rate and length, its
arrived examples), once per seed, and scored on up to 300 examples of its domain that no node
of the run holds (half of its main sub-domain, half of the rest).  Variants:

* ``all-r4``: the product (LoRA on every attention projection, the plan's rank);
* ``qv-r4``: query and value only, at that rank;
* ``all-r2``, ``qv-r2``: rank 2.

Columns: the trainable parameters, the whole update's payload at the coarse int8 step
(``update_rms_steps = 8``, zstd level 3 as ``pack_tensors`` stores it; the envelope, manifest
and prototypes come on top), its share of the node's model, the mean accuracy, how many seeds
learned beyond the majority class, and each variant's paired difference from ``all-r4``
(mean and a 95% interval over nodes x seeds).  Nothing here changes the run.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from _common import load_kept_run, log, parser, print_table

VARIANTS: dict[str, tuple[bool, int | None]] = {
    # name: (query and value only, rank; None: the plan's)
    "all-r4": (False, None),
    "qv-r4": (True, None),
    "all-r2": (False, 2),
    "qv-r2": (True, 2),
}
POOL = 300
_FINDER = "find_lora_targets"  # the name Session looks up in p2phier.learn.train


@contextlib.contextmanager
def _targets(qv_only: bool) -> Iterator[None]:
    """LoRA on query and value only (a bench-only variant: the product adapts every attention
    projection, :func:`p2phier.learn.models.find_lora_targets`, which Session calls)."""
    import p2phier.learn.train as train_mod

    original: Callable[..., list[str]] = getattr(train_mod, _FINDER)
    if qv_only:

        def only_qv(model: Any, *, include_mlp: bool = False) -> list[str]:
            found = original(model, include_mlp=include_mlp)
            return [t for t in found if t.endswith(("query", "value"))]

        setattr(train_mod, _FINDER, only_qv)
    try:
        yield
    finally:
        setattr(train_mod, _FINDER, original)


def _payload_bytes(state: dict[str, Any]) -> int:
    import numpy as np
    import zstandard
    from safetensors.numpy import save

    from p2phier.artifact.encode import Encoding, encode_tensors

    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    enc = encode_tensors(tensors, Encoding.INT8, int8_rms_steps=8.0)
    return len(zstandard.ZstdCompressor(level=3).compress(save(dict(enc.tensors))))


def _pool(homes: dict[str, Path], train: Sequence[Any]) -> list[Any]:
    from p2phier.learn.data import load_bbc, load_drug_reviews

    used: set[str] = set()
    for home in homes.values():
        path = home / "learn" / "data.json"
        if path.exists():
            d = json.loads(path.read_text())
            used |= {r["text"] for a in d["arrivals"] for r in a} | {r["text"] for r in d["test"]}
    corpus = load_bbc() if train[0].domain == "news" else load_drug_reviews(split="test")
    pool = [e for e in corpus if e.text not in used]
    random.Random(0).shuffle(pool)
    subs = [e.subdomain for e in train]
    main = max(set(subs), key=subs.count)
    half = POOL // 2
    return [e for e in pool if e.subdomain == main][:half] + [
        e for e in pool if e.subdomain != main
    ][:half]


def measure(home: Path, homes: dict[str, Path], seeds: int) -> dict[str, Any]:
    from p2phier.learn.data import Example
    from p2phier.learn.models import load_tier
    from p2phier.learn.train import LoraSettings, Session, TrainConfig

    state = json.loads((home / "learn" / "state.json").read_text())
    plan = json.loads((home / "learn" / "plan.json").read_text())
    data = json.loads((home / "learn" / "data.json").read_text())
    train = [
        Example(r["uid"], r["text"], r["label"], r["domain"], r["subdomain"])
        for a in data["arrivals"]
        for r in a
    ]
    test = _pool(homes, train)
    tier = load_tier(Path(state["tier"]["dir"]))
    on = (state.get("local") or {}).get("on")
    parents = [Path(on)] if on else []
    majority = max(statistics.multimode([e.label for e in test]), key=str)
    floor = sum(e.label == majority for e in test) / len(test)
    out: dict[str, Any] = {"model_bytes": tier.info.weights_bytes, "n_train": len(train),
                           "n_test": len(test), "majority": floor, "variants": {}}  # fmt: skip
    for name, (qv_only, rank) in VARIANTS.items():
        r = rank or int(plan["lora_r"])
        accs: list[float] = []
        params = size = 0
        with _targets(qv_only):
            for seed in range(seeds):
                s = Session(tier, parents=parents, seed=1000 + seed, answers=plan["labels"],
                            settings=LoraSettings(r=r, alpha=2.0 * r,
                                                  train_pooler=plan["train_pooler"]))  # fmt: skip
                s.train_classifier(train, TrainConfig(
                    steps=plan["steps_per_cycle"], batch_size=plan["batch_size"],
                    lr=plan["lr"], max_length=plan["max_length"], seed=seed,
                ))  # fmt: skip
                accs.append(s.accuracy(test, plan["max_length"]))
                adapter = s.adapter_state()
                params = sum(int(v.size) for v in adapter.values())
                size = _payload_bytes(adapter)
        out["variants"][name] = {"params": params, "payload_bytes": size, "accuracy": accs}
    return out


def _paired(nodes: dict[str, Any], variant: str) -> tuple[float, float]:
    diffs = [
        a - b
        for n in nodes.values()
        for a, b in zip(
            n["variants"][variant]["accuracy"], n["variants"]["all-r4"]["accuracy"], strict=True
        )
    ]
    if len(diffs) < 2:
        return (diffs[0] if diffs else 0.0), float("nan")
    return statistics.fmean(diffs), 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "LoRA size benchmark")
    p.add_argument("run", type=Path, help="a kept devnet run directory")
    p.add_argument("--nodes", required=True, help="comma-separated training nodes")
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args(argv)
    from p2phier.learn.models import configure_torch

    configure_torch(2, seed=0)
    _, homes = load_kept_run(args.run)
    nodes: dict[str, Any] = {}
    for name in args.nodes.split(","):
        log(f"{name}: {len(VARIANTS)} variants x {args.seeds} seeds")
        nodes[name] = measure(homes[name], homes, args.seeds)
    rows = []
    for name, n in nodes.items():
        for variant, v in n["variants"].items():
            learned = sum(a > n["majority"] + 0.05 for a in v["accuracy"])
            rows.append([
                name, variant, v["params"], v["payload_bytes"],
                f"{100 * v['payload_bytes'] / n['model_bytes']:.3f}",
                f"{statistics.fmean(v['accuracy']):.3f}", f"{learned}/{len(v['accuracy'])}",
            ])  # fmt: skip
    print_table(
        "a fresh LoRA per variant (payload: the whole update at the coarse int8 step, zstd)",
        ["node", "variant", "params", "payload B", "% model", "accuracy", "learned"],
        rows,
    )
    paired = {v: _paired(nodes, v) for v in VARIANTS if v != "all-r4"}
    print_table(
        "paired against all-r4 (accuracy points, mean and 95% interval over nodes x seeds)",
        ["variant", "mean", "interval"],
        [[v, f"{100 * m:+.1f}", f"±{100 * ci:.1f}"] for v, (m, ci) in paired.items()],
    )
    if args.json:
        print(json.dumps({"run": str(args.run), "nodes": nodes,
                          "paired_pts": {v: 100 * m for v, (m, _) in paired.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
