"""DiskStore specifics: layout, persistence, corruption at rest, hostile files and ids,
temp-file hygiene, the cross-process GC lock, the index schema and OS write errors.

Reliability rows 5 (corruption at rest), 7 (oversize blob), 8 (GC vs pins) and
10 (disk full / EACCES) of shared/notes/reliability.md; row 9 is test_crash.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

import pytest

from p2phier.cid import CID, RAW, Multihash, b58encode
from p2phier.errors import BlockNotFoundError, CIDError, CorruptBlockError, StoreError
from p2phier.store import (
    MAX_BLOCK_SIZE,
    SCHEMA_VERSION,
    DiskStore,
    IndexSchemaError,
    MetaSpec,
)
from p2phier.unixfs import CHUNK_SIZE, build_file, child_links
from tests.store.helpers import block_path, data_of, temp_files

REPO = Path(__file__).resolve().parents[2]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- layout and persistence -------------------------------------------------------------------


def test_blocks_are_files_named_by_canonical_cid(tmp_path: Path) -> None:
    data = data_of(2 * CHUNK_SIZE + 1)
    _, blocks = build_file(data)
    with DiskStore(tmp_path / "s") as store:
        store.add_bytes(data)
    for cid, block in blocks:
        path = block_path(tmp_path / "s", cid)
        assert path.read_bytes() == block
        assert path.parent.name == str(cid)[-3:-1]
    files = [p for p in (tmp_path / "s" / "blocks").rglob("*") if p.is_file()]
    assert len(files) == len(blocks)


def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    data = data_of(3 * CHUNK_SIZE, seed=1)
    with DiskStore(tmp_path / "s") as store:
        root = store.add_bytes(data, MetaSpec(kind="delta", domain="en/x", author="peerA"))
        loose = store.add_bytes(b"loose", pin=False)
        meta = store.get_meta(root)
    with DiskStore(tmp_path / "s") as store:
        assert store.get_bytes(root) == data
        assert store.pins() == {root: "recursive"}
        assert store.get_meta(root) == meta
        assert store.query(author="peerA") == [meta]
        assert store.gc() == [loose]
        assert store.verify() == []


def test_index_schema_is_versioned_and_newer_schemas_are_refused(tmp_path: Path) -> None:
    DiskStore(tmp_path / "s").close()
    db = sqlite3.connect(tmp_path / "s" / "index.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(IndexSchemaError, match="upgrade"):
        DiskStore(tmp_path / "s")


def test_garbage_index_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="index"):
        DiskStore(tmp_path / "s")


# --- corruption at rest (row 5) ----------------------------------------------------------------


def _twenty_leaf_object(store: DiskStore) -> tuple[CID, bytes, list[CID], dict[CID, bytes]]:
    data = data_of(20 * CHUNK_SIZE, seed=5)
    root, blocks = build_file(data)
    assert store.add_bytes(data) == root
    leaves = child_links(root, dict(blocks)[root])
    assert len(leaves) == 20
    return root, data, leaves, dict(blocks)


def _damage(store_root: Path, leaves: list[CID]) -> None:
    for n, cid in enumerate(leaves):
        path = block_path(store_root, cid)
        raw = bytearray(path.read_bytes())
        if n % 2:
            raw[n * 997 % len(raw)] ^= 0x01  # one flipped bit
            path.write_bytes(bytes(raw))
        else:
            path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated


def test_verify_finds_20_of_20_corrupted_blocks_and_a_peer_heals_them(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "s") as store:
        root, data, leaves, blocks = _twenty_leaf_object(store)
        _damage(tmp_path / "s", leaves)
        assert sorted(store.verify(), key=str) == sorted(leaves, key=str)
        assert len(list((tmp_path / "s" / "quarantine").iterdir())) == 20
        assert store.missing_blocks(root) == leaves
        for cid in store.missing_blocks(root):  # a "peer" sends the good bytes
            store.put_block(cid, blocks[cid])
        assert store.verify() == []
        assert store.get_bytes(root) == data


def test_corrupt_blocks_are_never_served(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "s") as store:
        root, _, leaves, _ = _twenty_leaf_object(store)
        _damage(tmp_path / "s", leaves)
        for cid in leaves:
            with pytest.raises(CorruptBlockError):
                store.get_block(cid)
            with pytest.raises(BlockNotFoundError):
                store.get_block(cid)  # quarantined, not served the second time either
        with pytest.raises(BlockNotFoundError):
            b"".join(store.cat(root))
        # GC keeps the pinned root even though its DAG is incomplete.
        store.gc()
        assert store.has_block(root)


def test_oversized_block_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "s") as store:
        planted = []
        for n in range(2):
            cid = CID.raw(f"planted {n}".encode())
            path = block_path(tmp_path / "s", cid)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(1 << 30)  # sparse: 1 GiB claimed, nothing written
            planted.append(cid)
        tracemalloc.start()
        try:
            with pytest.raises(CorruptBlockError, match="limit"):
                store.get_block(planted[0])
            assert store.verify() == [planted[1]]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * MAX_BLOCK_SIZE
        assert not store.has_block(planted[0]) and not store.has_block(planted[1])


def test_symlink_and_fifo_in_place_of_a_block_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret outside the store")
    with DiskStore(tmp_path / "s") as store:
        link_cid = CID.raw(outside.read_bytes())  # the link even points at matching bytes
        link = block_path(tmp_path / "s", link_cid)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside)
        with pytest.raises(CorruptBlockError, match="symbolic link"):
            store.get_block(link_cid)
        fifo_cid = CID.raw(b"fifo")
        fifo = block_path(tmp_path / "s", fifo_cid)
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo)
        with pytest.raises(CorruptBlockError, match="not a regular file"):
            store.get_block(fifo_cid)
    assert outside.read_bytes() == b"secret outside the store"


# --- hostile block ids --------------------------------------------------------------------------

ESCAPES = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "blocks/../index.sqlite",
    "b../../../x",
    "bafkrei\0aaaa",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku/../../x",
    "..",
    "",
    " bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvykuu",
]


@pytest.mark.parametrize("bad", ESCAPES)
def test_an_invalid_block_id_never_reaches_the_file_system(tmp_path: Path, bad: str) -> None:
    with DiskStore(tmp_path / "s") as store:
        before = tree(tmp_path)
        for call in (
            lambda: store.put_block(bad, b""),
            lambda: store.get_block(bad),
            lambda: store.has_block(bad),
            lambda: store.block_size(bad),
            lambda: store.delete_block(bad),
            lambda: store.pin(bad),
            lambda: store.missing_blocks(bad),
        ):
            with pytest.raises(CIDError):
                call()
        assert tree(tmp_path) == before


def test_valid_id_spellings_map_to_one_canonical_file(tmp_path: Path) -> None:
    data = data_of(2 * CHUNK_SIZE)
    root, blocks = build_file(data)
    node = dict(blocks)[root]
    v0 = b58encode(root.multihash.to_bytes())
    assert v0.startswith("Qm")
    spellings = [v0, str(root).upper(), "z" + b58encode(root.to_bytes())]
    with DiskStore(tmp_path / "s") as store:
        for spelling in spellings:
            store.put_block(spelling, node)
            assert store.get_block(spelling) == node
        files = [p for p in (tmp_path / "s" / "blocks").rglob("*") if p.is_file()]
        assert files == [block_path(tmp_path / "s", root)]
        assert list(store.iter_block_cids()) == [root]


def test_stray_files_in_the_block_tree_are_not_blocks(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "s") as store:
        cid = store.add_bytes(b"real", pin=False)
        stray = tmp_path / "s" / "blocks" / "zz" / "not-a-cid"
        stray.parent.mkdir()
        stray.write_bytes(b"x")
        misplaced = tmp_path / "s" / "blocks" / "zz" / str(CID.raw(b"elsewhere"))
        misplaced.write_bytes(b"elsewhere")
        assert list(store.iter_block_cids()) == [cid]
        assert store.gc() == [cid]
        assert stray.exists() and misplaced.exists()


def test_identity_cids_are_inline_and_never_stored(tmp_path: Path) -> None:
    cid = CID(1, RAW, Multihash(0x00, b"inline"))
    with DiskStore(tmp_path / "s") as store:
        assert store.put_block(cid, b"inline") is False
        assert store.get_block(cid) == b"inline"
        assert store.has_block(cid)
        assert list(store.iter_block_cids()) == []


# --- temp files and the cross-process lock ----------------------------------------------------


def test_leftover_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    DiskStore(tmp_path / "s").close()
    for name in ("bafkreiabc.0123.tmp", "junk", ".hidden"):
        (tmp_path / "s" / "tmp" / name).write_bytes(b"half a block")
    DiskStore(tmp_path / "s").close()
    assert temp_files(tmp_path / "s") == []


def test_temp_files_of_a_live_writer_are_kept(tmp_path: Path) -> None:
    writer = DiskStore(tmp_path / "s")
    try:
        with writer.ingest():  # another handle (as another process would) is writing
            (tmp_path / "s" / "tmp" / "inflight.tmp").write_bytes(b"partial")
            DiskStore(tmp_path / "s").close()
            assert temp_files(tmp_path / "s") == ["inflight.tmp"]
        DiskStore(tmp_path / "s").close()
        assert temp_files(tmp_path / "s") == []
    finally:
        writer.close()


def test_gc_in_another_handle_waits_for_an_ingest(tmp_path: Path) -> None:
    data = data_of(2 * CHUNK_SIZE, seed=3)
    root, blocks = build_file(data)
    writer = DiskStore(tmp_path / "s")
    collector = DiskStore(tmp_path / "s")
    removed: list[CID] = []
    done = threading.Event()

    def run_gc() -> None:
        removed.extend(collector.gc())
        done.set()

    try:
        with writer.ingest():
            for cid, block in blocks:
                writer.put_block(cid, block)
            worker = threading.Thread(target=run_gc)
            worker.start()
            assert not done.wait(0.3)  # blocked on the file lock
            writer.pin(root)
        worker.join(timeout=30)
        assert done.is_set()
        assert removed == []
        assert collector.get_bytes(root) == data
    finally:
        writer.close()
        collector.close()


# --- OS write errors (row 10) -------------------------------------------------------------------


def _run_child(*args: str, user: int | None = None) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.store.io_fault_child", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result: dict[str, object] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def _prepared_store(parent: Path) -> tuple[Path, CID, bytes]:
    root_dir = parent / "s"
    data = data_of(2 * CHUNK_SIZE + 9, seed=2)
    with DiskStore(root_dir) as store:
        cid = store.add_bytes(data, MetaSpec(kind="delta", domain="kept"))
    return root_dir, cid, data


def _assert_previous_state_intact(root_dir: Path, cid: CID, data: bytes) -> None:
    assert temp_files(root_dir) == []  # the failed write cleaned up after itself
    with DiskStore(root_dir) as store:
        assert store.pins() == {cid: "recursive"}
        assert [m.cid for m in store.query()] == [cid]
        assert store.get_bytes(cid) == data
        assert store.verify() == []


def test_file_size_limit_is_a_clean_store_io_error(tmp_path: Path) -> None:
    root_dir, cid, data = _prepared_store(tmp_path)
    result = _run_child("fsize", str(root_dir))
    assert result["error"] == "StoreIOError"
    assert result["errno"] == errno.EFBIG
    assert "disk is full" in str(result["message"])
    assert "store gc" in str(result["message"])  # says what becomes of the partial blocks
    _assert_previous_state_intact(root_dir, cid, data)


@pytest.mark.parametrize("where", ["blocks", "tmp"])
def test_read_only_directory_is_a_clean_store_io_error(where: str) -> None:
    # Root ignores permission bits; the child then drops to `nobody`, which needs a
    # store it owns in a directory it can reach (pytest's tmp_path is root-only).
    parent = Path(tempfile.mkdtemp(prefix="p2phier-eacces-"))
    try:
        root_dir, cid, data = _prepared_store(parent)
        if os.geteuid() == 0:
            for p in [parent, *parent.rglob("*")]:
                os.chown(p, 65534, 65534, follow_symlinks=False)
        result = _run_child(f"chmod-{where}", str(root_dir))
        assert result["error"] == "StoreIOError"
        assert result["errno"] == errno.EACCES
        assert "permissions" in str(result["message"])
        _assert_previous_state_intact(root_dir, cid, data)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_export_checks_free_space_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `store get` wrote until the disk was full; now the declared size is checked
    # against the free space first (the file system's answer is the one faked here).
    import shutil

    from p2phier.errors import StoreIOError
    from p2phier.store import base

    with DiskStore(tmp_path / "s") as store:
        cid = store.add_bytes(data_of(CHUNK_SIZE + 5, seed=12))
        real = shutil.disk_usage
        monkeypatch.setattr(base.shutil, "disk_usage", lambda p: real(p)._replace(free=CHUNK_SIZE))
        out = tmp_path / "out.bin"
        with pytest.raises(StoreIOError, match="free"):
            store.export_file(cid, out)
        assert not out.exists()
        assert list((tmp_path / "s" / "tmp").iterdir()) == []
