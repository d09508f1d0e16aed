"""A parent's version made to fit a distilled tier: calibration on the node's own data.

Owns :func:`calibrate` and :func:`as_received`.

Layer mapping (:mod:`p2phier.learn.tiermap`) moves a version's LoRA factors
from the teacher's blocks to the student's and passes the task head through
unchanged.  That head was trained on the teacher's final features; a student
distilled in a few dozen steps only approximates them, so the mapped head can
be useless on the student (measured in the default devnet: a news version
that scored 0.75 on a device's data on MiniLM scored 0.10 once mapped to the
sub-domain student, predicting one healthcare label for nearly every
article).  A node of a distilled tier therefore *calibrates* each version it
receives: a few steps on its own examples, pulled towards the parent's version
as the parent's tier computes it (knowledge distillation on the node's own
texts, as FedDF and FedMD transfer knowledge between heterogeneous models)
and towards its own labels.  Only the node's data is used and nothing leaves
the node.  Same default devnet, the four sub-domain nodes, 10 steps at 1e-3:
accuracy of the version on their device's held-out data 0.10/0.80/0.65/0.50
mapped, 0.95/0.85/0.70/0.50 calibrated.

What calibration changed must not travel back up: it fits the student's
features, and added to the teacher's head it would break the parent's model
(and the next version mapped down, which then needs a larger calibration).
The node's updates are therefore measured against the calibrated version, and
:func:`as_received` expresses an adapter's heads against the version as
received (``received + (own - calibrated)``), which is what the parent
subtracts its own head from.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import NDArray

from p2phier.learn.aggregate import DELTA_SUFFIX, LORA_A_SUFFIX, LORA_B_SUFFIX
from p2phier.learn.data import Example
from p2phier.learn.models import ModelError, load_tier
from p2phier.learn.train import (
    EpochSampler,
    Session,
    TrainConfig,
    read_adapter,
    write_adapter,
)

logger = logging.getLogger(__name__)

#: softmax temperature of the distillation term (Hinton et al.'s usual 2)
TEMPERATURE = 2.0


@dataclass(frozen=True)
class Calibration:
    adapter_dir: Path
    steps: int
    first_loss: float
    final_loss: float


def calibrate(
    tier_dir: Path,
    mapped: Path,
    out_dir: Path,
    *,
    teacher_tier_dir: Path,
    teacher: Path,
    examples: Sequence[Example],
    steps: int,
    lr: float,
    batch_size: int,
    max_length: int,
    seed: int,
) -> Calibration:
    """Train ``mapped`` (the version mapped into this tier: LoRA factors and heads) for
    ``steps`` steps on ``examples``: cross-entropy on their labels plus the KL divergence
    from ``teacher`` (the same version on the parent's tier) at :data:`TEMPERATURE`.
    Written to ``out_dir``."""
    if not examples:
        raise ModelError("calibration needs the node's own examples")
    if steps < 1 or not lr > 0 or batch_size < 1:
        raise ModelError("calibration needs steps >= 1, lr > 0 and batch_size >= 1")
    texts = [e.text for e in examples]
    with torch.no_grad():
        targets = Session(load_tier(teacher_tier_dir), adapter=teacher).logits(texts, max_length)
    session = Session(load_tier(tier_dir), adapter=mapped)
    labels = session.label_ids(examples)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    sampler = EpochSampler(len(examples))
    t = TEMPERATURE

    def loss_fn(_: random.Random) -> torch.Tensor:
        idx = sampler.take(batch_size, rng)
        inputs = session.tier.encode([texts[i] for i in idx], max_length)
        logits = session.model(**inputs).logits
        kd = nnf.kl_div(
            nnf.log_softmax(logits / t, dim=-1),
            nnf.softmax(targets[idx] / t, dim=-1),
            reduction="batchmean",
        )
        return nnf.cross_entropy(logits, labels[idx]) + kd * t * t

    losses = session.run(
        TrainConfig(steps=steps, batch_size=batch_size, lr=lr, max_length=max_length, seed=seed),
        loss_fn,
    )
    path = session.save(out_dir)
    logger.info("calibrated %s: loss %.4f -> %.4f, %d steps", mapped, losses[0], losses[-1], steps)
    return Calibration(path, steps, losses[0], losses[-1])


def _is_head(key: str) -> bool:
    return not (key.endswith(LORA_A_SUFFIX) or key.endswith(LORA_B_SUFFIX))


def received_heads(
    tensors: Mapping[str, NDArray[np.floating]], *, calibrated: Path, received: Path
) -> dict[str, NDArray[np.float32]]:
    """``tensors`` (an adapter's state or effective tensors, trained on or aggregated into
    the ``calibrated`` version) with each head tensor moved from the calibrated version's
    to the ``received`` one's: ``received + (own - calibrated)``.  LoRA factors and merged
    deltas are left as they are (they are measured against the stack they were trained
    on)."""
    cal, got = read_adapter(calibrated).state, read_adapter(received).state
    out = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    for key, value in tensors.items():
        if not _is_head(key) or key.endswith(DELTA_SUFFIX):
            continue
        if key not in cal or key not in got or not cal[key].shape == got[key].shape == value.shape:
            raise ModelError(f"head tensor {key} is not in both versions in this shape")
        out[key] = (np.asarray(value, dtype=np.float64) - cal[key] + got[key]).astype(np.float32)
    return out


def as_received(adapter: Path, *, calibrated: Path, received: Path, out_dir: Path) -> Path:
    """:func:`received_heads` of the adapter in ``adapter``, written to ``out_dir``."""
    own = read_adapter(adapter)
    state = received_heads(own.state, calibrated=calibrated, received=received)
    return write_adapter(out_dir, state, own.config)
