"""CIDs, multibase and varints: published strings and round-trip properties."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.cid import (
    CID,
    DAG_PB,
    IDENTITY,
    RAW,
    SHA2_256,
    Multihash,
    b32decode,
    b32encode,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)
from p2phier.errors import CIDError
from tests.golden import load

STRINGS: list[dict[str, Any]] = load("cids")["cid_strings"]
CODECS = {"raw": RAW, "dag-pb": DAG_PB}

_sha_cids = st.builds(
    CID,
    st.just(1),
    st.sampled_from([RAW, DAG_PB, 0x71, 0x72, 0x0129]),
    st.binary(min_size=32, max_size=32).map(lambda d: Multihash(SHA2_256, d)),
)
_v0 = st.binary(min_size=32, max_size=32).map(lambda d: CID(0, DAG_PB, Multihash(SHA2_256, d)))
_identity = st.builds(
    CID,
    st.just(1),
    st.sampled_from([RAW, 0x72]),
    st.binary(max_size=64).map(lambda d: Multihash(IDENTITY, d)),
)


@pytest.mark.parametrize("vector", STRINGS, ids=lambda v: v["v1"])
def test_published_cid_strings(vector: dict[str, Any]) -> None:
    v1 = CID.parse(vector["v1"])
    assert v1.version == 1 and v1.codec == CODECS[vector["codec"]]
    assert str(v1) == vector["v1"]
    if "v0" in vector:
        v0 = CID.parse(vector["v0"])
        assert v0.version == 0 and str(v0) == vector["v0"]
        assert v0.to_v1() == v1
        assert CID(0, DAG_PB, v1.multihash) == v0
    if "v1_base58btc" in vector:
        z = CID.parse(vector["v1_base58btc"])
        assert z == v1
        assert "z" + b58encode(v1.to_bytes()) == vector["v1_base58btc"]
    if "digest" in vector:
        assert v1.multihash.digest.hex() == vector["digest"]
    if "content_hex" in vector:
        content = bytes.fromhex(vector["content_hex"])
        assert CID.raw(content) == v1 and v1.verify(content)
        assert not v1.verify(content + b"!")


@given(st.one_of(_sha_cids, _v0, _identity))
def test_string_and_binary_round_trip(cid: CID) -> None:
    text = str(cid)
    assert CID.parse(text) == cid
    assert CID.from_bytes(cid.to_bytes()) == cid
    if cid.version == 1:
        assert re.fullmatch(r"b[a-z2-7]+", text)
        assert CID.parse("B" + text[1:].upper()) == cid
        assert CID.parse("z" + b58encode(cid.to_bytes())) == cid
    else:
        assert text.startswith("Qm") and len(text) == 46


@given(_v0)
def test_v0_to_v1_and_back(cid: CID) -> None:
    v1 = cid.to_v1()
    assert str(v1).startswith("bafybei")
    assert CID(0, v1.codec, v1.multihash) == cid
    assert v1 != cid  # different versions are different CIDs


@given(st.one_of(_sha_cids, _v0), st.binary(max_size=100))
def test_prefix_rebuilds_the_cid_of_the_block(cid: CID, data: bytes) -> None:
    rebuilt = CID.from_prefix(cid.prefix(), data)
    assert rebuilt.version == cid.version and rebuilt.codec == cid.codec
    assert rebuilt.verify(data)


@given(st.text(max_size=120))
def test_parse_never_raises_anything_but_cid_error(text: str) -> None:
    try:
        cid = CID.parse(text)
    except CIDError:
        return
    assert re.fullmatch(r"b[a-z2-7]+|Qm[1-9A-HJ-NP-Za-km-z]{44}", str(cid))


@given(st.binary(max_size=80))
def test_from_bytes_never_raises_anything_but_cid_error(data: bytes) -> None:
    try:
        cid = CID.from_bytes(data)
    except CIDError:
        return
    assert cid.to_bytes() == data


@given(
    st.text(alphabet="bBzQm123456789abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ", max_size=70)
)
def test_parse_of_plausible_alphabets_never_crashes(text: str) -> None:
    with contextlib.suppress(CIDError):
        CID.parse(text)


@given(st.integers(0, 2**63 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded) == (value, len(encoded))
    assert decode_varint(b"\xff" + encoded, 1) == (value, 1 + len(encoded))
    assert len(encoded) <= 9


def test_varint_rejects_non_minimal_overlong_truncated_and_negative() -> None:
    with pytest.raises(CIDError, match="minimal"):
        decode_varint(b"\x81\x00")
    with pytest.raises(CIDError, match="9 bytes"):
        decode_varint(b"\x80" * 9 + b"\x01")
    with pytest.raises(CIDError, match="truncated"):
        decode_varint(b"\x80")
    with pytest.raises(CIDError):
        encode_varint(-1)
    with pytest.raises(CIDError):
        encode_varint(1 << 63)


@given(st.binary(max_size=64))
def test_multibase_round_trips(data: bytes) -> None:
    if data:  # an empty base32 body is refused: a CID is never empty
        assert b32decode(b32encode(data)) == data
    else:
        assert b32encode(data) == ""
    assert b58decode(b58encode(data)) == data


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b",
        "bAFY",
        "b====",
        "x" * 300,
        "fabcdef",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk",  # one char short
        "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMn0",  # '0' is not base58
        "zQmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",  # v0 bytes behind a multibase
    ],
)
def test_malformed_cid_strings_are_refused(text: str) -> None:
    with pytest.raises(CIDError):
        CID.parse(text)


def test_structural_rules() -> None:
    with pytest.raises(CIDError):
        CID(0, RAW, Multihash.sha256(b""))
    with pytest.raises(CIDError):
        CID(2, RAW, Multihash.sha256(b""))
    with pytest.raises(CIDError, match="32-byte"):
        CID.from_bytes(b"\x01\x55\x12\x10" + bytes(16))
    with pytest.raises(CIDError, match="unsupported multihash"):
        CID.from_bytes(b"\x01\x55\x13\x20" + bytes(32))
    with pytest.raises(CIDError, match="trailing"):
        CID.from_bytes(CID.raw(b"").to_bytes() + b"\x00")
    with pytest.raises(CIDError):
        CID.parse(123)  # type: ignore[arg-type]
