"""The devnet's poisoning attackers (p2phier/devnet/attacker.py): each behaviour changes the
update a parent computes (``api.child_update``) exactly as its name says; attack specs parse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2phier.devnet.attacker import (
    ATTACKS,
    PoisoningLearner,
    _flip_labels,
    daemon_class,
    poison,
)
from p2phier.learn.api import child_update
from p2phier.learn.train import write_adapter
from p2phier.learnplan import DataRecord, NodeData

pytestmark = pytest.mark.ml

MOD = "base_model.model.encoder.layer.0.attention.self.query"
HEAD = "base_model.model.classifier.weight"
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}


def _adapter(path: Path, seed: int, head: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(seed)
    state = {
        MOD + ".lora_A.weight": rng.normal(size=(2, 6)).astype(np.float32),
        MOD + ".lora_B.weight": rng.normal(size=(5, 2)).astype(np.float32),
        HEAD: rng.normal(size=(3, 5)).astype(np.float32) if head is None else head,
    }
    return write_adapter(path, state, CONFIG)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    version = _adapter(tmp_path / "version", 1)
    mine = _adapter(tmp_path / "mine", 2)
    return mine, version, child_update(mine, version)


@pytest.mark.parametrize(("behaviour", "factor"), [("sign-flip", -1.0), ("scale", 10.0)])
def test_sign_flip_and_scale_multiply_the_update(
    tmp_path: Path, pair: tuple[Path, Path, dict[str, np.ndarray]], behaviour: str, factor: float
) -> None:
    mine, version, honest = pair
    out = poison(behaviour, abs(factor), mine, version, out=tmp_path / "p", seed=0)
    sent = child_update(out, version)
    assert sent.keys() == honest.keys()
    for key in honest:
        np.testing.assert_allclose(sent[key], factor * honest[key], rtol=1e-4, atol=1e-5)


def test_free_ride_sends_a_zero_update(
    tmp_path: Path, pair: tuple[Path, Path, dict[str, np.ndarray]]
) -> None:
    mine, version, _ = pair
    sent = child_update(poison("free-ride", 1.0, mine, version, out=tmp_path / "p", seed=0),
                        version)  # fmt: skip
    assert all(float(np.abs(v).max()) == 0.0 for v in sent.values())


def test_noise_keeps_the_norm_and_loses_the_direction(
    tmp_path: Path, pair: tuple[Path, Path, dict[str, np.ndarray]]
) -> None:
    mine, version, honest = pair
    sent = child_update(poison("noise", 1.0, mine, version, out=tmp_path / "p", seed=3), version)
    # the head's difference is replaced by noise of its norm (the LoRA B factor likewise)
    assert np.linalg.norm(sent[HEAD]) == pytest.approx(np.linalg.norm(honest[HEAD]), rel=1e-4)
    assert not np.allclose(sent[HEAD], honest[HEAD])


def test_label_flip_mirrors_labels_and_keeps_the_test_set() -> None:
    def rec(label: str) -> DataRecord:
        return DataRecord(f"u-{label}", "text", label, "news", label)

    data = NodeData(((rec("a"), rec("b")), (rec("c"),)), (rec("a"),))
    flipped = _flip_labels([rec("a"), rec("b"), rec("c")], data)
    assert [r.label for r in flipped] == ["c", "b", "a"]
    assert data.test[0].label == "a"


def test_attack_specs_parse_and_bad_ones_are_refused() -> None:
    assert daemon_class("foreign-artifact") is ATTACKS["foreign-artifact"]
    cls = daemon_class("scale:4@2")
    learner = cls.learner_class  # type: ignore[attr-defined]
    assert issubclass(learner, PoisoningLearner)
    assert (learner.behaviour, learner.strength, learner.from_round) == ("scale", 4.0, 2)
    for bad in ("", "nice", "scale:-1", "scale:x", "noise@0", "foreign-artifact:2",
                "flood:0", "sybil:x", "flood@2"):  # fmt: skip
        with pytest.raises(ValueError, match="unknown attack"):
            daemon_class(bad)


def test_network_attack_specs_parse() -> None:
    from p2phier.devnet.netattack import NETWORK, FloodDaemon, SybilDaemon

    for name, cls in NETWORK.items():
        assert daemon_class(name) is cls
        assert daemon_class(f"{name}@1") is cls
    flood = daemon_class("flood:7")
    assert issubclass(flood, FloodDaemon) and flood.rate == 7.0  # type: ignore[attr-defined]
    sybil = daemon_class("sybil:12@1")
    assert issubclass(sybil, SybilDaemon) and sybil.count == 12  # type: ignore[attr-defined]


def test_a_corrupting_source_flips_one_bit_of_every_block() -> None:
    from p2phier.cid import CID
    from p2phier.devnet.netattack import _Corrupting
    from p2phier.store import MemoryStore

    store = MemoryStore()
    cid = CID.raw(b"some block bytes")
    store.put_block(cid, b"some block bytes")
    bad = _Corrupting(store).get_block(cid)
    assert len(bad) == len(b"some block bytes") and bad != b"some block bytes"
    assert not cid.verify(bad)


@pytest.mark.parametrize("behaviour", ["alie", "ipm"])
def test_colluders_craft_where_the_parent_aggregates(tmp_path: Path, behaviour: str) -> None:
    """ALIE sends mean - z * std of the honest updates, IPM -eps * mean, both on the merged
    LoRA deltas and head differences the parent computes (``api.child_update``), whatever
    each child's own A factors."""
    from p2phier.devnet.attacker import collude

    version = _adapter(tmp_path / "version", 1)
    honest = [_adapter(tmp_path / f"h{i}", 10 + i) for i in range(5)]
    out = collude(behaviour, 0.7, honest, version, out=tmp_path / "out")
    updates = [child_update(h, version) for h in honest]
    sent = child_update(out, version)
    assert sent.keys() == updates[0].keys()
    for key in sent:
        diffs = np.stack([u[key].astype(np.float64) for u in updates])
        want = diffs.mean(0) - 0.7 * diffs.std(0) if behaviour == "alie" else -0.7 * diffs.mean(0)
        np.testing.assert_allclose(sent[key], want, rtol=1e-3, atol=1e-4)
