"""A recursive pin checks a DAG as the reader does; a refused pin changes nothing stored.

Regression (issue 13): ``store pin`` accepted DAGs that ``store get``/``store cat``
refuse -- lying sizes, depth 40, directory (and other non-file) roots, links fanning
in to the same few blocks -- and recorded the pin in the index and the pin journal.
Every DAG here is built by hand, block by block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier.cid import CID, Multihash
from p2phier.errors import UnixFSError
from p2phier.store import DiskStore, ObjectTooLargeError
from p2phier.unixfs import (
    CHUNK_SIZE,
    MAX_DEPTH,
    UNIXFS_DIRECTORY,
    UNIXFS_HAMT_SHARD,
    UNIXFS_METADATA,
    UNIXFS_SYMLINK,
    DagAmplificationError,
    PBLink,
    PBNode,
    build_file,
    encode_pbnode,
    read_file,
)
from tests.store.helpers import Blocks, chain, data_of, leaf, node
from tests.test_unixfs import _fan_in


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    with DiskStore(tmp_path / "s") as s:
        yield s


def journal(store: DiskStore) -> list[str]:
    return sorted(p.name for p in (store.root / "pins").iterdir() if p.name != "FORMAT")


def put_all(store: DiskStore, blocks: Blocks) -> None:
    for cid, block in blocks.items():
        store.put_block(cid, block)


def assert_refused_and_nothing_pinned(
    store: DiskStore,
    root: CID,
    error: type[Exception],
    match: str,
    *,
    recursive: bool = True,
    max_size: int | None = None,
) -> None:
    before_pins, before_journal, before_meta = store.pins(), journal(store), store.get_meta(root)
    with pytest.raises(error, match=match) as refused:
        store.pin(root, recursive=recursive, max_size=max_size)
    assert "nothing was pinned" in str(refused.value)
    assert store.pins() == before_pins
    assert journal(store) == before_journal
    assert store.get_meta(root) == before_meta
    assert not store.is_pinned(root)


# --- lying sizes ---------------------------------------------------------------------------------


def test_a_leaf_smaller_than_its_parent_claims_is_refused(store: DiskStore) -> None:
    blocks: Blocks = {}
    a, b = leaf(b"a" * 10, blocks), leaf(b"b" * 10, blocks)
    root, block = node([(a, 10), (b, 20)])  # its filesize (30) agrees with its own blocksizes
    blocks[root] = block
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(
        store, root, UnixFSError, "has 10 bytes but its parent claims 20"
    )


def test_an_inner_node_holding_less_than_its_parent_claims_is_refused(store: DiskStore) -> None:
    blocks: Blocks = {}
    a, b = leaf(b"a" * 10, blocks), leaf(b"b" * 10, blocks)
    mid, mid_block = node([(a, 10)])
    root, root_block = node([(mid, 15), (b, 10)])
    blocks |= {mid: mid_block, root: root_block}
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(
        store, root, UnixFSError, "holds 10 bytes but its parent claims 15"
    )


def test_a_filesize_that_disagrees_with_its_own_blocksizes_is_refused(store: DiskStore) -> None:
    blocks: Blocks = {}
    a = leaf(b"a" * 10, blocks)
    root, block = node([(a, 10)], filesize=99)
    blocks[root] = block
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, root, UnixFSError, "claims filesize 99")


# --- depth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 40])
def test_a_dag_deeper_than_the_reader_follows_is_refused(store: DiskStore, depth: int) -> None:
    root, blocks = chain(depth)
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, root, UnixFSError, f"deeper than {MAX_DEPTH}")


def test_a_dag_exactly_as_deep_as_the_reader_follows_is_pinned(store: DiskStore) -> None:
    root, blocks = chain(MAX_DEPTH)
    assert b"".join(read_file(root, blocks.__getitem__)) == b"z"  # the reader's own limit
    put_all(store, blocks)
    store.pin(root)
    assert store.pins() == {root: "recursive"} and journal(store) == [str(root)]


def test_a_deep_path_behind_a_shallow_one_to_the_same_node_is_found(store: DiskStore) -> None:
    # The node ``shared`` is reached at depth 1 and, through a chain, at depth 30; its
    # leaf is 3 levels below it.  The longest path counts, however the walk meets
    # ``shared`` first (links are followed in either order here).
    blocks: Blocks = {}
    below, below_blocks = chain(2)
    blocks |= below_blocks
    shared, shared_block = node([(below, 1)])
    blocks[shared] = shared_block
    deep = shared
    for _ in range(MAX_DEPTH - 3):
        deep, block = node([(deep, 1)])
        blocks[deep] = block
    put_all(store, blocks)
    for first, second in ((shared, deep), (deep, shared)):
        root, block = node([(first, 1), (second, 1)])
        store.put_block(root, block)
        with pytest.raises(UnixFSError, match="deeper than"):  # as the reader sees it
            b"".join(read_file(root, {**blocks, root: block}.__getitem__))
        assert_refused_and_nothing_pinned(store, root, UnixFSError, f"deeper than {MAX_DEPTH}")


# --- what is not a file --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "match"),
    [
        (UNIXFS_DIRECTORY, "is a directory, not a file"),
        (UNIXFS_HAMT_SHARD, "is a directory, not a file"),
        (UNIXFS_SYMLINK, "of type 4, not a file"),
        (UNIXFS_METADATA, "of type 3, not a file"),
    ],
)
def test_a_root_that_is_not_a_unixfs_file_is_refused(
    store: DiskStore, type_: int, match: str
) -> None:
    blocks: Blocks = {}
    a = leaf(b"hello\n", blocks)
    root, block = node([(a, 6)], type_=type_, filesize=None, name="hello.txt")
    blocks[root] = block
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, root, UnixFSError, match)
    # a direct pin protects the root block alone, but only a file's root
    assert_refused_and_nothing_pinned(store, root, UnixFSError, match, recursive=False)


def test_a_directory_below_a_file_node_is_refused(store: DiskStore) -> None:
    blocks: Blocks = {}
    a = leaf(b"hello\n", blocks)
    directory, dir_block = node([(a, 6)], type_=UNIXFS_DIRECTORY, filesize=None, name="x")
    root, root_block = node([(directory, 6)])
    blocks |= {directory: dir_block, root: root_block}
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, root, UnixFSError, "is a directory, not a file")


def test_a_dag_pb_node_without_unixfs_data_and_a_dag_cbor_root_are_refused(
    store: DiskStore,
) -> None:
    blocks: Blocks = {}
    a = leaf(b"hello\n", blocks)
    bare = encode_pbnode(PBNode((PBLink(a, "", 6),), b""))
    bare_cid = CID.dag_pb(bare)
    blocks[bare_cid] = bare
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, bare_cid, UnixFSError, "has no UnixFS Data")
    cbor = b"\xa1\x61a\x01"  # {"a": 1}
    cbor_cid = CID(1, 0x71, Multihash.sha256(cbor))
    store.put_block(cbor_cid, cbor)
    assert_refused_and_nothing_pinned(store, cbor_cid, UnixFSError, "neither raw nor dag-pb")


# --- read cost and size --------------------------------------------------------------------------


def test_a_dag_fanning_in_to_tiny_blocks_is_refused(store: DiskStore) -> None:
    root, blocks = _fan_in(3, 174)  # 4 blocks declaring 174^3 bytes: 5.3M reads of one leaf
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(store, root, DagAmplificationError, "block reads")


def test_a_declared_size_over_max_size_is_refused(store: DiskStore) -> None:
    root, blocks = _fan_in(5, 174)  # 6 blocks declaring 174^5 (1.6e11) bytes
    put_all(store, blocks)
    assert_refused_and_nothing_pinned(
        store, root, ObjectTooLargeError, "over the limit of", max_size=64 << 30
    )
    assert_refused_and_nothing_pinned(store, root, DagAmplificationError, "block reads")
    honest = store.add_bytes(data_of(3 * CHUNK_SIZE), pin=False)
    assert_refused_and_nothing_pinned(
        store, honest, ObjectTooLargeError, "over the limit of", max_size=3 * CHUNK_SIZE - 1
    )
    assert_refused_and_nothing_pinned(
        store, honest, ObjectTooLargeError, "over the limit of", recursive=False, max_size=100
    )
    store.pin(honest, max_size=3 * CHUNK_SIZE)
    assert store.pins() == {honest: "recursive"}


# --- what stays pinnable -------------------------------------------------------------------------


def test_honest_files_stay_pinnable(store: DiskStore) -> None:
    single = store.add_bytes(b"one raw block", pin=False)
    assert single.codec == 0x55
    empty = store.add_bytes(b"", pin=False)
    several = store.add_bytes(data_of(5 * CHUNK_SIZE + 7, seed=3), pin=False)
    zeros = store.add_bytes(bytes(8 * CHUNK_SIZE), pin=False)  # one distinct leaf, 8 links to it
    for cid in (single, empty, several, zeros):
        store.pin(cid, max_size=8 * CHUNK_SIZE)
    assert set(store.pins()) == {single, empty, several, zeros}
    assert journal(store) == sorted(str(c) for c in (single, empty, several, zeros))


def test_a_legacy_dag_with_dag_pb_leaves_stays_pinnable(store: DiskStore) -> None:
    from p2phier.unixfs import FileDagBuilder

    builder = FileDagBuilder(raw_leaves=False, cid_version=0, chunk_size=1000)
    blocks = builder.write(data_of(5500, seed=4))
    root, rest = builder.finish()
    put_all(store, dict(blocks + rest))
    store.pin(root)
    assert store.get_bytes(root) == data_of(5500, seed=4)


def test_a_direct_pin_checks_the_root_block_only(store: DiskStore) -> None:
    # The root is a file node consistent in itself; its children are not its business
    # (they need not even be present), so a child's lie is found by a recursive pin only.
    blocks: Blocks = {}
    a = leaf(b"a" * 10, blocks)
    root, block = node([(a, 20)])
    store.put_block(root, block)
    store.pin(root, recursive=False)
    assert store.pins() == {root: "direct"}
    put_all(store, blocks)
    with pytest.raises(UnixFSError, match="parent claims 20"):
        store.pin(root)
    assert store.pins() == {root: "direct"}


def test_the_builders_dags_are_checked_without_reading_their_leaves(store: DiskStore) -> None:
    data = data_of(4 * CHUNK_SIZE + 3, seed=5)
    root, blocks = build_file(data)
    put_all(store, dict(blocks))
    read: list[CID] = []
    real = store.get_block

    def counting(cid: CID | str) -> bytes:
        read.append(CID.parse(cid) if isinstance(cid, str) else cid)
        return real(cid)

    store.get_block = counting  # type: ignore[method-assign]
    store.pin(root)
    assert {c.codec for c in read} == {0x70}  # only the dag-pb root; leaves sized, not read
