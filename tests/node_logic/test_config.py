"""Node configuration: the annotated example, precedence file < env < flag, and errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from p2phier.config import (
    DEFAULTS,
    FLAG_KEYS,
    MAX_CONFIG_BYTES,
    NodeConfig,
    env_name,
    load_config,
    settings,
)
from p2phier.errors import ConfigError
from p2phier.records import HardwareClass, Layer
from tests.node_logic.helpers import peer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "node" / "node.example.toml"
UNIT = REPO / "node" / "p2phier-node.service"
BOOT = f"/ip4/10.0.0.2/tcp/4001/p2p/{peer(2)}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def _load(path: Path | None = None, env: dict[str, str] | None = None, **flags: Any) -> NodeConfig:
    return load_config(path, environ=env or {}, flags=flags, cwd=Path("/srv"))


# --- the shipped example and unit ---------------------------------------------------------


def test_example_config_loads_and_matches_its_comments() -> None:
    cfg = _load(EXAMPLE)
    assert cfg.layer is Layer.DOMAIN and cfg.domain == "en/healthcare"
    assert cfg.home == Path("/var/lib/p2phier")
    assert cfg.control_socket == Path("/var/lib/p2phier/control.sock")
    assert cfg.learn_plan == Path("/var/lib/p2phier/learn/plan.json")  # relative to home
    assert cfg.store_path == Path("/var/lib/p2phier/store")
    assert cfg.key_file == Path("/var/lib/p2phier/identity.key")
    assert cfg.listen == ("/ip4/0.0.0.0/tcp/4001",)
    # every value the example shows without "example" is the built-in default
    shown = cfg.as_dict()["settings"]
    for key, default in DEFAULTS.items():
        if key in ("node.home", "node.layer", "node.domain", "control.socket", "learn.plan"):
            continue
        want = list(default) if isinstance(default, tuple) else default
        want = want.value if isinstance(want, HardwareClass) else want
        assert shown[key] == want, key
    assert set(cfg.sources.values()) == {"file"}


def test_example_documents_every_setting_with_a_comment() -> None:
    text = EXAMPLE.read_text()
    section = ""
    documented = set()
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = m.group(1)
        elif m := re.match(r"(\w+) = ", line):
            documented.add(f"{section}.{m.group(1)}")
            has_comment = "#" in line or lines[n - 1].lstrip().startswith("#")
            assert has_comment, f"{section}.{m.group(1)} has no comment"
    assert documented == set(settings())


def test_systemd_unit_is_hardened_and_runs_the_node() -> None:
    unit = UNIT.read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in unit.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["ExecStart"].endswith("p2phier node run --config /etc/p2phier/node.toml")
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "p2phier",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert lines.get(key) == value, key
    assert "P2PHIER_HOME=/var/lib/p2phier" in unit  # matches StateDirectory


# --- precedence ------------------------------------------------------------------------------


def test_defaults_need_only_a_layer() -> None:
    cfg = _load(None, layer="master")
    assert cfg.layer is Layer.MASTER and cfg.domain == ""
    assert cfg.config_file is None
    assert cfg.sources["node.layer"] == "flag" and cfg.sources["gossip.heartbeat_s"] == "default"
    assert cfg.gossip_heartbeat_s == 1.0 and cfg.upload_rate_limit == 0
    assert cfg.hierarchy.child_ttl_s == 90.0


@pytest.mark.parametrize(
    ("file", "env", "flag", "want", "source"),
    [
        ("en", None, None, "en", "file"),
        ("en", "fr", None, "fr", "env"),
        ("en", "fr", "de", "de", "flag"),
        (None, "fr", "de", "de", "flag"),
        (None, None, None, None, None),  # a language node needs a domain
    ],
)
def test_precedence_file_env_flag(
    tmp_path: Path,
    file: str | None,
    env: str | None,
    flag: str | None,
    want: str | None,
    source: str | None,
) -> None:
    text = '[node]\nlayer = "language"\n' + (f'domain = "{file}"\n' if file else "")
    path = _write(tmp_path, text)
    environ = {"P2PHIER_NODE_DOMAIN": env} if env else {}
    if want is None:
        with pytest.raises(ConfigError, match=r"node\.layer, node\.domain"):
            _load(path, environ, domain=flag)
        return
    cfg = _load(path, environ, domain=flag)
    assert cfg.domain == want
    assert cfg.sources["node.domain"] == source
    assert cfg.sources["node.layer"] == "file"


@pytest.mark.parametrize("zero", ["0", "0.0", " 0 "])
def test_zero_means_never_from_the_environment_too(zero: str) -> None:
    """ "0" from an environment variable is "never", as 0 in the file is (it was refused)."""
    node = {"P2PHIER_NODE_LAYER": "master"}
    cfg = _load(None, {**node, "P2PHIER_LEARN_ROUND_INTERVAL_S": zero,
                       "P2PHIER_RETENTION_GC_INTERVAL_S": zero})  # fmt: skip
    assert cfg.learn_round_interval_s == 0.0 and cfg.retention_gc_interval_s == 0.0
    ninety = _load(None, {**node, "P2PHIER_LEARN_ROUND_INTERVAL_S": "90"})
    assert ninety.learn_round_interval_s == 90.0
    for bad in ("soon", "-1"):
        with pytest.raises(ConfigError, match="round_interval_s"):
            _load(None, {**node, "P2PHIER_LEARN_ROUND_INTERVAL_S": bad})


def test_every_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "P2PHIER_HOME": "state",
        "P2PHIER_NODE_LAYER": "device",
        "P2PHIER_NODE_DOMAIN": "en/healthcare/cardiology",
        "P2PHIER_NODE_HARDWARE": "mobile",
        "P2PHIER_NODE_RAM_BYTES": "4_000_000_000",
        "P2PHIER_NETWORK_LISTEN": "/ip4/127.0.0.1/tcp/0, /ip6/::1/tcp/0",
        "P2PHIER_NETWORK_BOOTSTRAP": BOOT,
        "P2PHIER_NETWORK_UPLOAD_RATE_LIMIT": "8MB/s",
        "P2PHIER_GOSSIP_HEARTBEAT_S": "0.5",
        "P2PHIER_LEARN_ENABLED": "yes",
        "P2PHIER_LOG_LEVEL": "DEBUG",
        "P2PHIER_CONFIG": "/ignored/by/the/node/loader",  # the CLI's own variable
    }
    cfg = _load(None, env)
    assert cfg.home == Path("/srv/state")  # relative to the working directory
    assert cfg.layer is Layer.DEVICE and cfg.hardware is HardwareClass.MOBILE
    assert cfg.ram_bytes == 4_000_000_000
    assert cfg.listen == ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0")
    assert cfg.bootstrap == (BOOT,)
    assert cfg.upload_rate_limit == 8_000_000
    assert cfg.gossip_heartbeat_s == 0.5
    assert cfg.learn_enabled is True and cfg.log_level == "debug"
    assert {cfg.sources[k] for k in ("node.home", "network.listen", "log.level")} == {"env"}
    assert env_name("node.home") == "P2PHIER_HOME"
    assert env_name("network.upload_rate_limit") == "P2PHIER_NETWORK_UPLOAD_RATE_LIMIT"


def test_path_flags_may_be_path_objects(tmp_path: Path) -> None:
    cfg = _load(None, layer="master", home=tmp_path / "n", **{"control.socket": Path("c.sock")})
    assert cfg.home == tmp_path / "n"
    assert cfg.control_socket == tmp_path / "n" / "c.sock"
    assert cfg.sources["node.home"] == "flag"


def test_flags_by_name_override_lists(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[node]\nlayer = "master"\nhome = "h"\n[network]\nlisten = ["/ip4/0.0.0.0/tcp/1"]\n',
    )
    cfg = _load(
        path,
        {"P2PHIER_NETWORK_LISTEN": "/ip4/0.0.0.0/tcp/2"},
        listen=("/ip4/0.0.0.0/tcp/3",),
        bootstrap=[BOOT],
        home=None,  # not given: the file's value stays
    )
    assert cfg.listen == ("/ip4/0.0.0.0/tcp/3",)
    assert cfg.bootstrap == (BOOT,)
    assert cfg.home == tmp_path / "h"  # relative to the config file
    assert set(FLAG_KEYS) >= {"home", "layer", "domain", "listen", "bootstrap"}


@pytest.mark.parametrize(
    ("value", "want"),
    [(0, 0), ("8000000", 8_000_000), ("8MB/s", 8_000_000), ("8 MiB", 8 << 20), ("1.5k", 1500)],
)
def test_upload_rate_units(value: Any, want: int) -> None:
    assert (
        _load(None, layer="master", **{"network.upload_rate_limit": value}).upload_rate_limit
        == want
    )


# --- errors name the field and the source ----------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "env", "flags", "pattern"),
    [
        (
            '[node]\nlayer = "boss"\n',
            {},
            {},
            r"node\.layer: layer 'boss' is not one of .*from config file",
        ),
        (
            '[node]\nlayer = "master"\n',
            {"P2PHIER_NODE_LAYER": "boss"},
            {},
            r"node\.layer: .*environment variable P2PHIER_NODE_LAYER",
        ),
        ('[node]\nlayer = "master"\n', {}, {"layer": "boss"}, r"node\.layer: .*from flag --layer"),
        (
            '[node]\nlayer = "master"\n',
            {},
            {"timeouts.dial_s": -1},
            r"timeouts\.dial_s: must be a positive .*from flag timeouts\.dial_s",
        ),
        (
            '[node]\nlayer = "master"\n[gossip]\nheartbeat_s = "fast"\n',
            {},
            {},
            r"gossip\.heartbeat_s: 'fast' is not a number .*config file",
        ),
        (
            '[node]\nlayer = "master"\n[gossip]\nheartbeat_s = true\n',
            {},
            {},
            r"gossip\.heartbeat_s: must be a number",
        ),
        (
            '[node]\nlayer = "master"\n[network]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n',
            {},
            {},
            r"network\.bootstrap: .*must end with /p2p/",
        ),
        (
            '[node]\nlayer = "master"\n[network]\nbootstrap = ["/ip4/1.2.3.4/tcp/1/p2p/Qmnope"]\n',
            {},
            {},
            r"network\.bootstrap: .*peer id",
        ),
        (
            '[node]\nlayer = "master"\n[network]\nlisten = "/ip4/1.2.3.4/tcp/1"\n',
            {},
            {},
            r"network\.listen: must be a list",
        ),
        (
            '[node]\nlayer = "master"\n[network]\nlisten = []\n',
            {},
            {},
            r"network\.listen: a node must listen",
        ),
        (
            '[node]\nlayer = "master"\n[network]\nlisten = ["/a/b", "/a/b"]\n',
            {},
            {},
            r"network\.listen: lists '/a/b' twice",
        ),
        (
            '[node]\nlayer = "master"\n',
            {"P2PHIER_NETWORK_UPLOAD_RATE_LIMIT": "fast"},
            {},
            r"network\.upload_rate_limit: 'fast' is not a rate",
        ),
        (
            '[node]\nlayer = "master"\n',
            {"P2PHIER_NODE_RAM_BYTES": "-5"},
            {},
            r"node\.ram_bytes: must be a whole number",
        ),
        (
            '[node]\nlayer = "master"\n',
            {"P2PHIER_LEARN_ENABLED": "maybe"},
            {},
            r"learn\.enabled: must be true or false",
        ),
        (
            '[node]\nlayer = "master"\n[learn]\nworker_nice = 20\n',
            {},
            {},
            r"learn\.worker_nice: 20 is outside \[0, 19\]",
        ),
        (
            '[node]\nlayer = "master"\nbase_model = "a b"\n',
            {},
            {},
            r"node\.base_model: base model id",
        ),
        (
            '[node]\nlayer = "language"\ndomain = "EN"\n',
            {},
            {},
            r"node\.domain: domain segment 'EN'",
        ),
        (
            '[node]\nlayer = "master"\ndomain = "en"\n',
            {},
            {},
            r"node\.layer, node\.domain: a master node's domain .*node\.domain from config file",
        ),
        (
            '[node]\nlayer = "master"\n[records]\nrefresh_s = 4000\n',
            {},
            {},
            r"records\.refresh_s, records\.ttl_s: .*refresh_s < ttl_s.*records\.ttl_s the default",
        ),
        (
            '[node]\nlayer = "master"\n[records]\nttl_s = 90000\n',
            {},
            {},
            r"records\.ttl_s: a record lives at most 86400 s",
        ),
        (
            '[node]\nlayer = "master"\n[hierarchy]\nregister_interval_s = 100\n',
            {},
            {},
            r"hierarchy\.child_ttl_s.*below child_ttl_s",
        ),
        (
            '[node]\nlayer = "master"\n[hierarchy]\nmax_children = 0\n',
            {},
            {},
            r"hierarchy\..*max_children must be a positive",
        ),
        ('[node]\nlayer = "master"\nlayre = "x"\n', {}, {}, r"unknown key 'layre' in \[node\]"),
        ('[nodes]\nlayer = "master"\n', {}, {}, r"unknown section \[nodes\]"),
        ("node = 5\n", {}, {}, r"\[node\] must be a table"),
        ("[node\n", {}, {}, r"not valid TOML"),
        ("", {}, {}, r"node\.layer is required.*P2PHIER_NODE_LAYER.*--layer"),
        ('[node]\nlayer = "master"\n', {}, {"colour": "red"}, r"unknown flag setting 'colour'"),
        (
            '[node]\nlayer = "master"\n[control]\nsocket = "' + "s" * 120 + '"\n',
            {},
            {},
            r"control\.socket, node\.home: socket path .* over 100 bytes",
        ),
    ],
)
def test_errors_name_the_field_and_the_source(
    tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, Any], pattern: str
) -> None:
    path = _write(tmp_path, toml)
    with pytest.raises(ConfigError, match=pattern):
        _load(path, env, **flags)


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        _load(tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        _load(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[node]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        _load(binary)


def test_config_error_is_a_usage_error_with_exit_code_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(None)
    assert info.value.exit_code == 2
    assert isinstance(info.value, ValueError)
