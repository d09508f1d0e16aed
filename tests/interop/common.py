"""What the interop tests share: a p2phier node process, sizes, data, and the checks.

The p2phier side is always a real ``p2phier node run`` process (what users
run): content goes into its store as ``store add`` puts it there, and it
fetches through its control socket (``p2phier fetch``), from the peers it is
connected to.  The foreign side is a :class:`Foreign` peer (helia or kubo, each
in its own child process).  Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from p2phier.artifact import pack_adapter
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.artifact.verify import verify_artifact
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.devnet.procs import NodeProc, wait_for
from p2phier.identity import Identity
from p2phier.store import DiskStore
from p2phier.unixfs import build_file

MiB = 1 << 20
#: the issue's sizes: one byte, one level of links, several, and two levels (> 174 leaves)
SIZES = {"1B": 1, "300KiB": 300 << 10, "3MiB": 3 * MiB, "45MiB+3": 45 * MiB + 3}
FETCH_TIMEOUT_S = 180.0


class Foreign(Protocol):
    """A foreign IPFS peer in a child process (``HeliaPeer``, ``KuboPeer``)."""

    @property
    def peer_id(self) -> str: ...

    @property
    def addr(self) -> str: ...

    def add(self, path: Path | str) -> str: ...

    def fetch(
        self, cid: str, providers: list[str], out: Path | str, timeout: float = ...
    ) -> dict[str, Any]: ...

    def connect(self, addr: str) -> Any: ...


def data_for(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@contextmanager
def node_store(node: NodeProc) -> Iterator[DiskStore]:
    """The running node's own store, opened beside it (as ``p2phier store add`` does)."""
    store = DiskStore(node.home / "store")
    try:
        yield store
    finally:
        store.close()


def start_node(root: Path, name: str, bootstrap: list[str] | None = None) -> NodeProc:
    home = root / name
    home.mkdir(mode=0o700, parents=True)
    node = NodeProc(name, home, "master", "", list(bootstrap or []))
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    return node


def foreign_fetches_from_node(
    foreign: Foreign, node: NodeProc, data: bytes, out: Path
) -> tuple[str, dict[str, Any]]:
    """The node holds ``data``; ``foreign`` fetches it from the node alone. ``(cid, reply)``."""
    with node_store(node) as store:
        cid = str(store.add_bytes(data))
    reply = foreign.fetch(cid, [node.addr], out, timeout=FETCH_TIMEOUT_S)
    assert reply.get("ok"), reply
    assert out.read_bytes() == data
    return cid, reply


def node_fetches_from_foreign(
    foreign: Foreign, node: NodeProc, cid: str, timeout: float = FETCH_TIMEOUT_S
) -> dict[str, Any]:
    """``node`` fetches ``cid`` with ``foreign`` connected (it dials the node first)."""
    foreign.connect(node.addr)
    # the dialler may see the connection up before the node has registered it
    wait_for(
        "the node to list the foreign peer as connected",
        lambda: foreign.peer_id in node.status()["peers"],
        timeout=30,
        every=0.05,
    )
    reply: dict[str, Any] = node.call("fetch", {"cid": cid, "timeout": timeout}, timeout + 30)
    return reply


def node_bytes(node: NodeProc, cid: str) -> bytes:
    with node_store(node) as store:
        assert cid in {str(c) for c in store.pins()}, "fetched object is not pinned"
        return store.get_bytes(cid)


def p2phier_cid(data: bytes) -> str:
    return str(build_file(data)[0])


def pack_artifact(node: NodeProc, seed: int) -> tuple[str, list[str]]:
    """A real signed artifact in ``node``'s store: its CID and the CIDs of its three parts
    (envelope, adapter config, compressed safetensors payload)."""
    adapter = write_synthetic_adapter(node.home.parent / f"adapter-{seed}", seed=seed)
    with node_store(node) as store:
        art = pack_adapter(
            store,
            adapter,
            Identity.load(node.home / "identity.key"),
            layer=node.layer,
            domain=node.domain,
            base_model_id=DEFAULT_BASE_MODEL,
            round=1,
            metrics={"loss": 0.5},
            now=time.time(),
        )
    m = art.manifest
    return str(art.cid), [str(art.cid), str(m.config.cid), str(m.tensors.cid)]


def artifact_round_trip(foreign: Foreign, root: Path, seed: int) -> None:
    """An artifact packed by a node is fetched by ``foreign`` by its CIDs; that node
    stops; a fresh node fetches the artifact from ``foreign`` and it verifies there
    (signature, author, hashes, bounded decompression, safetensors, config)."""
    origin = start_node(root, f"origin-{seed}")
    try:
        art, parts = pack_artifact(origin, seed)
        for i, cid in enumerate(parts):
            reply = foreign.fetch(cid, [origin.addr], root / f"part-{seed}-{i}", FETCH_TIMEOUT_S)
            assert reply.get("ok"), reply
    finally:
        assert origin.stop() == 0, origin.log_tail()
    back = start_node(root, f"back-{seed}")  # knows nobody: the foreign peer dials it
    try:
        for cid in parts:
            reply = node_fetches_from_foreign(foreign, back, cid)
            got = {peer for peer, n in reply["received"].items() if n > 0}
            assert got == {foreign.peer_id}, reply
        with node_store(back) as store:
            verified = verify_artifact(store, art, expected_base_model=DEFAULT_BASE_MODEL)
        assert str(verified.cid) == art
        assert str(verified.manifest.author) == origin.peer_id
    finally:
        assert back.stop() == 0, back.log_tail()
