"""Synthetic PEFT LoRA adapters: random tensors shaped exactly as PEFT saves them.

Owns :func:`synthetic_lora_tensors` and :func:`write_synthetic_adapter`, for
tests, benchmarks and demos that need an adapter to pack, publish and fetch
without training one (no torch).  The directory holds ``adapter_config.json``
and ``adapter_model.safetensors`` with
``base_model.model.encoder.layer.<i>.attention.self.<target>.lora_A.weight``
``[r, hidden]`` and ``lora_B.weight`` ``[hidden, r]`` (float32), seeded: the
same arguments give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2phier.fsutil import write_atomic

from .tensors import write_safetensors

TARGETS = ("query", "value")


def synthetic_lora_tensors(
    seed: int,
    *,
    r: int = 2,
    hidden: int = 16,
    layers: int = 2,
    targets: Sequence[str] = TARGETS,
) -> dict[str, npt.NDArray[np.float32]]:
    """``layers x len(targets)`` LoRA pairs: A ~ N(0, 1), B ~ N(0, 0.01) (B @ A stays small)."""
    rng = np.random.default_rng(seed)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for layer in range(layers):
        for target in targets:
            base = f"base_model.model.encoder.layer.{layer}.attention.self.{target}"
            out[f"{base}.lora_A.weight"] = rng.standard_normal((r, hidden), dtype=np.float32)
            b = rng.standard_normal((hidden, r), dtype=np.float32) * np.float32(0.1)
            out[f"{base}.lora_B.weight"] = b
    return out


def write_synthetic_adapter(
    directory: Path,
    *,
    seed: int = 0,
    r: int = 2,
    hidden: int = 16,
    layers: int = 2,
    targets: Sequence[str] = TARGETS,
    base_model: str = "test/tiny-bert",
    tensors: Mapping[str, npt.NDArray[Any]] | None = None,
) -> Path:
    """Write a synthetic adapter directory (``tensors`` replaces the random ones)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    if tensors is None:
        tensors = synthetic_lora_tensors(seed, r=r, hidden=hidden, layers=layers, targets=targets)
    write_atomic(directory / "adapter_config.json", json.dumps(config, indent=2).encode())
    write_atomic(directory / "adapter_model.safetensors", write_safetensors(tensors))
    return directory
