"""The central baseline a hierarchy is judged against: one definition, used everywhere.

Owns what "one central model" means wherever a figure compares the hierarchy with central
training (the devnet's report through :mod:`p2phier.devnet.baselines`, and
``bench/learn.py``'s hierarchy part):

* **data**: the pooled TRAINING data of every training node; every
  :data:`VALID_EVERY`-th example is held back as a validation split, the model trains
  on the rest (:func:`split`).  No test example is ever used to choose anything.
* **compute**: the nodes' summed steps at the nodes' batch size
  (:func:`steps`: one node's steps times the number of nodes), the nodes' LoRA.
* **learning rate**: the better on the validation split of the nodes' rate and a
  quarter of it (:func:`rates`, :func:`best`; the first on a tie).  The central model
  runs n times the nodes' steps, for which the nodes' rate (chosen for short local
  cycles) can be too high; choosing on held-back training data is what a person
  training one model would do, and it can only make the baseline stronger.

:func:`train` trains one candidate (blocking CPU work; the devnet runs the candidates in
parallel child processes).  Torch is imported inside it, so the launcher that imports
the rest of this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from p2phier.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from p2phier.learn.data import Example
    from p2phier.learn.train import LoraSettings

#: every this-many-th pooled training example is the validation split
VALID_EVERY = 10
#: the learning rates tried, as multiples of the nodes' rate
RATE_FACTORS = (1.0, 0.25)

_E = TypeVar("_E")


@dataclass(frozen=True)
class Candidate:
    """The central model trained at one learning rate: its validation accuracy, where its
    adapter is, and (filled in by the caller) its scores on the nodes' held-out data."""

    lr: float
    valid: float
    adapter_dir: Path
    scores: Mapping[str, float] = field(default_factory=dict)


def rates(node_lr: float) -> tuple[float, ...]:
    """The learning rates the central model tries, the nodes' first."""
    return tuple(node_lr * f for f in RATE_FACTORS)


def steps(node_steps: int, nodes: int) -> int:
    """The central model's steps: every training node's (at the nodes' batch size)."""
    if node_steps < 0 or nodes < 1:
        raise UsageError(f"need node_steps >= 0 and nodes >= 1, got {node_steps}, {nodes}")
    return node_steps * nodes


def split(pooled: Sequence[_E]) -> tuple[list[_E], list[_E]]:
    """(train, validation): every :data:`VALID_EVERY`-th example is held back."""
    valid = list(pooled[::VALID_EVERY])
    fit = [e for i, e in enumerate(pooled) if i % VALID_EVERY]
    return fit, valid


def best(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the best validation accuracy (the first on a tie)."""
    if not candidates:
        raise UsageError("no central candidate to choose from")
    return max(candidates, key=lambda c: c.valid)  # max keeps the first of equals


def train(
    tier_dir: Path,
    out_dir: Path,
    pooled: Sequence[Example],
    *,
    lr: float,
    steps: int,
    batch_size: int,
    max_length: int,
    lora: LoraSettings,
    seed: int = 0,
    init_seed: int = 0,
    parents: Sequence[Path] = (),
) -> Candidate:
    """One central candidate: trained at ``lr`` on :func:`split`'s training part of
    ``pooled``, scored on its validation part (blocking)."""
    from p2phier.learn import api
    from p2phier.learn.train import TrainConfig

    if len(pooled) < VALID_EVERY:
        raise UsageError(
            f"the central baseline needs at least {VALID_EVERY} pooled training examples, "
            f"got {len(pooled)}"
        )
    fit, valid = split(pooled)
    result = api.train_cycle(
        tier_dir,
        out_dir,
        fit,
        parents=parents,
        train=TrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed
        ),
        lora=lora,
        eval_sets={"valid": valid},
        init_seed=init_seed,
    )
    return Candidate(lr, result.metrics.scores["accuracy.valid"], result.adapter_dir)
