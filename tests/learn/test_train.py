"""Adapter files, merging, sessions and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from p2phier.errors import ArtifactError
from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.models import ModelError, load_tier, write_tier
from p2phier.learn.tiny import train_bpe_tokenizer
from p2phier.learn.train import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterError,
    LoraSettings,
    Session,
    TrainConfig,
    read_adapter,
    write_adapter,
)

from .conftest import ML

pytestmark = [*ML, pytest.mark.usefixtures("torch_ready")]

QUICK = TrainConfig(steps=4, batch_size=8, lr=5e-3, max_length=32)


def _data(bbc_split: tuple[list[Example], list[Example]]) -> list[Example]:
    return sample_per_label(bbc_split[0], 6, seed=0)


def test_trained_adapter_reloads_and_merges_to_the_same_predictions(
    tmp_path: Path, tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    tier = load_tier(tiny_cls_dir)
    session = Session(tier, settings=LoraSettings(r=4, alpha=8))
    texts = [e.text for e in bbc_split[1][:12]]
    before = session.logits(texts, 32)
    session.train_classifier(_data(bbc_split), QUICK)
    trained = session.logits(texts, 32)
    assert not torch.allclose(before, trained)  # training changed the model
    path = session.save(tmp_path / "adapter")
    reloaded = Session(tier, adapter=path)
    torch.testing.assert_close(reloaded.logits(texts, 32), trained, atol=1e-5, rtol=1e-5)
    merged = Session(tier, parents=[path])  # folded into the weights, fresh LoRA on top
    torch.testing.assert_close(merged.logits(texts, 32), trained, atol=1e-4, rtol=1e-4)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == tier.info.tier_id  # never a local path
    assert sorted(config["modules_to_save"]) == ["bert.pooler.dense", "classifier"]


def test_training_is_reproducible_to_the_byte(
    tmp_path: Path, tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    tier = load_tier(tiny_cls_dir)
    paths = []
    for name in ("a", "b"):
        session = Session(tier, seed=3)
        session.train_classifier(_data(bbc_split), QUICK)
        paths.append(session.save(tmp_path / name))
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        assert (paths[0] / name).read_bytes() == (paths[1] / name).read_bytes()
    other = Session(tier, seed=3)
    other.train_classifier(_data(bbc_split), TrainConfig(**{**QUICK.__dict__, "seed": 9}))
    first = read_adapter(paths[0]).state
    assert any(not np.array_equal(v, first[k]) for k, v in other.adapter_state().items())


def test_conv1d_models_merge_like_peft(tmp_path: Path, bbc: list[Example]) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = [e.text for e in sample_per_label(bbc, 6, seed=0)]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    write_tier(model, tok, tmp_path / "gpt2", tier_id="tiny/gpt2", task="causal_lm")
    tier = load_tier(tmp_path / "gpt2")
    session = Session(tier, settings=LoraSettings(r=4, alpha=8))
    session.train_lm(texts, TrainConfig(steps=3, batch_size=4, lr=1e-2, max_length=32))
    path = session.save(tmp_path / "adapter")
    expected = session.perplexity(texts[:4], 32)
    merged = Session(tier, parents=[path]).perplexity(texts[:4], 32)
    assert merged == pytest.approx(expected, rel=1e-4)
    assert merged != pytest.approx(Session(tier).perplexity(texts[:4], 32), rel=1e-3)


def test_adapter_files_are_checked(tmp_path: Path) -> None:
    good = {
        "base_model.model.x.lora_A.weight": np.ones((2, 3), np.float32),
        "base_model.model.x.lora_B.weight": np.zeros((4, 2), np.float32),
    }
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["x"]}
    a = write_adapter(tmp_path / "a", good, config)
    assert read_adapter(a).config["r"] == 2
    b = write_adapter(tmp_path / "b", good, config)
    assert (a / ADAPTER_WEIGHTS).read_bytes() == (b / ADAPTER_WEIGHTS).read_bytes()
    with pytest.raises(AdapterError, match="already exists"):
        write_adapter(tmp_path / "a", good, config)
    with pytest.raises(AdapterError, match="not an adapter directory"):
        read_adapter(tmp_path)
    bad_keys = write_adapter(tmp_path / "c", {"x.weight": np.ones(2, np.float32)}, config)
    with pytest.raises(AdapterError, match="not PEFT-keyed"):
        read_adapter(bad_keys)
    nan = write_adapter(
        tmp_path / "d",
        {**good, "base_model.model.x.lora_A.weight": np.full((2, 3), np.nan)},
        config,
    )
    with pytest.raises(ArtifactError, match=r"NaN|non-finite|finite"):
        read_adapter(nan)
    regex = write_adapter(tmp_path / "f", good, {**config, "target_modules": ".*(query|key)"})
    with pytest.raises(AdapterError, match="dotted module names"):
        read_adapter(regex)
    pickled = tmp_path / "e"
    pickled.mkdir()
    (pickled / ADAPTER_CONFIG).write_text(json.dumps(config))
    (pickled / ADAPTER_WEIGHTS).write_bytes(b"\x80\x04pickle")
    with pytest.raises(ArtifactError, match="pickle"):
        read_adapter(pickled)


def test_adapter_for_another_model_is_refused(
    tmp_path: Path, tiny_cls_dir: Path, lm_dir: Path
) -> None:
    lm_adapter = Session(load_tier(lm_dir)).save(tmp_path / "lm-adapter")
    with pytest.raises(AdapterError):
        Session(load_tier(tiny_cls_dir), parents=[lm_adapter])


def test_a_session_answers_only_among_its_domain_labels(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    tier = load_tier(tiny_cls_dir)
    examples = bbc_split[1][:40]
    texts = [e.text for e in examples]
    free = Session(tier, seed=1)
    chosen = free.predict(texts, 32)
    # the two labels the unrestricted model picks least often: a restriction that changes
    # what it answers, and an accuracy measured among them only
    ranked = sorted(tier.labels, key=lambda lab: (chosen.count(lab), lab))
    answers = ranked[:2]
    narrow = Session(tier, seed=1, answers=answers)
    torch.testing.assert_close(narrow.logits(texts, 32), free.logits(texts, 32))
    got = narrow.predict(texts, 32)
    assert set(got) <= set(answers) and set(chosen) - set(answers)
    logits = free.logits(texts, 32)
    idx = [tier.labels.index(a) for a in answers]
    want = [answers[i] for i in logits[:, idx].argmax(dim=-1).tolist()]
    assert got == want
    assert narrow.accuracy(examples, 32) == sum(
        g == e.label for g, e in zip(got, examples, strict=True)
    ) / len(examples)
    with pytest.raises(ModelError, match="not labels of tier"):
        Session(tier, answers=["no-such-label"])
