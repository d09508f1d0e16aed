"""Real node processes on 127.0.0.1: start them, ask them, and always reap them.

Owns the process side of the devnet launcher (also used by the node tests and
``bench/net.py``): :class:`NodeProc` starts ``python -m p2phier node run`` with
its own home, listen address, bootstrap peers, layer and domain, waits for the
node's JSON ready line on stdout, talks to it over its control socket
(:mod:`p2phier.node.controlwire`) and stops it with SIGTERM (SIGKILL after a
grace period), always waiting for the process.  :func:`open_cluster` starts
several in order and, on exit -- also when the body or a start fails -- stops
and reaps every child it started.  Each node's stderr (its log) is kept beside
its home so a failure can show its tail.

Only subprocesses and blocking sockets here: no trio, libp2p or torch, so a
launcher or a test can import it without the network stack.  :data:`FAST_ENV`
shortens the node's timers through the environment so a short run sees
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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from p2phier.node.controlwire import call

#: the directory that holds the ``p2phier`` package (the repository root in a checkout);
#: children run with it on ``PYTHONPATH`` and as their working directory
REPO = Path(__file__).resolve().parents[2]

#: environment for children: short timers and no model downloads
FAST_ENV: dict[str, str] = {
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

#: nodes left running by :meth:`NodeProc.detach`: still this process's children, held so
#: that each is reaped once stopped (:func:`reap_detached`) rather than left a zombie
_DETACHED: list[subprocess.Popen[bytes]] = []


def reap_detached(signalled: Collection[int] = (), timeout: float = 0.0) -> int:
    """Reap the detached nodes that have exited; returns how many still run.

    Those in ``signalled`` (pids just sent SIGTERM or SIGKILL) are waited for, ``timeout``
    seconds in all: a SIGKILLed node has not exited when ``kill`` returns, and /proc shows
    a node's main thread gone before ``waitpid`` can reap the process (its other threads
    still exiting), so one poll left such a node's Popen unreaped until the interpreter
    exited ("subprocess N is still running")."""
    deadline = time.monotonic() + timeout
    left = []
    for p in _DETACHED:
        try:
            p.wait(max(0.0, deadline - time.monotonic()) if p.pid in signalled else 0.0)
        except subprocess.TimeoutExpired:
            left.append(p)
    _DETACHED[:] = left
    return len(left)


#: listen on an ephemeral loopback port; the ready line says which
LOOPBACK_LISTEN = "/ip4/127.0.0.1/tcp/0"


@dataclass
class NodeProc:
    """One ``p2phier node run`` child; :attr:`ready` is its parsed ready line."""

    name: str
    home: Path
    layer: str
    domain: str
    bootstrap: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    listen: str = LOOPBACK_LISTEN
    env: Mapping[str, str] = field(default_factory=lambda: dict(FAST_ENV))
    config: Path | None = None  # a node TOML file passed with --config
    #: words put before the command, e.g. ``("ip", "netns", "exec", "ns1")`` to run the node
    #: in a network namespace (empty by default: the node runs as a plain child).  The prefix
    #: must exec the node in place (as ``ip netns exec`` does), so that :meth:`stop` signals it.
    prefix: Sequence[str] = ()
    #: run this node as an attacker (:mod:`p2phier.devnet.attacker`), e.g. "foreign-artifact"
    attack: str | None = None

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
        """Run ``p2phier --home <home> ARGS`` against this node (captured, never raises)."""
        return subprocess.run(
            [sys.executable, "-m", "p2phier", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, **self.env},
            cwd=REPO,
        )

    def start(self, timeout: float = 90.0) -> None:
        """Spawn the node and wait for its ready line; raise with its log tail if none comes.

        A child that was spawned stays in :attr:`proc` even when this raises, so
        :meth:`stop` (or :func:`open_cluster`) still reaps it.
        """
        entry = ["p2phier"] if self.attack is None else ["p2phier.devnet.attacker", self.attack]
        cmd = [
            *self.prefix,
            sys.executable, "-m", *entry, "node", "run",
            "--home", str(self.home),
            "--listen", self.listen,
            "--layer", self.layer,
            "--domain", self.domain,
        ]  # fmt: skip
        for b in self.bootstrap:
            cmd += ["--bootstrap", b]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **self.env}, cwd=REPO
            )
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
        if self.ready.get("event") != "ready":
            raise RuntimeError(f"node {self.name} printed {self.ready!r} instead of its ready line")

    def stop(self, grace: float = 15.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (unless ``signalled``: :meth:`terminate` sent it), then SIGKILL after
        ``grace``; always waits for the process.

        Returns the exit status (None if it was not running); a non-zero one also
        prints the node's log tail (pytest shows it with the failing test).
        """
        rc = self._stop(grace, signalled=signalled)
        if rc:
            print(f"node {self.name} exited with status {rc}\n{self.log_tail()}", file=sys.stderr)
        return rc

    def detach(self) -> None:
        """Leave the node running without this object: its pipe closed (it prints only its
        ready line); ``devnet down`` stops it by the pid the run state records."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdout is not None:
                proc.stdout.close()
            _DETACHED.append(proc)

    def kill(self) -> int | None:
        """SIGKILL at once and wait; returns the exit status (None if it was not running)."""
        return self._stop(0.0)

    def terminate(self) -> None:
        """Send SIGTERM without waiting (:func:`stop_all`), if the node is running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def _stop(self, grace: float, *, signalled: bool = False) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                if grace > 0:
                    if not signalled:
                        proc.send_signal(signal.SIGTERM)
                    try:
                        return proc.wait(grace)
                    except subprocess.TimeoutExpired:
                        pass
                proc.kill()
            return proc.wait(10)
        except BaseException:
            # Interrupted or stuck: never leave the child behind.
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def stop_all(nodes: Sequence[NodeProc], grace: float = 15.0) -> list[int | None]:
    """Stop several nodes at once and reap every one, even if one of them fails.

    SIGTERM goes to every node first, then each is waited for within ``grace`` seconds
    counted from then (SIGKILL after), as :meth:`NodeProc.stop` would one at a time.  A
    node takes seconds to shut down (closing its host and streams, saving its state);
    one after the other, the default devnet's 12 nodes took 31-41 s to stop, where they
    can all do it at once.  Returns each node's exit status (:meth:`NodeProc.stop`);
    re-raises the first failure after every node is reaped.
    """
    for node in nodes:
        node.terminate()
    deadline = time.monotonic() + grace
    first: BaseException | None = None
    codes: list[int | None] = []
    for node in nodes:
        try:  # one that had exited already is only reaped
            codes.append(node.stop(max(0.0, deadline - time.monotonic()), signalled=True))
        except BaseException as exc:  # the others must still be reaped
            first = first or exc
            codes.append(None)
    if first is not None:
        raise first
    return codes


class open_cluster:  # noqa: N801 - used like the function-style context managers it replaced
    """Start ``(name, layer, domain)`` nodes in order; the first is everyone's bootstrap.

    Usable as ``with`` or ``async with`` (both block while nodes start and stop:
    starting is a few seconds of subprocess work).  Yields ``{name: NodeProc}``.
    On exit every started child is stopped (SIGTERM, SIGKILL after
    ``grace``) and waited for, even if a start, the body or another stop failed.
    """

    def __init__(
        self,
        root: Path,
        specs: Sequence[tuple[str, str, str] | tuple[str, str, str, str]],
        *,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        start_timeout: float = 90.0,
    ) -> None:
        self.root = root
        self.specs = list(specs)
        self.env = dict(FAST_ENV if env is None else env)
        self.grace = grace
        self.start_timeout = start_timeout
        self.nodes: dict[str, NodeProc] = {}

    def __enter__(self) -> dict[str, NodeProc]:
        try:
            for name, layer, domain, *attack in self.specs:
                home = self.root / name
                home.mkdir(mode=0o700, parents=True)
                boot = [next(iter(self.nodes.values())).addr] if self.nodes else []
                node = NodeProc(
                    name, home, layer, domain, boot, env=self.env, attack=next(iter(attack), None)
                )
                self.nodes[name] = node
                node.start(self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self.nodes

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> dict[str, NodeProc]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop and reap every child; re-raise the first failure only after all are reaped."""
        stop_all(list(self.nodes.values()), self.grace)


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


__all__ = [
    "FAST_ENV",
    "LOOPBACK_LISTEN",
    "REPO",
    "NodeProc",
    "open_cluster",
    "stop_all",
    "wait_for",
]
