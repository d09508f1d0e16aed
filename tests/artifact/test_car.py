"""The CARv1 codec: a published fixture, round trips, hostile archives."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.artifact.car import (
    CarFormatError,
    decode_header,
    encode_car,
    encode_header,
    read_car,
)
from p2phier.cid import CID, encode_varint
from p2phier.errors import HashMismatchError

# ipld/go-car v2/internal/carv1/car_test.go, TestEOFHandling: "a clean single-block,
# single-root CAR" whose one block is the dag-cbor map {"dodgy": true}.
GO_CAR_FIXTURE = bytes.fromhex(
    "3aa265726f6f747381d82a58250001711220151fe9e73c6267a7060c6f6c4cca943c236f4b196723"
    "489608edb42a8b8fa80b6776657273696f6e012c01711220151fe9e73c6267a7060c6f6c4cca943c"
    "236f4b196723489608edb42a8b8fa80ba165646f646779f5"
)


def test_published_header_decodes_and_re_encodes_byte_for_byte() -> None:
    header_len = GO_CAR_FIXTURE[0]
    header = GO_CAR_FIXTURE[1 : 1 + header_len]
    roots = decode_header(header)
    assert len(roots) == 1 and roots[0].codec == 0x71  # dag-cbor root
    assert encode_header(roots) == header
    # the section after it is varint(len) || CID || block, and the CID names the block
    section = GO_CAR_FIXTURE[1 + header_len :]
    assert section[0] == len(section) - 1
    cid = CID.from_bytes(section[1:37])
    assert cid == roots[0]
    assert cid.verify(section[37:])


def test_published_fixture_is_refused_as_a_non_unixfs_block() -> None:
    # p2phier only imports raw/dag-pb blocks; the dag-cbor block is refused cleanly
    with pytest.raises(CarFormatError, match="not a sha2-256 raw or dag-pb block"):
        read_car(io.BytesIO(GO_CAR_FIXTURE))


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_round_trip(blobs: list[bytes]) -> None:
    blocks = [(CID.raw(b), b) for b in blobs]
    data = b"".join(encode_car([blocks[0][0]], blocks))
    roots, got = read_car(io.BytesIO(data))
    assert roots == [blocks[0][0]]
    assert got == {cid: b for cid, b in blocks}


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_archive_errors(data: bytes) -> None:
    try:
        roots, blocks = read_car(io.BytesIO(data))
    except (CarFormatError, HashMismatchError):
        return
    assert roots and all(cid.verify(b) for cid, b in blocks.items())


def _car(blocks: list[tuple[bytes, bytes]], root: CID | None = None) -> bytes:
    """CAR bytes from (cid bytes, block) pairs, unchecked."""
    root = root or CID.raw(b"x")
    out = bytearray(next(encode_car([root], [])))
    for raw_cid, block in blocks:
        out += encode_varint(len(raw_cid) + len(block)) + raw_cid + block
    return bytes(out)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", CarFormatError, "empty file"),
        (encode_varint(5000) + b"\x00" * 10, CarFormatError, "header of 5000 bytes"),
        (b"\x05\xa1\x61\x61\x01", CarFormatError, "truncated"),
        (
            b"\x0a" + bytes.fromhex("a265726f6f7473806776657273696f6e01")[:10],
            CarFormatError,
            "truncated",
        ),
        (_car([(CID.raw(b"abc").to_bytes(), b"abd")]), HashMismatchError, "does not hash"),
        (
            _car([(CID(1, 0x55, CID.raw(b"").multihash).to_bytes()[:-1], b"")]),
            CarFormatError,
            "shorter than its CID",
        ),
        (
            next(encode_car([CID.raw(b"x")], []))
            + encode_varint(2 << 20)
            + CID.raw(b"y").to_bytes(),
            CarFormatError,
            "exceeds the block limit",
        ),
        (
            _car([(bytes.fromhex("01550004") + b"abcd", b"abcd")]),
            CarFormatError,
            "not a sha2-256",
        ),
        (next(encode_car([CID.raw(b"x")], [])) + b"\xff", CarFormatError, "length prefix"),
    ],
    ids=[
        "empty",
        "huge-header",
        "truncated-header",
        "header-garbage",
        "bad-hash",
        "truncated-cid",
        "oversize-section",
        "identity-cid",
        "truncated-varint",
    ],
)
def test_hostile_archives(data: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        read_car(io.BytesIO(data))


def test_header_rules() -> None:
    with pytest.raises(CarFormatError, match="version is not 1"):
        decode_header(bytes.fromhex("a265726f6f7473806776657273696f6e02"))
    with pytest.raises(CarFormatError, match="one or more root"):
        decode_header(bytes.fromhex("a265726f6f7473806776657273696f6e01"))
