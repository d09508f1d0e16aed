"""``p2phier id``, ``config show``, global flags and the error contract, via the real CLI."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from p2phier.cli import output
from p2phier.cli.config import load_settings
from p2phier.errors import ConfigError, CorruptBlockError, InsecureKeyFileError
from p2phier.identity import Identity, PeerId
from tests.cli.conftest import Runner


def test_id_new_writes_private_key_and_reports_it(cli: Runner, home: Path) -> None:
    r = cli("id", "new", "--json")
    assert r.returncode == 0, r
    info = r.json()
    key = home / "identity.key"
    assert info["key_file"] == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ident = Identity.load(key)
    assert info["peer_id"] == str(ident.peer_id)
    assert PeerId.parse(info["peer_id"]).raw_public == bytes.fromhex(info["public_key_hex"])
    assert base64.b64decode(info["public_key_b64"]) == ident.public_raw

    shown = cli("id", "show", "--json")
    assert shown.returncode == 0, shown
    assert shown.json()["peer_id"] == info["peer_id"]
    human = cli("id", "show")
    assert info["peer_id"] in human.text and human.stderr == ""


def test_id_new_refuses_to_overwrite_without_force(cli: Runner, home: Path) -> None:
    assert cli("id", "new").returncode == 0
    before = (home / "identity.key").read_bytes()
    r = cli("id", "new", "--json")
    assert r.returncode == 3, r
    err = r.json()
    assert err["type"] == "KeyFileError" and "already exists" in err["error"]
    assert (home / "identity.key").read_bytes() == before  # nothing lost
    forced = cli("id", "new", "--force", "--json")
    assert forced.returncode == 0, forced
    assert (home / "identity.key").read_bytes() != before


def test_id_new_out_path(cli: Runner, tmp_path: Path) -> None:
    target = tmp_path / "keys" / "node.key"
    r = cli("id", "new", "--out", target, "--json")
    assert r.returncode == 0, r
    assert Identity.load(target).peer_id == PeerId.parse(r.json()["peer_id"])
    assert cli("id", "show", "--key", target, "--json").json()["peer_id"] == r.json()["peer_id"]


def test_world_readable_key_is_refused(cli: Runner, home: Path) -> None:
    assert cli("id", "new").returncode == 0
    os.chmod(home / "identity.key", 0o644)
    r = cli("id", "show")
    assert r.returncode == InsecureKeyFileError.exit_code == 3
    assert r.stdout == b""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "chmod 600" in lines[0]
    assert "Traceback" not in r.stderr
    j = cli("id", "show", "--json")
    assert j.returncode == 3 and j.json()["type"] == "InsecureKeyFileError"


def test_missing_key_gives_a_hint(cli: Runner) -> None:
    r = cli("id", "show", "--json")
    assert r.returncode == 3
    assert "p2phier id new" in r.json()["error"]


def test_debug_shows_the_traceback(cli: Runner) -> None:
    quiet = cli("id", "show")
    assert "Traceback" not in quiet.stderr
    loud = cli("--debug", "id", "show")
    assert loud.returncode == 3 and "Traceback" in loud.stderr
    env = cli("id", "show", env={"P2PHIER_DEBUG": "1"})
    assert "Traceback" in env.stderr


def test_usage_errors_exit_2_in_one_line(cli: Runner) -> None:
    r = cli("id", "show", "--bogus")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--bogus" in r.stderr
    j = cli("id", "show", "--json", "--bogus")
    assert j.returncode == 2 and j.json()["type"] == "NoSuchOption"
    assert cli("nosuchcommand").returncode == 2


def test_help_and_version(cli: Runner) -> None:
    r = cli("--help")
    assert r.returncode == 0
    for group in ("id", "store", "artifact", "demo"):
        assert group in r.text
    v = cli("--version")
    assert v.returncode == 0 and v.text.startswith("p2phier ")


def test_config_precedence_file_env_flag(cli: Runner, home: Path, tmp_path: Path) -> None:
    (home / "config.toml").write_text('[store]\npath = "from-config"\n[log]\nlevel = "info"\n')
    r = cli("config", "show", "--json").json()
    assert r["store.path"] == str(home / "from-config")  # relative to the config file
    assert r["sources"]["store.path"] == "config" and r["log.level"] == "info"
    r = cli("config", "show", "--json", env={"P2PHIER_STORE_PATH": str(tmp_path / "env")}).json()
    assert r["store.path"] == str(tmp_path / "env") and r["sources"]["store.path"] == "env"
    other = tmp_path / "other.toml"
    other.write_text("[identity]\nauto_create = false\n")
    r = cli("--config", other, "config", "show", "--json").json()
    assert r["identity.auto_create"] is False and r["store.path"] == str(home / "store")
    flag_home = tmp_path / "flaghome"
    r = cli("--home", flag_home, "config", "show", "--json").json()
    assert r["home"] == str(flag_home)  # the flag beats $P2PHIER_HOME


def test_bad_config_is_a_clear_usage_error(cli: Runner, home: Path) -> None:
    (home / "config.toml").write_text("[store]\npth = 'x'\n")
    r = cli("config", "show", "--json")
    assert r.returncode == ConfigError.exit_code == 2
    assert r.json()["type"] == "ConfigError" and "'pth'" in r.json()["error"]
    (home / "config.toml").write_text("[store\n")
    assert "not valid TOML" in cli("config", "show", "--json").json()["error"]
    missing = cli("--config", home / "nope.toml", "config", "show", "--json")
    assert missing.returncode == 2 and "does not exist" in missing.json()["error"]


def test_settings_types_are_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[identity]\nauto_create = 3\n")
    with pytest.raises(ConfigError, match="true or false"):
        load_settings(tmp_path, cfg, environ={})
    with pytest.raises(ConfigError, match="one of"):
        load_settings(tmp_path, None, environ={"P2PHIER_ARTIFACT_ENCODING": "fp8"})
    cfg.write_bytes(b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_settings(tmp_path, cfg, environ={})


def test_exit_code_mapping() -> None:
    assert output.exit_code_for(CorruptBlockError("x")) == 5
    assert output.exit_code_for(RuntimeError("boom")) == output.EXIT_UNEXPECTED == 70
    assert output.exit_code_for(PermissionError(13, "denied", "/x")) == output.EXIT_IO
    assert output.exit_code_for(KeyboardInterrupt()) == 130
    assert "internal error (RuntimeError)" in output.message_for(RuntimeError("a\nb"))
    assert "\n" not in output.message_for(RuntimeError("a\nb"))


def test_a_failure_inside_nurseries_is_reported_as_itself(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # trio wraps a failure once per nursery it crosses; the user gets the failure itself.
    monkeypatch.setattr(output.STATE, "json", False)
    monkeypatch.setattr(output.STATE, "debug", False)
    wrapped = ExceptionGroup("n1", [ExceptionGroup("n2", [ConfigError("plan.json: uid: missing")])])
    assert output.report_error(wrapped) == ConfigError.exit_code == 2
    assert capsys.readouterr().err == "error: plan.json: uid: missing\n"
    several = ExceptionGroup("n", [ConfigError("a"), RuntimeError("b")])
    assert output.report_error(several) == output.EXIT_UNEXPECTED
    assert "internal error (ExceptionGroup)" in capsys.readouterr().err
