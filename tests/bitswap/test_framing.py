"""Length-prefixed framing: any split gives the same frames; limits before buffering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.bitswap import FrameDecoder, LocalProtocolError, encode_frame
from p2phier.cid import encode_varint
from p2phier.errors import ProtocolViolationError


@given(
    st.lists(st.binary(max_size=600), max_size=8),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_any_split_of_the_stream_gives_the_same_frames(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    dec = FrameDecoder()
    got: list[bytes] = []
    prev = 0
    for p in [*points, len(stream)]:
        got += dec.feed(stream[prev:p])
        prev = p
    assert got == payloads
    assert dec.at_boundary
    dec.close()


def test_one_byte_at_a_time() -> None:
    payloads = [b"", b"x", bytes(range(256)) * 3]
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    got = []
    for i in range(len(stream)):
        got += dec.feed(stream[i : i + 1])
    assert got == payloads


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_protocol_violation(data: bytes) -> None:
    dec = FrameDecoder(max_frame_size=100)
    try:
        frames = dec.feed(data)
        dec.close()
    except ProtocolViolationError:
        return
    assert all(len(f) <= 100 for f in frames)


def test_declared_length_over_the_limit_is_refused_before_the_body() -> None:
    dec = FrameDecoder(max_frame_size=1000)
    header = encode_varint(1001)
    with pytest.raises(ProtocolViolationError, match="declares 1001 bytes; the limit is 1000"):
        dec.feed(header)  # no body byte was needed to refuse it
    assert dec.buffered == 0


def test_a_4_gib_claim_costs_only_its_header() -> None:
    dec = FrameDecoder()  # 4 MiB default
    with pytest.raises(ProtocolViolationError, match="header exceeds 4 bytes"):
        dec.feed(encode_varint(1 << 32) + b"\0" * 10)


def test_overlong_and_non_minimal_headers_are_refused_early() -> None:
    dec = FrameDecoder(max_frame_size=100)  # a legal header is one byte
    with pytest.raises(ProtocolViolationError, match="header exceeds 1 bytes"):
        dec.feed(b"\x80")
    dec = FrameDecoder()
    with pytest.raises(ProtocolViolationError, match="not a minimal varint"):
        dec.feed(b"\x81\x00")
    dec = FrameDecoder()
    with pytest.raises(ProtocolViolationError, match="header exceeds"):
        dec.feed(b"\xff\xff\xff\xff")


def test_the_decoder_stays_failed() -> None:
    dec = FrameDecoder(max_frame_size=10)
    with pytest.raises(ProtocolViolationError):
        dec.feed(b"\x7f")
    with pytest.raises(ProtocolViolationError, match="already failed"):
        dec.feed(encode_frame(b"ok"))


def test_truncation_at_eof_is_an_error_not_a_clean_end() -> None:
    dec = FrameDecoder()
    assert dec.feed(encode_frame(b"hello")[:-2]) == []
    with pytest.raises(ProtocolViolationError, match="3 of 5 body bytes"):
        dec.close()
    dec = FrameDecoder()
    dec.feed(b"\x80")
    with pytest.raises(ProtocolViolationError, match="in its header"):
        dec.close()


def test_body_is_only_buffered_up_to_the_declared_length() -> None:
    dec = FrameDecoder()
    frames = dec.feed(encode_frame(b"abc") + encode_frame(b"de")[:2])
    assert frames == [b"abc"]
    assert dec.buffered == 1  # only "d" of the second frame is held
    assert dec.feed(b"e") == [b"de"]


def test_encode_frame_refuses_oversize_payloads() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * 11, max_size=10)
    assert encode_frame(b"x" * 300)[:2] == bytes.fromhex("ac02")


def test_a_frame_spread_over_many_feeds_is_joined_intact() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_frame(body) + encode_frame(b"next")
    dec = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(wire), 65536 - 7):  # chunks that do not line up with anything
        got += dec.feed(wire[i : i + 65536 - 7])
    assert got == [body, b"next"]
    assert all(type(f) is bytes for f in got)


def test_fed_bytes_that_are_exactly_one_body_are_returned_without_a_copy() -> None:
    body = b"x" * 1000
    dec = FrameDecoder()
    assert dec.feed(encode_frame(body)[:2]) == []  # the two header bytes
    (frame,) = dec.feed(body)
    assert frame is body


def test_a_reused_caller_buffer_does_not_change_a_held_partial_frame() -> None:
    dec = FrameDecoder()
    buf = bytearray(encode_frame(b"hello world")[:6])  # header + "hello"
    assert dec.feed(buf) == []
    buf[:] = b"XXXXXX"  # the caller reuses its buffer
    view = memoryview(bytearray(b" world"))
    assert dec.feed(view) == [b"hello world"]
    assert dec.buffered == 0
