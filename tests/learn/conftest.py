"""Shared, session-scoped models and data for the learning tests.

Building the MiniLM master tier and training a teacher adapter cost seconds, so
each is built once per test process.  Tests that use them carry the
``xdist_group("learn-ml")`` marker so pytest-xdist (``--dist loadgroup``) runs
them in one worker and the fixtures are built once, not once per worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2phier.learn.data import (
    Example,
    load_bbc,
    load_drug_reviews,
    sample_per_label,
    stratified_split,
)

ML = [pytest.mark.ml, pytest.mark.xdist_group("learn-ml")]


@pytest.fixture(scope="session")
def torch_ready() -> None:
    """One torch thread per test process (CI has 2 cores; xdist may run 2 workers)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def bbc() -> list[Example]:
    return load_bbc()


@pytest.fixture(scope="session")
def drugs() -> list[Example]:
    return load_drug_reviews()


@pytest.fixture(scope="session")
def bbc_split(bbc: list[Example]) -> tuple[list[Example], list[Example]]:
    train, test = stratified_split(bbc, [0.8, 0.2], seed=0)
    return train, test


@pytest.fixture(scope="session")
def labels(bbc: list[Example]) -> tuple[str, ...]:
    return tuple(sorted({e.label for e in bbc}))


@pytest.fixture(scope="session")
def master_dir(
    tmp_path_factory: pytest.TempPathFactory, labels: tuple[str, ...], torch_ready: None
) -> Path:
    from p2phier.learn.models import build_master

    path = tmp_path_factory.mktemp("tiers") / "master"
    build_master(path, labels)
    return path


@pytest.fixture(scope="session")
def master(master_dir: Path):  # type: ignore[no-untyped-def]
    from p2phier.learn.models import load_tier

    return load_tier(master_dir)


@pytest.fixture(scope="session")
def teacher_adapter(
    tmp_path_factory: pytest.TempPathFactory,
    master,  # type: ignore[no-untyped-def]
    bbc_split: tuple[list[Example], list[Example]],
) -> Path:
    """The master fine-tuned (LoRA + head) on a parent's 20 articles per topic."""
    from p2phier.learn.train import Session, TrainConfig

    session = Session(master)
    session.train_classifier(sample_per_label(bbc_split[0], 20, seed=1), TrainConfig(steps=20))
    return session.save(tmp_path_factory.mktemp("teacher") / "adapter")


@pytest.fixture(scope="session")
def lm_dir(
    tmp_path_factory: pytest.TempPathFactory,
    bbc: list[Example],
    drugs: list[Example],
    torch_ready: None,
) -> Path:
    """A tiny Llama-style LM pre-trained on health reviews and non-sport news."""
    from p2phier.learn.tiny import build_tiny_lm_tier

    texts = [e.text for e in sample_per_label(drugs, 60, seed=0)]
    texts += [e.text for e in sample_per_label([e for e in bbc if e.label != "sports"], 15, 0)]
    path = tmp_path_factory.mktemp("tiers") / "lm"
    build_tiny_lm_tier(path, texts, pretrain_steps=100)
    return path


@pytest.fixture(scope="session")
def tiny_cls_dir(
    tmp_path_factory: pytest.TempPathFactory,
    bbc_split: tuple[list[Example], list[Example]],
    labels: tuple[str, ...],
    torch_ready: None,
) -> Path:
    from p2phier.learn.tiny import build_tiny_classifier_tier

    texts = [e.text for e in sample_per_label(bbc_split[0], 30, seed=0)]
    path = tmp_path_factory.mktemp("tiers") / "tiny-cls"
    build_tiny_classifier_tier(path, texts, labels, max_vocab=1500)
    return path


# --- a tier lineage: a 3-block tiny teacher, a student of its blocks [0, 2] (student block 1
# is teacher block 2) and an int8 copy of the student ---


@pytest.fixture(scope="session")
def examples(bbc_split: tuple[list[Example], list[Example]]) -> list[Example]:
    return sample_per_label(bbc_split[0], 6, seed=3)


@pytest.fixture(scope="session")
def tiers(
    tmp_path_factory: pytest.TempPathFactory,
    bbc_split: tuple[list[Example], list[Example]],
    labels: tuple[str, ...],
    examples: list[Example],
    torch_ready: None,
) -> dict[str, Path]:
    from p2phier.learn import api
    from p2phier.learn.tiny import build_tiny_classifier_tier

    root = tmp_path_factory.mktemp("tiermap")
    texts = [e.text for e in sample_per_label(bbc_split[0], 30, seed=0)]
    build_tiny_classifier_tier(
        root / "teacher", texts, labels, tier_id="tiny/teacher-l3", layers=3, max_vocab=1500
    )
    api.distil_student(
        root / "teacher",
        root / "student",
        examples,
        tier_id="tiny/student-l2",
        layers=[0, 2],
        steps=3,
        batch_size=8,
        max_length=32,
    )
    api.quantise_tier(root / "student", root / "int8", tier_id="tiny/student-l2-int8")
    return {name: root / name for name in ("teacher", "student", "int8")}
