"""A parent's own domain's part kept on its parent's next version (``cycle.keep_domain``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2phier.learn import api, cycle
from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.train import TrainConfig, read_adapter
from p2phier.learnplan import DataRecord, LearnPlan, TierPlan

from .conftest import ML

pytestmark = [*ML, pytest.mark.usefixtures("torch_ready")]

QUICK = TrainConfig(steps=10, batch_size=8, lr=1e-2, max_length=32)
HOME = ("business", "tech")


def _records(examples: list[Example]) -> list[DataRecord]:
    # one held domain (the node's): the rule's per-domain check has nothing to split
    return [DataRecord(e.uid, e.text, e.label, "en/news", "") for e in examples]


def test_a_parent_keeps_its_domain_part_where_its_validation_set_gains(
    tmp_path: Path, master_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    train, test = bbc_split
    home = [e for e in train if e.label in HOME]
    away = [e for e in train if e.label not in HOME]
    base = api.init_version(master_dir, tmp_path / "base", seed=0)
    # what the node published of its own (its domain: business and tech), and its parent's
    # next version, learned elsewhere (the other topics) from the same base
    flat = api.train_cycle(
        master_dir, tmp_path / "flat", sample_per_label(home, 10, seed=1),
        adapter=base, train=QUICK, seed=1,
    ).adapter_dir  # fmt: skip
    version = api.train_cycle(
        master_dir, tmp_path / "version", sample_per_label(away, 10, seed=2),
        adapter=base, train=QUICK, seed=2,
    ).adapter_dir  # fmt: skip
    plan = LearnPlan(tier=TierPlan(source="dir", tier_id="t"), data=None, labels=HOME)
    valid = _records(sample_per_label([e for e in test if e.label in HOME], 10, seed=3))
    out = cycle.keep_domain(
        plan, master_dir, version, tmp_path / "kept", flat=flat, base=base,
        validation=valid, round_=2, now=0.0,
    )  # fmt: skip
    assert out["kept"], out["reason"]
    assert out["validation_kept"] > out["validation_version"]
    assert out["adapter"] == str(tmp_path / "kept")
    got = read_adapter(tmp_path / "kept").effective()
    parts = [read_adapter(p).effective() for p in (version, flat, base)]
    for key, value in got.items():
        # version + (flat - base), exactly: three rank-4 LoRAs fit the version's rank 16
        want = parts[0][key].astype(np.float64) + parts[1][key] - parts[2][key]
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5)

    # nothing of its own (flat == base): the version alone, as it came
    same = cycle.keep_domain(
        plan, master_dir, version, tmp_path / "none", flat=base, base=base,
        validation=valid, round_=2, now=0.0,
    )  # fmt: skip
    assert not same["kept"] and same["adapter"] == str(version)
    assert same["validation_kept"] == same["validation_version"]
