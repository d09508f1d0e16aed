"""Smaller tiers by distillation: fewer layers, a domain vocabulary, int8 weights.

What this module owns:

* :func:`make_student`: a copy of a teacher with only some of its transformer
  blocks (e.g. 3 or 2 of MiniLM's 6), initialised from those blocks, the
  embeddings, pooler and head; works for any model whose blocks sit in one
  ``nn.ModuleList`` and whose config has ``num_hidden_layers``;
* :func:`prune_vocabulary`: keep only the embedding rows of the tokens a
  domain's data uses (the tokenizer is unchanged; ids are mapped at encode
  time), which is what brings a tier under a third of the teacher's
  parameters (MiniLM's 30522x384 table is 11.7M of 22.7M);
* :func:`distill`: train every parameter of a student on the child's own data
  against the teacher's outputs (temperature-softened logits, KL; last hidden
  states, MSE over real tokens; optionally the labels, cross-entropy);
* :func:`build_student_tier` and :func:`build_int8_tier`, which write the
  results as tiers (see :mod:`p2phier.learn.models`).

Blocking CPU work: run it in a worker thread or process, never on an event loop.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from p2phier.learn.data import Example
from p2phier.learn.models import (
    ModelError,
    Tier,
    TierInfo,
    block_list,
    load_tier,
    select_vocabulary,
    write_tier,
)
from p2phier.learn.train import EpochSampler, Session

logger = logging.getLogger(__name__)


def make_student(teacher: Any, layers: Sequence[int]) -> Any:
    """A model like ``teacher`` keeping only the blocks ``layers`` (in that order)."""
    list_name, blocks = block_list(teacher)
    n = len(blocks)
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ModelError(f"student layers {list(layers)} must be distinct indices in [0, {n})")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    student = type(teacher)(config)
    source = teacher.state_dict()
    prefix = list_name + "."
    mapped: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            if int(index) in layers:
                mapped[f"{prefix}{list(layers).index(int(index))}.{rest}"] = value.clone()
        else:
            mapped[key] = value.clone()
    result = student.load_state_dict(mapped, strict=False)
    own = student.state_dict()
    really_missing = [k for k in result.missing_keys if not _is_tied(student, k, mapped, own)]
    if really_missing or result.unexpected_keys:
        raise ModelError(
            f"student does not fit the teacher's weights (missing {really_missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
    return student.eval()


def _is_tied(
    model: nn.Module, key: str, loaded: dict[str, torch.Tensor], own: dict[str, Any]
) -> bool:
    ptr = own[key].data_ptr()
    return any(k in loaded for k, v in own.items() if k != key and v.data_ptr() == ptr)


def prune_vocabulary(model: Any, kept_ids: Sequence[int]) -> None:
    """Keep only the input-embedding rows ``kept_ids`` (in place; classifiers only).

    The config's ``vocab_size`` and ``pad_token_id`` follow the new numbering.
    Causal LMs are refused: their output layer would need the same pruning and
    their perplexity would no longer be comparable.
    """
    if getattr(model, "get_output_embeddings", lambda: None)() is not None:
        raise ModelError("vocabulary pruning is for encoders/classifiers, not language models")
    old = model.get_input_embeddings()
    ids = torch.tensor(list(kept_ids), dtype=torch.long)
    if int(ids.max()) >= old.weight.shape[0]:
        raise ModelError("kept ids exceed the model's vocabulary")
    new = nn.Embedding(len(ids), old.weight.shape[1], padding_idx=None)
    with torch.no_grad():
        new.weight.copy_(old.weight[ids])
    model.set_input_embeddings(new)
    config = model.config
    pad = config.pad_token_id
    config.vocab_size = len(ids)
    if pad is not None:
        kept = list(kept_ids)
        if pad not in kept:
            raise ModelError("the pad token must be among the kept ids")
        config.pad_token_id = kept.index(pad)


@dataclass(frozen=True)
class DistillConfig:
    """Loss weights and schedule. ``ce_weight = 0`` distils from the teacher alone."""

    steps: int = 40
    batch_size: int = 16
    lr: float = 5e-4
    max_length: int = 64
    temperature: float = 2.0
    kd_weight: float = 1.0
    hidden_weight: float = 1.0
    ce_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size <= 0 or self.temperature <= 0:
            raise ModelError("steps >= 0, batch_size > 0 and temperature > 0 are required")
        weights = (self.kd_weight, self.hidden_weight, self.ce_weight)
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) == 0:
            raise ModelError("loss weights must be finite, >= 0 and not all zero")


@dataclass(frozen=True)
class DistillReport:
    steps: int
    first_loss: float
    final_loss: float


class _Teacher:
    """Teacher outputs for the child's texts, computed once (the teacher is frozen)."""

    def __init__(self, teacher: Session, texts: Sequence[str], max_length: int) -> None:
        self.logits: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []
        model = teacher.model
        with torch.no_grad():
            for i in range(0, len(texts), 32):
                inputs = teacher.tier.encode(texts[i : i + 32], max_length)
                out = model(**inputs, output_hidden_states=True)
                for j in range(inputs["input_ids"].shape[0]):
                    length = int(inputs["attention_mask"][j].sum())
                    self.logits.append(out.logits[j].float())
                    self.hidden.append(out.hidden_states[-1][j, :length].float())


def distill(
    student: Any,
    student_encode: Any,
    teacher: Session,
    examples: Sequence[Example | str],
    *,
    labels: Sequence[str],
    config: DistillConfig,
) -> DistillReport:
    """Train all of ``student``'s parameters towards ``teacher`` on the child's data.

    ``examples`` may mix labelled :class:`Example` s and unlabelled texts (a
    device's data is mostly unlabelled): the teacher's outputs cover every
    text, the cross-entropy term only the labelled ones.
    ``student_encode(texts, max_length)`` tokenises for the student (mapping ids
    into a pruned vocabulary); student and teacher share the tokenizer, so
    their token positions line up for the hidden-state loss.
    """
    if not examples:
        raise ModelError("distillation needs the child's examples")
    texts = [e if isinstance(e, str) else e.text for e in examples]
    index = {label: i for i, label in enumerate(labels)}
    targets = torch.tensor(
        [-100 if isinstance(e, str) else index[e.label] for e in examples], dtype=torch.long
    )
    if config.ce_weight and bool((targets == -100).all()):
        raise ModelError("ce_weight > 0 needs some labelled examples")
    teacher_terms = config.kd_weight > 0 or config.hidden_weight > 0
    cache = _Teacher(teacher, texts, config.max_length) if teacher_terms else None
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    sampler = EpochSampler(len(texts))
    optimiser = torch.optim.AdamW(student.parameters(), lr=config.lr)
    t = config.temperature
    losses: list[float] = []
    student.train()
    try:
        for _ in range(config.steps):
            idx = sampler.take(config.batch_size, rng)
            inputs = student_encode([texts[i] for i in idx], config.max_length)
            out = student(**inputs, output_hidden_states=True)
            loss = torch.zeros(())
            batch_targets = targets[idx]
            if config.ce_weight and bool((batch_targets != -100).any()):
                loss = loss + config.ce_weight * nnf.cross_entropy(
                    out.logits, batch_targets, ignore_index=-100
                )
            if cache is not None and config.kd_weight:
                teacher_logits = torch.stack([cache.logits[i] for i in idx])
                kd = nnf.kl_div(
                    nnf.log_softmax(out.logits / t, dim=-1),
                    nnf.softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean",
                )
                loss = loss + config.kd_weight * kd * t * t
            if cache is not None and config.hidden_weight:
                hidden = out.hidden_states[-1]
                parts = []
                for row, i in enumerate(idx):
                    target = cache.hidden[i]
                    parts.append(nnf.mse_loss(hidden[row, : target.shape[0]], target))
                loss = loss + config.hidden_weight * torch.stack(parts).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            losses.append(float(loss.detach()))
    finally:
        student.eval()
    return DistillReport(
        config.steps, losses[0] if losses else math.nan, losses[-1] if losses else math.nan
    )


def build_student_tier(
    teacher: Session,
    out_dir: Path,
    *,
    tier_id: str,
    layers: Sequence[int],
    examples: Sequence[Example | str],
    max_vocab: int | None = None,
    min_doc_freq: int = 2,
    config: DistillConfig | None = None,
) -> TierInfo:
    """Distil a student from ``teacher`` (a tier with its adapters merged) on ``examples``.

    The student starts from the teacher's merged weights (its adapters folded
    in), keeps ``layers``, optionally prunes its vocabulary to what the
    examples use, is distilled, and is written as a new tier.
    """
    base = merged_model(teacher)
    student = make_student(base, layers)
    kept: tuple[int, ...] | None = None
    if max_vocab is not None:
        kept = select_vocabulary(
            teacher.tier.tokenizer,
            [e if isinstance(e, str) else e.text for e in examples],
            max_vocab=max_vocab,
            min_doc_freq=min_doc_freq,
        )
        if teacher.tier.kept_ids is not None:
            raise ModelError("the teacher already has a pruned vocabulary; prune from the master")
        prune_vocabulary(student, kept)
    encode = _encoder_for(teacher.tier, kept)
    report = distill(
        student,
        encode,
        teacher,
        examples,
        labels=teacher.tier.labels,
        config=config or DistillConfig(),
    )
    logger.info("distilled %s: loss %.4f -> %.4f", tier_id, report.first_loss, report.final_loss)
    return write_tier(
        student,
        teacher.tier.tokenizer,
        out_dir,
        tier_id=tier_id,
        task=teacher.tier.info.task,
        labels=teacher.tier.labels,
        teacher=teacher.tier.info,
        layers=layers,
        # A teacher with a pruned vocabulary passes its token mapping on: the
        # student copied its (pruned) embedding table.
        kept_ids=kept if kept is not None else teacher.tier.kept_ids,
    )


def _encoder_for(tier: Tier, kept: Sequence[int] | None) -> Any:
    probe = Tier(
        tier.info, tier.model, tier.tokenizer, tier.path, tuple(kept) if kept else tier.kept_ids
    )
    return probe.encode


def merged_model(session: Session) -> Any:
    """A plain copy of the session's model with its trainable adapter folded in."""
    return copy.deepcopy(session.model).merge_and_unload()


def build_int8_tier(source_dir: Path, out_dir: Path, *, tier_id: str) -> TierInfo:
    """The device tier: ``source_dir``'s tier with int8 row-wise weights."""
    source = load_tier(source_dir)
    return write_tier(
        source.model,
        source.tokenizer,
        out_dir,
        tier_id=tier_id,
        task=source.info.task,
        labels=source.labels,
        teacher=source.info,
        layers=(),
        kept_ids=source.kept_ids,
        quantise=True,
    )
