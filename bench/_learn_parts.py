"""The four experiments of ``bench/learn.py`` (tiers, forgetting, hierarchy, robust aggregation).

Each experiment takes a :class:`Scale` (how big the run is), the data and a work directory,
runs on the committed learning core (``p2phier.learn``) exactly as a node would (tier
directories, adapter directories, signed artifacts in a content store), and returns a plain
dict of measured numbers: ``bench/learn.py`` turns them into tables and the JSON line.
Nothing here asserts a goal; the verdicts are printed by the caller.

Every run is seeded: the same machine gives the same numbers (up to torch's thread-count
dependent float summation order).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2phier.artifact import Artifact
from p2phier.identity import Identity
from p2phier.learn import api, central, cycle
from p2phier.learn.aggregate import (
    DELTA_SUFFIX,
    AggregationConfig,
    ChildUpdate,
    Rule,
    add,
    aggregate,
    effective_to_lora,
)
from p2phier.learn.aggregate import scale as scale_tensors
from p2phier.learn.data import (
    Example,
    class_incremental,
    make_shards,
    sample_per_label,
    stratified_split,
)
from p2phier.learn.distill import DistillConfig, build_int8_tier, build_student_tier
from p2phier.learn.models import TierInfo, build_master, load_tier, read_tier_info
from p2phier.learn.train import LoraSettings, Session, TrainConfig, read_adapter, write_adapter
from p2phier.learnplan import (
    CONTINUAL,
    SETTINGS,
    DataRecord,
    LearnPlan,
    LearnSettings,
    TierPlan,
)
from p2phier.store import MemoryStore

LORA = LoraSettings(r=8, alpha=16.0)
MAX_LEN = 64
CIL_OLD = ("business", "entertainment", "politics")
CIL_NEW = ("sports", "tech")
VERSION_MAX_RANK = 32  # a version keeps the aggregate's spectrum up to this rank


@dataclass(frozen=True)
class Scale:
    """How much work each experiment does (``--smoke``, ``--quick`` or the default run)."""

    name: str
    # tiers
    teacher_news_per_label: int
    teacher_health: int
    teacher_steps: int
    test_news_per_label: int
    test_health: int
    distill_steps: int
    latency_examples: int
    # forgetting (class-incremental BBC News; the training itself: the plan's defaults)
    cil_train_per_label: int
    cil_test_per_label: int
    cil_seeds: int  # training seeds 0..n-1, each method's forgetting averaged over them
    # hierarchy
    hier_nodes: int
    hier_per_label: int  # BBC articles per topic pooled, then sharded among the nodes
    hier_rounds: int
    hier_steps: int  # local steps per node per round
    hier_batch: int
    hier_test_per_label: int  # held-out BBC articles per topic, sharded like the training pool
    # robust aggregation
    robust_children: int
    robust_bad: int
    robust_per_label: int
    robust_steps: int
    robust_test_per_label: int
    # the smoke run's forgetting part trains this much less than a node (None: the plan's
    # defaults, what every figure uses); the smoke checks the wiring, not the numbers
    cil_steps: int | None = None
    cil_max_length: int | None = None


SMOKE = Scale(
    name="smoke",
    teacher_news_per_label=4,
    teacher_health=8,
    teacher_steps=2,
    test_news_per_label=2,
    test_health=6,
    distill_steps=2,
    latency_examples=2,
    cil_train_per_label=4,
    cil_test_per_label=2,
    cil_seeds=1,
    hier_nodes=4,
    hier_per_label=4,
    hier_rounds=1,
    hier_steps=1,
    hier_batch=4,
    hier_test_per_label=2,
    robust_children=4,
    robust_bad=1,
    robust_per_label=3,
    robust_steps=1,
    robust_test_per_label=2,
    cil_steps=1,
    cil_max_length=32,
)
QUICK = Scale(
    name="quick",
    teacher_news_per_label=30,
    teacher_health=150,
    teacher_steps=60,
    test_news_per_label=20,
    test_health=90,
    distill_steps=80,
    latency_examples=8,
    cil_train_per_label=60,
    cil_test_per_label=30,
    cil_seeds=1,
    hier_nodes=4,
    hier_per_label=30,
    hier_rounds=3,
    hier_steps=8,
    hier_batch=8,
    hier_test_per_label=25,
    robust_children=10,
    robust_bad=3,
    robust_per_label=25,
    robust_steps=12,
    robust_test_per_label=25,
)
DEFAULT = Scale(
    name="default",
    teacher_news_per_label=60,
    teacher_health=300,
    teacher_steps=120,
    test_news_per_label=30,
    test_health=150,
    distill_steps=150,
    latency_examples=16,
    cil_train_per_label=120,
    # every held-out article of BBC News (~80-100 per topic): with 40 per topic, one article
    # of the 120 old-topic ones was 0.8 points, and one seed's forgetting was noise-dominated
    cil_test_per_label=1000,
    cil_seeds=3,
    hier_nodes=4,
    hier_per_label=50,
    hier_rounds=4,
    hier_steps=15,
    hier_batch=8,
    hier_test_per_label=50,
    robust_children=10,
    robust_bad=3,
    robust_per_label=40,
    robust_steps=20,
    robust_test_per_label=30,
)


def train_config(steps: int, seed: int, batch: int = 16, lr: float = 2e-3) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, max_length=MAX_LEN, seed=seed)


def by_domain(examples: Sequence[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {}
    for e in examples:
        out.setdefault(e.domain, []).append(e)
    return out


def latency_ms(session: Session, texts: Sequence[str]) -> float:
    """Median wall time of one example through the model (batch of one), in ms."""
    session.logits(texts[:1], MAX_LEN, batch=1)  # warm-up
    samples = []
    for text in texts:
        t0 = time.perf_counter()
        session.logits([text], MAX_LEN, batch=1)
        samples.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(samples)


def _domain_accuracy(session: Session, tests: Mapping[str, Sequence[Example]]) -> dict[str, float]:
    return {d: session.accuracy(ex, MAX_LEN) for d, ex in sorted(tests.items())}


# --- 1. tiers ---------------------------------------------------------------------------------


def run_tiers(
    scale: Scale, work: Path, news: Sequence[Example], health: Sequence[Example]
) -> dict[str, Any]:
    """Master + teacher adapter, distilled students at <= 1/3 params, an int8 device tier.

    ``news``/``health`` are the full corpora; train and test are disjoint splits.
    One classifier head covers both domains (5 BBC topics + 3 sentiments); accuracy is
    measured per domain on held-out examples.
    """
    news_train, news_test = stratified_split(news, [0.8, 0.2], seed=0)
    health_train = [e for e in health if e.uid.startswith("drugs/train/")]
    health_test = [e for e in health if e.uid.startswith("drugs/test/")]
    train = sample_per_label(news_train, scale.teacher_news_per_label, seed=1) + _take(
        health_train, scale.teacher_health, seed=1
    )
    tests = {
        "news": sample_per_label(news_test, scale.test_news_per_label, seed=2),
        "health": _take(health_test, scale.test_health, seed=2),
    }
    labels = tuple(sorted({e.label for e in [*news, *health]}))
    master_dir = work / "tiers" / "master"
    master_info = build_master(master_dir, labels)
    master = load_tier(master_dir)
    teacher = Session(master, settings=LORA)
    teacher.train_classifier(train, train_config(scale.teacher_steps, seed=0))
    latency_texts = [e.text for e in tests["news"][: scale.latency_examples]]
    rows: list[dict[str, Any]] = []
    teacher_acc = _domain_accuracy(teacher, tests)
    rows.append(
        _tier_row("teacher (master+LoRA)", master_info, master_info, teacher_acc, teacher_acc)
        | {"latency_ms": latency_ms(teacher, latency_texts)}
    )
    # Students learn from the child's own (here: the training) texts, labels included.
    distill_cfg = DistillConfig(
        steps=scale.distill_steps,
        batch_size=16,
        lr=5e-4,
        max_length=MAX_LEN,
        ce_weight=1.0,
        seed=0,
    )
    students = (("student/l3-v4k", (0, 2, 5), 4000), ("student/l2-v8k", (0, 5), 8000))
    best: tuple[float, Path, dict[str, Any]] | None = None
    for tier_id, layers, vocab in students:
        out = work / "tiers" / tier_id.replace("/", "-")
        info = build_student_tier(
            teacher,
            out,
            tier_id=tier_id,
            layers=layers,
            examples=train,
            max_vocab=vocab,
            config=distill_cfg,
        )
        session = Session(load_tier(out))
        acc = _domain_accuracy(session, tests)
        row = _tier_row(tier_id, info, master_info, acc, teacher_acc) | {
            "latency_ms": latency_ms(session, latency_texts)
        }
        rows.append(row)
        if row["params_ratio"] <= 1 / 3 and (best is None or row["retention"] > best[0]):
            best = (row["retention"], out, row)
    if best is None:
        raise RuntimeError("no student came in under 1/3 of the teacher's parameters")
    int8_dir = work / "tiers" / "device-int8"
    int8_info = build_int8_tier(best[1], int8_dir, tier_id=best[2]["tier"] + "-int8")
    session = Session(load_tier(int8_dir))
    acc = _domain_accuracy(session, tests)
    rows.append(
        _tier_row(int8_info.tier_id, int8_info, master_info, acc, teacher_acc)
        | {"latency_ms": latency_ms(session, latency_texts)}
    )
    return {
        "rows": rows,
        "distill_retention": best[2]["retention"],
        "distill_params_ratio": best[2]["params_ratio"],
        "best_student": best[2]["tier"],
        "n_train": len(train),
        "n_test": {d: len(v) for d, v in tests.items()},
    }


def _take(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """A seeded, label-stratified sample of ``n`` examples (keeps the label mix)."""
    n = min(n, len(examples))
    if n == len(examples):
        return sorted(examples, key=lambda e: e.uid)
    return stratified_split(examples, [n / len(examples), 1 - n / len(examples)], seed=seed)[0]


def _tier_row(
    name: str,
    info: TierInfo,
    master: TierInfo,
    acc: Mapping[str, float],
    teacher_acc: Mapping[str, float],
) -> dict[str, Any]:
    mean = sum(acc.values()) / len(acc)
    teacher_mean = sum(teacher_acc.values()) / len(teacher_acc)
    return {
        "tier": name,
        "params": info.n_params,
        "params_ratio": info.n_params / master.n_params,
        "bytes": info.weights_bytes,
        "accuracy": dict(acc),
        "retention": mean / teacher_mean if teacher_mean else 0.0,
        "retention_by_domain": {
            d: acc[d] / teacher_acc[d] if teacher_acc[d] else 0.0 for d in sorted(acc)
        },
    }


# --- 2. forgetting ----------------------------------------------------------------------------


def forgetting_plan(
    tier_dir: Path, continual: str, seed: int, scale: Scale | None = None
) -> LearnPlan:
    """A training node's plan with the product's defaults (:class:`LearnSettings`), but for
    its continual-learning method and its seed: what the forgetting part measures.  Only
    the smoke scale trains less (``cil_steps``, ``cil_max_length``)."""
    info = read_tier_info(tier_dir)
    tier = TierPlan("dir", info.tier_id, dir=tier_dir, weights_cid=info.weights_cid)
    plan = LearnPlan(tier=tier, data=None, train=True, parent=False, seed=seed, continual=continual)
    if scale is not None and scale.cil_steps is not None:
        plan = dataclasses.replace(plan, steps_per_cycle=scale.cil_steps)
    if scale is not None and scale.cil_max_length is not None:
        plan = dataclasses.replace(plan, max_length=scale.cil_max_length)
    return plan


def _records(examples: Sequence[Example]) -> list[DataRecord]:
    return [DataRecord(e.uid, e.text, e.label, e.domain, e.subdomain) for e in examples]


def run_forgetting(
    scale: Scale,
    work: Path,
    tier_dir: Path,
    news: Sequence[Example],
    methods: Sequence[str] = CONTINUAL,
) -> dict[str, Any]:
    """Class-incremental BBC News: old topics first, then new ones; forgetting on the old.

    Each method runs as a node runs it: a plan with the product's defaults and only
    ``continual`` (and the seed) set (:func:`forgetting_plan`), two rounds of the node's
    cycle (:func:`p2phier.learn.cycle.train`, which maps the plan to its training, LoRA and
    continual-learning configs): round 1's arrivals are the old topics, round 2's the new
    ones, with round 1's as the node's earlier data and round 1's adapter continued.
    """
    train, test = stratified_split(news, [0.8, 0.2], seed=0)
    train = sample_per_label(train, scale.cil_train_per_label, seed=3)
    test = sample_per_label(test, scale.cil_test_per_label, seed=4)
    old_train, new_train = (_records(x) for x in class_incremental(train, [CIL_OLD, CIL_NEW]))
    old_test, new_test = class_incremental(test, [CIL_OLD, CIL_NEW])
    runs: dict[str, list[dict[str, float]]] = {}
    # The data split is fixed; the training seed (adapter init, batch order, replay sampling)
    # varies, and every figure is the mean over the seeds.
    for seed in range(scale.cil_seeds):
        for name in methods:
            plan = forgetting_plan(tier_dir, name, seed, scale)
            root = work / "forgetting" / f"seed{seed}" / name.replace("+", "-")
            # round r's cycle seed is the plan's seed + r, as on a node
            first = cycle.train(
                plan, tier_dir, [], root / "round1", old_train,
                earlier=[], test=[], adapter=None, seed=plan.seed + 1,
            )  # fmt: skip
            after_a = Path(first["adapter"])
            second = cycle.train(
                plan, tier_dir, [], root / "round2", new_train,
                earlier=old_train, test=[], adapter=after_a, seed=plan.seed + 2,
            )  # fmt: skip
            n = plan.max_length
            acc_a = api.evaluate(tier_dir, {"old": old_test}, adapter=after_a, max_length=n)
            acc_b = api.evaluate(
                tier_dir, {"old": old_test, "new": new_test}, adapter=Path(second["adapter"]),
                max_length=n,
            )  # fmt: skip
            old_a, old_b = acc_a["accuracy.old"], acc_b["accuracy.old"]
            runs.setdefault(name, []).append({
                "old_after_a": old_a,
                "old_after_b": old_b,
                "new_after_b": acc_b["accuracy.new"],
                # as ContinualLearner reports it: the best accuracy seen minus now
                "forgetting_pts": 100.0 * (max(old_a, old_b) - old_b),
            })  # fmt: skip
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        entry: dict[str, Any] = {k: statistics.fmean(r[k] for r in seeds) for k in seeds[0]}
        entry["forgetting_pts_per_seed"] = [r["forgetting_pts"] for r in seeds]
        entry["forgetting_pts_sd"] = (
            statistics.stdev(entry["forgetting_pts_per_seed"]) if len(seeds) > 1 else 0.0
        )
        out[name] = entry
    defaults = LearnSettings()
    unused = {"continual", "threads", "personal_head_steps"}  # varied; set by --threads; rebase
    training = {
        f.name: getattr(defaults, f.name)
        for f in SETTINGS
        if f.metadata["table"] == "training" and f.name not in unused
    }
    return {
        "methods": out,
        "default": defaults.continual,
        "settings": training | {"ewc_lambda": cycle.EWC_LAMBDA},
        "n_train": len(train),
        "n_test": len(test),
        "n_test_old": len(old_test),
        "seeds": scale.cil_seeds,
    }


# --- 3. hierarchy vs isolated vs central ------------------------------------------------------


def artifact_bytes(artifact: Artifact) -> int:
    """What a peer fetches for an artifact: envelope, config and compressed tensors."""
    manifest = artifact.manifest
    return len(artifact.envelope_bytes) + manifest.config.size + manifest.tensors.size


class _ZeroBases:
    """All-zero adapters, one per tensor layout, packed once as the parents of int8 artifacts.

    The artifact format stores int8 only as a delta against a parent artifact; against an
    all-zero parent of the same layout (zstd shrinks it to a few hundred bytes) an int8-delta
    artifact is an int8 copy of the whole adapter.  A version's re-factorised LoRA factors
    change completely from round to round (SVD factors are not continuous), so a delta
    against the previous version would be no smaller.  Every zero base is counted as sent
    to every node (``fetchers`` of them), once.
    """

    def __init__(
        self, store: MemoryStore, author: Identity, info: TierInfo, root: Path, fetchers: int
    ) -> None:
        self.store, self.author, self.info, self.root = store, author, info, root
        self.fetchers = fetchers
        self.bytes_sent = 0
        self._bases: dict[tuple[tuple[str, tuple[int, ...]], ...], Artifact] = {}

    def pack(
        self,
        adapter_dir: Path,
        identity: Identity,
        *,
        layer: str,
        domain: str,
        now: float,
        round: int,
        metrics: Mapping[str, float] | None = None,
    ) -> Artifact:
        adapter = read_adapter(adapter_dir)
        layout = tuple(sorted((k, tuple(v.shape)) for k, v in adapter.state.items()))
        base = self._bases.get(layout)
        if base is None:
            zero = write_adapter(
                self.root / f"layout{len(self._bases)}",
                {k: np.zeros_like(v) for k, v in adapter.state.items()},
                adapter.config,
            )
            base = api.pack(
                self.store, zero, self.author, self.info, layer=layer, domain=domain, now=now
            )
            self._bases[layout] = base
            self.bytes_sent += artifact_bytes(base) * self.fetchers
        return api.pack(
            self.store,
            adapter_dir,
            identity,
            self.info,
            layer=layer,
            domain=domain,
            now=now,
            round=round,
            metrics=metrics,
            parent=base.cid,
            encoding="int8-delta",
        )


def run_hierarchy(
    scale: Scale, work: Path, tier_dir: Path, news: Sequence[Example]
) -> dict[str, Any]:
    """1 parent + N children on non-IID BBC shards, vs isolated nodes, vs central training.

    Hierarchy: each round every child trains ``hier_steps`` on its shard on top of the
    parent's current version (a fresh rank-8 LoRA and the version's head), uploads it as a
    signed int8 artifact, the parent unpacks and FedAvg-aggregates the merged B@A products,
    re-factorises keeping up to rank 32, publishes the new version as an int8 artifact, and
    every child downloads it (see :class:`_ZeroBases`).  Everyone uses what the artifacts
    decode to, so int8 errors are part of the result.
    Isolated: each child trains alone for ``rounds * steps`` on its shard.  Central: the
    baseline every figure uses (:mod:`p2phier.learn.central`, as the devnet's): one model on
    the pooled shards for ``nodes * rounds * steps`` steps at the children's batch size (the
    same examples processed as the whole hierarchy), at the better of the children's rate and
    a quarter of it on a validation split of the pooled training data (it trains on the other
    90%).
    """
    info = read_tier_info(tier_dir)
    pool_src, test_src = stratified_split(news, [0.8, 0.2], seed=0)
    pool = sample_per_label(pool_src, scale.hier_per_label, seed=5)
    held_out = sample_per_label(test_src, scale.hier_test_per_label, seed=6)
    # The same seed and groups give the same home topics, so each node's test data has
    # the skew of its training shard.
    shards = make_shards(pool, scale.hier_nodes, skew=0.8, seed=0, group_by="label")
    test_shards = make_shards(held_out, scale.hier_nodes, skew=0.8, seed=0, group_by="label")
    nodes = []
    for shard, test_shard in zip(shards, test_shards, strict=True):
        assert shard.home == test_shard.home
        nodes.append((list(shard.examples), list(test_shard.examples)))
    pooled_train = sorted((e for tr, _ in nodes for e in tr), key=lambda e: e.uid)
    pooled_test = sorted((e for _, te in nodes for e in te), key=lambda e: e.uid)
    root = work / "hier"
    store = MemoryStore()
    parent_id = Identity.from_seed(b"\x01" * 32)
    kids = [Identity.from_seed(bytes([i + 2]) * 32) for i in range(len(nodes))]
    now = 1_700_000_000.0

    zeros = _ZeroBases(store, parent_id, info, root / "zero", len(nodes) + 1)
    v0 = api.init_version(tier_dir, root / "v0-src", lora=LORA, seed=0)
    art = zeros.pack(v0, parent_id, layer="domain", domain="news", now=now, round=0)
    version = api.unpack(store, art.cid, root / "v0", info)
    down = artifact_bytes(art) * len(nodes)
    up = 0
    refactor_errors, ranks = [], []
    for r in range(scale.hier_rounds):
        children: dict[str, tuple[Path, float]] = {}
        for i, (tr, _) in enumerate(nodes):
            result = api.train_cycle(
                tier_dir,
                root / f"r{r}" / f"child{i}",
                tr,
                parents=[version],
                train=train_config(scale.hier_steps, seed=100 * r + i, batch=scale.hier_batch),
                lora=LORA,
                seed=i,
            )
            child_art = zeros.pack(
                result.adapter_dir,
                kids[i],
                layer="subdomain",
                domain=f"news/node{i}",
                now=now + r + 0.1 * i,
                round=r,
                metrics=result.metrics.for_manifest(),
            )
            up += artifact_bytes(child_art)
            received = api.unpack(store, child_art.cid, root / f"r{r}" / f"child{i}-recv", info)
            children[f"child{i}"] = (received, float(len(tr)))
        rnd = api.aggregate_round(
            tier_dir,
            version,
            children,
            root / f"r{r}" / "candidate",
            rule=AggregationConfig(rule=Rule.FEDAVG),
            max_rank=VERSION_MAX_RANK,
        )
        refactor_errors.append(rnd.refactor_error)
        ranks.append(rnd.rank)
        art = zeros.pack(
            rnd.candidate_dir,
            parent_id,
            layer="domain",
            domain="news",
            now=now + r + 0.5,
            round=r + 1,
        )
        down += artifact_bytes(art) * len(nodes)
        version = api.unpack(store, art.cid, root / f"v{r + 1}", info)
    up += zeros.bytes_sent

    tier = load_tier(tier_dir)
    total_steps = scale.hier_rounds * scale.hier_steps
    hier_model = Session(tier, parents=[version])
    hier = _node_scores(hier_model, nodes, pooled_test)
    isolated_own, isolated_pooled = [], []
    for i, (tr, _) in enumerate(nodes):
        session = Session(tier, parents=[v0], settings=LORA, seed=0)
        session.train_classifier(tr, train_config(total_steps, seed=i, batch=scale.hier_batch))
        scores = _node_scores(session, nodes, pooled_test)
        isolated_own.append(scores["own"][i])
        isolated_pooled.append(scores["pooled"])
    isolated = {
        "own": isolated_own,
        "pooled": sum(isolated_pooled) / len(isolated_pooled),
        "pooled_per_node": isolated_pooled,
    }
    node_lr = train_config(scale.hier_steps, seed=0).lr  # the children's rate
    central_steps = central.steps(total_steps, len(nodes))
    candidates = [
        central.train(
            tier_dir,
            root / f"central-lr{lr:g}",
            pooled_train,
            lr=lr,
            steps=central_steps,
            batch_size=scale.hier_batch,
            max_length=MAX_LEN,
            lora=LORA,
            parents=[v0],
        )
        for lr in central.rates(node_lr)
    ]
    chosen = central.best(candidates)
    central_model = Session(tier, parents=[v0], adapter=chosen.adapter_dir, settings=LORA)
    central_scores = _node_scores(central_model, nodes, pooled_test)
    central_scores.update(
        lr=chosen.lr,
        valid={f"{c.lr:g}": c.valid for c in candidates},
        steps=central_steps,
    )

    raw_data = sum(len(e.text.encode()) for e in pooled_train)
    full_model = info.weights_bytes
    full_exchange = 2 * full_model * len(nodes) * scale.hier_rounds
    return {
        "nodes": len(nodes),
        "rounds": scale.hier_rounds,
        "steps_per_round": scale.hier_steps,
        "n_train": [len(tr) for tr, _ in nodes],
        "n_test": [len(te) for _, te in nodes],
        "hier": hier,
        "isolated": isolated,
        "central": central_scores,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_hier": up + down,
        "bytes_raw_data": raw_data,
        "bytes_full_model_exchange": full_exchange,
        "refactor_error_max": max(refactor_errors, default=0.0),
        "version_ranks": ranks,
    }


def _node_scores(
    session: Session, nodes: Sequence[tuple[list[Example], list[Example]]], pooled: list[Example]
) -> dict[str, Any]:
    """Accuracy on each node's test data and on their union (one pass over the union)."""
    predicted = dict(
        zip(
            (e.uid for e in pooled), session.predict([e.text for e in pooled], MAX_LEN), strict=True
        )
    )

    def acc(examples: Sequence[Example]) -> float:
        return sum(predicted[e.uid] == e.label for e in examples) / max(1, len(examples))

    return {"own": [acc(te) for _, te in nodes], "pooled": acc(pooled)}


def score(result: Mapping[str, Any]) -> float:
    """One number per method: mean of (mean own-test accuracy over nodes, pooled accuracy)."""
    own = [float(a) for a in result["own"]]
    return 0.5 * (sum(own) / len(own) + float(result["pooled"]))


# --- 4. robust aggregation --------------------------------------------------------------------

ATTACKS = {"sign-flip": -1.0, "scale-10x": 10.0, "sign-flip-10x": -10.0}


def run_robust(scale: Scale, work: Path, tier_dir: Path, news: Sequence[Example]) -> dict[str, Any]:
    """One round of ``robust_children`` children, ``robust_bad`` of them malicious.

    Honest children train on their shards on top of v0; a malicious child sends its
    honest update times a factor (-1: sign flip, 10: scaling, -10: both).  For every
    scenario and rule the parent aggregates the merged B@A updates, re-factorises to
    rank 8 and publishes a candidate, whose accuracy on held-out articles is measured.
    This is :func:`p2phier.learn.api.aggregate_round` step by step, so that the children's
    updates and the parent's probe update are computed once, not once per rule.
    """
    train, test = stratified_split(news, [0.8, 0.2], seed=0)
    pool = sample_per_label(train, scale.robust_per_label, seed=7)
    probe_uids = {e.uid for e in pool}
    rest = [e for e in train if e.uid not in probe_uids]
    probe_set = sample_per_label(rest, 4, seed=8)  # the parent's small trusted set
    test = sample_per_label(test, scale.robust_test_per_label, seed=9)
    shards = make_shards(pool, scale.robust_children, skew=0.5, seed=1, group_by="label")
    root = work / "robust"
    version = api.init_version(tier_dir, root / "v0", lora=LORA, seed=0)
    updates: list[ChildUpdate] = []
    for shard in shards:
        result = api.train_cycle(
            tier_dir,
            root / f"child{shard.node}",
            list(shard.examples),
            parents=[version],
            train=train_config(scale.robust_steps, seed=shard.node, batch=8),
            lora=LORA,
            seed=shard.node,
        )
        delta = api.child_update(result.adapter_dir, version)
        updates.append(ChildUpdate(f"child{shard.node:02d}", delta, float(len(shard.examples))))
    tier = load_tier(tier_dir)
    # The parent's probe update: a fresh LoRA on the version, trained on its trusted set.
    current = read_adapter(version)
    probe_session = Session(tier, parents=[version], settings=LORA, seed=0)
    probe_session.load_heads(current)
    probe_session.train_classifier(probe_set, train_config(scale.robust_steps, seed=99, batch=8))
    base_heads = {k: v for k, v in current.effective().items() if not k.endswith(DELTA_SUFFIX)}
    probe = {
        k: (v - base_heads[k]).astype(np.float32) if k in base_heads else v
        for k, v in probe_session.effective().items()
    }
    bad = {u.child for u in updates[: scale.robust_bad]}
    scenarios = {"clean": updates}
    for attack, factor in ATTACKS.items():
        scenarios[attack] = [
            ChildUpdate(u.child, scale_tensors(u.delta, factor), u.weight) if u.child in bad else u
            for u in updates
        ]
    ratio = float(current.config["lora_alpha"]) / float(current.config["r"])
    acc: dict[str, dict[str, float]] = {}
    for scenario, children in scenarios.items():
        for rule in Rule:
            agg = aggregate(
                children,
                AggregationConfig(rule=rule, trim_ratio=0.3),
                probe=probe if rule is Rule.PROBE_SCORED else None,
            )
            refactored = effective_to_lora(
                add(current.effective(), agg.delta), LORA.r, ratio * LORA.r
            )
            config = dict(current.config)
            config.update(r=LORA.r, lora_alpha=ratio * LORA.r, rank_pattern={}, alpha_pattern={})
            candidate = write_adapter(
                root / scenario / f"agg-{rule.value}", refactored.state, config
            )
            session = Session(tier, parents=[candidate])
            acc.setdefault(scenario, {})[rule.value] = session.accuracy(test, MAX_LEN)
    clean = acc["clean"][Rule.FEDAVG.value]
    loss = {rule.value: 100.0 * (clean - min(acc[a][rule.value] for a in ATTACKS)) for rule in Rule}
    return {
        "children": scale.robust_children,
        "malicious": len(bad),
        "accuracy": acc,
        "clean_fedavg": clean,
        "robust_acc_loss_pts": loss,
        "n_test": len(test),
        "n_probe": len(probe_set),
    }
