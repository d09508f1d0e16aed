"""The learning interface the node calls: paths and records in, adapter dirs and records out.

The node never touches torch.  Every function here takes tier directories,
adapter directories (PEFT format) and examples, does blocking CPU work, and
returns frozen records (metrics, aggregation reports, decisions) plus the
directories it wrote.  **Call these from a worker thread or process**
(``trio.to_thread.run_sync``), never on the event loop.

The version model (one level of the hierarchy):

* a node runs a *tier* (base model) with its *ancestors'* published adapters
  merged in, in order (each adapter is relative to everything above it);
* a parent's *version* is an adapter on that stack; its children train a fresh
  LoRA adapter on ``ancestors + [version]`` and keep their own head;
* a child's *update* is its adapter's effective tensors (merged ``B @ A`` per
  module) with the version's head subtracted from its head;
* the parent aggregates updates (:mod:`p2phier.learn.aggregate`), adds the
  result to its version's effective tensors, re-factorises, and the timing
  rule (:mod:`p2phier.learn.timing`) says whether the candidate is published;
* children *rebase* onto the new version: it goes under their adapter; by
  default their LoRA restarts from zero (its knowledge went upstream) and their
  personal head is kept (``mode="keep"`` keeps their LoRA too).

Across tiers (a student distilled from the parent's tier, an int8 copy of it),
adapters are exchanged by layer mapping (:func:`map_for_tier`): ancestors and
the version go *down* into the child's blocks before it trains, its adapter
goes *up* before :func:`aggregate_round`, which aggregates each module over the
children that have it, so a student moves only the blocks it kept (and the head).

Artifacts go through :mod:`p2phier.artifact` (``pack``/``unpack`` below); tiers
travel as bundles (``export_tier``/``import_tier``).
Records carry numbers only: no raw text ever leaves the node through them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from p2phier.artifact import Artifact, materialise, pack_adapter
from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.learn.aggregate import (
    DELTA_SUFFIX,
    OWN_UPDATE,
    AggregationConfig,
    AggregationResult,
    ChildUpdate,
    Rule,
    add,
    aggregate,
    effective_to_lora,
    lossless_rank,
    screen_round,
)
from p2phier.learn.continual import ContinualConfig, ContinualLearner, StageReport
from p2phier.learn.data import Example
from p2phier.learn.models import (
    ModelError,
    Tier,
    TierInfo,
    load_tier,
    read_tier_info,
)
from p2phier.learn.pareto import TierCandidate
from p2phier.learn.prototypes import Prototypes
from p2phier.learn.prototypes import load as load_prototypes
from p2phier.learn.prototypes import save as save_prototypes
from p2phier.learn.tierops import distil_student as distil_student  # noqa: PLC0414 - the interface's
from p2phier.learn.tierops import export_tier as export_tier  # noqa: PLC0414 - the interface's
from p2phier.learn.tierops import import_tier as import_tier  # noqa: PLC0414 - the interface's
from p2phier.learn.tierops import map_for_tier as map_for_tier  # noqa: PLC0414 - the interface's
from p2phier.learn.tierops import quantise_tier as quantise_tier  # noqa: PLC0414 - the interface's
from p2phier.learn.timing import Evaluation, PublishDecision, TimingPolicy, decide
from p2phier.learn.train import (
    Adapter,
    LoraSettings,
    Session,
    TrainConfig,
    pooled_embeddings,
    read_adapter,
    write_adapter,
)
from p2phier.store.base import ContentStore
from p2phier.trust.quality import QualityConfig, TrustedLoss, Verdict

logger = logging.getLogger(__name__)

_METRIC_NAME_RE = re.compile(r"[^a-z0-9_.-]+")


def metric_name(name: str) -> str:
    """A name the artifact manifest accepts (lowercase ``[a-z0-9_.-]``, <= 64 chars)."""
    cleaned = _METRIC_NAME_RE.sub("-", name.lower()).strip("-._") or "metric"
    return cleaned[:64]


@dataclass(frozen=True)
class CycleMetrics:
    """What a learning cycle measured (numbers only; never text)."""

    task: str
    n_train: int
    steps: int
    final_loss: float
    scores: Mapping[str, float]  # "accuracy.<set>" or "perplexity.<set>"
    forgetting: Mapping[str, float] = field(default_factory=dict)

    def for_manifest(self) -> dict[str, float]:
        out = {metric_name(k): float(v) for k, v in self.scores.items() if math.isfinite(v)}
        out.update({metric_name("forgetting." + k): float(v) for k, v in self.forgetting.items()})
        if math.isfinite(self.final_loss):
            out["loss"] = float(self.final_loss)
        out["n-train"] = float(self.n_train)
        return dict(sorted(out.items())[:32])


@dataclass(frozen=True)
class CycleResult:
    adapter_dir: Path
    metrics: CycleMetrics


def _score_name(tier: Tier) -> str:
    return "perplexity" if tier.info.task == "causal_lm" else "accuracy"


def _scores(
    session: Session, eval_sets: Mapping[str, Sequence[Example]], max_length: int
) -> dict[str, float]:
    name = _score_name(session.tier)
    out: dict[str, float] = {}
    for set_name, examples in sorted(eval_sets.items()):
        if session.tier.info.task == "causal_lm":
            out[f"{name}.{set_name}"] = session.perplexity([e.text for e in examples], max_length)
        else:
            out[f"{name}.{set_name}"] = session.accuracy(examples, max_length)
    return out


def evaluate(
    tier_dir: Path,
    eval_sets: Mapping[str, Sequence[Example]],
    *,
    parents: Sequence[Path] = (),
    adapter: Path | None = None,
    max_length: int = 64,
    answers: Sequence[str] = (),
    prototypes: Path | None = None,
    ncm_tasks: Sequence[str] = (),
) -> dict[str, float]:
    """Accuracy (classifiers, among ``answers``: the labels of the domain's task, empty for
    all) or perplexity (causal LMs) of a stack on each set.  ``prototypes``: the node's
    class prototypes file, with which a model whose answers span several tasks routes each
    text to its task (:func:`p2phier.learn.prototypes.answer`; only prototypes in this
    tier's base space are used), and answers the tasks in ``ncm_tasks`` by nearest
    prototype."""
    session = Session(load_tier(tier_dir), parents=parents, adapter=adapter, answers=answers)
    if prototypes is not None and (protos := load_prototypes(prototypes)) is not None:
        session.use_prototypes(protos, ncm_tasks)
    return _scores(session, eval_sets, max_length)


def validate_ncm(
    tier_dir: Path,
    adapter: Path,
    prototypes: Path,
    validation: Sequence[Example],
    *,
    answers: Sequence[str] = (),
    max_length: int = 64,
    current: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Per task of ``validation``, the model's head against the nearest prototype
    (:meth:`Session.validate_ncm`; ``current``: the tasks answered by prototype now);
    empty without prototypes in this tier's space."""
    protos = load_prototypes(prototypes)
    if protos is None:
        return {}
    session = Session(load_tier(tier_dir), adapter=adapter, answers=answers)
    return session.validate_ncm(protos, validation, max_length, current=current)


def class_prototypes(
    space_dir: Path, examples: Sequence[Example], out: Path, max_length: int = 64
) -> dict[str, Any]:
    """The prototypes of ``examples`` (each label's task: its example's ``domain``) in the
    base space of the tier at ``space_dir`` (its model without adapters), saved to ``out``."""
    tier = load_tier(space_dir)
    if not examples:
        raise ModelError("no examples to make prototypes of")
    emb = pooled_embeddings(tier, tier.model, [e.text for e in examples], max_length)
    tasks = {e.label: e.domain for e in examples}
    protos = Prototypes.of(emb, [e.label for e in examples], tasks, tier.info.weights_cid)
    save_prototypes(protos, out)
    return {"labels": len(protos.labels), "examples": len(examples), "space": protos.space}


def init_version(
    tier_dir: Path,
    out_dir: Path,
    *,
    parents: Sequence[Path] = (),
    lora: LoraSettings | None = None,
    seed: int = 0,
) -> Path:
    """A parent's first version: a zero LoRA update and the tier's own head."""
    return Session(load_tier(tier_dir), parents=parents, settings=lora, seed=seed).save(out_dir)


def train_cycle(
    tier_dir: Path,
    out_dir: Path,
    examples: Sequence[Example],
    *,
    parents: Sequence[Path] = (),
    adapter: Path | None = None,
    fresh_lora: bool = False,
    train: TrainConfig | None = None,
    lora: LoraSettings | None = None,
    continual: ContinualConfig | None = None,
    replay: Sequence[Example] = (),
    eval_sets: Mapping[str, Sequence[Example]] | None = None,
    seed: int = 0,
    init_seed: int = 0,
    answers: Sequence[str] = (),
) -> CycleResult:
    """One local learning cycle on newly arrived ``examples``; writes the adapter to ``out_dir``.

    ``adapter`` continues a previous adapter (``fresh_lora=True`` keeps only
    its head and restarts the LoRA factors at zero, as after a rebase).  For
    classifiers, ``continual`` enables replay/logit replay/EWC; ``replay``: the
    earlier examples the node kept locally, which refill the buffer (and EWC's
    Fisher, estimated on them at the adapter's weights: ``ContinualLearner.resume``).
    """
    tier = load_tier(tier_dir)
    train = train or TrainConfig(seed=seed)
    # The LoRA initialisation is the same for every child (init_seed), not the
    # training seed: updates then start from one row space and stay comparable
    # (with per-child random A matrices, same-task updates are near-orthogonal).
    if adapter is not None and fresh_lora:
        session = Session(tier, parents=parents, settings=lora, seed=init_seed, answers=answers)
        session.load_heads(read_adapter(adapter))
    else:
        session = Session(
            tier, parents=parents, adapter=adapter, settings=lora, seed=init_seed, answers=answers
        )
    eval_sets = dict(eval_sets or {})
    forgetting: dict[str, float] = {}
    if tier.info.task == "causal_lm":
        losses = session.train_lm([e.text for e in examples], train)
        final = losses[-1] if losses else math.nan
        scores = _scores(session, eval_sets, train.max_length)
    elif continual is not None:
        learner = ContinualLearner(session, _with_train(continual, train), seed=seed)
        if replay:
            learner.resume(replay)
        report: StageReport = learner.learn(examples, eval_sets)
        final = report.final_loss
        scores = {f"accuracy.{k}": v for k, v in report.accuracy.items()}
        forgetting = dict(report.forgetting)
    else:
        losses = session.train_classifier(examples, train)
        final = losses[-1] if losses else math.nan
        scores = _scores(session, eval_sets, train.max_length)
    path = session.save(out_dir)
    metrics = CycleMetrics(tier.info.task, len(examples), train.steps, final, scores, forgetting)
    logger.info("cycle on %d examples -> %s: %s", len(examples), path, metrics.for_manifest())
    return CycleResult(path, metrics)


def _with_train(config: ContinualConfig, train: TrainConfig) -> ContinualConfig:
    """``config`` with ``train`` (every other field kept: a copy by hand once dropped one)."""
    return dataclasses.replace(config, train=train)


# --- upstream: updates, aggregation, publishing ----------------------------------------------


def _heads(adapter: Adapter) -> dict[str, NDArray[np.float32]]:
    return {k: v for k, v in adapter.effective().items() if not k.endswith(DELTA_SUFFIX)}


def child_update(child_adapter: Path, version: Path) -> dict[str, NDArray[np.float32]]:
    """A child's update against the version it trained on (LoRA deltas, head differences)."""
    child, base = read_adapter(child_adapter), read_adapter(version)
    # Block names alone cannot tell a student's block 1 from the teacher's: an
    # adapter of another tier must be mapped (map_for_tier, "up") before it counts.
    own, theirs = (a.config.get("base_model_name_or_path") for a in (base, child))
    if isinstance(own, str) and isinstance(theirs, str) and own != theirs:
        raise ModelError(
            f"child adapter {child_adapter} is for tier {theirs!r}, the version for {own!r}; "
            "map it to the version's tier first (map_for_tier, direction='up')"
        )
    eff = child.effective()
    base_heads = _heads(base)
    for key, value in base_heads.items():
        if key not in eff or eff[key].shape != value.shape:
            raise ModelError(f"child adapter {child_adapter} lacks head tensor {key}")
        eff[key] = (eff[key].astype(np.float64) - value).astype(np.float32)
    return eff


@dataclass(frozen=True)
class RoundResult:
    candidate_dir: Path
    aggregation: AggregationResult
    rank: int
    refactor_error: float  # max relative error of the re-factorisation over modules
    #: the quality screen's verdict on every update but the trusted ones
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    #: the parent's probe-set update (on what the children cover) where the round trained one:
    #: its screen's trusted direction without the parent's own update, kept for the round's
    #: late updates (:func:`screen_updates`)
    probe: Mapping[str, NDArray[np.float32]] | None = None


def aggregate_round(
    tier_dir: Path,
    version: Path,
    children: Mapping[str, tuple[Path, float]],
    out_dir: Path,
    *,
    parents: Sequence[Path] = (),
    rule: AggregationConfig | None = None,
    probe_examples: Sequence[Example] = (),
    probe_train: TrainConfig | None = None,
    probe_lora: LoraSettings | None = None,
    answers: Sequence[str] = (),
    rank: int | None = None,
    max_rank: int = 64,
    seed: int = 0,
    init_seed: int = 0,
    trusted: Sequence[str] = (OWN_UPDATE,),
    quality: QualityConfig | None = None,
    trusted_examples: Sequence[Example] = (),
    max_length: int = 64,
) -> RoundResult:
    """Aggregate children's adapters (``child id -> (adapter dir, weight)``) into a candidate.

    Every child adapter must have been trained on ``parents + [version]``.
    With ``probe_examples`` (its small trusted set) the parent first trains the
    probe update there where the round reads it (the probe-scored rule, or the
    screen's direction checks without the parent's own update), as a child trains:
    a fresh LoRA of ``probe_lora`` drawn from ``init_seed`` (the children's shared
    seed, so that it lies in their row space: from another seed its cosine with
    every child's update was 0.01-0.03 in the real attack devnet), the node's
    ``answers``; the probe-scored rule's reference and, without the parent's own
    update, the screen's trusted one.  ``rank=None``
    keeps the aggregate's full rank up to ``max_rank`` (no truncation loss).

    Every update but the ``trusted`` ones (the parent's own, under
    :data:`OWN_UPDATE`) passes the quality screen first
    (:func:`p2phier.learn.aggregate.screen_round`; the parent's own update, or
    else its probe-set update, is the screen's trusted reference): the result's
    ``verdicts`` say what it found, and a flagged update is left out.  With
    every update left out the candidate is the version unchanged.
    ``trusted_examples`` (the parent's own held-out set, which no child sees): the
    screen also measures what each update, applied alone, does to the loss there
    (:func:`trusted_loss`; the ``harmful`` check).
    """
    rule = rule or AggregationConfig()
    updates = _child_updates(children, version)
    current = read_adapter(version)
    current_effective = current.effective()
    covered = _check_coverage(updates, current_effective, version)
    cfg = quality or QualityConfig()
    own = next((u.delta for u in updates if u.child == OWN_UPDATE), None)
    judged = {c: path for c, (path, _) in children.items() if c not in set(trusted)}
    # the probe is trained only where something reads it: the probe-scored rule, or the
    # screen's direction checks (enough updates) without the parent's own update
    wanted = rule.rule is Rule.PROBE_SCORED or (own is None and len(judged) >= cfg.min_updates)
    probe = None
    if probe_examples and wanted:
        session = Session(
            load_tier(tier_dir), parents=[*parents, version], settings=probe_lora,
            seed=init_seed, answers=answers,
        )  # fmt: skip
        session.load_heads(read_adapter(version))
        if session.tier.info.task == "causal_lm":
            session.train_lm(
                [e.text for e in probe_examples], probe_train or TrainConfig(seed=seed)
            )
        else:
            session.train_classifier(probe_examples, probe_train or TrainConfig(seed=seed))
        probe_dir_state = session.effective()
        base_heads = _heads(read_adapter(version))
        # Compared only on what the children cover (a student covers only its blocks).
        probe = {
            k: (v - base_heads[k]).astype(np.float32) if k in base_heads else v
            for k, v in probe_dir_state.items()
            if k in covered
        }
    loss = None
    if trusted_examples and cfg.needs_loss and len(judged) >= cfg.min_updates:
        loss = trusted_loss(
            tier_dir, version, judged, trusted_examples, parents=parents,
            max_length=max_length, harm=cfg.harm_ratio is not None,
            mass_scale=cfg.mislabel_scale,
        )  # fmt: skip
    kept, verdicts = screen_round(
        updates, own if own is not None else probe, trusted=trusted, config=quality, loss=loss
    )
    if kept:
        # Per tensor over the children that have it: a module no child has stays as it is.
        result = aggregate(kept, rule, probe=probe, partial=True)
    else:
        result = AggregationResult({}, rule.rule, (), "every update was left out by the screen")
    new_effective = add(current_effective, result.delta)
    chosen = rank if rank is not None else lossless_rank(new_effective, max_rank)
    ratio = float(current.config["lora_alpha"]) / float(current.config["r"])
    refactored = effective_to_lora(new_effective, chosen, ratio * chosen)
    config = dict(current.config)
    config.update(r=chosen, lora_alpha=ratio * chosen, rank_pattern={}, alpha_pattern={})
    path = write_adapter(out_dir, refactored.state, config)
    logger.info(
        "round candidate %s: rule %s, rank %d, refactor error %.3g",
        path,
        result.rule.value,
        chosen,
        refactored.max_relative_error,
    )
    return RoundResult(path, result, chosen, refactored.max_relative_error, verdicts, probe)


def _child_updates(children: Mapping[str, tuple[Path, float]], version: Path) -> list[ChildUpdate]:
    return [
        ChildUpdate(child, child_update(path, version), weight)
        for child, (path, weight) in sorted(children.items())
    ]


def screen_updates(
    version: Path,
    children: Mapping[str, tuple[Path, float]],
    *,
    trusted: Sequence[str] = (OWN_UPDATE,),
    quality: QualityConfig | None = None,
    probe: Mapping[str, NDArray[np.float32]] | None = None,
) -> dict[str, Verdict]:
    """The quality screen of :func:`aggregate_round` alone (the parent's own update as the
    trusted reference, else the round's ``probe`` (:attr:`RoundResult.probe`), as the
    round's screen had it; no trusted-set loss): a verdict on every update but the
    ``trusted`` ones.  For an update that came after its round was aggregated: it is
    judged against the round's updates as if it had come in time, and its verdict is
    evidence although the update no longer counts."""
    updates = _child_updates(children, version)
    _check_coverage(updates, read_adapter(version).effective(), version)
    own = next((u.delta for u in updates if u.child == OWN_UPDATE), None)
    reference = own if own is not None else probe
    _, verdicts = screen_round(updates, reference, trusted=trusted, config=quality)
    return dict(verdicts)


def trusted_loss(
    tier_dir: Path,
    version: Path,
    children: Mapping[str, Path],
    examples: Sequence[Example],
    *,
    parents: Sequence[Path] = (),
    max_length: int = 64,
    harm: bool = True,
    mass_scale: float = 0.1,
) -> TrustedLoss:
    """The loss on ``examples`` of the version and, with ``harm``, of the version with
    each child's adapter (trained on it) applied alone; a harm of 1 is a classifier's
    chance loss, log(labels), or a language model's loss before the round.  A
    classifier's also: where each label's examples' probability goes with each child's
    update applied at ``mass_scale`` of its size (its first-order effect, as a round's
    average applies it: in full, an update overfit to a few examples of one topic moves
    other topics' examples erratically; see ``mislabels`` in
    :mod:`p2phier.trust.quality`)."""
    tier = load_tier(tier_dir)

    def loss_with(path: Path) -> float:
        return Session(tier, parents=[*parents, version, path]).mean_loss(examples, max_length)

    full = sorted(children.items()) if harm else []
    if tier.info.task == "causal_lm":
        loss = Session(tier, parents=[*parents, version]).mean_loss(examples, max_length)
        return TrustedLoss(loss, {c: loss_with(p) for c, p in full}, max(loss, 1e-6))
    before, before_mass = Session(tier, parents=[*parents, version]).label_mass(
        examples, max_length
    )
    after_mass: dict[str, dict[str, dict[str, float]]] = {}
    heads = _heads(read_adapter(version))
    with tempfile.TemporaryDirectory(prefix="p2phier-scaled-") as tmp:
        for i, (child, path) in enumerate(sorted(children.items())):
            small = _scaled_adapter(path, heads, mass_scale, Path(tmp) / str(i))
            session = Session(tier, parents=[*parents, version, small])
            _, after_mass[child] = session.label_mass(examples, max_length)
    return TrustedLoss(
        before,
        {c: loss_with(p) for c, p in full},
        math.log(max(len(tier.labels), 2)),
        before_mass,
        after_mass,
        dict(Counter(e.label for e in examples)),
    )


def _scaled_adapter(
    adapter_dir: Path, base_heads: Mapping[str, NDArray[np.float32]], factor: float, out: Path
) -> Path:
    """A copy of an adapter whose update is ``factor`` times the original: every LoRA
    ``B`` factor scaled (so ``B @ A`` is), every head ``factor`` of the way from the
    base's."""
    adapter = read_adapter(adapter_dir)
    state: dict[str, NDArray[np.float32]] = {}
    for key, value in adapter.state.items():
        if ".lora_B." in key:
            state[key] = (value.astype(np.float64) * factor).astype(np.float32)
        elif key in base_heads and base_heads[key].shape == value.shape:
            base = base_heads[key].astype(np.float64)
            state[key] = (base + factor * (value.astype(np.float64) - base)).astype(np.float32)
        else:
            state[key] = value
    return write_adapter(out, state, adapter.config)


def _check_coverage(
    updates: Sequence[ChildUpdate], version: Mapping[str, NDArray[np.float32]], where: Path
) -> set[str]:
    """Every child tensor must be one of the version's (same shape); returns the covered keys."""
    covered: set[str] = set()
    for update in updates:
        for key, value in update.delta.items():
            if key not in version or version[key].shape != np.asarray(value).shape:
                raise ModelError(
                    f"child {update.child}'s update has {key} {np.asarray(value).shape}, "
                    f"which version {where} does not have in that shape; map it to this tier"
                )
        covered.update(update.delta)
    partial = sorted(k for k in covered if any(k not in u.delta for u in updates))
    if partial or len(covered) < len(version):
        logger.info(
            "round: %d of %d version tensors covered, %d of them by only some children",
            len(covered),
            len(version),
            len(partial),
        )
    return covered


def decide_publish(
    tier_dir: Path,
    version: Path,
    candidate: Path,
    *,
    validation: Sequence[Example],
    held: Mapping[str, Sequence[Example]],
    policy: TimingPolicy,
    now: float,
    round: int,
    n_updates: int,
    parents: Sequence[Path] = (),
    max_length: int = 64,
    answers: Sequence[str] = (),
) -> PublishDecision:
    """Evaluate the current version and the candidate, then apply the timing rule.

    Validation is accuracy for classifiers and perplexity (lower is better) for
    causal LMs; ``held`` maps each previously held domain to its examples.
    """
    tier = load_tier(tier_dir)
    lm = tier.info.task == "causal_lm"
    if lm and policy.higher_is_better:
        raise ModelError("a causal LM is validated by perplexity: use higher_is_better=False")

    def measure(adapter: Path) -> Evaluation:
        session = Session(tier, parents=[*parents, adapter], answers=answers)
        if lm:
            return Evaluation(session.perplexity([e.text for e in validation], max_length), {})
        # One forward pass per distinct example: the held domains usually regroup the
        # validation set, and a node's CPU is the round's bottleneck.
        distinct = list(
            {e.uid: e for e in [*validation, *(x for v in held.values() for x in v)]}.values()
        )
        predicted = dict(
            zip((e.uid for e in distinct), session.predict([e.text for e in distinct], max_length),
                strict=True)
        )  # fmt: skip

        def accuracy(examples: Sequence[Example]) -> float:
            if not examples:
                raise ModelError("cannot measure accuracy on no examples")
            return sum(predicted[e.uid] == e.label for e in examples) / len(examples)

        domains = {name: accuracy(examples) for name, examples in sorted(held.items())}
        return Evaluation(accuracy(validation), domains)

    return decide(
        policy, measure(version), measure(candidate), now=now, round=round, n_updates=n_updates
    )


# --- downstream: rebase ---------------------------------------------------------------------


@dataclass(frozen=True)
class RebaseResult:
    adapter_dir: Path
    before: Mapping[str, float]
    after: Mapping[str, float]

    @property
    def change(self) -> dict[str, float]:
        """after - before per score (for perplexity, negative is an improvement)."""
        return {k: self.after[k] - self.before[k] for k in self.before if k in self.after}


def rebase(
    tier_dir: Path,
    own_adapter: Path,
    old_version: Path,
    new_version: Path,
    out_dir: Path,
    *,
    eval_sets: Mapping[str, Sequence[Example]],
    ancestors: Sequence[Path] = (),
    mode: Literal["reset", "keep"] = "reset",
    personal_examples: Sequence[Example] = (),
    head_train: TrainConfig | None = None,
    max_length: int = 64,
    seed: int = 0,
    init_seed: int = 0,
    lora: LoraSettings | None = None,
    before: Mapping[str, float] | None = None,
    answers: Sequence[str] = (),
) -> RebaseResult:
    """Move a child from ``old_version`` to ``new_version`` and report its change in scores.

    ``reset``: fresh LoRA on the new version, own head kept; ``keep``: own
    adapter unchanged on top.  With ``personal_examples`` (classifiers), the
    head alone is then fine-tuned on them: a personalised head on the shared
    backbone, adapted to the child's own label distribution.
    """
    tier = load_tier(tier_dir)
    if before is None:  # the caller may know them already (its last evaluation)
        before_session = Session(
            tier, parents=[*ancestors, old_version], adapter=own_adapter, answers=answers
        )
        before = _scores(before_session, eval_sets, max_length)
    own = read_adapter(own_adapter)
    if mode == "keep":
        session = Session(
            tier, parents=[*ancestors, new_version], adapter=own_adapter, answers=answers
        )
    elif mode == "reset":
        session = Session(
            tier, parents=[*ancestors, new_version], settings=lora, seed=init_seed, answers=answers
        )
        session.load_heads(own)
    else:
        raise ModelError(f"rebase mode must be 'reset' or 'keep', not {mode!r}")
    if personal_examples and tier.info.task == "classifier":
        config = head_train or TrainConfig(steps=10, seed=seed)
        loss = session.classifier_loss(personal_examples, config)
        session.run(config, loss, params=session.head_parameters())
    after = _scores(session, eval_sets, max_length)
    path = session.save(out_dir)
    result = RebaseResult(path, before, after)
    logger.info("rebased onto %s (%s): change %s", new_version, mode, result.change)
    return result


# --- artifacts and tiers ----------------------------------------------------------------------


def pack(
    store: ContentStore,
    adapter_dir: Path,
    identity: Identity,
    tier: TierInfo,
    *,
    layer: str,
    domain: str,
    now: float,
    round: int = 0,
    metrics: CycleMetrics | Mapping[str, float] | None = None,
    parent: CID | str | None = None,
    encoding: str | None = None,
) -> Artifact:
    """Sign and store an adapter directory as an artifact bound to ``tier``."""
    values = metrics.for_manifest() if isinstance(metrics, CycleMetrics) else dict(metrics or {})
    return pack_adapter(
        store,
        adapter_dir,
        identity,
        layer=layer,
        domain=domain,
        base_model_id=tier.tier_id,
        base_model_cid=tier.weights_cid,
        parent=parent,
        encoding=encoding,
        round=round,
        metrics=values,
        now=now,
    )


def unpack(store: ContentStore, cid: CID | str, out_dir: Path, tier: TierInfo) -> Path:
    """Verify an artifact (and lineage) and write its adapter dir; refuses another tier's."""
    return materialise(store, cid, out_dir, expected_base_model=tier.tier_id)


def measure_tier(
    tier_dir: Path,
    examples: Sequence[Example],
    *,
    parents: Sequence[Path] = (),
    adapter: Path | None = None,
    max_length: int = 64,
) -> TierCandidate:
    """A Pareto candidate: the tier's accuracy on the device's examples, size and memory."""
    info = read_tier_info(tier_dir)
    session = Session(load_tier(tier_dir), parents=parents, adapter=adapter)
    return TierCandidate(
        info.tier_id, session.accuracy(examples, max_length), info.weights_bytes, info.memory_bytes
    )


def tier_summary(tier_dir: Path) -> dict[str, Any]:
    """The tier's id, CID, sizes and lineage as plain values (for records and logs)."""
    info = read_tier_info(tier_dir)
    return {
        "tier_id": info.tier_id,
        "cid": info.weights_cid,
        "bytes": info.weights_bytes,
        "params": info.n_params,
        "teacher": info.teacher,
        "layers": list(info.layers),
        "vocab": info.vocab_size,
        "quantisation": info.quantisation,
    }
