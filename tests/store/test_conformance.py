"""The ContentStore conformance suite: every test runs against every implementation.

Assertions are identical for MemoryStore and DiskStore; implementation
specifics (files, crashes, OS errors) live in test_disk.py and test_crash.py.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2phier.cid import CID, DAG_PB, RAW
from p2phier.errors import (
    BlockNotFoundError,
    BlockTooLargeError,
    CIDError,
    CorruptBlockError,
    HashMismatchError,
    PinnedError,
    StoreError,
)
from p2phier.store import (
    MAX_BLOCK_SIZE,
    ContentStore,
    InvalidMetaError,
    MetaSpec,
    NotPinnedError,
    ObjectMeta,
    ObjectTooLargeError,
    UnreadablePinError,
)
from p2phier.unixfs import CHUNK_SIZE, MAX_LINKS, build_file, child_links
from tests.store.helpers import Impl, data_of

EMPTY_FILE_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def cat_all(store: ContentStore, root: CID) -> bytes:
    return b"".join(store.cat(root))


# --- objects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * CHUNK_SIZE + 17],
)
def test_add_cat_round_trip(store: ContentStore, size: int) -> None:
    data = data_of(size)
    root = store.add_bytes(data)
    expected_root, blocks = build_file(data)
    assert root == expected_root
    assert cat_all(store, root) == data
    assert store.get_bytes(root) == data
    assert store.has_object(root)
    assert store.missing_blocks(root) == []
    assert {c for c, _ in blocks} <= set(store.iter_block_cids())
    assert store.pins() == {root: "recursive"}
    meta = store.get_meta(root)
    assert meta is not None and meta.size == size and meta.kind == "file"


def test_empty_file_is_the_kubo_cid(store: ContentStore) -> None:
    assert str(store.add_bytes(b"")) == EMPTY_FILE_CID
    assert store.get_bytes(EMPTY_FILE_CID) == b""


def test_two_level_tree_round_trip(store: ContentStore) -> None:
    # One more chunk than a full node: the DAG needs a second level of nodes.
    data = data_of(MAX_LINKS * CHUNK_SIZE + 1, seed=7)
    root = store.add_bytes(data)
    assert root == build_file(data)[0]
    assert store.get_bytes(root) == data


def test_add_stream_and_add_file_give_the_same_root(store: ContentStore, tmp_path: Path) -> None:
    data = data_of(3 * CHUNK_SIZE + 5)
    path = tmp_path / "input.bin"
    path.write_bytes(data)
    by_bytes = store.add_bytes(data)
    by_stream = store.add_stream(io.BytesIO(data))
    by_file = store.add_file(path)
    assert by_bytes == by_stream == by_file == build_file(data)[0]


def test_add_stream_refuses_more_than_max_size(store: ContentStore) -> None:
    with pytest.raises(ObjectTooLargeError):
        store.add_stream(io.BytesIO(data_of(2 * CHUNK_SIZE)), max_size=CHUNK_SIZE)
    assert store.pins() == {}
    assert store.query() == []


def test_get_bytes_refuses_more_than_max_size(store: ContentStore) -> None:
    root = store.add_bytes(data_of(CHUNK_SIZE + 1))
    assert store.get_bytes(root, max_size=CHUNK_SIZE + 1) == data_of(CHUNK_SIZE + 1)
    with pytest.raises(ObjectTooLargeError):
        store.get_bytes(root, max_size=CHUNK_SIZE)


def test_export_file_writes_content_atomically(store: ContentStore, tmp_path: Path) -> None:
    data = data_of(2 * CHUNK_SIZE + 3)
    root = store.add_bytes(data)
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old content")
    store.export_file(root, dest)
    assert dest.read_bytes() == data
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_export_of_incomplete_object_leaves_destination_untouched(
    store: ContentStore, tmp_path: Path
) -> None:
    data = data_of(2 * CHUNK_SIZE + 3)
    root = store.add_bytes(data, pin=False)
    leaf = child_links(root, store.get_block(root))[1]
    store.delete_block(leaf)
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old content")
    with pytest.raises(BlockNotFoundError):
        store.export_file(root, dest)
    assert dest.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == ["file.bin"]


# --- blocks --------------------------------------------------------------------------------------


def test_put_get_block(store: ContentStore) -> None:
    data = b"some block bytes"
    cid = CID.raw(data)
    assert not store.has_block(cid)
    assert store.put_block(cid, data) is True
    assert store.put_block(cid, data) is False
    assert store.has_block(cid)
    assert store.get_block(cid) == data
    assert store.block_size(cid) == len(data)
    assert list(store.iter_block_cids()) == [cid]
    assert store.get_block(str(cid)) == data  # the string form names the same block


def test_put_block_with_wrong_hash_is_refused(store: ContentStore) -> None:
    with pytest.raises(HashMismatchError):
        store.put_block(CID.raw(b"claimed"), b"actual")
    assert list(store.iter_block_cids()) == []
    assert not store.has_block(CID.raw(b"claimed"))
    assert not store.has_block(CID.raw(b"actual"))


def test_put_blocks_hashes_each_block_unless_the_caller_just_did(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = [(CID.raw(b), b) for b in (b"one", b"two", b"three")]
    hashed: list[int] = []
    real = CID.verify
    monkeypatch.setattr(CID, "verify", lambda self, data: hashed.append(1) or real(self, data))
    assert store.put_blocks(blocks[:2]) == [True, True]
    assert len(hashed) == 2
    # the Bitswap driver hashed them on arrival: no second hash, same result
    assert store.put_blocks(blocks[1:], verified=True) == [False, True]
    assert len(hashed) == 2
    assert [store.get_block(c) for c, _ in blocks] == [b for _, b in blocks]
    # without the flag a forged block is still refused
    with pytest.raises(HashMismatchError):
        store.put_blocks([(CID.raw(b"claimed"), b"forged")])
    # sizes are checked either way
    big = b"\0" * (MAX_BLOCK_SIZE + 1)
    with pytest.raises(BlockTooLargeError):
        store.put_blocks([(CID.raw(big), big)], verified=True)


def test_oversize_block_is_refused_before_hashing(store: ContentStore) -> None:
    big = b"\0" * (MAX_BLOCK_SIZE + 1)
    with pytest.raises(BlockTooLargeError):
        store.put_block(CID.raw(big), big)
    # With a CID that does not match either: the size error comes first, so the
    # bytes were never hashed.
    with pytest.raises(BlockTooLargeError):
        store.put_block(CID.raw(b"other"), big)
    assert list(store.iter_block_cids()) == []
    limit = big[:MAX_BLOCK_SIZE]
    assert store.put_block(CID.raw(limit), limit) is True


def test_missing_block_raises_not_found(store: ContentStore) -> None:
    cid = CID.raw(b"never stored")
    with pytest.raises(BlockNotFoundError):
        store.get_block(cid)
    with pytest.raises(BlockNotFoundError):
        store.block_size(cid)
    with pytest.raises(BlockNotFoundError):
        cat_all(store, cid)
    with pytest.raises(BlockNotFoundError):
        store.delete_block(cid)


@pytest.mark.parametrize(
    "bad",
    ["", "../../etc/passwd", "/etc/passwd", "b../../x", "bafy\0", "bafkrei", "Qm" + "1" * 44],
)
def test_invalid_block_ids_are_refused(store: ContentStore, bad: str) -> None:
    with pytest.raises(CIDError):
        store.put_block(bad, b"x")
    with pytest.raises(CIDError):
        store.get_block(bad)
    with pytest.raises(CIDError):
        store.has_block(bad)
    assert list(store.iter_block_cids()) == []


def test_cidv0_and_cidv1_name_the_same_block(store: ContentStore) -> None:
    data = data_of(2 * CHUNK_SIZE)
    root = store.add_bytes(data)
    assert root.codec == DAG_PB
    v0 = CID(0, DAG_PB, root.multihash)
    assert str(v0).startswith("Qm")
    assert store.get_block(str(v0)) == store.get_block(root)
    assert store.get_bytes(v0) == data
    assert store.is_pinned(v0)


def test_block_id_case_variants_name_the_same_block(store: ContentStore) -> None:
    data = b"case"
    cid = CID.raw(data)
    store.put_block(cid, data)
    assert store.get_block(str(cid).upper()) == data
    assert list(store.iter_block_cids()) == [cid]


def test_delete_block(store: ContentStore) -> None:
    cid = CID.raw(b"loose")
    store.put_block(cid, b"loose")
    store.delete_block(cid)
    assert not store.has_block(cid)


# --- completeness -------------------------------------------------------------------------------


def test_missing_blocks_lists_absent_blocks_in_dag_order(store: ContentStore) -> None:
    data = data_of(4 * CHUNK_SIZE + 1)
    root, blocks = build_file(data)
    leaves = [c for c in child_links(root, dict(blocks)[root])]
    assert store.missing_blocks(root) == [root]
    assert not store.has_object(root)
    store.put_block(root, dict(blocks)[root])
    assert store.missing_blocks(root) == leaves
    for cid in (leaves[0], leaves[3]):
        store.put_block(cid, dict(blocks)[cid])
    assert store.missing_blocks(root) == [leaves[1], leaves[2], leaves[4]]
    with pytest.raises(BlockNotFoundError, match="missing"):
        store.pin(root)
    assert store.pins() == {}
    for cid, block in blocks:
        store.put_block(cid, block)
    assert store.missing_blocks(root) == []
    store.pin(root)
    assert store.get_bytes(root) == data


# --- pins and GC -------------------------------------------------------------------------------


def test_gc_keeps_pinned_and_removes_unpinned(store: ContentStore) -> None:
    kept = store.add_bytes(data_of(3 * CHUNK_SIZE, seed=1))
    dropped = store.add_bytes(data_of(3 * CHUNK_SIZE, seed=2), pin=False)
    loose = CID.raw(b"loose block")
    store.put_block(loose, b"loose block")
    removed = set(store.gc())
    assert loose in removed and dropped in removed
    assert len(removed) == 1 + 1 + 3  # the loose block, the root and its 3 leaves
    assert store.has_object(kept)
    assert store.get_bytes(kept) == data_of(3 * CHUNK_SIZE, seed=1)
    assert not store.has_block(dropped)
    assert store.get_meta(dropped) is None
    assert store.get_meta(kept) is not None
    assert store.gc() == []


def test_recursive_pin_protects_children_and_shared_blocks(store: ContentStore) -> None:
    shared = data_of(CHUNK_SIZE, seed=10)
    a = store.add_bytes(shared + data_of(CHUNK_SIZE, seed=11))
    b = store.add_bytes(shared + data_of(CHUNK_SIZE, seed=12))
    shared_leaf = CID.raw(shared)
    assert shared_leaf in child_links(a, store.get_block(a))
    assert shared_leaf in child_links(b, store.get_block(b))
    assert store.is_pinned(shared_leaf)
    store.unpin(b)
    removed = set(store.gc())
    assert removed == {b, CID.raw(data_of(CHUNK_SIZE, seed=12))}
    assert store.has_block(shared_leaf)
    assert store.get_bytes(a) == shared + data_of(CHUNK_SIZE, seed=11)
    with pytest.raises(PinnedError):
        store.delete_block(shared_leaf)
    store.unpin(a)
    assert not store.is_pinned(shared_leaf)
    store.gc()
    assert list(store.iter_block_cids()) == []


def test_direct_pin_protects_only_the_block(store: ContentStore) -> None:
    data = data_of(2 * CHUNK_SIZE, seed=3)
    root = store.add_bytes(data, pin=False)
    store.pin(root, recursive=False)
    assert store.pins() == {root: "direct"}
    assert set(store.gc()) == set(child_links(root, store.get_block(root)))
    assert store.has_block(root)
    # A recursive pin needs the whole DAG.
    with pytest.raises(BlockNotFoundError):
        store.pin(root)


def test_recursive_pin_is_not_downgraded_by_a_direct_pin(store: ContentStore) -> None:
    root = store.add_bytes(data_of(2 * CHUNK_SIZE))
    store.pin(root, recursive=False)
    assert store.pins() == {root: "recursive"}


def test_pin_of_absent_block_fails_clearly(store: ContentStore) -> None:
    with pytest.raises(BlockNotFoundError, match="fetch"):
        store.pin(CID.raw(b"absent"))
    with pytest.raises(BlockNotFoundError):
        store.pin(CID.raw(b"absent"), recursive=False)
    assert store.pins() == {}


def test_unpin_of_unpinned_raises(store: ContentStore) -> None:
    root = store.add_bytes(b"x", pin=False)
    with pytest.raises(NotPinnedError):
        store.unpin(root)


def test_pin_observer_tells_new_pins_from_existing_ones(store: ContentStore) -> None:
    seen: list[tuple[CID, bool]] = []
    before = store.add_bytes(b"pinned before the observer")
    store.pin_observer = lambda cid, new: seen.append((cid, new))
    added = store.add_bytes(b"added and pinned")
    loose = store.add_bytes(b"added, pinned later", pin=False)
    store.pin(loose)
    store.pin(before)  # it had a pin of its own already
    store.pin(loose, recursive=False)  # so had this one
    assert seen == [(added, True), (loose, True), (before, False), (loose, False)]


def test_release_pins_unpins_only_pinned_roots_and_spares_what_keep_names(
    store: ContentStore,
) -> None:
    a, b, c = (store.add_bytes(data_of(2 * CHUNK_SIZE, seed=s)) for s in (20, 21, 22))
    never = store.add_bytes(b"never pinned", pin=False)
    asked: list[CID] = []

    def keep(cid: CID) -> bool:
        asked.append(cid)
        return cid == b

    assert store.release_pins([a, b, never, str(c)], keep=keep) == [a, c]
    assert asked == [a, b, c]  # an unpinned CID is skipped before keep is asked
    assert store.pins() == {b: "recursive"}
    assert store.release_pins([a]) == []  # already unpinned: no error
    store.gc()
    assert store.has_object(b) and not store.has_block(a) and not store.has_block(never)


def test_gc_refuses_when_a_pinned_node_is_corrupt(impl: Impl, store: ContentStore) -> None:
    root = store.add_bytes(data_of(3 * CHUNK_SIZE, seed=4))
    junk = store.add_bytes(b"unpinned junk", pin=False)
    impl.corrupt(store, root, b"garbage")
    with pytest.raises(UnreadablePinError):
        store.gc()
    # Nothing deleted: the pinned leaves and even the unpinned junk are still there.
    assert store.has_block(junk)
    assert len(list(store.iter_block_cids())) == 4  # 3 leaves + junk; the root is quarantined
    assert store.missing_blocks(root) == [root]
    # Healing the root from a good copy makes the object whole again.
    store.put_block(root, dict(build_file(data_of(3 * CHUNK_SIZE, seed=4))[1])[root])
    assert store.get_bytes(root) == data_of(3 * CHUNK_SIZE, seed=4)
    assert store.gc() == [junk]


def test_gc_waits_for_an_ingest_in_progress(store: ContentStore) -> None:
    data = data_of(2 * CHUNK_SIZE, seed=5)
    root, blocks = build_file(data)
    removed: list[CID] = []
    gc_done = threading.Event()

    def run_gc() -> None:
        removed.extend(store.gc())
        gc_done.set()

    with store.ingest():
        for cid, block in blocks:
            store.put_block(cid, block)
        worker = threading.Thread(target=run_gc)
        worker.start()
        # Give GC every chance to run now; it must wait until the ingest ends.
        assert not gc_done.wait(0.3)
        store.pin(root)
    worker.join(timeout=30)
    assert gc_done.is_set()
    assert removed == []
    assert store.get_bytes(root) == data


def test_gc_inside_an_ingest_of_the_same_thread_is_refused(store: ContentStore) -> None:
    with store.ingest(), pytest.raises(StoreError, match="inside an ingest"):
        store.gc()


# --- verify ---------------------------------------------------------------------------------


def test_verify_finds_and_quarantines_corrupt_blocks(impl: Impl, store: ContentStore) -> None:
    data = data_of(6 * CHUNK_SIZE, seed=6)
    root, blocks = build_file(data)
    store.add_bytes(data)
    leaves = child_links(root, dict(blocks)[root])
    bad = {leaves[0], leaves[2], root}
    for cid in bad:
        impl.corrupt(store, cid, b"flipped")
    assert set(store.verify(quarantine=False)) == bad
    assert store.has_block(root)  # only reported
    assert set(store.verify()) == bad
    assert store.verify() == []  # quarantined: no longer in the store
    assert store.missing_blocks(root) == [root]
    for cid, block in blocks:
        store.put_block(cid, block)
    assert store.verify() == []
    assert store.get_bytes(root) == data


def test_corrupt_block_is_never_returned(impl: Impl, store: ContentStore) -> None:
    data = data_of(2 * CHUNK_SIZE, seed=8)
    root = store.add_bytes(data)
    leaf = child_links(root, store.get_block(root))[0]
    impl.corrupt(store, leaf, data[: CHUNK_SIZE - 1] + b"\x00")
    with pytest.raises(CorruptBlockError):
        store.get_block(leaf)
    assert not store.has_block(leaf)  # quarantined: a later fetch heals it
    with pytest.raises(BlockNotFoundError):
        cat_all(store, root)
    assert store.missing_blocks(root) == [leaf]


def test_corrupt_leaf_stops_cat_before_its_bytes(impl: Impl, store: ContentStore) -> None:
    data = data_of(3 * CHUNK_SIZE, seed=9)
    root = store.add_bytes(data)
    leaf = child_links(root, store.get_block(root))[1]
    impl.corrupt(store, leaf, b"\xff" * CHUNK_SIZE)
    pieces = []
    with pytest.raises(CorruptBlockError):
        for piece in store.cat(root):
            pieces.append(piece)
    assert b"".join(pieces) == data[:CHUNK_SIZE]


# --- index ---------------------------------------------------------------------------------------


def _populate(store: ContentStore) -> dict[str, CID]:
    specs = {
        "a": MetaSpec(kind="delta", layer="domain", domain="en/medical", author="peerA"),
        "b": MetaSpec(
            kind="delta", layer="sub", domain="en/medical/cardio", author="peerB", parent="pa"
        ),
        "c": MetaSpec(kind="base", layer="language", domain="en", author="peerA", name="base.bin"),
        "d": MetaSpec(kind="delta", layer="domain", domain="english_lit", author="peerC"),
        "e": MetaSpec(
            kind="delta", layer="domain", domain="de/medical", author="peerB", parent="pa"
        ),
    }
    return {k: store.add_bytes(k.encode() * 10, spec) for k, spec in specs.items()}


def test_index_queries(store: ContentStore) -> None:
    cids = _populate(store)

    def q(**kw: str) -> set[str]:
        by_cid = {v: k for k, v in cids.items()}
        return {by_cid[m.cid] for m in store.query(**kw)}

    assert q() == set(cids)
    assert q(kind="delta") == {"a", "b", "d", "e"}
    assert q(kind="base") == {"c"}
    assert q(layer="domain") == {"a", "d", "e"}
    assert q(domain="en/medical") == {"a"}
    assert q(domain_prefix="en/medical") == {"a", "b"}
    assert q(domain_prefix="en") == {"a", "b", "c", "d"}
    assert q(domain_prefix="en/") == {"a", "b"}
    assert q(domain_prefix="%") == set()  # literal, not a LIKE wildcard
    assert q(author="peerB") == {"b", "e"}
    assert q(parent="pa") == {"b", "e"}
    assert q(kind="delta", author="peerB", domain_prefix="de") == {"e"}
    meta = store.get_meta(cids["c"])
    assert meta == ObjectMeta(
        cid=cids["c"],
        kind="base",
        size=10,
        created=meta.created if meta else 0.0,
        layer="language",
        domain="en",
        author="peerA",
        name="base.bin",
    )


def test_record_requires_a_complete_object(store: ContentStore) -> None:
    root, blocks = build_file(data_of(2 * CHUNK_SIZE))
    meta = ObjectMeta(cid=root, kind="delta", size=2 * CHUNK_SIZE, created=1.0, domain="x")
    with pytest.raises(BlockNotFoundError):
        store.record(meta)
    for cid, block in blocks:
        store.put_block(cid, block)
    store.record(meta)
    assert store.get_meta(root) == meta
    assert store.query(domain="x") == [meta]


def test_readding_keeps_created_and_updates_fields(store: ContentStore) -> None:
    first = store.add_bytes(b"same", MetaSpec(kind="delta", domain="a"))
    before = store.get_meta(first)
    assert before is not None
    created = before.created
    time.sleep(0.01)
    again = store.add_bytes(b"same", MetaSpec(kind="delta", domain="b"))
    assert again == first
    meta = store.get_meta(first)
    assert meta is not None and meta.domain == "b" and meta.created == created
    # Re-adding without metadata does not erase what is known.
    store.add_bytes(b"same")
    assert store.get_meta(first) == meta


@pytest.mark.parametrize(
    "fields",
    [{"kind": ""}, {"kind": "k" * 65}, {"domain": "d" * 1025}, {"name": "a\0b"}],
)
def test_invalid_metadata_is_refused_before_writing(
    store: ContentStore, fields: dict[str, str]
) -> None:
    with pytest.raises(InvalidMetaError):
        store.add_bytes(b"data", MetaSpec(**fields))
    assert list(store.iter_block_cids()) == []
    with pytest.raises(InvalidMetaError):
        ObjectMeta(cid=CID.raw(b""), kind="k", size=-1, created=0.0)


def test_closed_store_refuses_work(impl: Impl, tmp_path: Path) -> None:
    s = impl.open(tmp_path)
    root = s.add_bytes(b"x")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.get_block(root)
    with pytest.raises(StoreError, match="closed"):
        s.add_bytes(b"y")


# --- property ------------------------------------------------------------------------------------


class ChoppyStream(io.RawIOBase):
    """A stream that returns short reads of the given sizes (as pipes and sockets do)."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        self._data = memoryview(data)
        self._cuts = cuts
        self._pos = 0
        self._i = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        cut = self._cuts[self._i % len(self._cuts)] if self._cuts else size
        self._i += 1
        n = min(size, max(cut, 1)) if size >= 0 else len(self._data)
        piece = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(piece)
        return piece


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=st.one_of(
        st.integers(0, 2 * CHUNK_SIZE + 10),
        st.sampled_from([CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]),
    ),
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(1, CHUNK_SIZE + 100), max_size=8),
)
def test_property_chunked_add_stream_round_trips(
    impl: Impl, size: int, seed: int, cuts: list[int]
) -> None:
    # `impl` is a stateless factory, so sharing it across examples is safe; each
    # example opens a fresh store in its own directory.
    data = data_of(size, seed)
    with tempfile.TemporaryDirectory() as d, impl.open(Path(d)) as store:
        root = store.add_stream(ChoppyStream(data, cuts))  # type: ignore[arg-type]
        assert root == build_file(data)[0]
        assert cat_all(store, root) == data
        assert store.verify() == []
        assert root.codec == (RAW if size <= CHUNK_SIZE else DAG_PB)
