"""The learning plan and data files: hostile JSON is refused with the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2phier.learnplan import MAX_PLAN_BYTES, PlanError, dump_data, load_data, load_plan

GOOD: dict[str, Any] = {
    "tier": {"source": "dir", "tier_id": "devnet/minilm", "dir": "tiers/root",
             "weights_cid": "bafkreiexample"},
    "data": "data.json",
    "train": True,
    "parent": False,
    "rule": "median",
    "collect_s": 30,
}  # fmt: skip


def _write(tmp_path: Path, plan: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def test_a_good_plan_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    plan = load_plan(_write(tmp_path, GOOD))
    assert plan.tier.dir == tmp_path / "tiers" / "root"
    assert plan.data == tmp_path / "data.json"
    assert plan.trains and not plan.parent
    assert plan.rule == "median" and plan.collect_s == 30.0
    assert plan.steps_per_cycle == 8  # default


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tier": {"source": "magic", "tier_id": "x"}}, "plan.tier.source"),
        ({"tier": {"source": "dir", "tier_id": "x"}}, "plan.tier"),
        ({"tier": {"source": "distil", "tier_id": "x"}}, "plan.tier"),
        ({"tier": {"source": "distil", "tier_id": "x", "layers": [0, "5"]}}, "plan.tier.layers"),
        ({"tier": {"source": "int8", "tier_id": 7}}, "plan.tier.tier_id"),
        ({"rule": "krum"}, "plan.rule"),
        ({"steps_per_cycle": -1}, "plan.steps_per_cycle"),
        ({"steps_per_cycle": True}, "plan.steps_per_cycle"),
        ({"lr": float("inf")}, "plan.lr"),
        ({"clip_norm": -1}, "plan.clip_norm"),
        ({"train": "yes"}, "plan.train"),
        ({"parent": 1}, "plan.parent"),
        ({"data": 5}, "plan.data"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError, match=field.replace(".", r"\.")):
        load_plan(_write(tmp_path, {**GOOD, **change}))


def test_oversized_missing_and_non_json_plans_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_PLAN_BYTES + 1))
    with pytest.raises(PlanError, match="over"):
        load_plan(big)
    with pytest.raises(PlanError, match="learning plan"):
        load_plan(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not JSON"):
        load_plan(bad)
    with pytest.raises(PlanError, match="JSON object"):
        load_plan(_write(tmp_path, [1, 2]))


class _Ex:
    def __init__(self, uid: str, text: str, label: str) -> None:
        self.uid, self.text, self.label, self.domain, self.subdomain = (
            uid,
            text,
            label,
            "news",
            label,
        )


def test_data_round_trip_and_hostile_records(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(dump_data([[_Ex("a", "one", "tech")], [_Ex("b", "two", "business")]],
                               [_Ex("c", "three", "tech")]))  # fmt: skip
    data = load_data(path)
    assert [len(a) for a in data.arrivals] == [1, 1]
    assert data.arrivals[1][0].text == "two" and data.test[0].label == "tech"
    path.write_text(json.dumps({"arrivals": [[{"uid": "a", "text": 5}]], "test": []}))
    with pytest.raises(PlanError, match=r"arrivals\[0\]\[0\]\.text"):
        load_data(path)
    path.write_text(json.dumps({"test": []}))
    with pytest.raises(PlanError, match="arrivals"):
        load_data(path)
