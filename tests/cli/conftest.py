"""Fixtures for the CLI tests: run the real ``p2phier`` entry point in a subprocess.

Every test gets its own ``--home`` in a temp directory; nothing touches the user's real home.
The command runs as ``python -m p2phier`` with the repository on ``PYTHONPATH`` (the package
need not be installed), exactly the code path of the ``p2phier`` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    def json(self) -> Any:
        lines = self.text.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line on stdout, got: {self.text!r}"
        return json.loads(lines[0])

    def __str__(self) -> str:  # shown by pytest when an assertion on a Result fails
        return f"p2phier {' '.join(self.args)} -> {self.returncode}\n{self.text}\n{self.stderr}"


Runner = Callable[..., Result]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("P2PHIER_") and k not in ("PYTHONPATH",)
    }
    env.update(
        PYTHONPATH=str(REPO),
        P2PHIER_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


def run_p2phier(
    home: Path,
    *args: str | Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "p2phier", *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        env=cli_env(home, **(env or {})),
        cwd=home.parent,
        timeout=timeout,
        check=False,
    )
    return Result(
        tuple(str(a) for a in args),
        proc.returncode,
        proc.stdout,
        proc.stderr.decode(errors="replace"),
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cli(home: Path) -> Runner:
    """``cli("store", "add", f, "--json")`` runs ``p2phier`` with this test's home."""

    def run(*args: str | Path, **kw: Any) -> Result:
        return run_p2phier(home, *(str(a) for a in args), **kw)

    return run
