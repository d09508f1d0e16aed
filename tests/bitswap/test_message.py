"""The Bitswap message codec: exact round trips, strict decoding, limits before parsing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.bitswap import (
    BlockPayload,
    BlockPresence,
    Limits,
    LocalProtocolError,
    Message,
    PresenceType,
    WantEntry,
    Wantlist,
    WantType,
)
from p2phier.cid import CID, DAG_PB, Multihash, encode_varint
from p2phier.errors import ProtocolViolationError, UsageError
from p2phier.wire import bitswap_pb2 as pb

from .strategies import messages

A = CID.raw(b"a")
B = CID.dag_pb(b"b")
B0 = CID(0, DAG_PB, B.multihash)


@given(messages())
def test_round_trip_is_exact(msg: Message) -> None:
    data = msg.encode()
    back = Message.decode(data)
    assert back == msg
    assert back.encode() == data


@given(messages())
def test_encoding_is_byte_for_byte_what_protobuf_produces(msg: Message) -> None:
    expected = msg.to_protobuf().SerializeToString()
    assert msg.encode() == expected
    assert msg.encode_frame() == encode_varint(len(expected)) + expected


def test_encoder_edge_values_match_protobuf() -> None:
    big = b"\x5a" * 300_000  # a multi-byte length header
    msg = Message(
        Wantlist(
            (
                WantEntry(A, priority=-1, want_type=WantType.HAVE),  # 10-byte varint
                WantEntry(B, priority=0, cancel=True),
                WantEntry(CID.raw(b"c"), priority=-(1 << 31), send_dont_have=True),
            ),
            full=True,
        ),
        (BlockPayload.of(CID.raw(big), big), BlockPayload.of(CID.raw(b""), b"")),
        (BlockPresence(A, PresenceType.DONT_HAVE), BlockPresence(B0, PresenceType.HAVE)),
        (1 << 31) - 1,
    )
    assert msg.encode() == msg.to_protobuf().SerializeToString()
    assert Message.decode(msg.encode()) == msg
    assert Message(Wantlist()).encode() == b"\x0a\x00"  # present but empty stays present
    assert Message().encode() == b""


def test_encode_frame_refuses_an_oversized_message() -> None:
    data = b"x" * 2000
    msg = Message(blocks=(BlockPayload.of(CID.raw(data), data),))
    with pytest.raises(LocalProtocolError):
        msg.encode_frame(max_size=1000)


@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_protocol_violation(data: bytes) -> None:
    try:
        msg = Message.decode(data)
    except ProtocolViolationError:
        return
    # whatever decodes must be a well-formed message that re-encodes
    assert isinstance(msg, Message)
    Message.decode(msg.encode())


@given(messages(), st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_messages_only_ever_raise_protocol_violation(
    msg: Message, where: int, value: int
) -> None:
    data = bytearray(msg.encode())
    if not data:
        return
    data[where % len(data)] = value
    with contextlib.suppress(ProtocolViolationError):
        Message.decode(bytes(data))


@given(messages(), st.integers(min_value=1))
def test_truncated_messages_never_crash(msg: Message, cut: int) -> None:
    data = msg.encode()
    if not data:
        return
    with contextlib.suppress(ProtocolViolationError):
        Message.decode(data[: cut % len(data)])


def test_empty_wantlist_is_kept_distinct_from_absent() -> None:
    present = Message(wantlist=Wantlist())
    assert present.encode() == bytes.fromhex("0a00")
    assert Message.decode(bytes.fromhex("0a00")).wantlist == Wantlist()
    assert Message().encode() == b""
    assert Message.decode(b"").wantlist is None


def test_cidv0_block_carries_the_v0_prefix() -> None:
    payload = BlockPayload.of(B0, b"b")
    assert payload.prefix == bytes.fromhex("00701220")
    assert payload.version == 0 and payload.codec == DAG_PB
    assert BlockPayload.of(B, b"b").prefix == bytes.fromhex("01701220")
    # both name the same block
    assert payload.claimed_key() == B


def _entry_bytes(**fields: object) -> bytes:
    msg = pb.Message()
    e = msg.wantlist.entries.add()
    for k, v in fields.items():
        setattr(e, k, v)
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_entry_bytes(block=b""), "empty CID"),
        (_entry_bytes(block=b"\x01\x55\x12\x20" + b"x" * 31), "invalid CID"),
        (_entry_bytes(block=A.to_bytes(), wantType=2), "unknown wantType"),
        (bytes.fromhex("0a05") + bytes.fromhex("0a00"), "truncated"),
        (bytes.fromhex("0b"), "wire type 3"),
        (bytes.fromhex("0f00"), "wire type 7"),
        (bytes.fromhex("0000"), "field number 0"),
    ],
)
def test_malformed_wantlists_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(ProtocolViolationError, match=needle):
        Message.decode(data)


def test_duplicate_cids_in_one_wantlist_are_refused_even_across_versions() -> None:
    msg = pb.Message()
    for raw in (B.to_bytes(), B0.to_bytes()):
        msg.wantlist.entries.add().block = raw
    with pytest.raises(ProtocolViolationError, match="twice"):
        Message.decode(msg.SerializeToString())


def _payload_bytes(prefix: bytes, data: bytes) -> bytes:
    msg = pb.Message()
    b = msg.payload.add()
    b.prefix = prefix
    b.data = data
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [
        (b"", "invalid"),  # py-libp2p 0.8.1 sends CIDv0 blocks like this
        (bytes.fromhex("01551114"), "sha2-256"),  # sha1
        (bytes.fromhex("0155122000"), "sha2-256"),  # trailing byte
        (bytes.fromhex("00551220"), "CIDv0 block prefix must name dag-pb"),
        (bytes.fromhex("02551220"), "version 2"),
        (bytes.fromhex("0180"), "invalid"),
    ],
)
def test_bad_block_prefixes_are_refused(prefix: bytes, needle: str) -> None:
    with pytest.raises(ProtocolViolationError, match=needle):
        Message.decode(_payload_bytes(prefix, b"data"))


def test_block_over_the_block_limit_is_refused() -> None:
    limits = Limits(max_block_size=100, max_message_size=1000)
    ok = _payload_bytes(A.prefix(), b"x" * 100)
    assert Message.decode(ok, limits).blocks[0].data == b"x" * 100
    with pytest.raises(ProtocolViolationError, match="101 bytes exceeds the 100-byte block limit"):
        Message.decode(_payload_bytes(A.prefix(), b"x" * 101), limits)


def test_default_block_limit_is_one_mebibyte() -> None:
    with pytest.raises(ProtocolViolationError, match="block limit"):
        Message.decode(_payload_bytes(A.prefix(), bytes((1 << 20) + 1)))


def test_message_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ProtocolViolationError, match="exceeds the 4194304-byte limit"):
        Message.decode(bytes((4 << 20) + 1))


def test_bad_presences_and_pending_bytes_are_refused() -> None:
    msg = pb.Message()
    p = msg.blockPresences.add()
    p.cid = A.to_bytes()
    p.type = 7  # type: ignore[assignment]
    with pytest.raises(ProtocolViolationError, match="unknown type 7"):
        Message.decode(msg.SerializeToString())
    neg = pb.Message(pendingBytes=-1).SerializeToString()
    with pytest.raises(ProtocolViolationError, match="negative"):
        Message.decode(neg)


def test_entry_counts_are_checked_before_protobuf_allocates() -> None:
    limits = Limits(max_wantlist_entries=3, max_presences=2, max_payload_blocks=1)
    # 4 tiny entries (each just "field 1, length 0") are over the entry limit;
    # the scan refuses them before any CID is looked at
    wl = bytes.fromhex("0a00") * 4
    data = bytes.fromhex("0a") + encode_varint(len(wl)) + wl
    with pytest.raises(ProtocolViolationError, match="more than 3 entries"):
        Message.decode(data, limits)
    # a wantlist split over several occurrences of field 1 is counted in total
    two = bytes.fromhex("0a04") + bytes.fromhex("0a00") * 2
    with pytest.raises(ProtocolViolationError, match="more than 3 entries"):
        Message.decode(two * 2, limits)
    presences = bytes.fromhex("2200") * 3
    with pytest.raises(ProtocolViolationError, match="more than 2 block presences"):
        Message.decode(presences, limits)
    with pytest.raises(ProtocolViolationError, match="more than 1 blocks"):
        Message.decode(bytes.fromhex("1a00") * 2, limits)


def test_a_flood_of_unknown_fields_is_refused() -> None:
    few = bytes.fromhex("3001") * 64  # field 6 varint, tolerated (a newer peer's field)
    assert Message.decode(few) == Message()
    with pytest.raises(ProtocolViolationError, match="unknown fields"):
        Message.decode(few + bytes.fromhex("3001"))


def test_bitswap_1_0_blocks_field_is_skipped_not_trusted() -> None:
    # field 2 (1.0.0 "blocks") is not in the 1.2.0 schema: ignored
    data = bytes.fromhex("1203616263")
    assert Message.decode(data) == Message()


def test_local_nonsense_is_refused_before_sending() -> None:
    with pytest.raises(LocalProtocolError, match="int32"):
        WantEntry(A, priority=1 << 31)
    with pytest.raises(LocalProtocolError, match="pending_bytes"):
        Message(pending_bytes=-1)
    big = Message(blocks=(BlockPayload.of(A, bytes(2000)),))
    with pytest.raises(LocalProtocolError, match="split it"):
        big.encode(max_size=1000)
    with pytest.raises(UsageError):
        Limits(max_block_size=10, max_message_size=10)


def test_presence_and_want_types_decode_to_enums() -> None:
    msg = Message(
        wantlist=Wantlist((WantEntry(A, 3, False, WantType.HAVE, True),)),
        presences=(BlockPresence(B0, PresenceType.DONT_HAVE),),
    )
    back = Message.decode(msg.encode())
    assert back.wantlist is not None
    assert back.wantlist.entries[0].want_type is WantType.HAVE
    assert back.presences[0].type is PresenceType.DONT_HAVE
    assert back.presences[0].cid.version == 0


def test_claimed_key_hashes_the_data_under_the_senders_prefix() -> None:
    data = b"payload"
    payload = BlockPayload(A.prefix(), data)
    assert payload.claimed_key() == CID.raw(data)
    assert payload.claimed_key().multihash == Multihash.sha256(data)


# --- blocks are read by the scanner: same result as protobuf, data as views ------------


def _decode_with_protobuf_only(data: bytes) -> Message:
    """The decoder before blocks were read by the scanner: protobuf parses everything."""
    from p2phier.bitswap.message import DEFAULT_LIMITS, _from_protobuf, _parse_prefix, _scan

    _scan(data, DEFAULT_LIMITS)
    msg = pb.Message()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # any parse failure is a refusal
        raise ProtocolViolationError(str(exc)) from None
    blocks = []
    for b in msg.payload:
        if len(b.data) > DEFAULT_LIMITS.max_block_size:
            raise ProtocolViolationError("block limit")
        _parse_prefix(b.prefix)
        blocks.append(BlockPayload(b.prefix, b.data))
    return _from_protobuf(msg, DEFAULT_LIMITS, tuple(blocks))


def _both(data: bytes) -> tuple[Message | str, Message | str]:
    out: list[Message | str] = []
    for decode in (Message.decode, _decode_with_protobuf_only):
        try:
            out.append(decode(data))
        except ProtocolViolationError as exc:
            out.append(f"refused: {exc}")
    return out[0], out[1]


# What only the scanner refuses inside a Block: groups and out-of-range field numbers
# (protobuf refuses those too when they collide with a known field), and a flood of fields.
_STRICTER = ("wire type", "out of range", "block has more than")


@given(
    messages(),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255), st.booleans()), max_size=4),
)
def test_blocks_decode_exactly_as_protobuf_would(
    msg: Message, edits: list[tuple[int, int, bool]]
) -> None:
    data = bytearray(msg.encode())
    for where, value, insert in edits:
        pos = where % (len(data) + 1)
        if insert or pos == len(data):
            data.insert(pos, value)
        else:
            data[pos] = value
    ours, reference = _both(bytes(data))
    if isinstance(ours, Message):
        assert ours == reference
    elif isinstance(reference, Message):
        assert any(reason in ours for reason in _STRICTER), (ours, reference)


def test_block_fields_follow_protobuf_rules() -> None:
    data = b"abc"
    prefix = A.prefix()
    blk = (
        b"\x12\x01Z"  # a data field, overridden below (last one wins)
        + b"\x08\x07"  # field 1 as a varint: not the prefix, skipped
        + b"\x0a" + bytes([len(prefix)]) + prefix
        + b"\x12\x03" + data
        + b"\x35\x00\x00\x00\x00"  # an unknown fixed32 field
    )  # fmt: skip
    msg = b"\x28\x05" + b"\x1a" + bytes([len(blk)]) + blk + b"\x18\x01"  # field 3 as varint
    ours, reference = _both(msg)
    assert isinstance(ours, Message) and ours == reference
    assert ours.blocks == (BlockPayload(prefix, data),) and ours.pending_bytes == 5
    flood = b"\x30\x01" * 70 + b"\x0a" + bytes([len(prefix)]) + prefix
    with pytest.raises(ProtocolViolationError, match="block has more than"):
        Message.decode(b"\x1a" + encode_varint(len(flood)) + flood)


@given(messages(), st.lists(st.integers(min_value=0), max_size=12))
def test_a_message_in_pieces_decodes_as_the_joined_message(msg: Message, cuts: list[int]) -> None:
    data = msg.encode()
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoded = Message.decode_pieces(pieces)
    assert decoded == Message.decode(data) == msg
    assert all(type(b.data) is bytes for b in decoded.blocks)


@given(messages(), st.integers(min_value=0), st.integers(0, 255), st.integers(min_value=1))
def test_mutated_messages_in_pieces_fail_or_decode_as_joined(
    msg: Message, where: int, value: int, cut: int
) -> None:
    data = bytearray(msg.encode())
    if data:
        data[where % len(data)] = value
    raw = bytes(data)
    point = cut % (len(raw) + 1)
    results: list[Message | str] = []
    for pieces in ([raw], [raw[:point], raw[point:]]):
        try:
            results.append(Message.decode_pieces(pieces))
        except ProtocolViolationError as exc:
            results.append(str(exc))
    try:
        joined: Message | str = Message.decode(raw)
    except ProtocolViolationError as exc:
        joined = str(exc)
    assert results[0] == results[1] == joined


def test_pieces_are_checked_against_the_size_limit_as_a_whole() -> None:
    limits = Limits(max_block_size=10, max_message_size=100)
    with pytest.raises(ProtocolViolationError, match="101 bytes exceeds the 100-byte limit"):
        Message.decode_pieces([bytes(50), bytes(51)], limits)
