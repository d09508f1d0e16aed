"""Students: layer selection, vocabulary pruning, distillation, and the tiers they make."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.distill import (
    DistillConfig,
    build_int8_tier,
    build_student_tier,
    distill,
    make_student,
    prune_vocabulary,
)
from p2phier.learn.models import ModelError, Tier, load_tier, select_vocabulary
from p2phier.learn.train import Session

from .conftest import ML

pytestmark = ML


def _bert(layers: int = 3):  # type: ignore[no-untyped-def]
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        pad_token_id=0,
    )
    return BertForSequenceClassification(cfg)


@pytest.mark.usefixtures("torch_ready")
def test_student_keeps_the_chosen_teacher_blocks() -> None:
    teacher = _bert(3)
    student = make_student(teacher, [0, 2])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    key = "encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(s_sd["bert." + key.format(1)], t_sd["bert." + key.format(2)])
    assert torch.equal(s_sd["bert." + key.format(0)], t_sd["bert." + key.format(0)])
    assert torch.equal(s_sd["classifier.weight"], t_sd["classifier.weight"])
    assert torch.equal(
        s_sd["bert.embeddings.word_embeddings.weight"],
        t_sd["bert.embeddings.word_embeddings.weight"],
    )
    for bad in ([], [0, 0], [3]):
        with pytest.raises(ModelError, match="distinct indices"):
            make_student(teacher, bad)


@pytest.mark.usefixtures("torch_ready")
def test_vocabulary_pruning_keeps_rows_and_renumbers_padding() -> None:
    model = _bert(1)
    old = model.get_input_embeddings().weight.detach().clone()
    kept = [0, 5, 7, 42]
    prune_vocabulary(model, kept)
    new = model.get_input_embeddings().weight
    assert new.shape == (4, 16) and torch.equal(new[2], old[7])
    assert model.config.vocab_size == 4 and model.config.pad_token_id == 0
    with pytest.raises(ModelError, match="pad token"):
        prune_vocabulary(_bert(1), [3, 4])
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=20,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
        )
    )
    with pytest.raises(ModelError, match="not language models"):
        prune_vocabulary(lm, [0, 1])


def _accuracy(model, encode, examples: list[Example], labels: tuple[str, ...]) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(examples), 32):
            batch = examples[i : i + 32]
            predicted = model(**encode([e.text for e in batch], 64)).logits.argmax(-1)
            correct += sum(labels[int(p)] == e.label for p, e in zip(predicted, batch, strict=True))
    return correct / len(examples)


@pytest.mark.slow
def test_distilled_student_beats_the_same_student_without_teacher(
    master,
    teacher_adapter: Path,
    bbc_split: tuple[list[Example], list[Example]],  # type: ignore[no-untyped-def]
) -> None:
    """A device has 40 articles, 10 of them labelled.  Both students are MiniLM's
    layers 0 and 5 with a pruned vocabulary and the master's untrained head; one
    learns from the 10 labels alone, the other also from the teacher's outputs
    on all 40 texts (the teacher is the master with the parent's adapter)."""
    teacher = Session(master, adapter=teacher_adapter)
    parent_uids = {e.uid for e in sample_per_label(bbc_split[0], 20, seed=1)}
    rest = [e for e in bbc_split[0] if e.uid not in parent_uids]
    child = sample_per_label(rest, 8, seed=2)
    labelled = sample_per_label(child, 2, seed=5)
    unlabelled = [e.text for e in child if e not in set(labelled)]
    test = sample_per_label(bbc_split[1], 40, seed=3)
    kept = select_vocabulary(
        master.tokenizer, [e.text for e in child], max_vocab=8000, min_doc_freq=1
    )
    encode = Tier(master.info, master.model, master.tokenizer, master.path, kept).encode
    scores = {}
    for name, config, data in (
        (
            "labels only",
            DistillConfig(steps=30, kd_weight=0, hidden_weight=0, ce_weight=1),
            list(labelled),
        ),
        ("distilled", DistillConfig(steps=30), [*labelled, *unlabelled]),
    ):
        student = make_student(master.model, [0, 5])
        prune_vocabulary(student, kept)
        distill(student, encode, teacher, data, labels=master.labels, config=config)
        scores[name] = _accuracy(student, encode, test, master.labels)
    assert scores["distilled"] >= scores["labels only"] + 0.1, scores
    assert scores["distilled"] >= 0.75, scores


@pytest.mark.slow
def test_student_tiers_shrink_and_are_reproducible(
    tmp_path: Path,
    master,
    teacher_adapter: Path,
    bbc_split: tuple[list[Example], list[Example]],  # type: ignore[no-untyped-def]
) -> None:
    teacher = Session(master, adapter=teacher_adapter)
    data = sample_per_label(bbc_split[0], 20, seed=4)
    quick = DistillConfig(steps=2, batch_size=8, max_length=32)
    l3 = build_student_tier(
        teacher,
        tmp_path / "l3",
        tier_id="news/minilm-l3",
        layers=[0, 2, 5],
        examples=data,
        config=quick,
    )
    l2 = build_student_tier(
        teacher,
        tmp_path / "l2",
        tier_id="news/minilm-l2-v8k",
        layers=[0, 5],
        examples=data,
        max_vocab=8000,
        config=quick,
    )
    again = build_student_tier(
        teacher,
        tmp_path / "l2b",
        tier_id="news/minilm-l2-v8k",
        layers=[0, 5],
        examples=data,
        max_vocab=8000,
        config=quick,
    )
    assert again.weights_cid == l2.weights_cid  # same inputs, same bytes, same CID
    assert l3.teacher == l2.teacher == master.info.tier_id
    assert l3.teacher_cid == master.info.weights_cid and l2.layers == (0, 5)
    assert l3.n_params < 0.8 * master.info.n_params  # the 11.7M embedding table stays
    assert l2.n_params <= master.info.n_params / 3
    assert l2.vocab_size <= 8000
    int8 = build_int8_tier(tmp_path / "l2", tmp_path / "l2-int8", tier_id="device/minilm-l2-int8")
    assert int8.n_params == l2.n_params and int8.weights_bytes < 0.3 * l2.weights_bytes
    test = sample_per_label(bbc_split[1], 4, seed=0)
    float_session = Session(load_tier(tmp_path / "l2"))
    int8_session = Session(load_tier(tmp_path / "l2-int8"))
    texts = [e.text for e in test]
    a, b = float_session.logits(texts, 32), int8_session.logits(texts, 32)
    assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()) + 1e-3)
