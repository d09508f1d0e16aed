"""Scenario files: the shipped ones load; bad ones fail naming the field path."""

from __future__ import annotations

import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from p2phier.config import load_config
from p2phier.devnet.runner import node_plan, node_toml
from p2phier.devnet.scenario import (
    DEVNET_SETTINGS,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    scenarios_dir,
)
from p2phier.errors import ConfigError
from p2phier.fields import Bool, Choice, Int, Num, Optional
from p2phier.learnplan import SETTINGS, TABLES, LearnPlan, LearnSettings, load_plan, settings_json
from p2phier.records import Layer

SMALL = """
rounds = 2
[tiers.tiny]
kind = "tiny"
[tiers.stud]
kind = "student"
teacher = "tiny"
layers = [0]
[[nodes]]
name = "master"
layer = "master"
tier = "tiny"
[[nodes]]
name = "en"
layer = "language"
domain = "en"
tier = "tiny"
[[nodes]]
name = "news"
layer = "domain"
domain = "en/news"
tier = "tiny"
[nodes.shard]
dataset = "bbc"
home = ["tech"]
train = 4
test = 2
"""


def parse(text: str) -> Scenario:
    import tomllib

    return parse_scenario(tomllib.loads(text))


def test_the_default_scenario_is_the_twelve_node_hierarchy_of_the_issue() -> None:
    s = load_scenario(scenarios_dir() / "default.toml")
    by_layer = {layer: [n for n in s.nodes if n.layer is layer] for layer in Layer}
    assert [len(by_layer[layer]) for layer in Layer] == [1, 1, 2, 4, 4]
    assert s.master.domain == ""
    assert {n.domain for n in by_layer[Layer.DOMAIN]} == {"en/news", "en/healthcare"}
    assert {n.shard.dataset for n in by_layer[Layer.DEVICE] if n.shard} == {"bbc", "drugs"}
    # every device hangs under its own sub-domain node, every sub-domain under its domain
    for device in by_layer[Layer.DEVICE]:
        parent = s.node(device.parent or "")
        assert parent.layer is Layer.SUBDOMAIN and parent.domain == device.domain
    assert sorted(n.name for n in s.training_nodes()) == sorted(
        n.name for n in by_layer[Layer.SUBDOMAIN] + by_layer[Layer.DEVICE]
    )
    assert s.tier_lineage("device") == ["device", "student", "minilm"]
    assert s.to_dict()["nodes"][0]["layer"] == "master"


def test_the_ci_scenario_is_five_nodes_on_three_layers_for_two_rounds() -> None:
    s = load_scenario(scenarios_dir() / "ci.toml")
    assert len(s.nodes) == 5 and s.rounds == 2
    assert {n.layer for n in s.nodes} == {Layer.MASTER, Layer.LANGUAGE, Layer.DOMAIN}
    # the domain nodes are the leaves, so they train
    assert {n.name for n in s.training_nodes()} == {"news-a", "news-b", "health"}
    assert all(n.parent == "en" for n in s.training_nodes())


def test_the_fault_scenario_kills_a_subdomain_node_in_round_1_and_restarts_it_in_round_2() -> None:
    s = load_scenario(scenarios_dir() / "fault.toml")
    assert [(f.round, f.action) for f in s.faults] == [(1, "kill"), (2, "restart")]
    assert {f.node for f in s.faults} == {"news-tech"}
    assert s.node("news-tech").layer is Layer.SUBDOMAIN
    with pytest.raises(ScenarioError, match=r"faults\[1\]\.round: 2 is past the last round"):
        s.with_rounds(1)
    assert s.with_rounds(5).rounds == 5


def test_loading_the_scenarios_does_not_import_torch_or_the_corpora() -> None:
    import subprocess

    code = (
        "import sys; from p2phier.devnet.scenario import load_scenario, scenarios_dir;"
        "import p2phier.devnet.baselines, p2phier.devnet.report;"
        "load_scenario(scenarios_dir() / 'default.toml');"
        "heavy = ('torch', 'transformers', 'matplotlib', 'trio');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_parent_is_resolved_by_the_longest_domain_prefix_and_attackers_are_parsed() -> None:
    text = (
        SMALL
        + """
[[nodes]]
name = "news-tech"
layer = "subdomain"
domain = "en/news/tech"
tier = "stud"
[nodes.shard]
dataset = "bbc"
home = ["tech"]
others = ["business"]
train = 3
test = 1
skew = 0.5
[[attackers]]
node = "news-tech"
behaviour = "sign_flip"
from_round = 2
"""
    )
    s = parse(text)
    assert s.node("news-tech").parent == "news"
    assert not s.node("news").trains  # it has a child now
    assert s.attackers[0].behaviour == "sign_flip"
    assert s.attackers[0].spec == "sign-flip@2"  # no strength given: the attack's default
    assert s.node("news-tech").shard is not None
    net = parse(SMALL + '[[attackers]]\nnode = "en"\nbehaviour = "sybil"\nstrength = 12.0\n')
    assert net.attackers[0].spec == "sybil:12@1"  # a node that does not train may attack so
    assert net.attackers[0].joins
    fake = parse(SMALL + '[[attackers]]\nnode = "en"\nbehaviour = "fake_master"\n')
    assert not fake.attackers[0].joins


# (description, TOML text appended to / replacing SMALL, expected start of the message)
BAD: list[tuple[str, str, str]] = [
    (
        "bad domain",
        SMALL.replace('domain = "en/news"', 'domain = "en/Health"'),
        "nodes[2].domain: 'en/Health' is not a valid domain path",
    ),
    (
        "domain too shallow",
        SMALL.replace('domain = "en/news"', 'domain = "en"'),
        "nodes[2].domain: 'en' is not a valid domain path",
    ),
    (
        "unknown node key",
        SMALL.replace('name = "en"', 'name = "en"\ndomian = "x"'),
        "nodes[1].domian: unknown key",
    ),
    ("unknown top key", "roundz = 3\n" + SMALL, "roundz: unknown key"),
    (
        "duplicate name",
        SMALL.replace('name = "news"', 'name = "en"'),
        "nodes[2].name: 'en' is already used by nodes[1]",
    ),
    (
        "bad layer",
        SMALL.replace('layer = "language"', 'layer = "continent"'),
        "nodes[1].layer: layer 'continent' is not one of",
    ),
    (
        "no parent possible",
        SMALL.replace('layer = "language"\ndomain = "en"', 'layer = "language"\ndomain = "fr"'),
        "nodes[2]: no possible parent",
    ),
    (
        "explicit parent wrong layer",
        SMALL.replace(
            'domain = "en/news"\ntier = "tiny"',
            'domain = "en/news"\ntier = "tiny"\nparent = "master"',
        ),
        "nodes[2].parent: 'master'",
    ),
    (
        "unknown tier",
        SMALL.replace('domain = "en"\ntier = "tiny"', 'domain = "en"\ntier = "big"'),
        "nodes[1].tier: no tier is named 'big'",
    ),
    ("leaf without shard", SMALL.split("[nodes.shard]", maxsplit=1)[0], "nodes[2].shard: missing"),
    (
        "bad topic",
        SMALL.replace('home = ["tech"]', 'home = ["cooking"]'),
        "nodes[2].shard.home[0]: 'cooking' is not a BBC topic",
    ),
    (
        "skew out of range",
        SMALL.replace("test = 2", "test = 2\nskew = 1.5"),
        "nodes[2].shard.skew: 1.5 is outside [0.0, 1.0]",
    ),
    (
        "negative shard",
        SMALL.replace("train = 4", "train = -4"),
        "nodes[2].shard.train: -4 is outside",
    ),
    ("string rounds", SMALL.replace("rounds = 2", 'rounds = "two"'), "rounds: must be an integer"),
    (
        "fault on unknown node",
        SMALL + '[[faults]]\nround = 1\nnode = "ghost"\naction = "kill"\n',
        "faults[0].node: no node is named 'ghost'",
    ),
    (
        "fault past last round",
        SMALL + '[[faults]]\nround = 3\nnode = "news"\naction = "kill"\n',
        "faults[0].round: 3 is past the last round (2)",
    ),
    (
        "restart of a running node",
        SMALL + '[[faults]]\nround = 1\nnode = "news"\naction = "restart"\n',
        "faults[0].action: cannot restart 'news'",
    ),
    (
        "bad fault action",
        SMALL + '[[faults]]\nround = 1\nnode = "news"\naction = "explode"\n',
        "faults[0].action: 'explode' is not one of",
    ),
    (
        "arrival not summing to 1",
        SMALL + "[arrival]\nfractions = [0.5, 0.2]\n",
        "arrival.fractions: must sum to 1",
    ),
    (
        "arrival longer than rounds",
        SMALL + "[arrival]\nfractions = [0.25, 0.25, 0.5]\n",
        "arrival.fractions: 3 entries for 2 rounds",
    ),
    (
        "bad aggregation rule",
        SMALL + '[aggregation]\nrule = "mean"\n',
        "aggregation.rule: 'mean' is not one of",
    ),
    ("bad timing margin", SMALL + "[timing]\nmargin = -0.1\n", "timing.margin: -0.1 is outside"),
    ("unknown training key", SMALL + "[training]\nstep = 3\n", "training.step: unknown key"),
    (
        "student without teacher",
        SMALL.replace('teacher = "tiny"\n', ""),
        "tiers.stud.teacher: missing",
    ),
    (
        "tier cycle",
        SMALL.replace(
            'kind = "tiny"\n[tiers.stud]',
            'kind = "tiny"\n[tiers.a]\nkind = "int8"\nteacher = "b"\n[tiers.b]\nkind = "int8"\n'
            'teacher = "a"\n[tiers.stud]',
        ),
        "tiers.a.teacher: the teachers form a cycle",
    ),
    (
        "child on an unrelated tier",
        SMALL.replace('domain = "en"\ntier = "tiny"', 'domain = "en"\ntier = "stud"'),
        "nodes[2].tier: 'tiny' is neither the parent's tier",
    ),
    (
        "two masters",
        SMALL.replace(
            'name = "en"\nlayer = "language"\ndomain = "en"',
            'name = "en"\nlayer = "master"\ndomain = ""',
        ),
        "nodes[1].layer: a scenario has exactly one master, found 2",
    ),
    (
        "attacker on unknown node",
        SMALL + '[[attackers]]\nnode = "x"\nbehaviour = "noise"\n',
        "attackers[0].node: no node is named 'x'",
    ),
    (
        "bad attacker behaviour",
        SMALL + '[[attackers]]\nnode = "news"\nbehaviour = "nice"\n',
        "attackers[0].behaviour: 'nice' is not one of",
    ),
    (
        "attacker that does not train",
        SMALL + '[[attackers]]\nnode = "en"\nbehaviour = "scale"\n',
        "attackers[0].node: 'en' does not train",
    ),
    (
        "attacker named twice",
        SMALL + '[[attackers]]\nnode = "news"\nbehaviour = "scale"\n' * 2,
        "attackers[1].node: 'news' is already an attacker",
    ),
    (
        "attack after the run",
        SMALL + '[[attackers]]\nnode = "news"\nbehaviour = "noise"\nfrom_round = 3\n',
        "attackers[0].from_round: 3 is past the last round (2)",
    ),
    (
        "network attacker as master",
        SMALL + '[[attackers]]\nnode = "master"\nbehaviour = "flood"\n',
        "attackers[0].node: the master cannot be an attacker",
    ),
    (
        "network attack from a later round",
        SMALL + '[[attackers]]\nnode = "en"\nbehaviour = "slander"\nfrom_round = 2\n',
        "attackers[0].from_round: a network attack runs from the start",
    ),
    (
        "strength of an attack that takes none",
        SMALL + '[[attackers]]\nnode = "en"\nbehaviour = "equivocate"\nstrength = 2.0\n',
        "attackers[0].strength: only flood (announcements per second) and sybil",
    ),
    ("newer format", "format = 2\n" + SMALL, "format: scenario format 2 is not known"),
    (
        "garbage collected too often",
        "gc_interval_s = 0.1\n" + SMALL,
        "gc_interval_s: 0.1 is outside",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD], ids=[d for d, _, _ in BAD]
)
def test_a_bad_scenario_names_the_field(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse(text)
    assert str(info.value).startswith(expected), str(info.value)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


def test_the_small_scenario_itself_is_valid() -> None:
    s = parse(SMALL)  # the BAD table's failures come from their edits alone
    assert [n.parent for n in s.nodes] == [None, "master", "en"]


def test_each_node_collects_its_garbage_as_often_as_the_scenario_says(tmp_path: Path) -> None:
    """20 s by default; ci-longrun asks for every second (its rounds take ~2 s).  The
    config file each node is given says so, as the node reads it."""
    for text, expected in ((SMALL, 20.0), ("gc_interval_s = 1\n" + SMALL, 1.0)):
        path = tmp_path / "node.toml"
        path.write_bytes(node_toml(parse(text)))
        config = load_config(path, environ={}, flags={"node.layer": "master"}, cwd=tmp_path)
        assert config.retention_gc_interval_s == expected
        assert config.learn_enabled and not config.learn_follow_parent
    longrun = load_scenario(scenarios_dir() / "ci-longrun.toml")
    assert longrun.gc_interval_s == 1.0


def test_a_bad_file_is_refused_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = [\n")
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML"):
        load_scenario(broken)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario(big)
    typo = tmp_path / "typo.toml"
    typo.write_text(SMALL.replace('domain = "en/news"', 'domain = "en/News"'))
    with pytest.raises(ScenarioError, match=r"typo\.toml: nodes\[2\]\.domain"):
        load_scenario(typo)


def test_the_ci_fault_scenario_has_a_cross_tier_edge_and_a_kill_restart() -> None:
    s = load_scenario(scenarios_dir() / "ci-fault.toml")
    assert len(s.nodes) == 5 and s.rounds == 2
    assert [(f.round, f.node, f.action) for f in s.faults] == [
        (1, "news-tech", "kill"),
        (2, "news-tech", "restart"),
    ]
    assert s.node("news-tech").layer is Layer.SUBDOMAIN and s.node("news-tech").tier == "student"
    assert s.node("news").tier == "minilm"  # the student's parent runs its teacher tier
    assert {n.name for n in s.training_nodes()} == {"news-business", "news-tech"}


# --- learning settings: declared once (LearnSettings), carried to every node's plan ---------

#: LearnPlan's fields that are a node's own (tier, data, role, seed: from the topology), not
#: settings a scenario gives every node; any other field must reach the plan from the scenario
# a node's own plan fields: from its place in the topology, or (``labels``: the labels of
# its subtree's datasets, baselines.answer_labels) from the data the launcher deals out
NODE_OWN = {"tier", "data", "train", "parent", "seed", "extra", "labels"}


def _other_value(check: Any, default: Any) -> Any:
    """A valid value of ``check`` other than ``default``."""
    if isinstance(check, Optional):
        return _other_value(check.check, None)
    if isinstance(check, Bool):
        return not default
    if isinstance(check, Choice):
        return next(o for o in check.options if o != default)
    if isinstance(check, Int):
        return next(v for v in (check.lo + 1, check.hi) if v != default)
    if isinstance(check, Num):
        return next(
            v for v in (round(check.lo + (check.hi - check.lo) / 3, 6), check.hi) if v != default
        )
    raise AssertionError(f"no test value for a {type(check).__name__} check: add one here")


def _toml(value: Any) -> str:
    return json.dumps(value)  # true/false, numbers and strings are spelt the same in TOML


def test_every_learning_setting_of_a_scenario_reaches_each_nodes_plan_unchanged(
    tmp_path: Path,
) -> None:
    settings = {f.name: f for f in SETTINGS}
    for f in fields(LearnPlan):
        assert f.name in NODE_OWN or f.name in settings, (
            f"LearnPlan.{f.name} is neither a node's own nor a LearnSettings field: "
            "a scenario could not set it"
        )
    values = {name: _other_value(f.metadata["check"], f.default) for name, f in settings.items()}
    tables = "".join(
        f"[{table}]\n"
        + "".join(
            f"{name} = {_toml(v)}\n"
            for name, v in values.items()
            if settings[name].metadata["table"] == table
        )
        for table in TABLES
    )
    scenario = parse(SMALL + tables)
    assert settings_json(scenario.learning) == values
    for node in scenario.nodes:
        path = tmp_path / f"{node.name}.json"
        path.write_text(json.dumps(node_plan(scenario, node, tmp_path / "root", "bafyroot")))
        plan = load_plan(path)
        for name, value in values.items():
            assert getattr(plan, name) == value, f"{node.name}: {name}"
        assert plan.trains == node.trains and plan.parent == bool(scenario.children(node.name))


def test_a_scenario_without_learning_tables_gets_the_plans_defaults() -> None:
    learning = parse(SMALL).learning
    assert learning == replace(LearnSettings(), **DEVNET_SETTINGS)
    # the devnet's one deviation: a longer collect cap for many processes on few cores
    assert set(DEVNET_SETTINGS) == {"collect_s"}


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("[training]\nlr = 20\n", "training.lr: 20 is outside [1e-08, 10.0]"),
        ("[training]\ntrain_pooler = 1\n", "training.train_pooler: must be true or false"),
        ("[aggregation]\nclip_norm = 0\n", "aggregation.clip_norm: 0 is outside (0.0,"),
        ("[aggregation]\nlr = 0.1\n", "aggregation.lr: unknown key"),  # a [training] key
        ("[timing]\nmin_updates = -1\n", "timing.min_updates: -1 is outside [0, 100000]"),
        ("training = 3\n", "training: must be a table"),
    ],
)
def test_learning_settings_are_checked_as_a_plan_checks_them(table: str, expected: str) -> None:
    text = table + SMALL if not table.startswith("[") else SMALL + table
    with pytest.raises(ScenarioError) as info:
        parse(text)
    assert str(info.value).startswith(expected), str(info.value)


def test_the_scenario_record_keeps_its_tables() -> None:
    s = load_scenario(scenarios_dir() / "default.toml")
    data = s.to_dict()
    assert data["training"]["steps_per_cycle"] == s.learning.steps_per_cycle == 16
    assert data["aggregation"]["rule"] == "fedavg"
    assert data["timing"]["collect_s"] == s.learning.collect_s
    assert "learning" not in data


def test_the_devnet_guide_lists_every_learning_setting_under_its_table() -> None:
    guide = (Path(__file__).resolve().parents[2] / "devnet" / "README.md").read_text()
    for f in SETTINGS:
        table = f.metadata["table"]
        section = guide.split(f"### `[{table}]`", 1)[1].split("\n### ", 1)[0]
        assert f"`{f.name}`" in section, f"devnet/README.md: {f.name} is not under [{table}]"


def test_a_tiers_training_table_reaches_that_tiers_nodes_only(tmp_path: Path) -> None:
    text = SMALL.replace(
        "layers = [0]\n", "layers = [0]\n[tiers.stud.training]\nlora_r = 2\nlr = 0.002\n"
    ) + (
        '[[nodes]]\nname = "tech"\nlayer = "subdomain"\ndomain = "en/news/tech"\ntier = "stud"\n'
        '[nodes.shard]\ndataset = "bbc"\nhome = ["tech"]\ntrain = 4\ntest = 2\n'
        "[training]\nlora_r = 8\n"
    )
    scenario = parse(text)
    assert scenario.learning.lora_r == 8
    assert scenario.learning_for("stud") == replace(scenario.learning, lora_r=2, lr=0.002)
    assert scenario.learning_for("tiny") == scenario.learning
    plans = {}
    for node in scenario.nodes:
        path = tmp_path / f"{node.name}.json"
        path.write_text(json.dumps(node_plan(scenario, node, tmp_path / "root", "bafyroot")))
        plans[node.name] = load_plan(path)
    assert (plans["tech"].lora_r, plans["tech"].lr) == (2, 0.002)
    assert {(p.lora_r, p.lr) for n, p in plans.items() if n != "tech"} == {
        (8, scenario.learning.lr)
    }
    assert scenario.to_dict()["tiers"]["stud"]["training"] == {"lora_r": 2, "lr": 0.002}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("rule = 'median'", "tiers.stud.training.rule: unknown key"),  # an [aggregation] key
        ("lora_r = 0", "tiers.stud.training.lora_r"),
        ("lora_rank = 2", "tiers.stud.training.lora_rank: unknown key"),
    ],
)
def test_a_tiers_training_table_is_checked_as_training_is(table: str, message: str) -> None:
    text = SMALL.replace("layers = [0]\n", f"layers = [0]\n[tiers.stud.training]\n{table}\n")
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.")):
        parse(text)
