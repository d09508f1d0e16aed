"""Each node's data, and the baselines the hierarchy is judged against.

Owns:

* :func:`build_node_data`: every node's private shard (train and held-out test
  examples, and the train examples' arrival per round), cut from the real
  corpora of :mod:`p2phier.learn.data` exactly as the scenario says: ``skew``
  of a node's examples from its home groups, the rest from its other groups,
  no example ever given to two nodes, everything a pure function of the
  scenario (seeds included);
* :func:`run_baselines`: the isolated baseline (each training node trains its
  own tier alone on its whole shard, with the hierarchy's compute:
  ``steps_per_cycle x rounds`` steps) and the centralised one (one model of
  the master's tier trained on the pooled shards of every training node, with
  their summed steps, as :mod:`p2phier.learn.central` defines it for every
  figure), both scored on each node's held-out data.

This module and the devnet runner are the only devnet modules that use
:mod:`p2phier.learn`; it is imported inside the functions, so importing this
module (as the light launcher does) loads neither torch nor the corpora.
Training is blocking CPU work in this process: never call it on an event loop.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from p2phier.devnet.report import Baselines
from p2phier.devnet.scenario import NodeSpec, Scenario, ScenarioError
from p2phier.learn.central import Candidate as CentralCandidate

if TYPE_CHECKING:
    from p2phier.learn.data import Example
    from p2phier.learn.train import LoraSettings
    from p2phier.learnplan import LearnSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeData:
    """One node's private data."""

    node: str
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    arrivals: tuple[tuple[Example, ...], ...]  # arrivals[i]: train examples new in round i+1


def _group_of(example: Example, dataset: str) -> str:
    return example.label if dataset == "bbc" else example.subdomain


def _load(dataset: str) -> list[Example]:
    from p2phier.learn.data import load_bbc, load_drug_reviews

    return load_bbc() if dataset == "bbc" else load_drug_reviews(split="all")


def _shares(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Integers summing to ``total`` (<= sum of caps), proportional to ``weights``, capped.

    Largest remainder, repeated: a capped group's shortfall goes to the others.
    """
    out = [0] * len(weights)
    left = total
    while left > 0:
        open_ = [i for i in range(len(weights)) if out[i] < caps[i]]
        wsum = sum(weights[i] for i in open_) or float(len(open_))
        exact = {i: left * (weights[i] / wsum if wsum else 1.0) for i in open_}
        give = {i: min(int(exact[i]), caps[i] - out[i]) for i in open_}
        rest = left - sum(give.values())
        for i in sorted(open_, key=lambda i: (-(exact[i] - int(exact[i])), i)):
            if rest <= 0:
                break
            if out[i] + give[i] < caps[i]:
                give[i] += 1
                rest -= 1
        for i, g in give.items():
            out[i] += g
        left = total - sum(out)
    return out


def build_node_data(
    scenario: Scenario, corpora: Mapping[str, Sequence[Example]] | None = None
) -> dict[str, NodeData]:
    """Every node's shard (nodes without a shard are absent), deterministic for the scenario.

    ``corpora`` maps a dataset name to its examples (default: the installed corpora).
    """
    corpora = dict(corpora or {})
    pools: dict[str, dict[str, list[Example]]] = {}
    out: dict[str, NodeData] = {}
    for index, node in enumerate(scenario.nodes):
        shard = node.shard
        if shard is None:
            continue
        path = f"nodes[{index}].shard"
        if shard.dataset not in pools:
            examples = corpora.get(shard.dataset)
            if examples is None:
                examples = _load(shard.dataset)
            groups: dict[str, list[Example]] = {}
            for e in sorted(examples, key=lambda e: e.uid):
                groups.setdefault(_group_of(e, shard.dataset), []).append(e)
            for name, items in groups.items():
                random.Random(f"{scenario.seed}/{shard.dataset}/{name}").shuffle(items)
            pools[shard.dataset] = groups
        groups = pools[shard.dataset]
        for key, names in (("home", shard.home), ("others", shard.others)):
            for i, g in enumerate(names):
                if g not in groups:
                    common = sorted(groups, key=lambda k: -len(groups[k]))[:8]
                    raise ScenarioError(
                        f"{path}.{key}[{i}]: the {shard.dataset} data has no group {g!r} "
                        f"(largest groups: {', '.join(repr(c) for c in common)})"
                    )
        others = shard.others or tuple(sorted(set(groups) - set(shard.home)))
        total = shard.train + shard.test
        n_home = round(shard.skew * total) if others else total
        rng = random.Random(f"{scenario.seed}/{node.name}/{shard.seed}")
        chosen: list[Example] = []
        for part, names, wanted in (
            ("home", shard.home, n_home),
            ("others", others, total - n_home),
        ):
            available = sum(len(groups[g]) for g in names)
            if available < wanted:
                raise ScenarioError(
                    f"{path}: asks for {wanted} examples from its {part} groups "
                    f"{list(names)[:6]} but only {available} remain after the nodes before it; "
                    "lower train/test or change skew"
                )
            # Home groups give even shares; other groups give shares in proportion to their
            # size, so a small condition is not drained by nodes that only see it in passing.
            weights = [1.0 if part == "home" else float(len(groups[g])) for g in names]
            for g, share in zip(
                names, _shares(wanted, weights, [len(groups[g]) for g in names]), strict=True
            ):
                chosen.extend(groups[g][:share])
                del groups[g][:share]
        chosen.sort(key=lambda e: e.uid)
        rng.shuffle(chosen)
        test, train = chosen[: shard.test], chosen[shard.test :]
        out[node.name] = NodeData(
            node.name,
            tuple(train),
            tuple(sorted(test, key=lambda e: e.uid)),
            _arrivals(train, scenario),
        )
    return out


def _arrivals(train: list[Example], scenario: Scenario) -> tuple[tuple[Example, ...], ...]:
    """Cut the (seeded-shuffled) train examples into the scenario's arrival fractions."""
    order = list(train)
    if scenario.arrival.order == "by_label":  # class-incremental: labels arrive in turn
        labels = sorted({e.label for e in order})
        order.sort(key=lambda e: labels.index(e.label))
    fractions = scenario.arrival.fractions
    sizes = [int(len(order) * f) for f in fractions]
    for i in sorted(range(len(fractions)), key=lambda i: -(len(order) * fractions[i] - sizes[i]))[
        : len(order) - sum(sizes)
    ]:
        sizes[i] += 1
    out, start = [], 0
    for size in sizes:
        out.append(tuple(order[start : start + size]))
        start += size
    return tuple(out)


def labels_of(data: Mapping[str, NodeData]) -> tuple[str, ...]:
    """The label set of the devnet's shared head: every label in any node's data, sorted."""
    return tuple(sorted({e.label for d in data.values() for e in (*d.train, *d.test)}))


def answer_labels(scenario: Scenario, data: Mapping[str, NodeData], name: str) -> tuple[str, ...]:
    """The labels ``name``'s model answers with (its plan's ``labels``): those of the
    datasets its own and its descendants' shards come from, the domain's task; empty where
    that is every label of the shared head (the master, the language node).  Every
    accuracy of the node, the baselines' on its held-out data included, is measured among
    these."""
    subtree = [scenario.node(name), *scenario.descendants(name)]
    datasets = {n.shard.dataset for n in subtree if n.shard is not None}
    labels = sorted(
        {
            e.label
            for n in scenario.nodes
            if n.shard is not None and n.shard.dataset in datasets and n.name in data
            for e in (*data[n.name].train, *data[n.name].test)
        }
    )
    return () if not labels or set(labels) == set(labels_of(data)) else tuple(labels)


# --- baselines ------------------------------------------------------------------------------


def root_tier(scenario: Scenario, data: Mapping[str, NodeData], out: Path) -> Path:
    from p2phier.learn.models import build_master
    from p2phier.learn.tiny import build_tiny_classifier_tier

    labels = labels_of(data)
    spec = scenario.tiers[scenario.tier_lineage(scenario.master.tier)[-1]]
    if out.exists():
        return out
    if spec.kind == "minilm":
        build_master(out, labels, tier_id=f"devnet/{spec.name}", seed=scenario.seed)
    else:
        texts = [e.text for d in data.values() for e in d.train]
        build_tiny_classifier_tier(
            out,
            texts,
            labels,
            tier_id=f"devnet/{spec.name}",
            max_vocab=spec.max_vocab or 2000,
            hidden=spec.hidden,
            layers=spec.n_layers,
            seed=scenario.seed,
        )
    return out


def _node_tier(
    scenario: Scenario, tier: str, root: Path, examples: Sequence[Example], out: Path
) -> Path:
    """The node's tier built from the untrained root tier on the node's own data only."""
    from p2phier.learn.distill import DistillConfig, build_int8_tier, build_student_tier
    from p2phier.learn.models import load_tier
    from p2phier.learn.train import Session

    current = root
    for name in reversed(scenario.tier_lineage(tier)[:-1]):
        spec = scenario.tiers[name]
        target = out / name
        if spec.kind == "student":
            build_student_tier(
                Session(load_tier(current)),
                target,
                tier_id=f"devnet/{name}",
                layers=spec.layers,
                examples=list(examples),
                max_vocab=spec.max_vocab,
                config=DistillConfig(
                    steps=spec.distill_steps,
                    batch_size=scenario.learning.batch_size,
                    max_length=scenario.learning.max_length,
                    seed=scenario.seed,
                ),
            )
        else:
            build_int8_tier(current, target, tier_id=f"devnet/{name}")
        current = target
    return current


def _setup(scenario: Scenario) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from p2phier.learn.models import configure_torch

    configure_torch(scenario.learning.threads, seed=scenario.seed)


def _trainers(scenario: Scenario, data: Mapping[str, NodeData]) -> list[NodeSpec]:
    trainers = [n for n in scenario.training_nodes() if n.name in data]
    if not trainers:
        raise ScenarioError("the scenario has no training node with data; nothing to compare")
    return trainers


def _lora(t: LearnSettings) -> LoraSettings:
    from p2phier.learn.train import LoraSettings

    # The nodes' budget exactly: LoRA + task head (+ the pooler only if the nodes train it).
    return LoraSettings(r=t.lora_r, alpha=2.0 * t.lora_r, train_pooler=t.train_pooler)


def _central_settings(scenario: Scenario) -> LearnSettings:
    """What the central baseline trains with: the master tier's settings (it trains that tier)."""
    return scenario.learning_for(scenario.master.tier)


def central_rates(scenario: Scenario) -> tuple[float, ...]:
    """The learning rates the central baseline tries (:func:`p2phier.learn.central.rates`)."""
    from p2phier.learn import central

    return central.rates(_central_settings(scenario).lr)


def isolated_baseline(
    scenario: Scenario, work_dir: Path, data: Mapping[str, NodeData], root: Path | None = None
) -> dict[str, float]:
    """Each training node alone: its tier built from the untrained root tier on its own data,
    trained on its whole shard with the hierarchy's steps; accuracy on its held-out data.

    ``root``: the root tier already built (the devnet's; it is deterministic), else built
    under ``work_dir``."""
    from p2phier.learn import api
    from p2phier.learn.train import TrainConfig

    _setup(scenario)
    root = root or root_tier(scenario, data, Path(work_dir) / "root-tier")
    isolated: dict[str, float] = {}
    for node in _trainers(scenario, data):
        t = scenario.learning_for(node.tier)  # as the node trains: its tier's settings
        steps = t.steps_per_cycle * scenario.rounds
        nd = data[node.name]
        tier_dir = _node_tier(scenario, node.tier, root, nd.train, work_dir / "tiers" / node.name)
        result = api.train_cycle(
            tier_dir,
            work_dir / "isolated" / node.name,
            nd.train,
            train=TrainConfig(
                steps=steps,
                batch_size=t.batch_size,
                lr=t.lr,
                max_length=t.max_length,
                seed=scenario.seed + node.shard.seed if node.shard else scenario.seed,
            ),
            lora=_lora(t),
            eval_sets={"own": nd.test},
            init_seed=scenario.seed,
            answers=answer_labels(scenario, data, node.name),
        )
        isolated[node.name] = result.metrics.scores["accuracy.own"]
        log.info("isolated baseline %s: %.3f", node.name, isolated[node.name])
    return isolated


def central_candidate(
    scenario: Scenario,
    work_dir: Path,
    data: Mapping[str, NodeData],
    lr: float,
    root: Path | None = None,
) -> CentralCandidate:
    """One central model at learning rate ``lr`` as :mod:`p2phier.learn.central` defines it
    (the root tier on the pooled training shards, the summed steps, chosen on a validation
    split of that training data), with its accuracy on each node's held-out data."""
    from p2phier.learn import api, central

    _setup(scenario)
    t = _central_settings(scenario)
    trainers = _trainers(scenario, data)
    root = root or root_tier(scenario, data, Path(work_dir) / "root-tier")
    got = central.train(
        root,
        Path(work_dir) / f"central-lr{lr:g}",
        [e for n in trainers for e in data[n.name].train],
        lr=lr,
        steps=central.steps(t.steps_per_cycle * scenario.rounds, len(trainers)),
        batch_size=t.batch_size,
        max_length=t.max_length,
        lora=_lora(t),
        seed=scenario.seed,
        init_seed=scenario.seed,
    )
    log.info("central baseline at lr %g: validation accuracy %.3f", lr, got.valid)
    # on each node's held-out data among the labels of its domain, as the nodes are measured
    scores = {
        n.name: api.evaluate(
            root,
            {"own": data[n.name].test},
            adapter=got.adapter_dir,
            max_length=t.max_length,
            answers=answer_labels(scenario, data, n.name),
        )["accuracy.own"]
        for n in trainers
    }
    return replace(got, scores=scores)


def combine_baselines(
    scenario: Scenario,
    work_dir: Path,
    data: Mapping[str, NodeData],
    isolated: Mapping[str, float],
    candidates: Sequence[CentralCandidate],
) -> Baselines:
    """The baselines record: the central candidate with the best validation accuracy (the
    first on a tie, in :func:`central_rates` order), copied to ``work_dir/central``."""
    from p2phier.learn import central

    if not candidates:
        raise ScenarioError("no central candidate to choose from")
    best = central.best(candidates)
    central_dir = Path(work_dir) / "central"
    if not central_dir.exists():
        shutil.copytree(best.adapter_dir, central_dir)
    t = _central_settings(scenario)
    steps = t.steps_per_cycle * scenario.rounds
    n = len(_trainers(scenario, data))
    rates = " and ".join(f"{c.lr:g}" for c in candidates)
    notes = (
        f"Isolated: each node's tier built from the untrained master tier on its own data "
        f"only, trained on its whole shard at once ({steps} steps). Central: the master tier "
        f"trained on the pooled shards of {n} nodes ({steps * n} steps; learning rate "
        f"{best.lr:g}, the better of {rates} on a validation split of the pooled training "
        f"data, trained on the other 90%)."
    )
    return Baselines(dict(isolated), dict(best.scores), steps, steps * n, notes)


def run_baselines(
    scenario: Scenario,
    work_dir: Path,
    *,
    data: Mapping[str, NodeData] | None = None,
) -> Baselines:
    """Train and score the isolated and centralised baselines, one after the other (blocking;
    minutes for MiniLM).  The devnet runs the same parts in parallel child processes
    (:mod:`p2phier.devnet.baseline_job`)."""
    data = dict(data) if data is not None else build_node_data(scenario)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _setup(scenario)
    root = root_tier(scenario, data, work_dir / "root-tier")
    isolated = isolated_baseline(scenario, work_dir, data, root)
    candidates = [
        central_candidate(scenario, work_dir, data, lr, root) for lr in central_rates(scenario)
    ]
    return combine_baselines(scenario, work_dir, data, isolated, candidates)
