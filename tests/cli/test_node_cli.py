"""``p2phier node ...`` and the node's clients without a network: options and early refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Runner

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"

#: every command that asks the node of a home over its control socket
CLIENTS = [
    ("node", "status"),
    ("node", "stop"),
    ("node", "round", "1"),
    ("peers",),
    ("trust",),
    ("publish", CID, "--to", "parent"),
    ("fetch", CID),
]


@pytest.mark.parametrize("command", CLIENTS, ids=" ".join)
def test_home_after_the_command_is_the_home_before_it(
    cli: Runner, tmp_path: Path, command: tuple[str, ...]
) -> None:
    other = tmp_path / "other"  # not the fixture's $P2PHIER_HOME; no node runs there
    other.mkdir()
    before = cli("--home", other, *command, "--json")
    after = cli(*command, "--home", other, "--json")
    assert before.returncode == after.returncode == 7, after
    assert after.json() == before.json()
    assert after.json()["type"] == "ControlError"
    assert str(other / "control.sock") in after.json()["error"]


def test_the_later_home_and_config_win(cli: Runner, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    r = cli("--home", home, "node", "status", "--home", other, "--json")
    assert r.returncode == 7 and str(other / "control.sock") in r.json()["error"], r
    made = cli("id", "new", "--home", other, "--json")
    assert made.returncode == 0, made
    assert made.json()["key_file"] == str(other / "identity.key")
    assert not (home / "identity.key").exists()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[identity]\nauto_create = false\n")
    shown = cli("--config", tmp_path / "absent.toml", "config", "show", "--config", cfg, "--json")
    assert shown.returncode == 0, shown
    assert shown.json()["config_file"] == str(cfg)
    assert shown.json()["identity.auto_create"] is False


# --- node run refuses a bad learning plan or data file before it starts ---------------------

EXAMPLE = {
    "uid": "u1",
    "text": "a headline",
    "label": "tech",
    "domain": "news",
    "subdomain": "tech",
}
PLAN: dict[str, Any] = {
    "tier": {"source": "int8", "tier_id": "devnet/minilm-int8"},
    "data": "data.json",
    "train": True,
}


def _node_home(home: Path, plan: object, data: object) -> Path:
    (home / "learn").mkdir()
    (home / "learn" / "plan.json").write_text(json.dumps(plan))
    (home / "learn" / "data.json").write_text(json.dumps(data))
    config = home / "node.toml"
    config.write_text(
        '[node]\nlayer = "master"\n[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n'
        "[learn]\nenabled = true\nround_interval_s = 0\n"
    )
    return config


@pytest.mark.parametrize(
    ("plan", "data", "named"),
    [
        (
            PLAN,
            {"arrivals": [[EXAMPLE, {k: v for k, v in EXAMPLE.items() if k != "uid"}]], "test": []},
            ["data.json", "arrivals[0][1].uid", "missing"],
        ),
        (
            PLAN,
            {"arrivals": [], "test": [{**EXAMPLE, "label": 3}]},
            ["data.json", "test[0].label", "expected a string"],
        ),
        (
            {**PLAN, "tier": {"source": "int8"}},
            {"arrivals": [], "test": []},
            ["plan.json", "plan.tier.tier_id", "missing"],
        ),
        (
            {**PLAN, "lr": 10**400},
            {"arrivals": [], "test": []},
            ["plan.json", "plan.lr", "outside"],
        ),
    ],
    ids=["missing-uid", "bad-label", "plan-without-tier-id", "plan-huge-int"],
)
def test_node_run_refuses_a_bad_plan_before_starting(
    cli: Runner, home: Path, plan: object, data: object, named: list[str]
) -> None:
    config = _node_home(home, plan, data)
    r = cli("node", "run", "--config", config, timeout=60)
    assert r.returncode == 2, r  # the config-error exit code
    assert r.stdout == b"", r  # no ready line: it never started
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r
    for part in named:
        assert part in lines[0], r
    assert "internal error" not in r.stderr
    assert not (home / "identity.key").exists() and not (home / "store").exists()


def test_node_run_reads_the_homes_config_toml_as_every_command_does(
    cli: Runner, home: Path, tmp_path: Path
) -> None:
    """NODE.md's "Joining a network": ``p2phier --home H node run`` with the settings in
    ``H/config.toml``.  ``node run`` read only ``--config``: the layer set in the file was
    missing.  Here the file's learning plan is broken, so the refusal names it (and the node
    starts nothing); with the file ignored, the error would be the missing layer instead."""
    config = _node_home(home, {**PLAN, "tier": {"source": "int8"}}, {"arrivals": [], "test": []})
    (home / "config.toml").write_text(config.read_text())
    r = cli("--home", home, "node", "run", timeout=60)
    assert r.returncode == 2, r
    assert "plan.tier.tier_id" in r.stderr and "node.layer" not in r.stderr, r
    # $P2PHIER_CONFIG, then the home's file, as for the CLI's own settings
    other = tmp_path / "elsewhere.toml"
    other.write_text('[node]\nlayer = "nonsense"\n')
    r = cli("--home", home, "node", "run", timeout=60, env={"P2PHIER_CONFIG": str(other)})
    assert r.returncode == 2 and "nonsense" in r.stderr, r
