"""The node's aggregation step (p2phier.learn.cycle.aggregate) with and without a probe set.

A parent that does not train sends no update of its own: its training data (FLTrust's
root set) trains the probe update, the screen's trusted direction under every rule and
the probe-scored rule's reference.  Real MiniLM-free tiny tier, real training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from p2phier.devnet.attacker import poison
from p2phier.learn import api, cycle
from p2phier.learn.data import Example, sample_per_label
from p2phier.learn.train import TrainConfig
from p2phier.learnplan import DataRecord, LearnPlan, TierPlan

from .conftest import ML

pytestmark = ML


def _records(examples: list[Example]) -> list[DataRecord]:
    return [DataRecord(e.uid, e.text, e.label, e.domain, e.subdomain) for e in examples]


@pytest.mark.slow
def test_a_parent_without_its_own_update_screens_with_a_probe_from_its_training_data(
    tmp_path: Path, master_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    train, _ = bbc_split
    quick = TrainConfig(steps=12, batch_size=8, lr=5e-3, max_length=48)
    v0 = api.init_version(master_dir, tmp_path / "v0")
    children: dict[str, tuple[Path, float]] = {}
    for i in range(6):
        data = sample_per_label(train, 8, seed=10 + i)
        out = api.train_cycle(master_dir, tmp_path / f"c{i}", data, parents=[v0], train=quick)
        children[f"c{i}"] = (out.adapter_dir, 1.0)
    flipped = poison("sign-flip", 1.0, children["c0"][0], v0, out=tmp_path / "flip", seed=0)
    children["c0"] = (flipped, 1.0)
    plan = LearnPlan(
        tier=TierPlan(source="dir", tier_id="t"), data=None,
        steps_per_cycle=12, batch_size=8, lr=5e-3, max_length=48,
    )  # fmt: skip
    probe = _records(sample_per_label(train, 8, seed=50))

    def run(name: str, plan: LearnPlan, probe: list[DataRecord]) -> dict[str, Any]:
        return cycle.aggregate(
            plan, master_dir, [], v0, updates=children, out_dir=tmp_path / name,
            probe=probe, validation=[], round_=1, now=0.0,
        )  # fmt: skip

    # without a probe set the screen has no trusted direction: no update is compared with one
    bare = run("bare", plan, [])
    assert all("cos probe" not in v["reason"] for v in bare["screen"].values()), bare["screen"]
    # with its training data as probe set, every update is (fedavg, the default rule)
    screened = run("probed", plan, probe)
    reasons = {a: v["reason"] for a, v in screened["screen"].items()}
    assert all("cos probe" in r for r in reasons.values()), reasons
    assert not screened["screen"]["c0"]["ok"], reasons  # the sign flipper is left out
    assert all(screened["screen"][f"c{i}"]["ok"] for i in range(1, 6)), reasons
    # probe-scored: the flipper, pointing against the probe, would weigh 0 (FLTrust's ReLU);
    # a round that needs a probe and has no probe set is refused, never run without one
    scored = run("scored", replace(plan, rule="probe_scored"), probe)
    assert set(scored["weights"]) == {f"c{i}" for i in range(1, 6)}, scored["weights"]
    assert all(w > 0 for w in scored["weights"].values()), scored["weights"]
    with pytest.raises(Exception, match="probe"):
        run("unprobed", replace(plan, rule="probe_scored"), [])
