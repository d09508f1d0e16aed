"""The learning plan and data files: hostile JSON is refused with the field named."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from p2phier.learnplan import (
    CONTINUAL,
    MAX_PLAN_BYTES,
    PlanError,
    check_plan,
    dump_data,
    load_data,
    load_plan,
)

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
    assert plan.labels == ()  # default: every label of the tier
    named = load_plan(_write(tmp_path, {**GOOD, "labels": ["tech", "sport"]}))
    assert named.labels == ("tech", "sport")


def test_every_continual_method_is_a_plan_choice(tmp_path: Path) -> None:
    assert "replay+logits" in CONTINUAL
    plan = load_plan(_write(tmp_path, {**GOOD, "continual": "replay+logits"}))
    assert plan.continual == "replay+logits" and plan.logit_replay_weight == 0.3  # default
    weighted = {**GOOD, "continual": "replay+logits", "logit_replay_weight": 1}
    assert load_plan(_write(tmp_path, weighted)).logit_replay_weight == 1.0


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
        ({"continual": "replay+distil"}, "plan.continual"),
        ({"logit_replay_weight": 0}, "plan.logit_replay_weight"),
        ({"logit_replay_weight": float("nan")}, "plan.logit_replay_weight"),
        ({"labels": "tech"}, "plan.labels"),
        ({"labels": ["tech", "tech"]}, "plan.labels"),
        ({"labels": ["tech", ""]}, "plan.labels"),
        ({"labels": ["x" * 300]}, "plan.labels"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError, match=field.replace(".", r"\.")):
        load_plan(_write(tmp_path, {**GOOD, **change}))


def test_oversized_missing_and_non_json_plans_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_PLAN_BYTES + 1))
    with pytest.raises(PlanError, match=f"big.json: larger than {MAX_PLAN_BYTES} bytes"):
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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tier": {"source": "int8"}}, "plan.tier.tier_id: missing"),
        ({"tier": None}, "plan.tier: must be an object"),
        ({"lr": 10**400}, "plan.lr"),  # math.isfinite would overflow on it
        ({"lr": float("nan")}, "plan.lr"),
        ({"tier": {"source": "distil", "tier_id": "x", "layers": [0], "max_vocab": 0}},
         "plan.tier.max_vocab"),
        ({"tier": {"source": "int8", "tier_id": "x", "distill_steps": -1}},
         "plan.tier.distill_steps"),
    ],
)  # fmt: skip
def test_errors_name_the_file_and_the_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert str(err.value).startswith(f"learning plan {path}: ")
    assert message in str(err.value)


def test_whatever_the_parser_raises_is_a_plan_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)  # past the JSON parser's recursion limit
    with pytest.raises(PlanError, match=r"deep\.json"):
        load_plan(deep)
    with pytest.raises(PlanError, match="learning plan"):
        load_plan(tmp_path)  # a directory
    with pytest.raises(PlanError, match="not JSON"):
        (tmp_path / "latin1.json").write_bytes(b'{"a": "\xff"}')
        load_plan(tmp_path / "latin1.json")


_EXAMPLE = {"uid": "a", "text": "t", "label": "l", "domain": "d", "subdomain": "s"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"arrivals": [[_EXAMPLE, {**_EXAMPLE, "uid": None}]]},
         "arrivals[0][1].uid: expected a string"),
        ({"arrivals": [[], [{k: v for k, v in _EXAMPLE.items() if k != "domain"}]]},
         "arrivals[1][0].domain: missing"),
        ({"arrivals": [], "test": [_EXAMPLE, "x"]}, "test[1]: expected an example"),
        ({"arrivals": [{"uid": "a"}]}, "arrivals[0]: expected a list of examples"),
        ({"arrivals": [], "test": [{**_EXAMPLE, "text": "x" * ((1 << 20) + 1)}]},
         "test[0].text: 1048577 characters"),
        ([], "expected an object with 'arrivals'"),
    ],
)  # fmt: skip
def test_data_errors_name_the_file_the_example_and_the_field(
    tmp_path: Path, data: object, message: str
) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError) as err:
        load_data(path)
    assert str(err.value).startswith(f"data file {path}: ")
    assert message in str(err.value)


def test_check_plan_loads_the_data_file_too(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    (tmp_path / "data.json").write_text(json.dumps({"arrivals": [[_EXAMPLE]], "test": []}))
    assert check_plan(path).data == tmp_path / "data.json"
    (tmp_path / "data.json").write_text(json.dumps({"arrivals": [[{**_EXAMPLE, "uid": 1}]]}))
    with pytest.raises(PlanError, match=r"data\.json: arrivals\[0\]\[0\]\.uid"):
        check_plan(path)
    (tmp_path / "data.json").unlink()
    with pytest.raises(PlanError, match="data file"):
        check_plan(path)
    assert check_plan(_write(tmp_path, {**GOOD, "data": None})).data is None


def test_the_templates_in_node_md_are_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "node" / "NODE.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, re.S)
    (data,) = [b for b in blocks if '"arrivals"' in b]
    plans = [b for b in blocks if b is not data]
    assert len(plans) == 2  # "The learning plan" and "Joining a network"
    (tmp_path / "data.json").write_text(data)
    for plan in plans:
        (tmp_path / "plan.json").write_text(plan)
        loaded = check_plan(tmp_path / "plan.json")
        assert loaded.trains and loaded.data == tmp_path / "data.json"
    assert [len(a) for a in load_data(tmp_path / "data.json").arrivals] == [1, 0]


def test_the_config_of_node_md_joining_section_is_valid(tmp_path: Path) -> None:
    """NODE.md's "Joining a network" config.toml loads as a node's config: a leaf that
    learns and follows its parent."""
    from p2phier.config import load_config
    from p2phier.identity import Identity

    doc = (Path(__file__).resolve().parents[1] / "node" / "NODE.md").read_text()
    (toml,) = re.findall(r"```toml\n(.*?)```", doc, re.S)
    peer = str(Identity.from_seed(b"\x05" * 32).peer_id)  # for the placeholder 12D3KooW...
    text = re.sub(r"(?m)^ +", "", toml).replace("12D3KooW...", peer)
    (tmp_path / "config.toml").write_text(text)
    cfg = load_config(tmp_path / "config.toml", environ={}, flags={"home": str(tmp_path)})
    assert cfg.layer.label == "domain" and cfg.domain == "en/news"
    assert cfg.learn_enabled and cfg.learn_follow_parent and cfg.bootstrap


def test_node_md_documents_every_learning_setting_with_its_default() -> None:
    from p2phier.learnplan import SETTINGS

    doc = (Path(__file__).resolve().parents[1] / "node" / "NODE.md").read_text()
    rows = {
        cells[1].strip(" `"): cells[4].strip(" `")
        for line in doc.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 5
    }
    for f in SETTINGS:
        assert f.name in rows, f"NODE.md's plan table has no row for {f.name}"
        shown = rows[f.name]
        if isinstance(f.default, bool):
            assert shown == json.dumps(f.default), f.name
        elif f.default is None:
            assert shown == "null", f.name
        elif isinstance(f.default, str):
            assert shown == f.default, f.name
        else:
            assert float(shown) == f.default, f.name
