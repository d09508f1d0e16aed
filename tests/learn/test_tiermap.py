"""Adapters across tiers: block maps, mapped adapters, a student in a teacher's round, bundles.

A 3-block tiny teacher, a student keeping teacher blocks [0, 2] (so student
block 1 is teacher block 2: the index shift is what the mapping must get
right), and an int8 device copy of the student.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from p2phier.learn import api
from p2phier.learn.aggregate import (
    AggregationConfig,
    AggregationError,
    ChildUpdate,
    Rule,
    aggregate,
)
from p2phier.learn.data import Example
from p2phier.learn.models import ModelError, TierIntegrityError, load_tier, read_tier_info
from p2phier.learn.tiermap import block_map, map_adapter, tier_block_map, tier_blocks
from p2phier.learn.train import PEFT_PREFIX, Session, TrainConfig, read_adapter
from p2phier.store import MemoryStore

from .conftest import ML

pytestmark = ML

QUICK = TrainConfig(steps=4, batch_size=8, lr=5e-3, max_length=32)
LAYER = PEFT_PREFIX + "bert.encoder.layer."


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, tiers: dict[str, Path], examples: list[Example]
) -> tuple[Path, Path]:
    """Teacher-space (ancestor, version): both non-zero, the version trained on the ancestor."""
    root = tmp_path_factory.mktemp("stack")
    ancestor = api.train_cycle(tiers["teacher"], root / "a0", examples, train=QUICK, seed=1)
    version = api.train_cycle(
        tiers["teacher"],
        root / "v1",
        examples,
        parents=[ancestor.adapter_dir],
        train=QUICK,
        seed=2,
        init_seed=5,
    )
    return ancestor.adapter_dir, version.adapter_dir


def _block(key: str) -> int | None:
    if not key.startswith(LAYER):
        return None
    return int(key[len(LAYER) :].split(".", 1)[0])


def _by_block(state: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
    """A block's tensors keyed by their path inside the block."""
    prefix = f"{LAYER}{block}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _heads(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if _block(k) is None}


# --- block maps ---------------------------------------------------------------------------------


def test_block_maps_follow_the_tier_lineage(tiers: dict[str, Path]) -> None:
    teacher, student, int8 = (read_tier_info(tiers[n]) for n in ("teacher", "student", "int8"))
    assert [tier_blocks(tiers[n]) for n in ("teacher", "student", "int8")] == [3, 2, 2]
    assert block_map(student, teacher) == {0: 0, 1: 2}
    assert block_map(int8, student, n_blocks=2) == {0: 0, 1: 1}
    assert block_map(teacher, teacher, n_blocks=3) == {0: 0, 1: 1, 2: 2}
    assert tier_block_map(tiers["student"], tiers["teacher"]) == {0: 0, 1: 2}
    assert tier_block_map(tiers["int8"], tiers["student"]) == {0: 0, 1: 1}

    # Not derived directly (int8 of the student vs the teacher), the wrong way round, unrelated.
    unrelated = dataclasses.replace(teacher, tier_id="other/tier", weights_cid="bafyother")
    for child, parent in ((int8, teacher), (teacher, student), (student, unrelated)):
        with pytest.raises(ModelError, match="no block mapping") as info:
            block_map(child, parent, n_blocks=2)
        assert child.tier_id in str(info.value) and parent.tier_id in str(info.value)
    relabelled = dataclasses.replace(student, labels=("a", "b"))
    with pytest.raises(ModelError, match="labels"):
        block_map(relabelled, teacher)
    with pytest.raises(ModelError, match="block count"):
        block_map(teacher, teacher)
    with pytest.raises(ModelError, match="keeps 2 teacher layers"):
        block_map(student, teacher, n_blocks=3)


# --- mapped adapters ----------------------------------------------------------------------------


def test_down_then_up_keeps_the_mapped_blocks_exactly_and_drops_the_rest(
    tmp_path: Path, tiers: dict[str, Path], stack: tuple[Path, Path]
) -> None:
    _, version = stack
    kwargs = {"child_tier_dir": tiers["student"], "parent_tier_dir": tiers["teacher"]}
    down = api.map_for_tier(version, tmp_path / "down", direction="down", **kwargs)
    up = api.map_for_tier(down, tmp_path / "up", direction="up", **kwargs)
    source = read_adapter(version)
    d, u = read_adapter(down), read_adapter(up)

    # Student block i holds teacher block layers[i], bit for bit; the head passes through.
    assert {_block(k) for k in d.state} == {0, 1, None}
    for child_block, parent_block in ((0, 0), (1, 2)):
        src, got = _by_block(source.state, parent_block), _by_block(d.state, child_block)
        assert src.keys() == got.keys() and src
        assert all(np.array_equal(src[k], got[k]) for k in src)
    assert all(np.array_equal(v, _heads(d.state)[k]) for k, v in _heads(source.state).items())
    assert d.config["base_model_name_or_path"] == "tiny/student-l2"
    assert {m.split(".")[3] for m in d.config["target_modules"]} == {"0", "1"}

    # Back up: blocks 0 and 2 are the source's exactly, block 1 is gone.
    assert {_block(k) for k in u.state} == {0, 2, None}
    for key, value in u.state.items():
        assert np.array_equal(value, source.state[key])
    assert not _by_block(u.state, 1)
    assert u.config["base_model_name_or_path"] == "tiny/teacher-l3"
    assert all(".layer.1." not in m for m in u.config["target_modules"])

    # Deterministic bytes; and PEFT accepts both as adapters of their tiers.
    again = api.map_for_tier(version, tmp_path / "down2", direction="down", **kwargs)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (again / name).read_bytes() == (down / name).read_bytes()
    Session(load_tier(tiers["student"]), adapter=down)
    Session(load_tier(tiers["teacher"]), adapter=up)


def test_mapping_misuse_is_refused(
    tmp_path: Path, tiers: dict[str, Path], stack: tuple[Path, Path]
) -> None:
    _, version = stack
    with pytest.raises(ModelError, match="child block 1"):  # teacher blocks are not child blocks
        map_adapter(version, tmp_path / "a", {0: 0, 2: 1}, direction="up")
    with pytest.raises(ModelError, match="two child blocks"):
        map_adapter(version, tmp_path / "b", {0: 1, 1: 1}, direction="down")
    with pytest.raises(ModelError, match="keeps none"):
        map_adapter(version, tmp_path / "c", {0: 7}, direction="down")
    with pytest.raises(ModelError, match="direction"):
        map_adapter(version, tmp_path / "d", {0: 0}, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="no block mapping"):
        api.map_for_tier(
            version,
            tmp_path / "e",
            child_tier_dir=tiers["int8"],
            parent_tier_dir=tiers["teacher"],
            direction="down",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- a student in its teacher's round -------------------------------------------------------------


def test_a_students_update_moves_only_its_blocks_and_the_head(
    tmp_path: Path, tiers: dict[str, Path], stack: tuple[Path, Path], examples: list[Example]
) -> None:
    ancestor, version = stack
    teacher, student = tiers["teacher"], tiers["student"]
    kwargs = {"child_tier_dir": student, "parent_tier_dir": teacher}
    down = [
        api.map_for_tier(a, tmp_path / f"down-{i}", direction="down", **kwargs)
        for i, a in enumerate((ancestor, version))
    ]
    trained = api.train_cycle(student, tmp_path / "s", examples, parents=down, train=QUICK, seed=3)
    up = api.map_for_tier(trained.adapter_dir, tmp_path / "s-up", direction="up", **kwargs)

    # Unmapped, the student's adapter would pass for the teacher's blocks 0 and 1: refused.
    with pytest.raises(ModelError, match="map it"):
        api.aggregate_round(
            teacher,
            version,
            {"s": (trained.adapter_dir, 1.0)},
            tmp_path / "bad",
            parents=[ancestor],
        )

    before = read_adapter(version).effective()
    alone = api.aggregate_round(
        teacher, version, {"s": (up, 1.0)}, tmp_path / "alone", parents=[ancestor]
    )
    after = read_adapter(alone.candidate_dir).effective()
    assert alone.refactor_error < 1e-4 and after.keys() == before.keys()
    for key in before:
        changed = not np.allclose(after[key], before[key], rtol=0, atol=1e-5)
        assert changed == (_block(key) in (0, 2, None)), key  # head: block None
    assert any(_block(k) is None for k in before)

    # With a full-depth sibling, teacher block 1 is the sibling's update alone (not halved:
    # the student is no zero there), blocks 0 and 2 the mean of both.
    sibling = api.train_cycle(
        teacher, tmp_path / "t", examples, parents=[ancestor, version], train=QUICK, seed=4
    )
    both = api.aggregate_round(
        teacher,
        version,
        {"s": (up, 1.0), "t": (sibling.adapter_dir, 1.0)},
        tmp_path / "both",
        parents=[ancestor],
    )
    mixed = read_adapter(both.candidate_dir).effective()
    du, dt = api.child_update(up, version), api.child_update(sibling.adapter_dir, version)
    for key in before:
        expected = dt[key] if _block(key) == 1 else (du[key] + dt[key]) / 2
        np.testing.assert_allclose(mixed[key] - before[key], expected, rtol=0, atol=2e-5)


def test_the_int8_device_tier_maps_block_for_block(
    tmp_path: Path, tiers: dict[str, Path], stack: tuple[Path, Path], examples: list[Example]
) -> None:
    _, version = stack
    on_student = api.map_for_tier(
        version,
        tmp_path / "v-student",
        child_tier_dir=tiers["student"],
        parent_tier_dir=tiers["teacher"],
        direction="down",
    )
    kwargs = {"child_tier_dir": tiers["int8"], "parent_tier_dir": tiers["student"]}
    on_device = api.map_for_tier(on_student, tmp_path / "v-int8", direction="down", **kwargs)
    src, dev = read_adapter(on_student), read_adapter(on_device)
    assert src.state.keys() == dev.state.keys()
    assert all(np.array_equal(src.state[k], dev.state[k]) for k in src.state)
    assert {k: v for k, v in dev.config.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in src.config.items() if k != "base_model_name_or_path"
    }
    assert dev.config["base_model_name_or_path"] == "tiny/student-l2-int8"

    trained = api.train_cycle(
        tiers["int8"], tmp_path / "d", examples, parents=[on_device], train=QUICK
    )
    back = api.map_for_tier(trained.adapter_dir, tmp_path / "d-up", direction="up", **kwargs)
    assert read_adapter(back).state.keys() == read_adapter(trained.adapter_dir).state.keys()
    assert api.child_update(back, on_student).keys() == src.effective().keys()


# --- per-module aggregation -----------------------------------------------------------------------


def _u(name: str, weight: float = 1.0, **tensors: list[float]) -> ChildUpdate:
    return ChildUpdate(name, {k: np.array(v, np.float32) for k, v in tensors.items()}, weight)


@pytest.mark.parametrize(
    "config",
    [
        AggregationConfig(Rule.FEDAVG),
        AggregationConfig(Rule.MEDIAN),
        AggregationConfig(Rule.TRIMMED_MEAN, trim_ratio=0.2),
        AggregationConfig(Rule.NORM_CLIP, clip_norm=100.0),
    ],
    ids=lambda c: c.rule.value,
)
def test_partial_updates_are_aggregated_over_the_children_that_have_each_tensor(
    config: AggregationConfig,
) -> None:
    updates = [_u("a", x=[1.0, 2.0], y=[4.0]), _u("b", x=[3.0, 4.0]), _u("c", y=[8.0], z=[1.0])]
    result = aggregate(updates, config, partial=True)
    assert sorted(result.delta) == ["x", "y", "z"]
    np.testing.assert_allclose(result.delta["x"], [2.0, 3.0])
    np.testing.assert_allclose(result.delta["y"], [6.0])
    np.testing.assert_allclose(result.delta["z"], [1.0])  # c alone: not diluted by zeros
    with pytest.raises(AggregationError, match="different tensors"):
        aggregate(updates, config)  # without partial, every child must cover every tensor
    with pytest.raises(AggregationError, match="shape"):
        aggregate([*updates, _u("d", z=[1.0, 2.0])], config, partial=True)


def test_partial_fedavg_weights_and_probe_scoring_are_per_tensor() -> None:
    ups = [_u("a", 3.0, x=[1.0], y=[2.0]), _u("b", 1.0, x=[5.0])]
    fed = aggregate(ups, AggregationConfig(Rule.FEDAVG), partial=True)
    np.testing.assert_allclose(fed.delta["x"], [2.0])  # 0.75 * 1 + 0.25 * 5
    np.testing.assert_allclose(fed.delta["y"], [2.0])
    # b agrees with the probe on its one tensor and is rescaled to the probe's norm there.
    probe = {"x": np.array([2.0], np.float32), "y": np.array([-1.0], np.float32)}
    ups = [_u("a", x=[1.0], y=[2.0]), _u("b", x=[5.0])]
    scored = aggregate(ups, AggregationConfig(Rule.PROBE_SCORED), probe=probe, partial=True)
    assert scored.children[0].score == 0.0 and scored.children[1].score == pytest.approx(1.0)
    np.testing.assert_allclose(scored.delta["x"], [2.0])
    np.testing.assert_allclose(scored.delta["y"], [0.0])  # its only holder disagrees


# --- tier bundles -------------------------------------------------------------------------------


def test_tiers_travel_as_bundles_and_a_wrong_one_is_removed(
    tmp_path: Path, tiers: dict[str, Path]
) -> None:
    store = MemoryStore()
    info = read_tier_info(tiers["int8"])
    cid = api.export_tier(store, tiers["int8"])
    assert api.export_tier(MemoryStore(), tiers["int8"]) == cid
    got = api.import_tier(store, cid, tmp_path / "in", expected_weights_cid=info.weights_cid)
    assert got == info
    for f in tiers["int8"].iterdir():
        assert (tmp_path / "in" / f.name).read_bytes() == f.read_bytes()

    student = read_tier_info(tiers["student"])
    with pytest.raises(TierIntegrityError, match=student.weights_cid):
        api.import_tier(store, cid, tmp_path / "wrong", expected_weights_cid=student.weights_cid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
