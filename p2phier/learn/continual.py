"""Local continual learning: fine-tune on newly arrived data without forgetting the old.

What this module owns: :class:`ContinualLearner`, which runs one *stage* per
batch of new data on a :class:`~p2phier.learn.train.Session`, with two
configurable forgetting-prevention mechanisms:

* a replay buffer, class-balanced (``replay_per_label`` examples kept per label
  by seeded reservoir sampling), mixed into every batch at ``replay_fraction``;
* logit replay (DER-style, "dark experience replay"): when an example enters
  the buffer, the model's logits on it are kept, and replayed examples are
  also pulled towards those logits (MSE, weight ``logit_replay_weight``).
  Hard labels alone let the shared head drift towards the new classes; the
  old logits keep the old decision margins (measured on BBC News
  class-incremental: replay alone forgets ~8 points);
* asymmetric cross-entropy (ER-ACE, Caccia et al. 2022, "New insights on reducing
  abrupt representation change in online continual learning"): the new examples'
  loss counts only the labels present among the stage's new examples, and they join
  the replayed examples, whose loss counts every label.  New data of a few labels then
  stops pushing the other labels' logits down (what makes a head drift to the newest
  classes and forget the others, and a node with data of a few labels forget what its
  parent's version knew of the rest), while the replayed examples, old and new, teach
  every label against every other, class-balanced.  Measured (bench/learn.py's
  class-incremental BBC News, the devnet's budget of 16 steps at lr 5e-3):
  ``replay+logits`` 0.898 -> 0.816 on the old topics and 0.485 on the new ones,
  ``replay+logits+ace`` 0.809 -> 0.819 and 0.676 (masking only the labels the node
  already knew lost the old ones: 0.898 -> 0.705, new 0.247); a node with two of five
  topics on a parent version that knew all five (0.875), after two cycles: 0.646 on
  its own topics and 0.258 on all without it, 0.746 and 0.413 with it.  Where the new
  examples hold every label (an ordinary round on data of every label), it is plain
  cross-entropy, exactly;
* EWC (elastic weight consolidation): a quadratic penalty
  ``lambda/2 * sum F_i (theta_i - theta*_i)^2`` on the trainable parameters,
  with the diagonal Fisher ``F`` estimated from squared gradients on the data
  of earlier stages (accumulated across stages).

Each stage reports accuracy on every evaluation set (the current one and all
earlier ones) and the forgetting on each (best accuracy seen minus now).
Measured on BBC News class-incremental (see shared notes): naive fine-tuning
collapses on old classes, EWC alone barely helps, replay keeps most of it.

The buffer holds raw text (and the logits kept for it) and is private: it lives in
the node's memory (and its ids in local state); it is never part of an adapter,
artifact or message.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.models import ModelError
from p2phier.learn.train import EpochSampler, Session, TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContinualConfig:
    """Forgetting prevention: replay (``replay_per_label > 0``), EWC (``ewc_lambda > 0``), both."""

    train: TrainConfig = field(default_factory=TrainConfig)
    replay_per_label: int = 16
    replay_fraction: float = 0.5
    ewc_lambda: float = 0.0
    ewc_samples: int = 64
    logit_replay_weight: float = 0.0
    #: asymmetric cross-entropy: the new examples' loss over the stage's new labels only
    ace: bool = False

    def __post_init__(self) -> None:
        if self.replay_per_label < 0 or self.ewc_samples < 0:
            raise ModelError("replay_per_label and ewc_samples must be >= 0")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ModelError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if not (self.ewc_lambda >= 0 and math.isfinite(self.ewc_lambda)):
            raise ModelError(f"ewc_lambda must be a finite number >= 0, got {self.ewc_lambda}")
        weight = self.logit_replay_weight
        if not (weight >= 0 and math.isfinite(weight)):
            raise ModelError(f"logit_replay_weight must be a finite number >= 0, got {weight}")
        if weight > 0 and self.replay_per_label == 0:
            raise ModelError("logit_replay_weight needs a replay buffer (replay_per_label > 0)")

    @property
    def strategy(self) -> str:
        parts = [
            n
            for n, on in (
                ("replay", self.replay_per_label > 0),
                ("logits", self.logit_replay_weight > 0),
                ("ewc", self.ewc_lambda > 0),
                ("ace", self.ace),
            )
            if on
        ]
        return "+".join(parts) or "naive"


@dataclass(frozen=True)
class StageReport:
    """What one stage did and how every evaluation set fares afterwards."""

    stage: int
    strategy: str
    n_new: int
    n_replay_buffer: int
    steps: int
    final_loss: float
    accuracy: Mapping[str, float]
    forgetting: Mapping[str, float]  # best accuracy seen on the set minus accuracy now


class ContinualLearner:
    """Runs stages of local learning on a session; keeps the buffer and EWC state."""

    def __init__(self, session: Session, config: ContinualConfig, *, seed: int = 0) -> None:
        if session.tier.info.task != "classifier":
            raise ModelError("continual learning with accuracy reports needs a classifier tier")
        self.session = session
        self.config = config
        self._rng = random.Random(seed)
        self._buffer: dict[str, list[Example]] = {}
        self._seen: dict[str, int] = {}
        self._logits: dict[str, torch.Tensor] = {}  # uid -> logits when it entered the buffer
        self._fisher: dict[str, torch.Tensor] = {}
        self._anchor: dict[str, torch.Tensor] = {}
        self._best: dict[str, float] = {}
        self.reports: list[StageReport] = []

    # --- replay buffer ---

    @property
    def buffer(self) -> list[Example]:
        return [e for label in sorted(self._buffer) for e in self._buffer[label]]

    def restore_buffer(self, examples: Sequence[Example]) -> None:
        """Refill the buffer (e.g. from ids kept in local state after a restart)."""
        self._buffer, self._seen, self._logits = {}, {}, {}
        self._remember(examples)
        self._keep_logits()

    def resume(self, earlier: Sequence[Example]) -> None:
        """Carry on after earlier stages run elsewhere (a node runs each cycle in a new
        learner, from the adapter its last cycle saved): the buffer refilled from ``earlier``
        (with the logits the current model gives them) and, for EWC, the Fisher and anchor
        estimated on ``earlier`` at the current weights, as the stage that learned them
        would have left them.  Without this, EWC would never penalise anything on a node."""
        self.restore_buffer(earlier)
        if self.config.ewc_lambda > 0 and earlier:
            self._fisher, self._anchor = {}, {}
            self._update_fisher(earlier)

    def _keep_logits(self) -> None:
        """Record the current model's logits for buffer examples that have none yet.

        Called at the end of the stage that learned them (or on restore, with the
        model that learned them), and evicted examples' logits are dropped.
        """
        if self.config.logit_replay_weight == 0:
            return
        buffer = self.buffer
        self._logits = {
            e.uid: t for e, t in ((e, self._logits.get(e.uid)) for e in buffer) if t is not None
        }
        missing = [e for e in buffer if e.uid not in self._logits]
        if missing:
            logits = self.session.logits([e.text for e in missing], self.config.train.max_length)
            for e, row in zip(missing, logits, strict=True):
                self._logits[e.uid] = row.detach().clone()

    def _remember(self, examples: Sequence[Example]) -> None:
        cap = self.config.replay_per_label
        if cap == 0:
            return
        for e in examples:  # reservoir sampling per label: a uniform sample of all seen
            slot = self._buffer.setdefault(e.label, [])
            seen = self._seen.get(e.label, 0) + 1
            self._seen[e.label] = seen
            if len(slot) < cap:
                slot.append(e)
            else:
                j = self._rng.randrange(seen)
                if j < cap:
                    slot[j] = e

    # --- EWC ---

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.session.model.named_parameters() if p.requires_grad}

    def ewc_penalty(self) -> torch.Tensor:
        params = self._named_trainable()
        total = torch.zeros(())
        for name, fisher in self._fisher.items():
            total = total + (fisher * (params[name] - self._anchor[name]) ** 2).sum()
        return 0.5 * self.config.ewc_lambda * total

    def _update_fisher(self, examples: Sequence[Example]) -> None:
        sample = self._rng.sample(list(examples), min(self.config.ewc_samples, len(examples)))
        params = self._named_trainable()
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        model = self.session.model
        model.eval()
        max_length = self.config.train.max_length
        for e in sample:  # per-example squared gradients: the empirical diagonal Fisher
            model.zero_grad(set_to_none=True)
            inputs = self.session.tier.encode([e.text], max_length)
            loss = model(**inputs, labels=self.session.label_ids([e])).loss
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 / len(sample)
        model.zero_grad(set_to_none=True)
        for n, f in fisher.items():
            self._fisher[n] = self._fisher.get(n, torch.zeros_like(f)) + f
            self._anchor[n] = params[n].detach().clone()

    def _absent_labels(self, new: Sequence[Example]) -> torch.Tensor | None:
        """ACE's mask over the head's labels: those no example of ``new`` has (None: none)."""
        present = {e.label for e in new}
        absent = torch.tensor([label not in present for label in self.session.tier.labels])
        return absent if bool(absent.any()) else None

    # --- stages ---

    def learn(
        self, new: Sequence[Example], eval_sets: Mapping[str, Sequence[Example]]
    ) -> StageReport:
        """Train on ``new`` (plus replay / EWC), then evaluate every set in ``eval_sets``."""
        if not new:
            raise ModelError("a stage needs new examples")
        cfg = self.config
        tc = cfg.train
        # ACE: the labels absent from the new examples, masked out of their loss (none
        # absent: plain cross-entropy, so an ordinary round trains exactly as without it)
        absent = self._absent_labels(new) if cfg.ace else None
        replay = self.buffer
        if absent is not None and replay:
            # ER-ACE replays the incoming data too (its buffer takes it in as it arrives):
            # the replayed examples' loss over every label is where the new labels are
            # taught against the old ones, class-balanced
            known = {e.uid for e in replay}
            drawn = sample_per_label(new, cfg.replay_per_label, seed=self._rng.randrange(1 << 30))
            replay += [e for e in drawn if e.uid not in known]
        n_replay = round(tc.batch_size * cfg.replay_fraction) if replay else 0
        n_new = tc.batch_size - n_replay
        new_sampler, replay_sampler = EpochSampler(len(new)), EpochSampler(max(1, len(replay)))
        use_ewc = cfg.ewc_lambda > 0 and bool(self._fisher)
        use_logits = cfg.logit_replay_weight > 0 and n_replay > 0

        def loss(rng: random.Random) -> torch.Tensor:
            batch = [new[i] for i in new_sampler.take(n_new, rng)]
            fresh = len(batch)
            if n_replay:
                batch += [replay[i] for i in replay_sampler.take(n_replay, rng)]
            inputs = self.session.tier.encode([e.text for e in batch], tc.max_length)
            labels = self.session.label_ids(batch)
            if absent is None:
                out = self.session.model(**inputs, labels=labels)
                total: torch.Tensor = out.loss
            else:
                out = self.session.model(**inputs)
                logits = out.logits.float()
                masked = logits[:fresh].masked_fill(absent, float("-inf"))
                ce = torch.nn.functional.cross_entropy
                total = (
                    ce(masked, labels[:fresh], reduction="sum")
                    + ce(logits[fresh:], labels[fresh:], reduction="sum")
                ) / len(batch)
            if use_logits:  # the buffered examples' (not this stage's new ones, under ACE)
                rows = [i for i in range(fresh, len(batch)) if batch[i].uid in self._logits]
                if rows:
                    kept = torch.stack([self._logits[batch[i].uid] for i in rows])
                    total = total + cfg.logit_replay_weight * torch.nn.functional.mse_loss(
                        out.logits[rows].float(), kept
                    )
            if use_ewc:
                total = total + self.ewc_penalty()
            return total

        losses = self.session.run(tc, loss)
        if cfg.ewc_lambda > 0:
            self._update_fisher(new)
        self._remember(new)
        self._keep_logits()
        accuracy = {
            name: self.session.accuracy(examples, tc.max_length)
            for name, examples in sorted(eval_sets.items())
        }
        forgetting = {}
        for name, acc in accuracy.items():
            best = max(self._best.get(name, acc), acc)
            self._best[name] = best
            forgetting[name] = best - acc
        report = StageReport(
            stage=len(self.reports),
            strategy=cfg.strategy,
            n_new=len(new),
            n_replay_buffer=len(replay),
            steps=tc.steps,
            final_loss=losses[-1] if losses else float("nan"),
            accuracy=accuracy,
            forgetting=forgetting,
        )
        self.reports.append(report)
        logger.info(
            "stage %d (%s): %s",
            report.stage,
            report.strategy,
            " ".join(f"{k}={v:.3f}(-{forgetting[k]:.3f})" for k, v in accuracy.items()),
        )
        return report
