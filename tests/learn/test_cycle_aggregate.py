"""The node's aggregation step (p2phier.learn.cycle.aggregate) with and without a probe set.

A parent that does not train sends no update of its own: its training data (FLTrust's
root set) trains the probe update, the screen's trusted direction under every rule and
the probe-scored rule's reference.  Real MiniLM-free tiny tier, real training."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from p2phier.devnet.attacker import poison
from p2phier.learn import cycle
from p2phier.learn.data import Example, sample_per_label
from p2phier.learnplan import DataRecord, LearnPlan, TierPlan

from .conftest import ML

pytestmark = ML


def _records(examples: list[Example]) -> list[DataRecord]:
    return [DataRecord(e.uid, e.text, e.label, e.domain, e.subdomain) for e in examples]


@pytest.mark.slow
def test_a_parent_without_its_own_update_screens_with_a_probe_from_its_training_data(
    tmp_path: Path,
    master_dir: Path,
    bbc_split: tuple[list[Example], list[Example]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, _ = bbc_split
    plan = LearnPlan(
        tier=TierPlan(source="dir", tier_id="t"), data=None,
        steps_per_cycle=12, batch_size=8, lr=5e-3, max_length=48, lora_r=4,
    )  # fmt: skip
    # as the nodes do: the parent's first version, children training on it (cycle.train)
    v0 = cycle.init_version(plan, master_dir, [], tmp_path / "v0")
    children: dict[str, tuple[Path, float]] = {}
    for i in range(6):
        data = _records(sample_per_label(train, 8, seed=10 + i))
        out = cycle.train(
            plan, master_dir, [v0], tmp_path / f"c{i}", data, earlier=[], test=[],
            adapter=None, seed=i,
        )  # fmt: skip
        children[f"c{i}"] = (Path(out["adapter"]), 1.0)
    flipped = poison("sign-flip", 1.0, children["c0"][0], v0, out=tmp_path / "flip", seed=0)
    children["c0"] = (flipped, 1.0)
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
    found = {a: re.search(r"cos probe ([-+.\d]+)", r) for a, r in reasons.items()}
    probe_cos = {a: float(m[1]) for a, m in found.items() if m is not None}
    # ...and the probe counts (it agrees with the round): it trained as the children did, a
    # fresh LoRA from their shared seed on their version (from another seed its cosine with
    # every child's update was 0.01-0.03 in the real attack devnet, and it never counted)
    assert all("not counted" not in r for r in reasons.values()), reasons
    assert min(probe_cos[f"c{i}"] for i in range(1, 6)) > 0.05 > -0.05 > probe_cos["c0"], reasons
    assert not screened["screen"]["c0"]["ok"], reasons  # the sign flipper is left out
    assert all(screened["screen"][f"c{i}"]["ok"] for i in range(1, 6)), reasons
    # probe-scored: the flipper, pointing against the probe, would weigh 0 (FLTrust's ReLU);
    # a round that needs a probe and has no probe set is refused, never run without one
    scored = run("scored", replace(plan, rule="probe_scored"), probe)
    assert set(scored["weights"]) == {f"c{i}" for i in range(1, 6)}, scored["weights"]
    assert all(w > 0 for w in scored["weights"].values()), scored["weights"]
    with pytest.raises(Exception, match="probe"):
        run("unprobed", replace(plan, rule="probe_scored"), [])
    # with fewer updates than the screen's direction checks need, nothing reads a probe under
    # fedavg: none is trained (a default devnet parent has 2 children: its rounds stay short)
    from p2phier.learn.train import Session

    trained: list[int] = []
    real = Session.train_classifier

    def counted(self: Session, *args: Any, **kwargs: Any) -> Any:
        trained.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Session, "train_classifier", counted)
    few = {c: children[c] for c in ("c1", "c2", "c3")}
    out = cycle.aggregate(
        plan, master_dir, [], v0, updates=few, out_dir=tmp_path / "few", probe=probe,
        validation=[], round_=1, now=0.0,
    )  # fmt: skip
    assert trained == [] and set(out["weights"]) == set(few), out["weights"]
    run("probed-again", plan, probe)  # six updates: the probe is trained
    assert trained == [1]
