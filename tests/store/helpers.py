"""Helpers shared by the store tests (implementations, fault injection, data)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2phier.cid import CID
from p2phier.store import ContentStore, DiskStore, MemoryStore, block_key


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
