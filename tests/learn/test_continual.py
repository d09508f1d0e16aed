"""Continual learning: replay prevents class-incremental forgetting; EWC mechanics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p2phier.learn.continual import ContinualConfig, ContinualLearner
from p2phier.learn.data import Example, class_incremental, sample_per_label
from p2phier.learn.models import ModelError, load_tier
from p2phier.learn.train import Session, TrainConfig

from .conftest import ML

pytestmark = ML

OLD, NEW = ("business", "sports"), ("politics", "tech")


@pytest.mark.slow
def test_replay_forgets_less_than_naive_fine_tuning(
    tmp_path: Path,
    master,
    bbc_split: tuple[list[Example], list[Example]],  # type: ignore[no-untyped-def]
) -> None:
    """Class-incremental: topics OLD first, then topics NEW, one shared head.

    Naive fine-tuning on NEW collapses accuracy on OLD (the head is pulled to
    the new classes); a small class-balanced replay buffer keeps it.
    """
    train = TrainConfig(steps=12, batch_size=16, lr=1e-3, max_length=48)
    old_train, new_train = class_incremental(sample_per_label(bbc_split[0], 30, 0), [OLD, NEW])
    old_test, new_test = class_incremental(sample_per_label(bbc_split[1], 20, 1), [OLD, NEW])
    evals = {"old": old_test, "new": new_test}

    first = ContinualLearner(Session(master), ContinualConfig(train=train, replay_per_label=0))
    stage_a = first.learn(old_train, evals)
    assert stage_a.accuracy["old"] >= 0.9
    after_a = first.session.save(tmp_path / "after-old")

    reports = {}
    for name, config in {
        "naive": ContinualConfig(train=train, replay_per_label=0),
        "replay": ContinualConfig(train=train, replay_per_label=8, replay_fraction=0.5),
    }.items():
        learner = ContinualLearner(Session(master, adapter=after_a), config)
        learner.restore_buffer(old_train)  # what the node kept from stage A (naive: nothing)
        assert len(learner.buffer) == (16 if name == "replay" else 0)
        reports[name] = learner.learn(new_train, evals)

    naive, replay = reports["naive"], reports["replay"]
    assert naive.strategy == "naive" and replay.strategy == "replay"
    assert naive.accuracy["new"] >= 0.8 and replay.accuracy["new"] >= 0.8  # both learn NEW
    assert naive.accuracy["old"] <= 0.3  # naive forgets
    assert replay.accuracy["old"] >= naive.accuracy["old"] + 0.4
    forgetting_naive = stage_a.accuracy["old"] - naive.accuracy["old"]
    forgetting_replay = stage_a.accuracy["old"] - replay.accuracy["old"]
    assert forgetting_replay < forgetting_naive


def test_ewc_penalty_pulls_towards_the_old_weights(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    session = Session(load_tier(tiny_cls_dir))
    config = ContinualConfig(
        train=TrainConfig(steps=3, batch_size=8, max_length=32),
        replay_per_label=0,
        ewc_lambda=50.0,
        ewc_samples=8,
    )
    learner = ContinualLearner(session, config)
    assert config.strategy == "ewc"
    old, new = class_incremental(sample_per_label(bbc_split[0], 6, 0), [OLD, NEW])
    learner.learn(old, {"old": old})
    assert float(learner.ewc_penalty().detach()) == pytest.approx(0.0, abs=1e-12)  # at the anchor
    assert all(bool((f >= 0).all()) for f in learner._fisher.values())
    assert sum(float(f.sum()) for f in learner._fisher.values()) > 0
    report = learner.learn(new, {"old": old, "new": new})
    assert float(learner.ewc_penalty().detach()) == pytest.approx(0.0, abs=1e-12)  # re-anchored
    with torch.no_grad():
        for p in learner._named_trainable().values():
            p.add_(0.01)
    assert float(learner.ewc_penalty().detach()) > 0
    assert set(report.accuracy) == {"new", "old"} and report.stage == 1


def test_replay_buffer_is_class_balanced_and_bounded(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    learner = ContinualLearner(
        Session(load_tier(tiny_cls_dir)), ContinualConfig(replay_per_label=5), seed=1
    )
    learner.restore_buffer(bbc_split[0][:400])
    counts: dict[str, int] = {}
    for e in learner.buffer:
        counts[e.label] = counts.get(e.label, 0) + 1
    assert counts and all(c == 5 for c in counts.values())


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ModelError, match="replay_fraction"):
        ContinualConfig(replay_fraction=1.0)
    with pytest.raises(ModelError, match="ewc_lambda"):
        ContinualConfig(ewc_lambda=-1.0)


def test_logit_replay_keeps_old_logits_and_pulls_replayed_examples_to_them(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    """DER-style logit replay: each buffered example keeps the logits the model gave it when
    it entered the buffer; during later stages replayed examples drift less from them than
    with plain (label-only) replay, from the same starting point and batches."""
    tier = load_tier(tiny_cls_dir)
    old, new = class_incremental(sample_per_label(bbc_split[0], 10, 0), [OLD, NEW])
    train = TrainConfig(steps=8, batch_size=8, lr=5e-3, max_length=32)
    drift = {}
    for weight in (0.0, 20.0):
        config = ContinualConfig(
            train=train, replay_per_label=4, replay_fraction=0.5, logit_replay_weight=weight
        )
        assert config.strategy == ("replay+logits" if weight else "replay")
        learner = ContinualLearner(Session(tier, seed=0), config, seed=0)
        learner.learn(old, {"old": old})
        buffer = learner.buffer
        assert len(buffer) == 8
        after_old = learner.session.logits([e.text for e in buffer], 32)
        if weight:
            assert set(learner._logits) == {e.uid for e in buffer}  # one entry per buffered uid
            kept = torch.stack([learner._logits[e.uid] for e in buffer])
            torch.testing.assert_close(kept, after_old)  # the logits when they entered
        learner.learn(new, {"old": old, "new": new})
        if weight:
            assert set(learner._logits) == {e.uid for e in learner.buffer}  # evicted: dropped
            torch.testing.assert_close(  # the old examples' kept logits did not move
                torch.stack([learner._logits[e.uid] for e in buffer]), after_old
            )
        now = learner.session.logits([e.text for e in buffer], 32)
        drift[weight] = float(((now - after_old) ** 2).mean())
    assert drift[20.0] < 0.5 * drift[0.0]


def test_logit_replay_needs_a_buffer_and_a_sane_weight() -> None:
    with pytest.raises(ModelError, match="needs a replay buffer"):
        ContinualConfig(replay_per_label=0, logit_replay_weight=1.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ModelError, match="logit_replay_weight"):
            ContinualConfig(logit_replay_weight=bad)


def test_resume_rebuilds_the_buffer_and_ewcs_fisher_at_the_current_weights(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    """A node runs every cycle in a new learner: what earlier stages left (the buffer, and
    EWC's Fisher and anchor) is rebuilt from its earlier data, or EWC would do nothing."""
    config = ContinualConfig(
        train=TrainConfig(steps=2, batch_size=8, max_length=32),
        replay_per_label=2,
        ewc_lambda=50.0,
        ewc_samples=8,
    )
    learner = ContinualLearner(Session(load_tier(tiny_cls_dir)), config)
    old = class_incremental(sample_per_label(bbc_split[0], 6, 0), [OLD, NEW])[0]
    learner.resume(old)
    assert len(learner.buffer) == 2 * len(OLD)
    assert sum(float(f.sum()) for f in learner._fisher.values()) > 0
    assert float(learner.ewc_penalty().detach()) == pytest.approx(0.0, abs=1e-12)  # at the anchor
    with torch.no_grad():
        for p in learner._named_trainable().values():
            p.add_(0.01)
    assert float(learner.ewc_penalty().detach()) > 0


def test_the_nodes_cycle_resumes_from_its_earlier_data(
    tmp_path: Path,
    tiny_cls_dir: Path,
    bbc_split: tuple[list[Example], list[Example]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from p2phier.learn import api

    resumed: list[int] = []
    real = ContinualLearner.resume

    def spy(self: ContinualLearner, earlier: list[Example]) -> None:
        resumed.append(len(earlier))
        real(self, earlier)
        assert self._fisher, "EWC's Fisher is estimated on the earlier data before training"

    monkeypatch.setattr(ContinualLearner, "resume", spy)
    old, new = class_incremental(sample_per_label(bbc_split[0], 4, 0), [OLD, NEW])
    api.train_cycle(
        tiny_cls_dir,
        tmp_path / "out",
        new,
        train=TrainConfig(steps=1, batch_size=4, max_length=32),
        continual=ContinualConfig(replay_per_label=2, ewc_lambda=10.0, ewc_samples=4),
        replay=old,
    )
    assert resumed == [len(old)]


def _head(session: Session) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in session.model.named_parameters()
        if p.requires_grad and "classifier" in n and p.dim() >= 1
    }


def test_ace_leaves_the_labels_absent_from_the_new_data_alone(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    """The new examples' loss counts only their own labels: the head rows of every other
    label get no gradient from them (plain cross-entropy pushes them down).  Replay is
    held (fraction 0) so that the new examples' gradient is all there is."""
    train = TrainConfig(steps=4, batch_size=8, max_length=32, seed=1)
    old, new = class_incremental(sample_per_label(bbc_split[0], 6, 0), [OLD, NEW])
    tier = load_tier(tiny_cls_dir)
    absent = [i for i, label in enumerate(tier.labels) if label not in NEW]
    present = [i for i, label in enumerate(tier.labels) if label in NEW]
    assert absent and present
    moved = {}
    for ace in (False, True):
        session = Session(tier, seed=0)
        config = ContinualConfig(train=train, replay_per_label=4, replay_fraction=0.0, ace=ace)
        assert config.strategy == ("replay+ace" if ace else "replay")
        learner = ContinualLearner(session, config)
        learner.restore_buffer(old)
        before = _head(session)
        assert before, "the tiny tier's head was not found"
        learner.learn(new, {"new": new})
        after = _head(session)
        moved[ace] = {
            part: any(not torch.equal(before[n][rows], after[n][rows]) for n in before)
            for part, rows in (("absent", absent), ("present", present))
        }
    assert moved[False] == {"absent": True, "present": True}
    assert moved[True] == {"absent": False, "present": True}


def test_ace_is_plain_cross_entropy_when_the_new_data_holds_every_label(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    train = TrainConfig(steps=3, batch_size=8, max_length=32, seed=2)
    tier = load_tier(tiny_cls_dir)
    earlier = sample_per_label(bbc_split[0], 4, 0)
    seen = {e.uid for e in earlier}
    data = sample_per_label([e for e in bbc_split[0] if e.uid not in seen], 4, 1)
    assert {e.label for e in data} == set(tier.labels)
    heads = []
    for ace in (False, True):
        session = Session(tier, seed=0)
        config = ContinualConfig(train=train, replay_per_label=4, ace=ace)
        learner = ContinualLearner(session, config)
        learner.restore_buffer(earlier)
        learner.learn(data, {})
        heads.append(_head(session))
    assert heads[0] and set(heads[0]) == set(heads[1])
    for name in heads[0]:
        assert torch.allclose(heads[0][name], heads[1][name], atol=1e-6), name


def test_ace_replays_the_new_examples_with_the_old_ones(
    tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    """Under ACE the replayed part of a batch (loss over every label) also draws from the
    new examples, class-balanced: where the new labels are taught against the old ones."""
    train = TrainConfig(steps=6, batch_size=8, max_length=32, seed=1)
    old, new = class_incremental(sample_per_label(bbc_split[0], 6, 0), [OLD, NEW])
    new_uids = {e.uid for e in new}
    replayed: dict[bool, set[str]] = {}
    for ace in (False, True):
        session = Session(load_tier(tiny_cls_dir), seed=0)
        learner = ContinualLearner(
            session, ContinualConfig(train=train, replay_per_label=2, ace=ace)
        )
        learner.restore_buffer(old)
        drawn: set[str] = set()
        label_ids = session.label_ids

        def record(batch, _ids=label_ids, _drawn=drawn):  # type: ignore[no-untyped-def]
            _drawn.update(e.uid for e in batch[4:])  # the replayed half of a batch of 8
            return _ids(batch)

        session.label_ids = record  # type: ignore[method-assign]
        learner.learn(new, {})
        replayed[ace] = drawn
    assert replayed[False] and not replayed[False] & new_uids
    assert replayed[True] & new_uids
    per_label: dict[str, int] = {}
    for e in new:
        if e.uid in replayed[True]:
            per_label[e.label] = per_label.get(e.label, 0) + 1
    assert set(per_label) == set(NEW) and max(per_label.values()) <= 2  # class-balanced
