"""Target discovery, tier files (CIDs, integrity) and int8 quantisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.models import (
    ModelError,
    TierIntegrityError,
    dequantise_int8,
    find_head_modules,
    find_lora_targets,
    general_ranking,
    load_tier,
    quantise_int8,
    read_tier_info,
    select_vocabulary,
    token_map,
    write_tier,
)
from p2phier.learn.tiny import build_tiny_lm_tier, train_bpe_tokenizer

from .conftest import ML

pytestmark = [*ML, pytest.mark.usefixtures("torch_ready")]


def _bert():  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg)


def _llama():  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
    )
    return LlamaForCausalLM(cfg)


def _gpt2():  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2))


def test_targets_are_attention_projections_of_any_architecture() -> None:
    bert = find_lora_targets(_bert())
    assert "bert.encoder.layer.1.attention.self.query" in bert
    assert "bert.encoder.layer.0.attention.output.dense" in bert
    assert len(bert) == 8  # q, k, v, out x 2 layers
    assert not any("intermediate" in t or "classifier" in t or "pooler" in t for t in bert)

    llama = find_lora_targets(_llama())
    assert len(llama) == 8 and all(".self_attn." in t for t in llama)
    assert "model.layers.0.self_attn.o_proj" in llama
    assert not any("lm_head" in t or "mlp" in t for t in llama)

    gpt2 = find_lora_targets(_gpt2())  # GPT-2 uses Conv1D, not nn.Linear
    assert gpt2 == [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.1.attn.c_attn",
        "transformer.h.1.attn.c_proj",
    ]
    with_mlp = find_lora_targets(_llama(), include_mlp=True)
    assert "model.layers.1.mlp.down_proj" in with_mlp and len(with_mlp) == 14


def test_head_and_pooler_are_trained_in_full() -> None:
    assert find_head_modules(_bert()) == ["bert.pooler.dense", "classifier"]


def test_a_model_without_attention_is_refused() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ModelError, match="no attention projections"):
        find_lora_targets(mlp)


def _texts(bbc: list[Example]) -> list[str]:
    return [e.text for e in sample_per_label(bbc, 6, seed=0)]


def test_tier_is_deterministic_and_loads_to_the_same_model(
    tmp_path: Path, bbc: list[Example]
) -> None:
    a = build_tiny_lm_tier(tmp_path / "a", _texts(bbc), pretrain_steps=3)
    b = build_tiny_lm_tier(tmp_path / "b", _texts(bbc), pretrain_steps=3)
    assert a.weights_cid == b.weights_cid and a.weights_cid.startswith("bafy")
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = build_tiny_lm_tier(tmp_path / "c", _texts(bbc), pretrain_steps=3, seed=1)
    assert c.weights_cid != a.weights_cid
    tier = load_tier(tmp_path / "a", expected_cid=a.weights_cid)
    assert tier.info == a == read_tier_info(tmp_path / "a")
    ids = tier.encode(["The match ended in a draw."], 16)
    again = load_tier(tmp_path / "b")
    with torch.no_grad():
        torch.testing.assert_close(tier.model(**ids).logits, again.model(**ids).logits)


def test_tampered_tiers_are_refused(tmp_path: Path, bbc: list[Example]) -> None:
    info = build_tiny_lm_tier(tmp_path / "t", _texts(bbc), pretrain_steps=0)

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(tmp_path / "t", dst)
        return dst

    with pytest.raises(TierIntegrityError, match="the caller says"):
        load_tier(
            tmp_path / "t",
            expected_cid="bafkreigh2akiscaildc4ae7rbhsy5g2dp4bq3kr5hhwbyfuhizuyovmbey",
        )
    flipped = copy("flipped")
    data = bytearray((flipped / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (flipped / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(TierIntegrityError, match="hashes to"):
        load_tier(flipped)
    config = copy("config")
    cfg = json.loads((config / "config.json").read_bytes())
    cfg["num_hidden_layers"] = 1
    (config / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TierIntegrityError, match="config"):
        load_tier(config)
    tok = copy("tok")
    (tok / "tokenizer.json").write_bytes((tok / "tokenizer.json").read_bytes() + b" ")
    with pytest.raises(TierIntegrityError, match="tokenizer"):
        load_tier(tok)
    relabelled = copy("relabelled")
    meta = json.loads((relabelled / "p2phier_tier.json").read_bytes())
    meta["task"] = "classifier"
    (relabelled / "p2phier_tier.json").write_text(json.dumps(meta))
    with pytest.raises(TierIntegrityError, match="disagree on task"):
        load_tier(relabelled)
    with pytest.raises(ModelError, match="not a tier directory"):
        load_tier(tmp_path)
    with pytest.raises(ModelError, match="already exists"):
        build_tiny_lm_tier(tmp_path / "t", _texts(bbc), pretrain_steps=0)
    assert info.weights_cid == read_tier_info(tmp_path / "t").weights_cid  # untouched


def test_int8_quantisation_is_close_and_four_times_smaller() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    q = quantise_int8({"w": w, "b": np.ones(64, np.float32)})
    assert q["w"].dtype == np.int8 and q["b"].dtype == np.float32
    back = dequantise_int8(q)
    assert set(back) == {"w", "b"}
    assert np.linalg.norm(back["w"] - w) / np.linalg.norm(w) < 0.01
    assert q["w"].nbytes * 4 == w.nbytes


def test_int8_tier_predicts_like_its_float_source(tmp_path: Path, tiny_cls_dir: Path) -> None:
    source = load_tier(tiny_cls_dir)
    info = write_tier(
        source.model,
        source.tokenizer,
        tmp_path / "int8",
        tier_id="tiny/bert-int8",
        task="classifier",
        labels=source.labels,
        teacher=source.info,
        kept_ids=source.kept_ids,
        quantise=True,
    )
    assert info.quantisation == "int8" and info.teacher == source.info.tier_id
    assert info.weights_bytes < 0.5 * source.info.weights_bytes
    int8 = load_tier(tmp_path / "int8")
    batch = source.encode(["Shares fell sharply in London.", "The striker scored twice."], 32)
    with torch.no_grad():
        a = source.model(**batch).logits
        b = int8.model(**batch).logits
    assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()) + 1e-3)


def test_vocabulary_selection_and_token_map(bbc: list[Example]) -> None:
    from transformers import AutoTokenizer

    from p2phier.learn.models import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = [e.text for e in sample_per_label(bbc, 5, seed=0)]
    kept = select_vocabulary(tok, texts, max_vocab=800, min_doc_freq=2)
    assert len(kept) == 800 and list(kept) == sorted(kept)
    assert set(tok.all_special_ids) <= set(kept)
    assert kept == select_vocabulary(tok, texts, max_vocab=800, min_doc_freq=2)
    rare = select_vocabulary(tok, texts, max_vocab=100_000, min_doc_freq=len(texts), fill=False)
    assert len(rare) < 200  # only tokens in every text (and the specials) survive
    # filled: the domain's tokens all stay, the rest are the tokenizer's most general ones
    size = len(rare) + 50
    filled = select_vocabulary(tok, texts, max_vocab=size, min_doc_freq=len(texts))
    assert set(rare) < set(filled) and len(filled) == len(rare) + 50
    general = [t for t in general_ranking(tok) if t not in set(rare)][:50]
    assert sorted(set(filled) - set(rare)) == sorted(general)
    words = tok.convert_ids_to_tokens(general_ranking(tok)[:120])
    assert {"the", "of", "and"} <= set(words) and not any(w.startswith("[unused") for w in words)
    assert select_vocabulary(tok, texts, max_vocab=size, min_doc_freq=len(texts)) == filled
    mapping = token_map(kept, len(tok), tok.unk_token_id)
    unk_new = kept.index(tok.unk_token_id)
    dropped = next(i for i in range(len(tok)) if i not in set(kept))
    assert int(mapping[dropped]) == unk_new
    assert int(mapping[kept[5]]) == 5
    with pytest.raises(ModelError, match="no room"):
        select_vocabulary(tok, texts, max_vocab=3)


def test_bpe_tokenizer_is_deterministic(bbc: list[Example]) -> None:
    a = train_bpe_tokenizer(_texts(bbc), vocab_size=300)
    b = train_bpe_tokenizer(_texts(bbc), vocab_size=300)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 300


def test_any_local_causal_lm_directory_becomes_a_trainable_tier(
    tmp_path: Path, bbc: list[Example]
) -> None:
    from p2phier.learn.models import import_pretrained
    from p2phier.learn.train import Session, TrainConfig

    texts = _texts(bbc)
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    tok.pad_token = None  # like many LMs: the importer must cope
    torch.manual_seed(0)
    _llama_model = _llama_sized(len(tok))
    _llama_model.save_pretrained(str(tmp_path / "hf"))
    tok.save_pretrained(str(tmp_path / "hf"))
    info = import_pretrained(
        tmp_path / "hf", tmp_path / "tier", tier_id="user/llama", task="causal_lm"
    )
    assert info.task == "causal_lm" and info.n_params == sum(
        p.numel() for p in _llama_model.parameters()
    )
    session = Session(load_tier(tmp_path / "tier"))
    before = session.perplexity(texts, 32)
    session.train_lm(texts, TrainConfig(steps=5, batch_size=4, lr=1e-2, max_length=32))
    assert session.perplexity(texts, 32) < before
    with pytest.raises(ModelError, match="task"):
        import_pretrained(tmp_path / "hf", tmp_path / "x", tier_id="x", task="vision")  # type: ignore[arg-type]


def _llama_sized(vocab: int):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def test_a_loaded_tier_is_cached_until_its_files_change(tmp_path: Path, bbc: list[Example]) -> None:
    build_tiny_lm_tier(tmp_path / "t", _texts(bbc), pretrain_steps=0)
    first = load_tier(tmp_path / "t")
    assert load_tier(tmp_path / "t") is first  # verified and built once per process
    # A file changed after the first load is noticed: the cache never hides tampering.
    data = bytearray((tmp_path / "t" / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "t" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(TierIntegrityError, match="hashes to"):
        load_tier(tmp_path / "t")
