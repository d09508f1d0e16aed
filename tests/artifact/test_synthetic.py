"""Synthetic PEFT LoRA adapters (p2phier.artifact.synthetic): seeded, PEFT-shaped, readable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from p2phier.artifact.synthetic import synthetic_lora_tensors, write_synthetic_adapter


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_synthetic_adapter(tmp_path / "a", seed=3, r=4, hidden=8, layers=3)
    b = write_synthetic_adapter(tmp_path / "b", seed=3, r=4, hidden=8, layers=3)
    c = write_synthetic_adapter(tmp_path / "c", seed=4, r=4, hidden=8, layers=3)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "adapter_model.safetensors").read_bytes() != (
        c / "adapter_model.safetensors"
    ).read_bytes()


def test_shaped_as_peft_saves_it(tmp_path: Path) -> None:
    d = write_synthetic_adapter(tmp_path / "a", seed=0, r=4, hidden=8, layers=3, base_model="x/y")
    config = json.loads((d / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == "x/y"
    tensors = load_file(str(d / "adapter_model.safetensors"))  # the reference reader
    assert len(tensors) == 3 * 2 * 2
    for name, value in tensors.items():
        assert name.startswith("base_model.model.encoder.layer.")
        assert value.dtype == np.float32
        assert value.shape == ((4, 8) if name.endswith("lora_A.weight") else (8, 4))
    want = synthetic_lora_tensors(0, r=4, hidden=8, layers=3)
    assert all(np.array_equal(tensors[k], want[k]) for k in want)
