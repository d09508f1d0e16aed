"""Tier bundles: a directory as one canonical tar in the store, and hostile tars refused."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.artifact.bundle import (
    BLOCK,
    BundleError,
    bundle_bytes,
    pack_dir,
    tar_header,
    unpack_dir,
)
from p2phier.errors import ArtifactError, MissingBlocksError
from p2phier.store import MemoryStore, block_key
from p2phier.unixfs import build_file

FILES = {
    "config.json": b'{"hidden": 16}\n',
    "model.safetensors": bytes(range(256)) * 40 + b"tail",
    "p2phier_tier.json": b"{}\n",
    "tokenizer.json": b"",
}


def _write(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def _read(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_is_byte_identical_and_the_cid_deterministic(
    tmp_path: Path, store: MemoryStore
) -> None:
    src = _write(tmp_path / "tier", FILES)
    cid = pack_dir(store, src)
    out = unpack_dir(store, cid, tmp_path / "copy")
    assert _read(out) == FILES

    # Other creation order, other modes and mtimes, another store: the same CID.
    other = tmp_path / "other"
    other.mkdir()
    for name in reversed(sorted(FILES)):
        (other / name).write_bytes(FILES[name])
        os.chmod(other / name, 0o600)
        os.utime(other / name, (12345, 67890))
    with MemoryStore() as second:
        assert pack_dir(second, other) == cid
    # The CID names exactly the canonical archive, as `ipfs add` would chunk it.
    assert cid == build_file(bundle_bytes(FILES))[0]
    assert store.get_bytes(cid) == bundle_bytes(FILES)


def test_bundle_is_a_plain_posix_tar(store: MemoryStore, tmp_path: Path) -> None:
    data = bundle_bytes(FILES)
    assert len(data) % BLOCK == 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(FILES)
        for m in members:
            assert m.isreg() and m.mode == 0o644 and m.mtime == 0
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
            extracted = tar.extractfile(m)
            assert extracted is not None and extracted.read() == FILES[m.name]
    assert tar_header("a", 0)[257:265] == b"ustar\x0000"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "sub").mkdir(), "not a regular file"),
        (lambda d: (d / "link").symlink_to(d / "config.json"), "not a regular file"),
        (lambda d: (d / "bad name").write_bytes(b"x"), "not allowed"),
        (lambda d: (d / ("n" * 101)).write_bytes(b"x"), "not allowed"),
    ],
)
def test_pack_refuses_anything_but_regular_files_with_plain_names(
    tmp_path: Path, store: MemoryStore, setup: Callable[[Path], object], message: str
) -> None:
    src = _write(tmp_path / "tier", FILES)
    setup(src)
    with pytest.raises(BundleError, match=message):
        pack_dir(store, src)
    assert store.query() == []


def test_pack_refuses_empty_and_overfull_directories(tmp_path: Path, store: MemoryStore) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="empty"):
        pack_dir(store, tmp_path / "empty")
    src = _write(tmp_path / "tier", FILES)
    with pytest.raises(BundleError, match="entries"):
        pack_dir(store, src, max_files=3)
    with pytest.raises(BundleError, match="more than 100 bytes"):
        pack_dir(store, src, max_total=100)


# --- hostile bundles --------------------------------------------------------------------------


def _tar(*entries: tuple[str, bytes | None, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar written by Python's tarfile: (name, type, data); type None is a regular file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = kind
                info.linkname = "config.json" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                tar.addfile(info)
    return buf.getvalue()


def _member(name: str, data: bytes) -> bytes:
    return tar_header(name, len(data)) + data + b"\x00" * (-len(data) % BLOCK)


END = b"\x00" * (2 * BLOCK)
GOOD = bundle_bytes({"a.json": b"{}", "b.bin": b"x" * 700})


def _corrupt_checksum(data: bytes) -> bytes:
    return b"A" + data[1:]


def _with_size(data: bytes, size: int) -> bytes:
    header = bytearray(data[:BLOCK])
    header[124:136] = b"%011o\x00" % size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header) + data[BLOCK:]


HOSTILE: list[tuple[str, bytes, dict[str, int], str]] = [
    ("path traversal", _tar(("../evil", None, b"x")), {}, "not allowed"),
    ("absolute path", _tar(("/etc/passwd", None, b"x")), {}, "not allowed"),
    ("subdirectory file", _tar(("dir/file", None, b"x")), {}, "not allowed"),
    ("dot-dot name", _tar(("..", None, b"x")), {}, "not allowed"),
    ("symlink", _tar(("link", tarfile.SYMTYPE, b"")), {}, "symbolic link"),
    ("hard link", _tar(("link", tarfile.LNKTYPE, b"")), {}, "hard link"),
    ("directory entry", _tar(("sub", tarfile.DIRTYPE, b"")), {}, "directory"),
    ("fifo", _tar(("pipe", tarfile.FIFOTYPE, b"")), {}, "FIFO"),
    ("pax header", _tar(("n" * 120, None, b"x"), fmt=tarfile.PAX_FORMAT), {}, "pax extended"),
    (
        "gnu long name",
        _tar(("n" * 120, None, b"x"), fmt=tarfile.GNU_FORMAT),
        {},
        "not a POSIX ustar",
    ),
    ("oversized member", GOOD, {"max_total": 701}, "over its limit of 701"),
    (
        "huge size claim",
        _with_size(_member("big", b"x") + END, 8**11 - 1),
        {},
        "over its limit",
    ),
    ("too many files", GOOD, {"max_files": 1}, "more than 1 files"),
    ("duplicate names", _member("a", b"1") + _member("a", b"2") + END, {}, "twice"),
    ("truncated body", GOOD[: BLOCK * 3 + 100], {}, "truncated inside b.bin"),
    ("truncated header", GOOD[: BLOCK * 2 + 100], {}, "truncated inside header 1"),
    ("no end marker", GOOD[: -2 * BLOCK], {}, "truncated inside header 2"),
    ("half an end marker", GOOD[:-BLOCK], {}, "end-of-archive"),
    ("bad checksum", _corrupt_checksum(GOOD), {}, "checksum"),
    ("not a tar", b"PK\x03\x04" + b"\x00" * 2000, {}, "octal|checksum"),
    ("data after the end", GOOD + b"\x01" + b"\x00" * 511, {}, "after its end"),
    ("dirty padding", _member("a", b"1")[:-1] + b"\x01" + END, {}, "padding"),
    ("empty archive", END, {}, "no files"),
]


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [pytest.param(d, lim, m, id=name) for name, d, lim, m in HOSTILE],
)
def test_hostile_bundles_are_refused_and_leave_nothing_behind(
    tmp_path: Path, store: MemoryStore, data: bytes, limits: dict[str, int], message: str
) -> None:
    cid = store.add_bytes(data)
    parent = tmp_path / "tiers"
    parent.mkdir()
    with pytest.raises(BundleError, match=message) as info:
        unpack_dir(store, cid, parent / "tier", **limits)
    assert isinstance(info.value, ArtifactError)
    assert _listing(parent) == []


def test_the_good_bundle_of_the_table_unpacks(tmp_path: Path, store: MemoryStore) -> None:
    """The hostile rows are edits of this one: they fail because of the edit."""
    out = unpack_dir(store, store.add_bytes(GOOD), tmp_path / "ok", max_total=702, max_files=2)
    assert _read(out) == {"a.json": b"{}", "b.bin": b"x" * 700}
    # A tar writer's record padding (zeros after the end marker) is accepted too.
    padded = GOOD + b"\x00" * (10 * BLOCK)
    assert _read(unpack_dir(store, store.add_bytes(padded), tmp_path / "ok2")) == _read(out)


def test_a_size_claim_over_the_limit_is_refused_before_any_block_is_read(
    tmp_path: Path, store: MemoryStore
) -> None:
    big = bundle_bytes({"w": bytes(600_000)})
    cid = store.add_bytes(big)
    with MemoryStore() as victim:
        victim.put_block(block_key(cid), store.get_block(cid))  # the root only
        with pytest.raises(BundleError, match="over the limit"):
            unpack_dir(victim, cid, tmp_path / "x", max_total=1000)
        with pytest.raises(MissingBlocksError, match="incomplete"):
            unpack_dir(victim, cid, tmp_path / "y")
    assert _listing(tmp_path) == []


def test_an_existing_directory_is_never_replaced(tmp_path: Path, store: MemoryStore) -> None:
    cid = store.add_bytes(GOOD)
    existing = _write(tmp_path / "tier", {"mine": b"keep"})
    with pytest.raises(BundleError, match="already exists"):
        unpack_dir(store, cid, existing)
    assert _read(existing) == {"mine": b"keep"}
    assert _listing(tmp_path) == ["tier"]


# --- property ---------------------------------------------------------------------------------

_names = st.from_regex(r"[A-Za-z0-9._-]{1,100}", fullmatch=True).filter(
    lambda n: n not in (".", "..")
)


@given(files=st.dictionaries(_names, st.binary(max_size=1500), min_size=1, max_size=6))
def test_any_small_file_set_round_trips(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp, MemoryStore() as store:
        root = Path(tmp)
        cid = pack_dir(store, _write(root / "src", files))
        assert cid == build_file(bundle_bytes(files))[0]
        assert _read(unpack_dir(store, cid, root / "out")) == dict(sorted(files.items()))
        with tarfile.open(fileobj=io.BytesIO(store.get_bytes(cid)), mode="r:") as tar:
            assert tar.getnames() == sorted(files)
