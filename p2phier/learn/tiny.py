"""Tiny models built from a config, for tests and demos (seconds on a CPU, nothing downloaded).

* a Llama-style causal LM with a byte-level BPE tokenizer trained offline on
  the given texts (deterministic), briefly pre-trained so it is a base worth
  adapting;
* a small BERT classifier that uses MiniLM's tokenizer over a vocabulary
  pruned to the given texts.

Both are written as ordinary tiers (:func:`p2phier.learn.models.write_tier`).
Blocking CPU work: run it in a worker thread or process, never on an event loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from p2phier.learn.models import TierInfo, minilm_dir, select_vocabulary, write_tier


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained offline on ``texts`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    fast: Any = PreTrainedTokenizerFast
    return fast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_causal_lm(
    tokenizer: Any, *, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0
) -> Any:
    """A Llama-style causal LM built from a config with seeded random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)
    return model.eval()


def tiny_classifier(
    tokenizer: Any,
    labels: Sequence[str],
    *,
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Any:
    """A small BERT sequence classifier built from a config with seeded random weights."""
    from transformers import BertConfig, BertForSequenceClassification

    bert_config: Any = BertConfig
    config = bert_config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=512,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model: Any = BertForSequenceClassification(config)
    return model.eval()


def build_tiny_classifier_tier(
    out_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    tier_id: str = "tiny/bert-classifier",
    max_vocab: int = 2000,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> TierInfo:
    """A small random BERT classifier using MiniLM's tokenizer over a pruned vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    # No general fill: the model is random, so a token its data never shows has an
    # embedding that means nothing (filling helps pretrained students only).
    kept = select_vocabulary(tokenizer, texts, max_vocab=max_vocab, min_doc_freq=2, fill=False)
    model = tiny_classifier(
        tokenizer, labels, vocab_size=len(kept), hidden=hidden, layers=layers, seed=seed
    )
    model.config.pad_token_id = kept.index(tokenizer.pad_token_id)
    return write_tier(
        model,
        tokenizer,
        out_dir,
        tier_id=tier_id,
        task="classifier",
        labels=labels,
        kept_ids=kept,
    )


def build_tiny_lm_tier(
    out_dir: Path,
    texts: Sequence[str],
    *,
    tier_id: str = "tiny/llama-lm",
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    pretrain_steps: int = 100,
) -> TierInfo:
    """A Llama-style causal LM with a BPE tokenizer, both trained on ``texts``.

    The model starts from seeded random weights and is pre-trained (all
    parameters) for ``pretrain_steps`` so the tier is a base worth adapting.
    """
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    model = tiny_causal_lm(tokenizer, hidden=hidden, layers=layers, seed=seed)
    if pretrain_steps > 0:
        _pretrain_lm(model, tokenizer, texts, steps=pretrain_steps, seed=seed)
    return write_tier(model, tokenizer, out_dir, tier_id=tier_id, task="causal_lm")


def _pretrain_lm(
    model: Any, tokenizer: Any, texts: Sequence[str], *, steps: int, seed: int
) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(list(texts), min(16, len(texts)))
        inputs = tokenizer(batch, truncation=True, max_length=64, padding=True, return_tensors="pt")
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        loss = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels
        ).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
