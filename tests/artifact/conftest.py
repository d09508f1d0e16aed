"""Shared helpers for the artifact tests: tiny synthetic PEFT adapters, stores, identities.

The synthetic adapters follow PEFT's on-disk layout exactly (names, shapes,
config keys) but are built with numpy, so most tests need no torch.  The one
real-model test lives in ``test_peft_minilm.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2phier.artifact.tensors import write_safetensors
from p2phier.identity import Identity
from p2phier.store import MemoryStore

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODULES = ("encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value")
HIDDEN = 16
RANK = 4


def adapter_config(r: int = RANK, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 8,
        "target_modules": ["query", "value"],
        "base_model_name_or_path": "/home/someone/models/minilm",
        "rank_pattern": {},
        "modules_to_save": None,
        "task_type": None,
        "use_dora": False,
    }
    cfg.update(extra)
    return cfg


def adapter_tensors(
    seed: int = 0, r: int = RANK, scale: float = 0.1, hidden: int = HIDDEN
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for module in MODULES:
        prefix = f"base_model.model.{module}"
        out[f"{prefix}.lora_A.weight"] = (rng.standard_normal((r, hidden)) * scale).astype(
            np.float32
        )
        out[f"{prefix}.lora_B.weight"] = (rng.standard_normal((hidden, r)) * scale).astype(
            np.float32
        )
    return out


def write_adapter(
    directory: Path,
    tensors: dict[str, np.ndarray] | None = None,
    config: dict[str, Any] | None = None,
    weights_bytes: bytes | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config or adapter_config()))
    if weights_bytes is None:
        weights_bytes = write_safetensors(tensors if tensors is not None else adapter_tensors())
    (directory / "adapter_model.safetensors").write_bytes(weights_bytes)
    return directory


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    with MemoryStore(clock=lambda: 1_700_000_000.0) as s:
        yield s


@pytest.fixture(scope="session")
def author() -> Identity:
    return Identity.from_seed(bytes(range(32)))


@pytest.fixture(scope="session")
def rogue() -> Identity:
    return Identity.from_seed(bytes([7]) * 32)
