"""Every reader of a file a user or peer supplies is size-capped before it reads (p2phier.fsutil).

The oversized files are sparse and 1 TiB long: a reader that read one whole (``read_bytes``,
``fh.read()``) would fail with a MemoryError instead of the clear error asserted here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2phier.config import MAX_CONFIG_BYTES, load_config
from p2phier.devnet.report import MAX_RUN_BYTES, RUN_FILE, RunRecordError, load_run
from p2phier.devnet.runner import MAX_RUN_STATE_BYTES, RUN_STATE, DevnetError, load_state
from p2phier.devnet.scenario import MAX_SCENARIO_BYTES, ScenarioError, load_scenario
from p2phier.errors import ConfigError, InputFileError, P2PHierError
from p2phier.fsutil import load_json, load_toml, read_capped
from p2phier.learnplan import MAX_DATA_BYTES, MAX_PLAN_BYTES, PlanError, load_data, load_plan

HUGE = 1 << 40

# (what, file name, reader of the file's path, its limit, its error class)
READERS: list[tuple[str, str, Callable[[Path], Any], int, type[P2PHierError]]] = [
    ("config file", "node.toml", lambda p: load_config(p, environ={}), MAX_CONFIG_BYTES,
     ConfigError),
    ("learning plan", "plan.json", load_plan, MAX_PLAN_BYTES, PlanError),
    ("data file", "data.json", load_data, MAX_DATA_BYTES, PlanError),
    ("scenario file", "big.toml", load_scenario, MAX_SCENARIO_BYTES, ScenarioError),
    ("run record", RUN_FILE, lambda p: load_run(p.parent), MAX_RUN_BYTES, RunRecordError),
    ("devnet state", RUN_STATE, lambda p: load_state(p.parent), MAX_RUN_STATE_BYTES, DevnetError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "name", "read", "limit", "error"), READERS, ids=[r[0] for r in READERS]
)
def test_an_oversized_file_is_refused_unread_naming_the_file_and_the_limit(
    tmp_path: Path,
    what: str,
    name: str,
    read: Callable[[Path], Any],
    limit: int,
    error: type[P2PHierError],
) -> None:
    path = tmp_path / name
    with open(path, "wb") as fh:
        fh.truncate(HUGE)  # sparse: no disk, but a whole read would need 1 TiB of memory
    started = time.monotonic()
    with pytest.raises(error) as info:
        read(path)
    assert f"{what} {path}: larger than {limit} bytes" in str(info.value)
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("what", "name", "read", "limit", "error"), READERS, ids=[r[0] for r in READERS]
)
def test_a_file_one_byte_over_the_limit_is_refused_and_one_at_it_is_read(
    tmp_path: Path,
    what: str,
    name: str,
    read: Callable[[Path], Any],
    limit: int,
    error: type[P2PHierError],
) -> None:
    path = tmp_path / name
    with open(path, "wb") as fh:
        fh.truncate(limit + 1)
    with pytest.raises(error, match="larger than"):
        read(path)
    with open(path, "r+b") as fh:
        fh.truncate(limit)  # NUL bytes: under the cap, so refused for what they are instead
    with pytest.raises(error) as info:
        read(path)
    assert "larger than" not in str(info.value)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "node.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"node\.toml: is a FIFO, not a regular file"):
        load_config(fifo, environ={})
    with pytest.raises(InputFileError, match="is a FIFO"):
        read_capped(fifo, 10, "input")


def test_the_readers_default_error_and_their_messages(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    with pytest.raises(InputFileError, match=r"input .*x\.json: does not exist"):
        read_capped(path, 10, "input")
    path.write_bytes(b'{"a": [1, 2]}')
    assert load_json(path, 100, "input") == {"a": [1, 2]}
    with pytest.raises(InputFileError, match=r"x\.json: larger than 5 bytes"):
        read_capped(path, 5, "input")
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(InputFileError, match="not JSON"):
        load_json(path, 1 << 20, "input")
    toml = tmp_path / "x.toml"
    toml.write_bytes(b"\xff")
    with pytest.raises(InputFileError, match="not UTF-8 text"):
        load_toml(toml, 100, "input")
    toml.write_text("a = [")
    with pytest.raises(InputFileError, match="not valid TOML"):
        load_toml(toml, 100, "input")
    with pytest.raises(InputFileError, match="is a directory"):
        read_capped(tmp_path, 100, "input")
    assert issubclass(InputFileError, P2PHierError) and InputFileError("x").exit_code == 2
