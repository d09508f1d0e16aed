"""Helpers shared by the store tests (implementations, fault injection, data)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2phier.cid import CID
from p2phier.store import ContentStore, DiskStore, MemoryStore, block_key
from p2phier.unixfs import UNIXFS_FILE, PBLink, PBNode, UnixFSData, encode_pbnode, encode_unixfs


def block_path(root: Path, cid: CID | str) -> Path:
    """Where the documented DiskStore layout keeps a block."""
    name = str(block_key(cid))
    return root / "blocks" / name[-3:-1] / name


@dataclass
class Impl:
    name: str
    _open: Callable[[Path], ContentStore]

    def open(self, directory: Path) -> ContentStore:
        return self._open(directory)

    def corrupt(self, store: ContentStore, cid: CID, data: bytes) -> None:
        key = block_key(cid)
        if isinstance(store, MemoryStore):
            assert key in store._blocks
            store._blocks[key] = data
        else:
            assert isinstance(store, DiskStore)
            path = block_path(store.root, key)
            assert path.is_file()
            path.write_bytes(data)


IMPLS = {
    "memory": Impl("memory", lambda _d: MemoryStore()),
    "disk": Impl("disk", lambda d: DiskStore(d / "store")),
}


def data_of(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(f"{seed}:{size}").randbytes(size)


def temp_files(store_root: Path) -> list[str]:
    return sorted(os.listdir(store_root / "tmp"))


# --- hand-built UnixFS DAGs (hostile ones included) ------------------------------------------

Blocks = dict[CID, bytes]


def node(
    children: Sequence[tuple[CID, int]],
    *,
    type_: int = UNIXFS_FILE,
    filesize: int | None = -1,
    name: str = "",
) -> tuple[CID, bytes]:
    """A dag-pb UnixFS node over ``children`` (cid, claimed size); ``filesize=-1``: their sum."""
    sizes = tuple(size for _, size in children)
    meta = UnixFSData(type_, b"", sum(sizes) if filesize == -1 else filesize, sizes)
    links = tuple(PBLink(cid, name, size) for cid, size in children)
    block = encode_pbnode(PBNode(links, encode_unixfs(meta)))
    return CID.dag_pb(block), block


def leaf(data: bytes, blocks: Blocks) -> CID:
    cid = CID.raw(data)
    blocks[cid] = data
    return cid


def chain(depth: int) -> tuple[CID, Blocks]:
    """``depth`` single-child File nodes above one 1-byte leaf: the leaf at depth ``depth``."""
    blocks: Blocks = {}
    cid = leaf(b"z", blocks)
    for _ in range(depth):
        cid, block = node([(cid, 1)])
        blocks[cid] = block
    return cid, blocks
