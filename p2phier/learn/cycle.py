"""The learning steps a node runs, as blocking functions on paths and plain records.

Owns the bridge between a node's :class:`~p2phier.learnplan.LearnPlan`
and :mod:`p2phier.learn.api`: it builds the training, continual-learning,
aggregation and timing configs from the plan, turns the node's data records
into :class:`~p2phier.learn.data.Example` s, and returns plain dicts of
numbers, so the node (which never imports torch) can run a whole cycle with
``trio.to_thread.run_sync(cycle.train, ...)``.  Every function here blocks
for seconds to minutes: never call one on an event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from p2phier.errors import P2PHierError
from p2phier.learn import api, prototypes
from p2phier.learn import calibrate as calibration
from p2phier.learn.aggregate import (
    DELTA_SUFFIX,
    AggregationConfig,
    Rule,
    effective_to_lora,
)
from p2phier.learn.calibrate import as_received, received_heads
from p2phier.learn.continual import ContinualConfig
from p2phier.learn.data import Example
from p2phier.learn.models import configure_torch, load_tier, read_tier_info
from p2phier.learn.timing import TimingPolicy
from p2phier.learn.train import (
    ADAPTER_WEIGHTS,
    LoraSettings,
    TrainConfig,
    read_adapter,
    write_adapter,
)
from p2phier.learnplan import CONTINUAL, DataRecord, LearnPlan, LearnSettings
from p2phier.trust.quality import Verdict

logger = logging.getLogger(__name__)

_configured: list[bool] = []


def setup(plan: LearnPlan) -> None:
    """Once per process: offline hub, torch threads and seeds."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not _configured:
        configure_torch(plan.threads, seed=plan.seed)
        _configured.append(True)


def examples(records: Sequence[DataRecord]) -> list[Example]:
    return [Example(r.uid, r.text, r.label, r.domain, r.subdomain) for r in records]


def _lora(plan: LearnPlan) -> LoraSettings:
    return LoraSettings(r=plan.lora_r, alpha=2.0 * plan.lora_r, train_pooler=plan.train_pooler)


def _train(plan: LearnSettings, seed: int, steps: int | None = None) -> TrainConfig:
    return TrainConfig(
        steps=plan.steps_per_cycle if steps is None else steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        max_length=plan.max_length,
        seed=seed,
    )


#: EWC's penalty strength (``lambda``) in the ``ewc`` and ``replay+ewc`` methods
EWC_LAMBDA = 100.0


def continual_config(plan: LearnSettings, seed: int) -> ContinualConfig | None:
    """What ``plan.continual`` turns on, with its parameters: the one mapping of a method
    name to a :class:`ContinualConfig` (``None``: ``naive``, plain fine-tuning).

    Every part of the name is one mechanism: ``replay`` (a class-balanced buffer of
    ``replay_per_label`` examples per label), ``ewc`` (:data:`EWC_LAMBDA`), ``logits``
    (replayed examples also pulled to their kept logits, ``logit_replay_weight``; it needs
    the buffer, so with ``replay_per_label`` 0 it is off as the buffer is), ``ace``
    (asymmetric cross-entropy: the new examples' loss over their own labels only).
    ``bench/learn.py`` measures every method through this function too.
    """
    parts = set(plan.continual.split("+"))
    unknown = parts - {"naive", "replay", "ewc", "logits", "ace"}
    if unknown or plan.continual not in CONTINUAL:
        raise ValueError(f"unknown continual-learning method {plan.continual!r}")
    if parts == {"naive"}:
        return None
    replay = plan.replay_per_label if "replay" in parts else 0
    return ContinualConfig(
        train=_train(plan, seed),
        replay_per_label=replay,
        ewc_lambda=EWC_LAMBDA if "ewc" in parts else 0.0,
        logit_replay_weight=plan.logit_replay_weight if "logits" in parts and replay else 0.0,
        ace="ace" in parts,
    )


# --- tiers -------------------------------------------------------------------------------


def tier_facts(tier_dir: Path) -> dict[str, Any]:
    info = read_tier_info(tier_dir)
    return {
        "dir": str(tier_dir),
        "tier_id": info.tier_id,
        "weights_cid": info.weights_cid,
        "weights_bytes": info.weights_bytes,
        "params": info.n_params,
        "teacher_cid": info.teacher_cid,
    }


def check_tier(tier_dir: Path, weights_cid: str) -> dict[str, Any]:
    """Load a tier with its weights checked against ``weights_cid`` (a root tier on disk)."""
    load_tier(tier_dir, expected_cid=weights_cid)
    return tier_facts(tier_dir)


def build_tier(
    plan: LearnPlan, teacher_dir: Path, out_dir: Path, records: Sequence[DataRecord]
) -> dict[str, Any]:
    """Distil (or quantise) this node's tier from its parent's base tier, on its own data."""
    began = time.monotonic()
    if plan.tier.source == "distil":
        api.distil_student(
            teacher_dir,
            out_dir,
            examples(records),
            tier_id=plan.tier.tier_id,
            layers=plan.tier.layers,
            max_vocab=plan.tier.max_vocab,
            steps=plan.tier.distill_steps,
            batch_size=plan.batch_size,
            max_length=plan.max_length,
            seed=plan.seed,
        )
    else:
        api.quantise_tier(teacher_dir, out_dir, tier_id=plan.tier.tier_id)
    facts = tier_facts(out_dir)
    facts["build_s"] = round(time.monotonic() - began, 3)
    return facts


# --- versions and updates ------------------------------------------------------------------


def map_stack(
    adapter_dirs: Sequence[Path],
    out_dirs: Sequence[Path],
    *,
    own_tier: Path,
    their_tier: Path,
) -> list[Path]:
    """Adapters of the parent's tier mapped into this node's tier (layer map)."""
    out = []
    for src, dst in zip(adapter_dirs, out_dirs, strict=True):
        if not dst.exists():
            api.map_for_tier(
                src, dst, child_tier_dir=own_tier, parent_tier_dir=their_tier, direction="down"
            )
        out.append(dst)
    return out


def map_up(adapter_dir: Path, out_dir: Path, *, child_tier: Path, own_tier: Path) -> Path:
    """A child's adapter of a derived tier mapped into this (its parent's) tier."""
    if not out_dir.exists():
        api.map_for_tier(
            adapter_dir,
            out_dir,
            child_tier_dir=child_tier,
            parent_tier_dir=own_tier,
            direction="up",
        )
    return out_dir


def init_version(plan: LearnPlan, tier_dir: Path, stack: Sequence[Path], out_dir: Path) -> Path:
    return api.init_version(tier_dir, out_dir, parents=stack, lora=_lora(plan), seed=plan.seed)


def shared_init_seed(stack: Sequence[Path], fallback: int) -> int:
    """The seed of a fresh LoRA on ``stack``: derived from the bytes of the version it is
    trained on, so every child of one parent starts its LoRA from the same random ``A``.

    Why: a LoRA update ``B @ A`` lies in the row space of ``A``.  With ``A`` drawn per
    child, siblings' updates lie in different random subspaces: nearly orthogonal even
    when they learn the same thing (cosines of 0.03-0.12 among 10 honest MiniLM leaves,
    measured), so an average shrinks what they agree on and no robust check can tell an
    opposed update from a merely different one.  From one ``A``, they are comparable.
    """
    if stack:
        weights = Path(stack[-1]) / ADAPTER_WEIGHTS
        if weights.is_file():
            digest = hashlib.sha256(weights.read_bytes()).digest()
            return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    return fallback


def train(
    plan: LearnPlan,
    tier_dir: Path,
    stack: Sequence[Path],
    out_dir: Path,
    new: Sequence[DataRecord],
    *,
    earlier: Sequence[DataRecord],
    test: Sequence[DataRecord],
    adapter: Path | None,
    seed: int,
) -> dict[str, Any]:
    """One local continual-learning cycle on newly arrived data; returns numbers only."""
    began = time.monotonic()
    result = api.train_cycle(
        tier_dir,
        out_dir,
        examples(new),
        parents=stack,
        adapter=adapter,
        train=_train(plan, seed),
        lora=_lora(plan),
        continual=continual_config(plan, seed),
        replay=examples(earlier),
        eval_sets={"own": examples(test)} if test else None,
        seed=seed,
        init_seed=shared_init_seed(stack, plan.seed),
        answers=plan.labels,
    )
    return {
        "adapter": str(result.adapter_dir),
        "metrics": result.metrics.for_manifest(),
        "accuracy_own": result.metrics.scores.get("accuracy.own"),
        "loss": result.metrics.final_loss,
        "n_train": result.metrics.n_train,
        "train_s": round(time.monotonic() - began, 3),
    }


def aggregate(
    plan: LearnPlan,
    tier_dir: Path,
    stack: Sequence[Path],
    version: Path,
    *,
    updates: Mapping[str, tuple[Path, float]],
    out_dir: Path,
    probe: Sequence[DataRecord],
    validation: Sequence[DataRecord],
    round_: int,
    now: float,
) -> dict[str, Any]:
    """Aggregate children's adapters into a candidate and apply the timing rule.

    ``version`` is the node's complete model (its flat adapter); ``stack`` is
    normally empty for that reason.  ``probe``: the node's own training data, trained
    into the probe update where the round reads one (:func:`api.aggregate_round`);
    empty: no probe.
    """
    began = time.monotonic()
    rule = AggregationConfig(Rule(plan.rule), plan.trim_ratio, plan.clip_norm)
    result = api.aggregate_round(
        tier_dir,
        version,
        updates,
        out_dir,
        parents=stack,
        rule=rule,
        # the probe set trains the probe update where a round reads it (api.aggregate_round
        # decides): the probe-scored rule's reference, and the screen's trusted direction
        # where the node sends no update of its own (FLTrust's root set, its training data)
        probe_examples=examples(probe),
        probe_train=_train(plan, plan.seed + round_),
        # the probe trains as the children do, so that its update is comparable with theirs
        probe_lora=_lora(plan),
        answers=plan.labels,
        max_rank=plan.version_rank,
        # every version at the plan's rank (components the model lacks are exact zeros):
        # consecutive versions keep one shape, so each travels as a delta on the previous
        rank=plan.version_rank,
        seed=plan.seed,
        init_seed=shared_init_seed([*stack, version], plan.seed),
        # the parent's held-out set: what each update alone does to it (the screen's
        # ``mislabels`` and ``harmful`` checks); no child ever sees it
        trusted_examples=examples(validation),
        max_length=plan.max_length,
    )
    out: dict[str, Any] = {
        "candidate": str(result.candidate_dir),
        "rule": result.aggregation.rule.value,
        "rank": result.rank,
        "weights": {c.child: c.weight for c in result.aggregation.children},
        "screen": _verdicts(result.verdicts),
        "aggregate_s": 0.0,
        # the updates aggregated: the screen may have left some out
        "n_updates": len(result.aggregation.children),
        # the screen's trusted direction where the round trained a probe (numpy tensors, kept
        # in memory by the learner for the round's late updates: screen_late)
        "probe": result.probe,
    }
    kept = out["n_updates"]
    valid = examples(validation)
    if valid:
        held = held_domains(valid)
        decision = api.decide_publish(
            tier_dir,
            version,
            result.candidate_dir,
            validation=valid,
            held=held,
            policy=TimingPolicy(plan.margin, plan.tolerance, True, plan.min_updates),
            now=now,
            round=round_,
            n_updates=kept,
            parents=stack,
            max_length=plan.max_length,
            answers=plan.labels,
        )
        out.update(
            publish=decision.publish,
            reason=decision.reason,
            validation_before=decision.validation_before,
            validation_after=decision.validation_after,
            decision=decision.to_json(),
        )
    else:
        ok = kept >= max(plan.min_updates, 1)
        out.update(
            publish=ok,
            reason=(
                f"no validation set: published on {kept} update(s)"
                if ok
                else f"{kept} update(s), fewer than min_updates {plan.min_updates}"
            ),
            validation_before=None,
            validation_after=None,
            decision=None,
        )
    out["aggregate_s"] = round(time.monotonic() - began, 3)
    logger.info("round %d aggregation: %s", round_, out["reason"])
    return out


def _verdicts(verdicts: Mapping[str, Verdict]) -> dict[str, dict[str, Any]]:
    return {
        a: {
            "ok": v.ok,
            "penalty": round(v.penalty, 3),
            "harm": None if v.harm is None else round(v.harm, 4),
            "mislabel": None if v.mislabel is None else round(v.mislabel, 4),
            "reason": v.reason(),
        }
        for a, v in verdicts.items()
    }


def screen_late(
    version: Path, updates: Mapping[str, tuple[Path, float]], probe: Any = None
) -> dict[str, Any]:
    """The screen's verdicts on a round's updates (``author -> (adapter, weight)``, the
    node's own under ``OWN_UPDATE``) on ``version``, the flat they were trained on, as
    :func:`aggregate` reports them: for an update that came after its round.  ``probe``:
    the round's (``aggregate``'s ``probe``), the trusted direction of a parent that sends
    no own update, as its round's screen had it."""
    return _verdicts(api.screen_updates(version, updates, probe=probe))


#: A held domain is judged on its own only with at least this many validation examples:
#: with fewer, one example's flip moves its accuracy by more than any sane tolerance.
MIN_HELD_EXAMPLES = 10


def held_domains(valid: Sequence[Example]) -> dict[str, list[Example]]:
    """Validation examples by sub-domain for the forgetting guard; small groups pooled."""
    groups: dict[str, list[Example]] = {}
    for e in valid:
        groups.setdefault(e.subdomain or e.domain, []).append(e)
    held = {k: v for k, v in groups.items() if len(v) >= MIN_HELD_EXAMPLES}
    rest = [e for k, v in sorted(groups.items()) if k not in held for e in v]
    if rest:
        if len(rest) >= MIN_HELD_EXAMPLES or not held:
            held["other"] = rest
        else:  # too few to judge alone: they count in every kept group's check instead
            held = {k: v + rest for k, v in held.items()}
    return held


def rebase(
    plan: LearnPlan,
    tier_dir: Path,
    own: Path,
    *,
    old_stack: Sequence[Path],
    new_stack: Sequence[Path],
    out_dir: Path,
    test: Sequence[DataRecord],
    personal: Sequence[DataRecord],
    accuracy_before: float | None = None,
) -> dict[str, Any]:
    """Move ``own`` from ``old_stack`` onto ``new_stack`` (the plan's ``rebase``: ``keep``,
    the adapter stays as it is on the new model; ``reset``, a fresh LoRA, own head kept;
    either way the head is then fine-tuned on the node's own data).

    ``accuracy_before``: the node's last accuracy on ``test`` with ``own`` (saves a pass).
    """
    began = time.monotonic()
    if not old_stack:
        raise ValueError("rebase needs the stack the adapter was trained on")
    result = api.rebase(
        tier_dir,
        own,
        old_stack[-1],
        new_stack[-1],
        out_dir,
        eval_sets={"own": examples(test)} if test else {},
        ancestors=list(new_stack[:-1]),
        mode="keep" if plan.rebase == "keep" else "reset",
        personal_examples=examples(personal) if plan.personal_head_steps else (),
        head_train=_train(plan, plan.seed, steps=plan.personal_head_steps),
        max_length=plan.max_length,
        seed=plan.seed,
        init_seed=shared_init_seed(new_stack, plan.seed),
        lora=_lora(plan),
        before={"accuracy.own": accuracy_before} if accuracy_before is not None and test else None,
        answers=plan.labels,
    )
    return {
        "adapter": str(result.adapter_dir),
        "before": dict(result.before),
        "after": dict(result.after),
        "accuracy_own": result.after.get("accuracy.own"),
        "rebase_s": round(time.monotonic() - began, 3),
    }


def evaluate(
    plan: LearnPlan, tier_dir: Path, stack: Sequence[Path], adapter: Path | None,
    test: Sequence[DataRecord], *, protos: Path | None = None,
) -> float | None:  # fmt: skip
    if not test:
        return None
    scores = api.evaluate(
        tier_dir, {"own": examples(test)}, parents=stack, adapter=adapter,
        max_length=plan.max_length, answers=plan.labels, prototypes=protos,
    )  # fmt: skip
    return scores.get("accuracy.own")


def update_since(
    flat: Path, base: Path | None, out_dir: Path, *, max_rank: int, received: Path | None = None
) -> Path:
    """What a node learned since its last rebase: ``flat - base`` (LoRA parts), its own heads.

    A parent sends this upstream; the grandparent aggregates it like any child's
    update.  Re-factorised at ``max_rank`` (components beyond the update's own rank are
    exact zeros), so that consecutive updates keep one shape and travel as deltas.
    ``received``: the parent's version as it arrived, where ``base`` is that version
    calibrated to this tier (:mod:`p2phier.learn.calibrate`): the heads are then sent
    as ``received + (flat - base)``, so that the calibration stays here.
    """
    if out_dir.exists():
        return out_dir
    own = read_adapter(flat)
    eff = own.effective()
    if received is not None and base is not None:
        eff = received_heads(eff, calibrated=base, received=received)
    if base is not None:
        below = read_adapter(base).effective()
        for key in list(eff):
            if key.endswith(DELTA_SUFFIX) and key in below:
                eff[key] = (eff[key].astype(np.float64) - below[key]).astype(np.float32)
    return _write_at_rank(eff, own.config, out_dir, max_rank)


def _write_at_rank(
    eff: Mapping[str, Any], config: Mapping[str, Any], out_dir: Path, rank: int
) -> Path:
    """Effective tensors written as an adapter re-factorised at ``rank`` (``config``'s
    alpha/r ratio kept)."""
    ratio = float(config["lora_alpha"]) / float(config["r"])
    ref = effective_to_lora(eff, rank, ratio * rank)
    out = dict(config)
    out.update(r=rank, lora_alpha=ratio * rank, rank_pattern={}, alpha_pattern={})
    return write_adapter(out_dir, ref.state, out)


def keep_domain(
    plan: LearnPlan,
    tier_dir: Path,
    version: Path,
    out_dir: Path,
    *,
    flat: Path,
    base: Path,
    validation: Sequence[DataRecord],
    round_: int,
    now: float,
) -> dict[str, Any]:
    """A parent's new ``version`` with what this node published of its own since it took
    its last one on top (``version + (flat - base)``: its domain's part, which the
    grandparent's average diluted among its siblings'), kept where the node's validation
    set says it serves the domain better than the version alone (the timing rule).

    Returns ``adapter`` (the result or ``version`` itself), ``kept`` and the rule's reason.
    """
    began = time.monotonic()
    if not out_dir.exists():
        mine, below, theirs = (read_adapter(p) for p in (flat, base, version))
        eff, own, old = theirs.effective(), mine.effective(), below.effective()
        for key, value in eff.items():
            if key in own and key in old and own[key].shape == old[key].shape == value.shape:
                eff[key] = (
                    np.asarray(value, np.float64) + own[key] - np.asarray(old[key], np.float64)
                ).astype(np.float32)
        _write_at_rank(eff, theirs.config, out_dir, plan.version_rank)
    valid = examples(validation)
    decision = api.decide_publish(
        tier_dir,
        version,
        out_dir,
        validation=valid,
        held=held_domains(valid),
        policy=TimingPolicy(plan.margin, plan.tolerance, True, 1),
        now=now,
        round=round_,
        n_updates=1,
        max_length=plan.max_length,
        answers=plan.labels,
    )
    logger.info("domain part %s in %.1f s: %s", "kept" if decision.publish else "dropped",
                time.monotonic() - began, decision.reason)  # fmt: skip
    return {
        "adapter": str(out_dir if decision.publish else version),
        "kept": decision.publish,
        "reason": decision.reason,
        "validation_version": decision.validation_before,
        "validation_kept": decision.validation_after,
    }


def calibrates(own_tier: Path, their_tier: Path) -> bool:
    """Whether a version from ``their_tier`` is calibrated before this tier uses it: when
    this tier is distilled from it (fewer blocks, its own features).  An int8 copy keeps
    its source's features, and the same tier needs nothing."""
    own, theirs = read_tier_info(own_tier), read_tier_info(their_tier)
    return own.weights_cid != theirs.weights_cid and bool(own.layers)


def calibrate(
    plan: LearnPlan,
    tier_dir: Path,
    mapped: Path,
    out_dir: Path,
    *,
    their_tier: Path,
    version: Path,
    records: Sequence[DataRecord],
    seed: int,
) -> dict[str, Any]:
    """The parent's ``version`` (on ``their_tier``), mapped into this tier as ``mapped``,
    fitted to this tier on the node's own ``records``
    (:func:`p2phier.learn.calibrate.calibrate`)."""
    began = time.monotonic()
    if not out_dir.exists():
        calibration.calibrate(
            tier_dir,
            mapped,
            out_dir,
            teacher_tier_dir=their_tier,
            teacher=version,
            examples=examples(records),
            steps=plan.calibrate_steps,
            lr=plan.calibrate_lr,
            batch_size=plan.batch_size,
            max_length=plan.max_length,
            seed=seed,
        )
    return {"adapter": str(out_dir), "calibrate_s": round(time.monotonic() - began, 3)}


def sendable(adapter: Path, out_dir: Path, *, calibrated: Path, received: Path) -> Path:
    """A leaf's adapter trained on a calibrated version, its heads expressed against the
    version as received (:func:`p2phier.learn.calibrate.as_received`)."""
    if out_dir.exists():
        return out_dir
    return as_received(adapter, calibrated=calibrated, received=received, out_dir=out_dir)


def learned_since(plan: LearnPlan, own: Path, since: Path, out_dir: Path) -> Path:
    """What a kept adapter learned since its last rebase: ``own - since`` (LoRA parts, at
    twice the plan's LoRA rank: the difference of two rank-r products is exact there), its
    heads as they are."""
    return update_since(own, since, out_dir, max_rank=2 * plan.lora_r)


def same_tier(a: Path, b: Path) -> bool:
    return read_tier_info(a).weights_cid == read_tier_info(b).weights_cid


# --- class prototypes (learn/prototypes.py): computed, merged, travelling upward ------------


def prototype_space(own_tier: Path, tiers: Sequence[Path]) -> Path | None:
    """Where this node computes its class prototypes: the root tier's base encoder (a tier
    distilled from no teacher), its own tier if it is one, else its teacher among ``tiers``
    (a student holds the tier it was distilled from); ``None`` for a tier two steps from the
    root (an int8 device's teacher is a student)."""
    info = read_tier_info(own_tier)
    if info.teacher_cid is None:
        return own_tier
    for tier in tiers:
        other = read_tier_info(tier)
        if other.weights_cid == info.teacher_cid and other.teacher_cid is None:
            return tier
    return None


def own_prototypes(
    plan: LearnPlan, space: Path, records: Sequence[DataRecord], out: Path
) -> dict[str, Any]:
    """The prototypes of the node's training data so far (``records``) in ``space``."""
    return api.class_prototypes(space, examples(records), out, plan.max_length)


def merge_prototypes(
    own: Path | None, senders: Mapping[str, tuple[Path, float]], out: Path
) -> dict[str, Any] | None:
    """This node's prototypes (its own and its children's, each child's capped and weighed
    by its trust: :func:`prototypes.merge_senders`) written to ``out``; ``None``: there are
    none (``out`` removed)."""
    mine = prototypes.load(own) if own is not None else None
    theirs = {}
    skipped: dict[str, str] = {}
    for name, (path, weight) in senders.items():
        try:
            found = prototypes.load(path)
        except P2PHierError as exc:  # checked when it arrived: a damaged local file
            skipped[name] = str(exc)
            continue
        if found is not None:
            theirs[name] = (found, weight)
    merged, refused = prototypes.merge_senders(mine, theirs)
    skipped.update(refused)
    if merged is None:
        out.unlink(missing_ok=True)
        return None
    prototypes.save(merged, out)
    return {
        "labels": len(merged.labels),
        "tasks": sorted(set(merged.tasks)),
        "senders": sorted(set(theirs) - set(refused)),
        "skipped": skipped,
    }


def choose_answering(
    plan: LearnPlan,
    tier_dir: Path,
    flat: Path,
    protos: Path,
    validation: Sequence[DataRecord],
    *,
    current: Sequence[str] = (),
) -> dict[str, Any]:
    """Which tasks this node answers by nearest prototype (``plan.answer_by = "validated"``)
    with its current model (``flat``): a task its validation set shows better answered the
    other way than it is now (``current``: the tasks it answers by prototype now) changes
    (:func:`p2phier.learn.prototypes.ncm_where_better`); and its accuracy on that set as it
    then answers."""
    tasks = api.validate_ncm(
        tier_dir, flat, protos, examples(validation), answers=plan.labels,
        max_length=plan.max_length, current=current,
    )  # fmt: skip
    ncm = sorted(t for t, v in tasks.items() if v["ncm"])
    scores = api.evaluate(
        tier_dir, {"validation": examples(validation)}, adapter=flat,
        max_length=plan.max_length, answers=plan.labels, prototypes=protos, ncm_tasks=ncm,
    )  # fmt: skip
    return {"ncm_tasks": ncm, "tasks": tasks, "accuracy": scores.get("accuracy.validation")}
