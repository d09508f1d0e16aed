"""Bounded zstd: round trips, our frame parser against libzstd's, and hostile frames.

Hostile frames are built byte by byte from RFC 8878 (frame header, window
descriptor, RLE blocks), so each test states exactly what the attacker sends.
"""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from p2phier.artifact.compress import (
    MAGIC,
    compress,
    compress_into_store,
    decompress,
    frame_info,
)
from p2phier.errors import DecompressionError
from p2phier.store import DiskStore, MetaSpec
from p2phier.store.base import ObjectTooLargeError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def rle_block(size: int, *, last: bool, byte: int = 0) -> bytes:
    header = int(last) | (1 << 1) | (size << 3)
    return header.to_bytes(3, "little") + bytes([byte])


def raw_block(data: bytes, *, last: bool) -> bytes:
    header = int(last) | (0 << 1) | (len(data) << 3)
    return header.to_bytes(3, "little") + data


def frame(blocks: bytes, *, window_log: int | None = 17, content_size: int | None = None) -> bytes:
    """A zstd frame header (no checksum, no dictionary) followed by ``blocks``."""
    fcs_flag = 3 if content_size is not None else 0
    fhd = fcs_flag << 6
    out = MAGIC + bytes([fhd])
    assert window_log is not None
    out += bytes([(window_log - 10) << 3])
    if content_size is not None:
        out += content_size.to_bytes(8, "little")
    return out + blocks


def bomb(total: int) -> bytes:
    """A frame without a declared size whose RLE blocks expand to ``total`` bytes."""
    n = total // (128 * KiB)
    blocks = b"".join(rle_block(128 * KiB, last=i == n - 1) for i in range(n))
    return frame(blocks)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=19))
def test_round_trip_and_frame_info(data: bytes, level: int) -> None:
    z = compress(data, level=level)
    info = frame_info(z)
    ref = zstandard.get_frame_parameters(z)
    assert info.content_size == ref.content_size == len(data)
    assert info.window_size == ref.window_size
    assert info.has_checksum and ref.has_checksum
    assert info.frame_length == len(z)
    assert decompress(z, max_output=len(data), max_window_log=23, expected_size=len(data)) == data


def test_compression_is_deterministic_level_3() -> None:
    data = bytes(range(256)) * 1000
    assert compress(data) == compress(data)
    assert frame_info(compress(data)).window_size <= 1 << 21


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_decompression_error(data: bytes) -> None:
    try:
        out = decompress(data, max_output=64 * KiB, max_window_log=20)
    except DecompressionError:
        return
    assert len(out) <= 64 * KiB


@given(st.binary(min_size=1, max_size=2000), st.data())
def test_mutated_frames_raise_only_decompression_error(data: bytes, draw: st.DataObject) -> None:
    z = bytearray(compress(data))
    pos = draw.draw(st.integers(0, len(z) - 1))
    z[pos] ^= draw.draw(st.integers(1, 255))
    try:
        out = decompress(bytes(z), max_output=4 * KiB, max_window_log=23)
    except DecompressionError:
        return
    assert len(out) <= 4 * KiB


def test_declared_4_gib_is_refused_before_decompressing() -> None:
    z = frame(rle_block(128 * KiB, last=True), content_size=4 * GiB)
    assert zstandard.get_frame_parameters(z).content_size == 4 * GiB  # libzstd reads the claim
    tracemalloc.start()
    try:
        with pytest.raises(DecompressionError, match=r"declares 4294967296 bytes.*over the cap"):
            decompress(z, max_output=256 * MiB, max_window_log=23)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * KiB


def test_frame_without_size_is_cut_off_at_the_cap() -> None:
    z = bomb(1 * GiB)  # 32 KiB that expand to 1 GiB
    assert len(z) < 40 * KiB
    assert zstandard.get_frame_parameters(z).content_size == zstandard.CONTENTSIZE_UNKNOWN
    # it really is a bomb: libzstd happily streams more than the cap out of it
    with zstandard.ZstdDecompressor().stream_reader(z) as reader:
        assert len(reader.read(2 * MiB)) == 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(DecompressionError, match="expands past the cap of 1048576"):
            decompress(z, max_output=1 * MiB, max_window_log=23)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB  # the cap plus one read chunk, never the 1 GiB


def test_frame_without_size_stops_at_the_size_the_manifest_declares() -> None:
    # issue 13: a 131 KB payload whose manifest says 2,104 bytes decompressed to the
    # 256 MiB cap before its size was compared with the manifest's.
    z = bomb(1 * GiB)
    tracemalloc.start()
    try:
        with pytest.raises(
            DecompressionError, match="expands past the size the manifest declares of 2104 bytes"
        ):
            decompress(z, max_output=256 * MiB, max_window_log=23, expected_size=2104)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * KiB  # the declared 2,104 bytes and one read, not the 256 MiB cap


def test_output_is_allocated_once_at_the_declared_size() -> None:
    data = bytes(range(256)) * (16 * KiB)  # 4 MiB
    z = compress(data)
    tracemalloc.start()
    try:
        out = decompress(z, max_output=256 * MiB, max_window_log=23, expected_size=len(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == data
    assert peak < len(data) + 512 * KiB  # one buffer, no second copy of the output


def test_window_log_31_is_refused() -> None:
    z = frame(rle_block(16, last=True), window_log=31)
    assert zstandard.get_frame_parameters(z).window_size == 1 << 31
    with pytest.raises(DecompressionError, match=r"2147483648-byte window.*windowLog 23"):
        decompress(z, max_output=256 * MiB, max_window_log=23)


def test_window_within_the_limit_is_accepted() -> None:
    z = frame(rle_block(16, last=True, byte=7), window_log=20)
    assert decompress(z, max_output=MiB, max_window_log=20) == bytes([7]) * 16


def test_declared_size_must_match_the_manifest() -> None:
    z = compress(b"x" * 100)
    with pytest.raises(DecompressionError, match="manifest says 99"):
        decompress(z, max_output=MiB, max_window_log=23, expected_size=99)
    z_nosize = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(DecompressionError, match="the manifest declares of 99 bytes"):
        decompress(z_nosize, max_output=MiB, max_window_log=23, expected_size=99)


def test_manifest_claim_over_the_cap_is_refused() -> None:
    z_nosize = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    with pytest.raises(DecompressionError, match="manifest declares"):
        decompress(z_nosize, max_output=50, max_window_log=23, expected_size=100)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (compress(b"abc") + b"\x00", "trail the zstd frame"),
        (compress(b"abc") + compress(b"def"), "trail the zstd frame"),
        (b"\x50\x2a\x4d\x18" + b"\x00" * 8, "skippable"),
        (b"\x28\xb5\x2f\xfc" + b"\x00" * 8, "bad magic"),
        (compress(b"abc" * 100)[:-3], "truncated"),
        (MAGIC + bytes([0x08, 0x38]) + rle_block(1, last=True), "reserved bit"),
        (MAGIC + bytes([0x01, 0x38, 0x05]) + rle_block(1, last=True), "dictionary"),
        (frame((1 | (3 << 1) | (4 << 3)).to_bytes(3, "little") + b"abcd"), "reserved block"),
        (frame(raw_block(b"a" * 200, last=True), window_log=10)[:-100], "block"),
        (b"\x28\xb5", "too short"),
    ],
    ids=[
        "trailing-byte",
        "two-frames",
        "skippable",
        "bad-magic",
        "truncated",
        "reserved-bit",
        "dictionary",
        "reserved-block-type",
        "block-past-end",
        "short",
    ],
)
def test_malformed_frames(data: bytes, message: str) -> None:
    with pytest.raises(DecompressionError, match=message):
        decompress(data, max_output=MiB, max_window_log=23)


def test_block_larger_than_the_window_is_refused() -> None:
    z = frame(raw_block(b"a" * 2048, last=True), window_log=10)  # window 1 KiB
    with pytest.raises(DecompressionError, match="maximum block size"):
        frame_info(z)


def test_corrupted_checksum_is_detected() -> None:
    z = bytearray(compress(b"hello world" * 50))
    z[-1] ^= 0xFF
    with pytest.raises(DecompressionError, match="corrupt zstd frame"):
        decompress(bytes(z), max_output=MiB, max_window_log=23)


def _compress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zstd-compress"]


def _mixed(n: int) -> bytes:
    # Compressible runs and random bytes: several chunks, several store blocks.
    rnd = np.random.default_rng(1).integers(0, 256, n // 2, dtype=np.uint8).tobytes()
    return (rnd + b"p2phier " * (n // 16 + 1))[:n]


@pytest.mark.parametrize("n", [0, 1, 300 * KiB, 3 * MiB + 17])
def test_compress_into_store_round_trips(tmp_path: Path, n: int) -> None:
    data = _mixed(n)
    with DiskStore(tmp_path / "s") as store:
        root, size = compress_into_store(store, data, meta=MetaSpec(kind="t"), chunk=256 * KiB)
        z = b"".join(store.cat(root))
        assert len(z) == size
        info = frame_info(z)
        assert info.content_size == n  # declared, so readers can refuse before decompressing
        assert info.has_checksum and info.frame_length == size
        assert info.window_size <= 1 << 21
        out = decompress(z, max_output=n, max_window_log=23, expected_size=n)
        assert out == data
        # The same frame added whole chunks identically: the CID does not depend on threading.
        assert store.add_bytes(z) == root
        (meta,) = store.query(kind="t")
        assert meta.cid == root and meta.size == size
    assert _compress_threads() == []


def test_compress_into_store_accepts_memoryview(tmp_path: Path) -> None:
    data = _mixed(MiB)
    with DiskStore(tmp_path / "s") as store:
        root, _ = compress_into_store(store, memoryview(data)[100:])
        z = b"".join(store.cat(root))
    assert decompress(z, max_output=MiB, max_window_log=23) == data[100:]


def test_compress_into_store_store_refusal_stops_worker(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, 4 * MiB, dtype=np.uint8).tobytes()
    with DiskStore(tmp_path / "s") as store:
        with pytest.raises(ObjectTooLargeError, match="larger than the allowed"):
            compress_into_store(store, data, meta=MetaSpec(kind="t"), chunk=64 * KiB, max_size=KiB)
        assert store.query(kind="t") == []
    assert _compress_threads() == []


def test_compress_into_store_worker_error_propagates(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "s") as store:
        # libzstd refuses level 23 inside the worker; the caller sees that error.
        with pytest.raises(ValueError, match="level must be less than 23"):
            compress_into_store(store, b"abc" * 1000, level=23, meta=MetaSpec(kind="t"))
        assert store.query(kind="t") == []
    assert _compress_threads() == []
