"""Child processes for the network tests: start, wait until ready, always reap.

A :class:`Child` is a ``python -m tests.net.<script>`` process whose first
stdout line is a JSON object (its peer id, addresses...).  Its stderr goes to a
file in its home, shown when it fails to start.  :func:`children` is a context
manager that reaps every child it started (SIGCONT first, for frozen ones,
then SIGKILL) whatever happens in the test.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0  # a loaded 2-core CI box can take a while to import libp2p


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    home: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.info["addrs"][0])

    def root(self, path: str | Path) -> str:
        return str(self.info["roots"][str(path)])

    def read_json(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """The next JSON line on the child's stdout (blocking, bounded)."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            end = time.monotonic() + timeout
            while True:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"child gave no output in {timeout}s:\n{self.stderr()}")
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"child exited ({self.proc.wait()}):\n{self.stderr()}")
                if line.startswith(b"{"):
                    obj: dict[str, Any] = json.loads(line)
                    return obj
        finally:
            sel.close()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Child:
        self.info = self.read_json(timeout)
        return self

    def stderr(self) -> str:
        path = self.home / "stderr.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a SIGSTOPped child cannot die until continued
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Children:
    """Spawns children; every one is reaped by :func:`children`'s exit."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Child] = []

    def spawn(self, module: str, name: str, *args: str) -> Child:
        home = self.base / name
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(home / "stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"tests.net.{module}", "--home", str(home), *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        child = Child(proc, home)
        self.started.append(child)
        return child

    def provider(
        self,
        name: str,
        files: list[Path],
        *,
        corrupt: bool = False,
        upload_rate: float | None = None,
        upload_burst: int | None = None,
    ) -> Child:
        args = ["--serve", *map(str, files)]
        if corrupt:
            args.append("--corrupt")
        if upload_rate is not None:
            args += ["--upload-rate", str(upload_rate)]
        if upload_burst is not None:
            args += ["--upload-burst", str(upload_burst)]
        return self.spawn("provider_proc", name, *args)


@contextmanager
def children(base: Path) -> Iterator[Children]:
    group = Children(base)
    try:
        yield group
    finally:
        for child in group.started:
            child.reap()
