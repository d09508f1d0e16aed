"""The DiskStore's pin journal: pins survive the loss of the index; GC never guesses.

Regression: with ``index.sqlite`` deleted or truncated to zero bytes, the store
opened as empty (no objects, no pins) and ``store gc`` then deleted every block,
pinned content included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2phier.errors import StoreError
from p2phier.store import DiskStore, MetaSpec, UnprovenPinsError
from p2phier.store.disk import PINS_FORMAT
from p2phier.unixfs import CHUNK_SIZE

from .helpers import data_of


def _lose_index(root: Path, how: str) -> None:
    index = root / "index.sqlite"
    for extra in (root / "index.sqlite-wal", root / "index.sqlite-shm"):
        extra.unlink(missing_ok=True)
    if how == "deleted":
        index.unlink()
    else:
        index.write_bytes(b"")


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_pins_survive_a_lost_index_and_gc_keeps_pinned_data(tmp_path: Path, how: str) -> None:
    root = tmp_path / "s"
    kept_data, direct_data, loose_data = (data_of(3 * CHUNK_SIZE + i, seed=i) for i in range(3))
    with DiskStore(root) as store:
        kept = store.add_bytes(kept_data, MetaSpec(kind="update", name="kept"))
        direct = store.add_bytes(direct_data, pin=False)
        store.pin(direct, recursive=False)
        loose = store.add_bytes(loose_data, pin=False)
        before = set(store.iter_block_cids())
    _lose_index(root, how)
    with DiskStore(root) as store:
        assert store.pins() == {kept: "recursive", direct: "direct"}
        removed = set(store.gc())
        assert store.get_bytes(kept) == kept_data  # the whole pinned DAG is still there
        assert store.has_block(direct)
        assert loose not in set(store.iter_block_cids())  # unpinned: collected, as before
        assert removed <= before and kept not in removed and direct not in removed
        assert store.verify() == []
        meta = store.get_meta(kept)
        assert meta is not None  # listed again (its name and kind were in the lost index)


def test_an_unpin_is_kept_across_reopening(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with DiskStore(root) as store:
        cid = store.add_bytes(data_of(CHUNK_SIZE + 1, seed=7))
        store.unpin(cid)
        assert not (root / "pins" / str(cid)).exists()
    _lose_index(root, "deleted")
    with DiskStore(root) as store:
        assert store.pins() == {}
        store.gc()
        assert not store.has_block(cid)


def test_a_pin_in_the_journal_but_not_the_index_is_restored(tmp_path: Path) -> None:
    # A crash between the journal entry and the index row (pin) or between the index
    # row's removal and the journal's (unpin): the union is kept, never less.
    root = tmp_path / "s"
    with DiskStore(root) as store:
        cid = store.add_bytes(data_of(CHUNK_SIZE + 2, seed=8))
        store._index.remove_pin(cid)  # the index row alone is gone
    with DiskStore(root) as store:
        assert store.pins() == {cid: "recursive"}


def test_a_store_without_journal_and_without_index_refuses_gc(tmp_path: Path) -> None:
    # A store from before the pin journal whose index is then lost: nothing can
    # prove what was pinned, so nothing is deleted until the operator says so.
    root = tmp_path / "s"
    data = data_of(2 * CHUNK_SIZE, seed=9)
    with DiskStore(root) as store:
        cid = store.add_bytes(data)
        blocks = set(store.iter_block_cids())
    for entry in (root / "pins").iterdir():
        entry.unlink()
    (root / "pins").rmdir()
    _lose_index(root, "deleted")
    with DiskStore(root) as store:
        with pytest.raises(UnprovenPinsError, match=r"nothing deleted.*trust-index"):
            store.gc()
        with pytest.raises(UnprovenPinsError):
            store.delete_block(cid)
        assert set(store.iter_block_cids()) == blocks
        store.pin(cid)  # the operator pins again what to keep...
        assert store.trust_index() == 1  # ...and declares the pins complete
        assert store.gc() == []
        assert store.get_bytes(cid) == data
    with DiskStore(root) as store:
        assert store.pins() == {cid: "recursive"}


def test_a_store_from_before_the_journal_starts_it_from_its_index(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with DiskStore(root) as store:
        cid = store.add_bytes(data_of(CHUNK_SIZE, seed=10))
    for entry in (root / "pins").iterdir():
        entry.unlink()
    (root / "pins").rmdir()
    with DiskStore(root) as store:  # index intact: the journal is started from it
        assert (root / "pins" / "FORMAT").read_bytes() == PINS_FORMAT
        assert (root / "pins" / str(cid)).read_bytes() == b"recursive"
        assert store.gc() == []


@pytest.mark.parametrize(
    "junk", ["not-a-cid", "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"]
)
def test_a_hostile_journal_entry_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, junk: str
) -> None:
    root = tmp_path / "s"
    with DiskStore(root) as store:
        store.add_bytes(data_of(CHUNK_SIZE, seed=11))
    (root / "pins" / junk).write_bytes(b"x" * 10_000)  # not a mode, and far too long
    with pytest.raises(StoreError, match="pin journal"):
        DiskStore(root)
    (root / "pins" / junk).unlink()
    with DiskStore(root) as store:
        assert len(store.pins()) == 1
