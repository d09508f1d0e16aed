"""DiskStore's batched ingest: blocks staged during an ingest, committed together.

What must hold (see p2phier.store.disk and p2phier.fsutil.WriteBatch): a staged block
is readable by its own store object at once and by anyone else only after the commit;
the commit syncs the data, then renames, then syncs the renames, and only then may a pin
or index row name the blocks; an ingest killed before its commit leaves no visible
object, no torn block and (after the next open) no temp file.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2phier import fsutil
from p2phier.cid import CID
from p2phier.errors import CorruptBlockError, HashMismatchError, StoreIOError
from p2phier.store import DiskStore, MetaSpec
from p2phier.store.index import Index
from p2phier.unixfs import CHUNK_SIZE, build_file
from tests.store import interrupt_child
from tests.store.helpers import block_path, data_of, temp_files

REPO = Path(__file__).resolve().parents[2]


def block_files(store_dir: Path) -> list[Path]:
    return [p for p in (store_dir / "blocks").rglob("*") if p.is_file()]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, DiskStore, DiskStore]]:
    """A writer and a second handle on the same directory (as another process would be)."""
    d = tmp_path / "s"
    writer = DiskStore(d)
    reader = DiskStore(d)
    try:
        yield d, writer, reader
    finally:
        writer.close()
        reader.close()


# --- visibility ---------------------------------------------------------------------------------


def test_staged_blocks_are_readable_here_and_visible_elsewhere_only_after_the_ingest(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    data = data_of(3 * CHUNK_SIZE + 17, seed=11)
    root, blocks = build_file(data)
    with w.ingest():
        for cid, block in blocks:
            assert w.put_block(cid, block) is True
        assert w.put_block(*blocks[0]) is False  # already staged: not new
        assert len(temp_files(d)) == len(blocks)
        assert w.missing_blocks(root) == []
        assert w.get_bytes(root) == data
        assert [w.block_size(c) for c, _ in blocks] == [len(b) for _, b in blocks]
        assert not any(r.has_block(c) for c, _ in blocks)
        assert block_files(d) == []
    assert temp_files(d) == []
    assert r.get_bytes(root) == data
    assert len(block_files(d)) == len(blocks)


def test_pin_inside_an_ingest_commits_the_staged_blocks_first(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    data = data_of(2 * CHUNK_SIZE + 1, seed=12)
    root, blocks = build_file(data)
    with w.ingest():
        for cid, block in blocks:
            w.put_block(cid, block)
        w.pin(root)
        # The pin is committed, so every block it names is already on disk for anyone.
        assert temp_files(d) == []
        assert r.pins() == {root: "recursive"}
        assert r.get_bytes(root) == data


def test_a_lone_put_block_is_durable_and_visible_when_it_returns(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    block = b"a lone block"
    assert w.put_block(CID.raw(block), block) is True
    assert r.get_block(CID.raw(block)) == block
    assert temp_files(d) == []


def test_add_bytes_is_visible_to_another_handle_when_it_returns(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    data = data_of(5 * CHUNK_SIZE, seed=13)
    root = w.add_bytes(data, MetaSpec(kind="delta"))
    assert r.pins() == {root: "recursive"}
    assert r.get_meta(root) is not None
    assert r.get_bytes(root) == data
    assert temp_files(d) == []


def test_repeated_chunks_are_staged_once(tmp_path: Path) -> None:
    data = bytes(CHUNK_SIZE) * 4 + b"tail"
    with DiskStore(tmp_path / "s") as store:
        root = store.add_bytes(data)
        assert store.get_bytes(root) == data
    assert len(block_files(tmp_path / "s")) == 3  # one zero leaf, the tail, the root
    assert temp_files(tmp_path / "s") == []


# --- put_blocks and failures --------------------------------------------------------------------


def test_put_blocks_commits_once_and_reports_which_were_new(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    data = data_of(3 * CHUNK_SIZE, seed=14)
    root, blocks = build_file(data)
    w.put_block(*blocks[1])
    assert w.put_blocks(blocks) == [n != 1 for n in range(len(blocks))]
    assert r.get_bytes(root) == data
    assert temp_files(d) == []


def test_put_blocks_keeps_the_blocks_before_a_refused_one(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    good = [(CID.raw(b), b) for b in (b"first", b"second")]
    bad = (CID.raw(b"genuine"), b"forged")
    after = (CID.raw(b"after"), b"after")
    with pytest.raises(HashMismatchError):
        w.put_blocks([*good, bad, after])
    assert all(r.get_block(c) == b for c, b in good)
    assert not r.has_block(bad[0]) and not r.has_block(after[0])
    assert temp_files(d) == []


def test_an_ingest_ending_with_an_error_still_commits_what_was_put(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    blocks = [(CID.raw(b), b) for b in (b"one", b"two")]
    with pytest.raises(RuntimeError, match="boom"), w.ingest():
        for cid, block in blocks:
            w.put_block(cid, block)
        raise RuntimeError("boom")
    assert all(r.get_block(c) == b for c, b in blocks)
    assert temp_files(d) == []


def test_a_staged_block_corrupted_before_its_commit_is_quarantined_never_committed(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    block = data_of(1000, seed=15)
    cid = CID.raw(block)
    with w.ingest():
        w.put_block(cid, block)
        (tmp,) = (d / "tmp").iterdir()
        tmp.write_bytes(bytes(b ^ 0xFF for b in block))
        with pytest.raises(CorruptBlockError):
            w.get_block(cid)
        assert not w.has_block(cid)
    assert not r.has_block(cid)
    assert len(list((d / "quarantine").iterdir())) == 1
    assert temp_files(d) == []


def test_the_batch_is_committed_every_batch_max_blocks(
    pair: tuple[Path, DiskStore, DiskStore],
) -> None:
    d, w, r = pair
    w.batch_max_blocks = 3
    blocks = [(CID.raw(b), b) for b in (f"block {n}".encode() for n in range(10))]
    with w.ingest():
        for n, (cid, block) in enumerate(blocks):
            w.put_block(cid, block)
            assert len(temp_files(d)) < 3  # never more than the bound waits in tmp/
            assert r.has_block(cid) == ((n + 1) % 3 == 0)
        assert sum(r.has_block(c) for c, _ in blocks) == 9
    assert all(r.get_block(c) == b for c, b in blocks)


def test_a_shard_directory_removed_behind_the_store_is_created_again(tmp_path: Path) -> None:
    d = tmp_path / "s"
    with DiskStore(d) as store:
        first = (CID.raw(b"first"), b"first")
        store.put_block(*first)
        shutil.rmtree(block_path(d, first[0]).parent)
        assert not store.has_block(first[0])
        store.put_block(*first)  # the lone-put path
        assert store.get_block(first[0]) == first[1]
        shutil.rmtree(block_path(d, first[0]).parent)
        store.put_blocks([first])  # the batched path
    with DiskStore(d) as store:
        assert store.get_block(first[0]) == first[1]


# --- the commit protocol ------------------------------------------------------------------------


def test_data_sync_then_renames_then_sync_then_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "s"
    data = data_of(6 * CHUNK_SIZE + 3, seed=16)
    _, blocks = build_file(data)
    events: list[str] = []
    real_syncfs, real_replace = fsutil.syncfs, os.replace
    real_set_pin, real_record = Index.set_pin, Index.record

    def syncfs(path: Any) -> bool:
        # At each sync: how many blocks wait in tmp/ and how many are in place.
        events.append(f"sync tmp={len(temp_files(d))} placed={len(block_files(d))}")
        return real_syncfs(path)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if Path(dst).is_relative_to(d / "blocks"):
            events.append("rename")
        real_replace(src, dst, **kw)

    def set_pin(self: Index, *a: Any) -> None:
        events.append("pin")
        real_set_pin(self, *a)

    def record(self: Index, *a: Any) -> None:
        events.append("record")
        real_record(self, *a)

    with DiskStore(d) as store:
        monkeypatch.setattr(fsutil, "syncfs", syncfs)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(Index, "set_pin", set_pin)
        monkeypatch.setattr(Index, "record", record)
        store.add_bytes(data, MetaSpec(kind="ordered"))
    n = len(blocks)
    assert events == [
        f"sync tmp={n} placed=0",
        *["rename"] * n,
        f"sync tmp=0 placed={n}",
        "pin",
        "record",
    ]


def test_without_syncfs_every_temp_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_of(4 * CHUNK_SIZE, seed=17)
    root, blocks = build_file(data)
    fsynced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    with DiskStore(tmp_path / "s") as store:
        monkeypatch.setattr(fsutil._libc, "syncfs", None)
        monkeypatch.setattr(os, "fsync", fsync)
        assert store.add_bytes(data) == root
    # One per temp file, then at least one per directory holding renamed blocks.
    assert len(fsynced) >= 2 * len(blocks)
    with DiskStore(tmp_path / "s") as store:
        assert store.get_bytes(root) == data
        assert store.verify() == []


def test_a_failed_data_sync_is_a_store_io_error_and_nothing_is_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "s"
    data = data_of(3 * CHUNK_SIZE, seed=18)

    def syncfs(path: Any) -> bool:
        raise OSError(errno.EIO, "Input/output error")

    with DiskStore(d) as store:
        kept = store.add_bytes(b"kept before the failure")
        monkeypatch.setattr(fsutil, "syncfs", syncfs)
        with pytest.raises(StoreIOError, match="durable"):
            store.add_bytes(data)
        monkeypatch.undo()
        assert store.pins() == {kept: "recursive"}
        assert [m.cid for m in store.query()] == [kept]
        assert temp_files(d) == []
        assert list(store.iter_block_cids()) == [kept]  # nothing was renamed into place
        root = store.add_bytes(data)  # the store works on once the disk does
        assert store.get_bytes(root) == data


# --- killed before the commit finished ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["before-sync", "mid-rename", "before-pin"])
def test_an_add_killed_before_its_commit_leaves_no_object_and_no_temp_file(
    tmp_path: Path, mode: str
) -> None:
    d = tmp_path / "s"
    kept_data = data_of(2 * CHUNK_SIZE + 1, seed=1)
    with DiskStore(d) as store:
        kept = store.add_bytes(kept_data, MetaSpec(kind="kept"))
        kept_blocks = set(store.iter_block_cids())
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.store.interrupt_child", mode, str(d)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()

    root, blocks = build_file(interrupt_child.DATA)
    placed = [cid for cid, _ in blocks if block_path(d, cid).exists()]
    left = temp_files(d)
    if mode == "before-sync":
        assert (len(left), placed) == (len(blocks), [])
    elif mode == "mid-rename":
        assert len(placed) == interrupt_child.RENAMED
        assert len(left) == len(blocks) - interrupt_child.RENAMED
    else:
        assert (left, len(placed)) == ([], len(blocks))

    with DiskStore(d) as store:  # opening removes the dead writer's temp files
        assert temp_files(d) == []
        assert store.pins() == {kept: "recursive"}
        assert [m.cid for m in store.query()] == [kept]
        assert store.get_meta(root) is None
        for cid, block in blocks:
            if store.has_block(cid):
                assert store.get_block(cid) == block  # whole, never torn
        assert store.verify() == []
        store.gc()
        assert set(store.iter_block_cids()) == kept_blocks
        assert store.get_bytes(kept) == kept_data


def test_a_lone_put_into_a_shard_an_uncommitted_batch_created_makes_the_shard_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced directories")
    d = tmp_path / "s"
    staged = (CID.raw(b"staged"), b"staged")
    shard = block_path(d, staged[0]).parent.name
    lone = next(
        (CID.raw(b), b)
        for b in (f"lone {n}".encode() for n in range(100_000))
        if block_path(d, CID.raw(b)).parent.name == shard
    )
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    with DiskStore(d) as store:
        with store.ingest():
            store.put_block(*staged)  # creates the shard; durable only at the commit
            monkeypatch.setattr(os, "fsync", fsync)
            worker = threading.Thread(target=store.put_block, args=lone)  # not in an ingest
            worker.start()
            worker.join(timeout=30)
            monkeypatch.undo()
            assert str(d / "blocks") in synced  # the shard's entry made durable first
            assert synced.index(str(d / "blocks")) < synced.index(str(d / "blocks" / shard))
        assert store.get_block(lone[0]) == lone[1]
