"""A tiny synthetic PEFT LoRA adapter directory, written with safetensors.numpy.

Shaped exactly as PEFT saves one (``adapter_config.json`` + ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A.weight`` ``[r, in]`` and ``lora_B.weight`` ``[out, r]``), small
enough that packing it costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HIDDEN = 16
LAYERS = 2
TARGETS = ("query", "value")


def adapter_tensors(seed: int, r: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(LAYERS):
        for target in TARGETS:
            base = f"base_model.model.encoder.layer.{layer}.attention.self.{target}"
            out[f"{base}.lora_A.weight"] = rng.standard_normal((r, HIDDEN), dtype=np.float32)
            out[f"{base}.lora_B.weight"] = rng.standard_normal((HIDDEN, r), dtype=np.float32) * 0.1
    return out


def write_adapter(
    directory: Path, *, seed: int = 0, r: int = 2, tensors: dict[str, np.ndarray] | None = None
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "base_model_name_or_path": "test/tiny-bert",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors or adapter_tensors(seed, r), str(directory / "adapter_model.safetensors"))
    return directory
