"""Framed, deadline-bounded stream I/O over a real Noise + Yamux connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.abc import INetStream

from p2phier.bitswap import LocalProtocolError, encode_frame
from p2phier.cid import encode_varint
from p2phier.errors import PeerTimeoutError, ProtocolViolationError
from p2phier.identity import Identity
from p2phier.net import StreamClosedError, StreamTruncatedError, open_host
from p2phier.net.streams import WRITE_PIECE, FrameReader, read_frame, write_all, write_frame

PROTO = "/p2phier-test/frames/1"


@asynccontextmanager
async def stream_pair() -> AsyncIterator[tuple[INetStream, INetStream]]:
    """(our end, the far end) of one stream between two hosts on 127.0.0.1."""
    send, receive = trio.open_memory_channel[INetStream](1)
    release = trio.Event()

    async def handler(stream: INetStream) -> None:
        await send.send(stream)
        await release.wait()  # the stream stays open while the test uses it

    async with open_host(Identity.generate()) as a, open_host(Identity.generate()) as b:
        b.set_stream_handler(PROTO, handler)
        await a.connect(b.addrs[0])
        ours = await a.open_stream(b.peer_id, PROTO)
        await ours.write(b"")  # nothing: the far end sees the stream at negotiation
        with trio.fail_after(10):
            theirs = await receive.receive()
        try:
            yield ours, theirs
        finally:
            release.set()


def reader(stream: INetStream, **kwargs: float) -> FrameReader:
    options = {"frame_timeout": 5.0, "idle_timeout": 5.0} | kwargs
    return FrameReader(stream, max_frame_size=1 << 20, **options)  # type: ignore[arg-type]


async def test_frames_split_anyhow_are_reassembled_and_a_clean_end_is_none() -> None:
    bodies = [b"", b"x", bytes(range(256)) * 300, b"last"]
    wire = b"".join(encode_frame(body) for body in bodies)
    async with stream_pair() as (ours, theirs):
        # odd-sized writes: headers and bodies cut in arbitrary places
        for i in range(0, len(wire), 7777):
            await write_all(ours, wire[i : i + 7777], timeout=5)
        await ours.close()
        r = reader(theirs)
        got = [await r.next_frame() for _ in bodies]
        assert got == bodies
        assert await r.next_frame() is None
        assert r.bytes_read == len(wire)


async def test_a_stream_cut_inside_a_frame_is_a_truncation_not_a_short_frame() -> None:
    async with stream_pair() as (ours, theirs):
        await write_all(ours, encode_varint(1000) + b"\x00" * 999, timeout=5)
        await ours.close()
        with pytest.raises(StreamTruncatedError, match="999 of 1000"):
            await reader(theirs).next_frame()


async def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    async with stream_pair() as (ours, theirs):
        await write_all(ours, encode_varint((1 << 20) + 1), timeout=5)  # header only
        with pytest.raises(ProtocolViolationError, match="limit"):
            await reader(theirs).next_frame()
        with pytest.raises(LocalProtocolError):  # and we never send a frame over the limit
            await write_frame(ours, b"\x00" * ((1 << 20) + 1), timeout=5, max_size=1 << 20)


async def test_silence_and_stalled_frames_hit_their_deadlines() -> None:
    async with stream_pair() as (ours, theirs):
        with pytest.raises(PeerTimeoutError, match="waiting for a message"):
            await reader(theirs, idle_timeout=0.3).next_frame()
    async with stream_pair() as (ours, theirs):
        await write_all(ours, encode_varint(100) + b"\x00" * 10, timeout=5)
        with pytest.raises(PeerTimeoutError, match="inside a message"):
            await reader(theirs, frame_timeout=0.3, idle_timeout=60).next_frame()


async def test_a_write_to_a_peer_that_stopped_reading_times_out() -> None:
    async with stream_pair() as (ours, _theirs):  # the far end never reads
        start = trio.current_time()
        with pytest.raises(PeerTimeoutError, match="stalled"):
            # far more than the Yamux window and the socket buffers can absorb
            for _ in range(64):
                await write_all(ours, b"\x00" * (1 << 20), timeout=1.0)
        assert trio.current_time() - start < 30


async def test_read_frame_wants_exactly_one_frame() -> None:
    async with stream_pair() as (ours, theirs):
        await write_frame(ours, b"hello", timeout=5, max_size=100)
        assert await read_frame(theirs, max_frame_size=100, timeout=5) == b"hello"
        await ours.close()
        with pytest.raises(StreamClosedError, match="closed the stream"):
            await read_frame(theirs, max_frame_size=100, timeout=5)


async def test_data_in_pieces_goes_in_writes_of_one_noise_message_each() -> None:
    parts = [b"h", bytes(range(256)) * 800, b"xyz", bytes(70_000), b"tail"]
    body = b"".join(parts)
    async with stream_pair() as (ours, theirs):
        writes: list[int] = []
        original = ours.write

        async def recording(data: bytes) -> None:
            writes.append(len(data))
            await original(data)

        ours.write = recording  # type: ignore[method-assign]
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(body):
                got.extend(await theirs.read(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await write_all(ours, parts, timeout=10)
        assert bytes(got) == body
        # full writes of WRITE_PIECE bytes (one Yamux frame in one Noise message), then the rest
        assert writes[:-1] == [WRITE_PIECE] * (len(body) // WRITE_PIECE)
        assert sum(writes) == len(body) and 0 < writes[-1] <= WRITE_PIECE
