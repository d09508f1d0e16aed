"""Tier bundles read from the store: hostile DAG shapes and the free space, checked first.

Issue 13: whatever the node materialises from a fetched object must be bounded before
a byte is written -- a bundle root whose links fan in to the same tiny blocks, and a
bundle larger than the free space where it would be unpacked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2phier.artifact.bundle import BundleError, bundle_bytes, unpack_dir
from p2phier.errors import StoreIOError
from p2phier.store import MemoryStore
from p2phier.unixfs import file_size
from tests.test_unixfs import _fan_in

FILES = {"config.json": b'{"hidden": 16}\n', "model.safetensors": bytes(range(256)) * 3000}


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    with MemoryStore() as s:
        yield s


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (3, "reuse small blocks"),  # 4 blocks declaring 5.3 MB: 5.3M reads of one 1-byte leaf
        (5, "over the limit"),  # 6 blocks declaring 1.6e11 bytes
    ],
)
def test_a_bundle_root_fanning_in_to_tiny_blocks_is_refused(
    tmp_path: Path, store: MemoryStore, levels: int, message: str
) -> None:
    root, blocks = _fan_in(levels, 174)
    for cid, block in blocks.items():
        store.put_block(cid, block)
    parent = tmp_path / "tiers"
    parent.mkdir()
    with pytest.raises(BundleError, match=message):
        unpack_dir(store, root, parent / "tier")
    assert os.listdir(parent) == []


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    real = shutil.disk_usage

    def fake(path: Any) -> Any:
        return real(path)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", fake)


def test_a_bundle_larger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = store.add_bytes(bundle_bytes(FILES))
    size = file_size(cid, store.get_block)
    parent = tmp_path / "tiers"
    parent.mkdir()
    _free(monkeypatch, size - 1)
    with pytest.raises(StoreIOError, match=f"declares {size} bytes, but only {size - 1} are free"):
        unpack_dir(store, cid, parent / "tier")
    assert os.listdir(parent) == []
    _free(monkeypatch, size)
    out = unpack_dir(store, cid, parent / "tier")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == FILES
