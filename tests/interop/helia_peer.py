"""A real helia IPFS node, run as a child process, for interop tests and benchmarks.

What it runs: ``node --import polyfill.mjs peer.mjs`` from ``tests/interop/helia/``,
one helia 7.1.15 node (JavaScript, npm) on js-libp2p 3.3.11 with exactly these
parts: TCP (@libp2p/tcp 11.0.28), noise (@chainsafe/libp2p-noise 17.0.0), yamux
(@chainsafe/libp2p-yamux 8.0.1), identify (@libp2p/identify 4.1.14) and Bitswap
1.2.0 (@helia/bitswap 4.0.19); UnixFS through @helia/unixfs 8.0.5.  It has no
bootstrap list, mDNS, DHT, autonat, relay, UPnP, HTTP gateway or delegated routing:
it talks only to the peers it is told to dial, or that dial it.  Its identity is a
fresh Ed25519 key (or one kept in ``key_file``); its blocks live on disk under
``workdir/blocks`` (blockstore-fs), its datastore in memory.  Exact versions of the
whole tree are pinned by ``tests/interop/helia/package-lock.json``; node 20 needs
the undici 7 override in ``package.json`` (undici 8 crashes at load) and the
``Promise.withResolvers`` polyfill (a Node 22 API); ``.npmrc`` sets
``legacy-peer-deps`` so npm does not pull react-native in as a peer of the unused
WebRTC transport.

Why: p2phier's own libp2p stack and Bitswap must interoperate with an independent,
widely used implementation, not only with itself.  helia is the one that installs
here from a package registry alone, and its importer, set to kubo's
``ipfs add --cid-version=1 --raw-leaves`` settings (CIDv1, raw leaves, 256 KiB
fixed chunks, balanced DAG of at most 174 links), yields the same CIDs as kubo and
as ``p2phier.unixfs``.

The node is driven by JSON lines on its stdin, one JSON reply line per command on
its stdout; its stderr goes to ``workdir/helia-peer.log``.  :class:`HeliaPeer` starts
it in its own process group and always reaps that group.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

HELIA_DIR: Final = Path(__file__).resolve().parent / "helia"
PEER_SCRIPT: Final = HELIA_DIR / "peer.mjs"
POLYFILL: Final = HELIA_DIR / "polyfill.mjs"
# Files whose content decides what `npm ci` installs.
_INSTALL_INPUTS: Final = ("package.json", "package-lock.json", ".npmrc")
_STAMP_NAME: Final = ".p2phier-install-stamp"
MIN_NODE_MAJOR: Final = 20
NPM_CI_TIMEOUT_S: Final = 900.0
LOG_TAIL_LINES: Final = 40

_install_lock = threading.Lock()


class HeliaUnavailableError(RuntimeError):
    """node/npm are missing or too old, or ``npm ci`` failed: tests may skip on this."""


class HeliaPeerError(RuntimeError):
    """The helia peer failed to start, died, timed out, or answered ``ok: false``."""


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HeliaUnavailableError(
            f"`{name}` not found on PATH: the helia interop peer needs node >= "
            f"{MIN_NODE_MAJOR} and npm (e.g. `apt-get install nodejs npm`)"
        )
    return path


def node_executable() -> str:
    """Absolute path of ``node``, checked to be version >= 20."""
    node = _which("node")
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise HeliaUnavailableError(f"`{node} --version` failed: {exc}") from exc
    match = re.fullmatch(r"v(\d+)\.\d+\.\d+.*", out)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise HeliaUnavailableError(f"node {out!r} is too old: need >= {MIN_NODE_MAJOR}")
    return node


def _install_digest() -> str:
    digest = hashlib.sha256()
    for name in _INSTALL_INPUTS:
        path = HELIA_DIR / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


def _installed(stamp: Path, want: str) -> bool:
    try:
        return stamp.read_text().strip() == want
    except OSError:
        return False


def ensure_helia_installed() -> Path:
    """Install the pinned helia tree (``npm ci``) unless it is already current.

    ``node_modules`` counts as current when the stamp written after the last
    successful ``npm ci`` matches the hash of package.json, package-lock.json and
    .npmrc.  An exclusive file lock serialises installs across processes (pytest-xdist
    workers) and a thread lock across threads.  Returns the package directory
    (``tests/interop/helia``).  Raises :class:`HeliaUnavailableError` when node or
    npm are missing or the install fails.
    """
    node_executable()
    stamp = HELIA_DIR / "node_modules" / _STAMP_NAME
    want = _install_digest()
    if _installed(stamp, want):
        return HELIA_DIR
    npm = _which("npm")
    key = hashlib.sha256(str(HELIA_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"p2phier-helia-npm-{key}.lock"
    with _install_lock, lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if _installed(stamp, want):  # another worker did it meanwhile
                return HELIA_DIR
            cmd = [npm, "ci", "--prefix", str(HELIA_DIR), "--no-audit", "--no-fund"]
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=HELIA_DIR,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=NPM_CI_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise HeliaUnavailableError(f"`{' '.join(cmd)}` failed: {exc}") from exc
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
                raise HeliaUnavailableError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}")
            stamp.write_text(want + "\n")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return HELIA_DIR


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


_EOF: Final = object()


class HeliaPeer:
    """One running helia node; a context manager that always reaps its process group.

    ``workdir`` belongs to this peer alone: it gets ``blocks/`` (the on-disk
    blockstore) and ``helia-peer.log`` (the node's stderr).  ``listen`` is the one
    TCP multiaddr it listens on; ``wrap`` is a command prefix for the node process
    (for instance ``["ip", "netns", "exec", "ns1"]``).  ``key_file``, when given,
    keeps its identity (a libp2p protobuf private key; created, Ed25519, if absent).
    The node is started, and its ready line read, in the constructor.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        wrap: Sequence[str] = (),
        key_file: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "helia-peer.log"
        self._lock = threading.Lock()
        self._lines: queue.Queue[str | object] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._closed = False
        self._peer_id = ""
        self._addrs: list[str] = []

        ensure_helia_installed()
        cmd = [
            *wrap,
            node_executable(),
            "--import",
            str(POLYFILL),
            str(PEER_SCRIPT),
            "--listen",
            listen,
            "--blockstore",
            str(self.workdir / "blocks"),
        ]
        if key_file is not None:
            cmd += ["--key-file", str(Path(key_file).resolve())]
        env = dict(os.environ)
        env.pop("NODE_OPTIONS", None)
        try:
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    cwd=HELIA_DIR,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    encoding="utf-8",
                    bufsize=1,
                    start_new_session=True,
                )
            self._reader = threading.Thread(
                target=self._read_stdout,
                args=(self._proc.stdout,),
                name=f"helia-peer-{self._proc.pid}",
                daemon=True,
            )
            self._reader.start()
            ready = self._next_reply(start_timeout, "the ready line")
            self._set_identity(ready)
        except BaseException:
            self.close()
            raise

    # -- identity ---------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def addrs(self) -> list[str]:
        """Listen multiaddrs, each ending in ``/p2p/<peer_id>``."""
        return list(self._addrs)

    @property
    def addr(self) -> str:
        return self._addrs[0]

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _set_identity(self, reply: dict[str, Any]) -> None:
        peer_id, addrs = reply.get("peer_id"), reply.get("addrs")
        if not isinstance(peer_id, str) or not isinstance(addrs, list) or not addrs:
            raise self._error(f"bad identity reply {reply!r}")
        self._peer_id = peer_id
        self._addrs = [str(a) for a in addrs]

    # -- commands ---------------------------------------------------------

    def id(self) -> dict[str, Any]:
        reply = self.request({"cmd": "id"})
        self._set_identity(reply)
        return reply

    def add(self, path: Path | str, timeout: float = 600.0) -> str:
        """Import a file exactly as ``ipfs add --cid-version=1 --raw-leaves``; its CID."""
        reply = self.request({"cmd": "add", "path": str(Path(path).resolve())}, timeout)
        return str(reply["cid"])

    def fetch(
        self,
        cid: str,
        providers: Sequence[str],
        out: Path | str,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Dial every provider, then fetch the whole file ``cid`` by Bitswap into ``out``.

        Returns the reply: ``bytes``, ``seconds`` (dials included), ``dial_seconds``
        and, when some (not all) dials failed, ``dial_errors``.
        """
        msg = {
            "cmd": "fetch",
            "cid": cid,
            "providers": list(providers),
            "out": str(Path(out).resolve()),
            "timeout_s": timeout,
        }
        return self.request(msg, timeout + 30.0)

    def has(self, cid: str) -> bool:
        """Whether the local blockstore holds block ``cid`` (no network)."""
        return bool(self.request({"cmd": "has", "cid": cid})["has"])

    def connect(self, addr: str, timeout: float = 30.0) -> str:
        """Dial ``addr`` (with ``/p2p/<id>``); the remote peer id."""
        reply = self.request({"cmd": "connect", "addr": addr, "timeout_s": timeout}, timeout + 30)
        return str(reply["peer_id"])

    def peers(self) -> list[str]:
        """Peer ids of the currently connected peers."""
        return [str(p) for p in self.request({"cmd": "peers"})["peers"]]

    def request(self, msg: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send one command; its reply, or :class:`HeliaPeerError` if not ``ok``."""
        with self._lock:
            proc = self._proc
            if self._closed or proc is None or proc.stdin is None:
                raise HeliaPeerError("helia peer is closed")
            try:
                proc.stdin.write(json.dumps(msg) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise self._error(f"cannot send {msg.get('cmd')!r}: {exc}") from exc
            reply = self._next_reply(timeout, f"the reply to {msg.get('cmd')!r}")
        if reply.get("ok") is not True:
            raise self._error(f"{msg.get('cmd')!r} failed: {reply.get('error', reply)!r}")
        return reply

    # -- plumbing ---------------------------------------------------------

    def _read_stdout(self, stream: IO[str] | None) -> None:
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                for line in stream:
                    self._lines.put(line)
        self._lines.put(_EOF)

    def _next_reply(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(f"timed out after {timeout:.0f} s waiting for {what}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is _EOF:
                self._lines.put(_EOF)  # stays closed for later callers
                rc: int | None = None
                if self._proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        rc = self._proc.wait(2.0)
                raise self._error(f"helia peer exited (rc={rc}) before {what}")
            assert isinstance(line, str)
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                raise self._error(f"non-JSON line on stdout: {line.rstrip()!r}") from None
            if not isinstance(reply, dict):
                raise self._error(f"non-object reply on stdout: {line.rstrip()!r}")
            return reply

    def _error(self, text: str) -> HeliaPeerError:
        pid = self.pid
        return HeliaPeerError(
            f"helia peer (pid {pid}, {self.workdir}): {text}\n"
            f"--- last lines of {self.log_path} ---\n{_log_tail(self.log_path)}"
        )

    def close(self, timeout: float = 10.0) -> None:
        """Stop the node (``stop`` command, then SIGTERM, then SIGKILL to its group)."""
        proc = self._proc
        if self._closed or proc is None:
            self._closed = True
            return
        self._closed = True
        try:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                    proc.stdin.flush()
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.close()  # EOF also stops it
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5.0)
        finally:
            # Whatever happened above: nothing of the group may outlive us.
            self._signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10.0)
            if self._reader is not None:
                self._reader.join(timeout=5.0)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HeliaPeer(pid={self.pid}, peer_id={self._peer_id!r}, addrs={self._addrs!r})"
