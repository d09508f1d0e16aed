"""Real node processes on 127.0.0.1 for the daemon tests; every child is always reaped.

:func:`open_cluster` starts ``python -m p2phier node run`` processes (one home
each), waits for each one's JSON ready line, and on exit (also when a test
fails) sends SIGTERM, then SIGKILL after a grace period, and waits for every
process.  Timers are shortened through the environment so a test sees
registrations and re-publishes within seconds.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2phier.node.controlwire import call

REPO = Path(__file__).resolve().parents[2]

FAST_ENV = {
    "PYTHONPATH": str(REPO),
    "P2PHIER_GOSSIP_HEARTBEAT_S": "0.5",
    "P2PHIER_HIERARCHY_REGISTER_INTERVAL_S": "3",
    "P2PHIER_HIERARCHY_CHILD_TTL_S": "30",
    "P2PHIER_HIERARCHY_PARENT_TIMEOUT_S": "10",
    "P2PHIER_HIERARCHY_LOST_BACKOFF_S": "3",
    "P2PHIER_RECORDS_TTL_S": "300",
    "P2PHIER_RECORDS_REFRESH_S": "60",
    "P2PHIER_TIMEOUTS_SHUTDOWN_S": "5",
    "P2PHIER_TIMEOUTS_STREAM_S": "10",
    "P2PHIER_TIMEOUTS_DIAL_S": "5",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@dataclass
class NodeProc:
    name: str
    home: Path
    layer: str
    domain: str
    bootstrap: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.ready["addresses"][0])

    @property
    def log(self) -> Path:
        """The node's stderr (its log), kept beside its home."""
        return self.home.parent / f"{self.name}.log"

    def log_tail(self, lines: int = 60) -> str:
        """The end of the node's log, for failure messages (CI shows only the output)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log for node {self.name}: {exc})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log} ---\n{tail}"

    @property
    def socket(self) -> Path:
        return self.home / "control.sock"

    def call(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        return call(self.socket, cmd, args or {}, timeout=timeout)

    def status(self) -> dict[str, Any]:
        return dict(self.call("status"))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2phier", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, **FAST_ENV},
            cwd=REPO,
        )

    def start(self, timeout: float = 90.0) -> None:
        cmd = [
            sys.executable, "-m", "p2phier", "node", "run",
            "--home", str(self.home),
            "--listen", "/ip4/127.0.0.1/tcp/0",
            "--layer", self.layer,
            "--domain", self.domain,
        ]  # fmt: skip
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **FAST_ENV}, cwd=REPO
        )
        log.close()
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"node {self.name} not ready within {timeout}s "
                        f"(exit {self.proc.poll()})\n{self.log_tail()}"
                    )
                if sel.select(min(left, 1.0)):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    buf += chunk
        finally:
            sel.close()
        self.ready = json.loads(buf.split(b"\n", 1)[0])
        assert self.ready["event"] == "ready"

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace``; always waits for the process.

        Returns the exit status; a non-zero one also prints the node's log tail
        (pytest shows it with the failing test).
        """
        rc = self._stop(grace)
        if rc:
            print(f"node {self.name} exited with status {rc}\n{self.log_tail()}", file=sys.stderr)
        return rc

    def _stop(self, grace: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    return proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
            return proc.wait(10)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def open_cluster(root: Path, specs: list[tuple[str, str, str]]) -> Iterator[dict[str, NodeProc]]:
    """Start ``(name, layer, domain)`` nodes in order; the first is everyone's bootstrap."""
    nodes: dict[str, NodeProc] = {}
    try:
        for name, layer, domain in specs:
            home = root / name
            home.mkdir(mode=0o700, parents=True)
            boot = [next(iter(nodes.values())).addr] if nodes else []
            node = NodeProc(name, home, layer, domain, boot)
            nodes[name] = node
            node.start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop(grace=10.0)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
