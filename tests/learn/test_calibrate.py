"""A version mapped to a distilled tier, calibrated there; what travels back up without it.

The tiers are test_tiermap's: a 3-block tiny teacher, a student keeping its blocks
[0, 2], an int8 copy of the student.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2phier.learn import api, cycle
from p2phier.learn.aggregate import DELTA_SUFFIX, LORA_A_SUFFIX, LORA_B_SUFFIX
from p2phier.learn.calibrate import as_received, calibrate, received_heads
from p2phier.learn.data import Example
from p2phier.learn.models import ModelError, load_tier
from p2phier.learn.train import Session, TrainConfig, read_adapter
from p2phier.learnplan import DataRecord, LearnPlan, TierPlan

from .conftest import ML

pytestmark = ML

QUICK = TrainConfig(steps=6, batch_size=8, lr=5e-3, max_length=32)


@pytest.fixture(scope="module")
def versions(
    tmp_path_factory: pytest.TempPathFactory, tiers: dict[str, Path], examples: list[Example]
) -> dict[str, Path]:
    """A teacher version (trained), mapped down to the student, and calibrated there."""
    root = tmp_path_factory.mktemp("versions")
    version = api.train_cycle(tiers["teacher"], root / "v", examples, train=QUICK, seed=1)
    mapped = root / "mapped"
    api.map_for_tier(
        version.adapter_dir, mapped, child_tier_dir=tiers["student"],
        parent_tier_dir=tiers["teacher"], direction="down",
    )  # fmt: skip
    fitted = calibrate(
        tiers["student"], mapped, root / "calibrated", teacher_tier_dir=tiers["teacher"],
        teacher=version.adapter_dir, examples=examples, steps=8, lr=5e-3, batch_size=8,
        max_length=32, seed=0,
    )  # fmt: skip
    return {"version": version.adapter_dir, "mapped": mapped, "calibrated": fitted.adapter_dir}


def _heads(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if not k.endswith((LORA_A_SUFFIX, LORA_B_SUFFIX))}


def test_calibration_trains_the_mapped_version_towards_the_teacher_and_the_labels(
    tiers: dict[str, Path], versions: dict[str, Path], examples: list[Example], tmp_path: Path
) -> None:
    mapped, fitted = read_adapter(versions["mapped"]), read_adapter(versions["calibrated"])
    assert set(mapped.state) == set(fitted.state)
    assert fitted.config["r"] == mapped.config["r"]
    # both the head and the LoRA factors moved
    moved = {k for k in mapped.state if not np.array_equal(mapped.state[k], fitted.state[k])}
    assert _heads(mapped.state).keys() & moved
    assert any(k.endswith(LORA_B_SUFFIX) for k in moved)
    student = load_tier(tiers["student"])

    def loss(adapter: Path) -> float:
        return Session(student, adapter=adapter).mean_loss(examples, 32)

    assert loss(versions["calibrated"]) < loss(versions["mapped"])
    # the same inputs give the same adapter
    again = calibrate(
        tiers["student"], versions["mapped"], tmp_path / "again",
        teacher_tier_dir=tiers["teacher"], teacher=versions["version"], examples=examples,
        steps=8, lr=5e-3, batch_size=8, max_length=32, seed=0,
    )  # fmt: skip
    for key, value in read_adapter(again.adapter_dir).state.items():
        np.testing.assert_array_equal(value, fitted.state[key])


def test_calibration_refuses_no_examples_and_no_steps(
    tiers: dict[str, Path], versions: dict[str, Path], examples: list[Example], tmp_path: Path
) -> None:
    common = dict(teacher_tier_dir=tiers["teacher"], teacher=versions["version"],
                  lr=1e-3, batch_size=8, max_length=32, seed=0)  # fmt: skip
    with pytest.raises(ModelError, match="examples"):
        calibrate(tiers["student"], versions["mapped"], tmp_path / "a", examples=[], steps=3,
                  **common)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ModelError, match="steps"):
        calibrate(tiers["student"], versions["mapped"], tmp_path / "b", examples=examples,
                  steps=0, **common)  # type: ignore[arg-type]  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_only_a_distilled_tier_calibrates(tiers: dict[str, Path]) -> None:
    assert cycle.calibrates(tiers["student"], tiers["teacher"])
    assert not cycle.calibrates(tiers["int8"], tiers["student"])  # same features
    assert not cycle.calibrates(tiers["student"], tiers["student"])


def test_what_goes_up_carries_the_heads_against_the_version_as_received(
    tiers: dict[str, Path], versions: dict[str, Path], examples: list[Example], tmp_path: Path
) -> None:
    """A leaf trained on the calibrated version sends heads ``received + (own - calibrated)``
    and its LoRA factors unchanged; a parent's update since its (calibrated) base does the
    same, so that the parent, which subtracts its own head (the received one), sees only
    what the node learned after calibrating."""
    local = api.train_cycle(
        tiers["student"], tmp_path / "local", examples, parents=[versions["calibrated"]],
        fresh_lora=True, train=QUICK, seed=4,
    ).adapter_dir  # fmt: skip
    own = read_adapter(local).state
    cal = read_adapter(versions["calibrated"]).state
    got = read_adapter(versions["mapped"]).state
    sent = read_adapter(
        as_received(
            local,
            calibrated=versions["calibrated"],
            received=versions["mapped"],
            out_dir=tmp_path / "sent",
        )
    ).state
    assert set(sent) == set(own)
    heads = _heads(own)
    assert heads
    for key, value in own.items():
        if key in heads:
            np.testing.assert_allclose(sent[key], value - cal[key] + got[key], atol=1e-6)
        else:
            np.testing.assert_array_equal(sent[key], value)
    # the parent's view: the child's update against the version it sent down is only what
    # the leaf learned after calibrating
    update = api.child_update(tmp_path / "sent", versions["mapped"])
    for key in heads:
        np.testing.assert_allclose(update[key], own[key] - cal[key], atol=1e-5)
    # a parent's update since its calibrated base: heads the same way, LoRA flat - base
    up = cycle.update_since(
        local, versions["calibrated"], tmp_path / "up", max_rank=16, received=versions["mapped"]
    )
    up_eff = read_adapter(up).effective()
    for key in heads:
        np.testing.assert_allclose(up_eff[key], own[key] - cal[key] + got[key], atol=1e-5)
    plain = read_adapter(cycle.update_since(local, versions["calibrated"], tmp_path / "plain",
                                            max_rank=16)).effective()  # fmt: skip
    for key, value in up_eff.items():
        if key.endswith(DELTA_SUFFIX):
            np.testing.assert_allclose(value, plain[key], atol=1e-6)


def test_received_heads_refuses_heads_the_versions_lack(versions: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="head tensor"):
        received_heads(
            {"classifier.extra.weight": np.zeros(3, np.float32)},
            calibrated=versions["calibrated"],
            received=versions["mapped"],
        )


def test_the_plan_calibrates_with_its_settings(
    tiers: dict[str, Path], versions: dict[str, Path], examples: list[Example], tmp_path: Path
) -> None:
    plan = LearnPlan(
        tier=TierPlan(source="distil", tier_id="tiny/student-l2"), data=None,
        calibrate_steps=3, calibrate_lr=5e-3, batch_size=8, max_length=32,
    )  # fmt: skip
    records = [DataRecord(e.uid, e.text, e.label, e.domain, e.subdomain) for e in examples]
    out = cycle.calibrate(
        plan, tiers["student"], versions["mapped"], tmp_path / "c",
        their_tier=tiers["teacher"], version=versions["version"], records=records, seed=1,
    )  # fmt: skip
    assert Path(out["adapter"]) == tmp_path / "c" and out["calibrate_s"] >= 0
    assert (
        read_adapter(tmp_path / "c").state.keys() == read_adapter(versions["mapped"]).state.keys()
    )


def test_a_kept_adapter_sends_only_what_it_learned_since_its_rebase(
    tiers: dict[str, Path], examples: list[Example], tmp_path: Path
) -> None:
    """``rebase = "keep"``: the adapter stays on the new version and trains on; its next
    update is ``own - since`` (exact at twice the LoRA rank), its heads as they are."""
    plan = LearnPlan(tier=TierPlan(source="dir", tier_id="t"), data=None, lora_r=4)
    since = api.train_cycle(
        tiers["teacher"], tmp_path / "since", examples, train=QUICK, seed=1,
        lora=api.LoraSettings(r=4, alpha=8.0),
    ).adapter_dir  # fmt: skip
    own = api.train_cycle(
        tiers["teacher"], tmp_path / "own", examples, adapter=since, train=QUICK, seed=2
    ).adapter_dir
    sent = cycle.learned_since(plan, own, since, tmp_path / "sent")
    got, a, b = (read_adapter(p) for p in (sent, own, since))
    assert got.config["r"] == 8
    eff, want_a, want_b = got.effective(), a.effective(), b.effective()
    for key, value in eff.items():
        if key.endswith(DELTA_SUFFIX):
            np.testing.assert_allclose(value, want_a[key] - want_b[key], atol=1e-5)
        else:
            np.testing.assert_array_equal(value, want_a[key])
    assert any(
        float(np.abs(want_b[k]).max()) > 0 for k in want_b if k.endswith(DELTA_SUFFIX)
    )  # the kept part was not zero: it is left out of what is sent
