"""Deadline-bounded, length-framed reads and writes on libp2p streams.

Owns the only code that touches a libp2p stream's bytes for p2phier protocols.
py-libp2p 0.8.1 has no timeouts (a SIGSTOPped peer blocks ``write()``
forever), no size limits, and shows a killed peer's cut-off stream as a clean
EOF.  So here:

* every read and write runs under ``trio.fail_after``; an expired deadline is a
  :class:`~p2phier.errors.PeerTimeoutError` and the stream must then be reset
  (a write cut short by a deadline leaves it mid-frame);
* frames are ``varint(length) || body`` and are decoded by
  :class:`~p2phier.bitswap.FrameDecoder`, which checks the declared length
  against the limit BEFORE any body byte is buffered;
* an EOF inside a frame is a truncation error, never a short success;
* libp2p's and trio's assorted stream exceptions become one
  :class:`StreamClosedError`.

Reading distinguishes two waits: between frames a stream may sit idle for
``idle_timeout`` (long-lived Bitswap streams are idle most of the time), but
once a frame has begun it must be complete within ``frame_timeout`` (a peer
that starts a message and stalls is cut off).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence

import trio
from libp2p.abc import INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF

from p2phier.bitswap.framing import FrameDecoder, encode_frame
from p2phier.cid import decode_varint
from p2phier.errors import CIDError, NetworkError, PeerTimeoutError, ProtocolViolationError

logger = logging.getLogger(__name__)

#: bytes asked of the muxer per read (it returns what is buffered, up to this)
READ_SIZE = 1 << 20

#: the largest write py-libp2p 0.8.1 sends as ONE Yamux frame in ONE Noise message: a
#: Noise transport message carries at most 65535 - 16 (tag) = 65519 bytes and a Yamux
#: frame header takes 12.  Yamux cuts a larger write into 65536-byte frames, which
#: Noise then sends as two messages each (65519 + 17 bytes): twice the encryptions,
#: system calls and reads on both sides.  Writing in pieces of this size halves them.
WRITE_PIECE = 65519 - 12

#: what a broken stream or connection can raise out of py-libp2p and trio
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


class StreamClosedError(NetworkError, ConnectionError):
    """The stream (or its connection) was reset or closed by the peer or the network."""


class StreamTruncatedError(StreamClosedError):
    """The stream ended inside a frame: the peer died (or cut it) mid-message.

    Not a protocol offence by itself (a killed process looks exactly like
    this), but nothing of the cut message may be used.
    """


def stream_peer(stream: INetStream) -> str:
    """The verified remote peer id of ``stream`` (set by the security handshake)."""
    return str(stream.muxed_conn.peer_id)


async def write_all(
    stream: INetStream, data: bytes | Sequence[bytes], *, timeout: float, what: str = ""
) -> None:
    """Write ``data`` (bytes, or consecutive pieces of it) within ``timeout`` seconds;
    after any error the stream is unusable.

    It goes in :data:`WRITE_PIECE`-byte writes (one Noise message each), each
    byte copied once into its write.
    """
    size = len(data) if isinstance(data, bytes) else sum(len(part) for part in data)
    try:
        with trio.fail_after(timeout):
            for piece in _pieces([data] if isinstance(data, bytes) else data):
                await stream.write(piece)
    except trio.TooSlowError:
        raise PeerTimeoutError(
            f"writing {size} bytes{_what(what)} to {stream_peer(stream)} took more than "
            f"{timeout}s (peer stalled or overloaded)"
        ) from None
    except STREAM_ERRORS as exc:
        raise StreamClosedError(
            f"cannot write{_what(what)} to {stream_peer(stream)}: {_describe(exc)}"
        ) from None


def _pieces(parts: Sequence[bytes]) -> Iterator[bytes]:
    """``parts`` re-cut into writes of at most WRITE_PIECE bytes (small parts joined)."""
    if len(parts) == 1 and len(parts[0]) <= WRITE_PIECE:
        yield parts[0]  # one small write: no copy
        return
    held: list[memoryview] = []
    have = 0
    for part in parts:
        view = memoryview(part)
        pos = 0
        while pos < len(view):
            take = min(len(view) - pos, WRITE_PIECE - have)
            held.append(view[pos : pos + take])
            have += take
            pos += take
            if have == WRITE_PIECE:
                yield b"".join(held)
                held, have = [], 0
    if held:
        yield b"".join(held)


async def write_frame(
    stream: INetStream, payload: bytes, *, timeout: float, max_size: int, what: str = ""
) -> None:
    """Write one ``varint(len) || payload`` frame (refused locally beyond ``max_size``)."""
    await write_all(stream, encode_frame(payload, max_size), timeout=timeout, what=what)


class FrameReader:
    """Reads length-prefixed frames from a stream, one at a time, under deadlines.

    ``next_frame()`` returns a frame body, or None at a clean end of stream
    (EOF on a frame boundary).  It raises ProtocolViolationError for an
    oversized or malformed length header, StreamTruncatedError for a stream
    cut inside a frame, PeerTimeoutError when a deadline passes,
    StreamClosedError on a reset.
    After any error the reader is done and the stream should be reset.
    """

    def __init__(
        self,
        stream: INetStream,
        *,
        max_frame_size: int,
        frame_timeout: float,
        idle_timeout: float | None,
        read_size: int = READ_SIZE,
    ) -> None:
        if frame_timeout <= 0 or (idle_timeout is not None and idle_timeout <= 0):
            raise ValueError("stream timeouts must be positive")
        self.stream = stream
        self.peer = stream_peer(stream)
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.read_size = read_size
        self.bytes_read = 0
        self._decoder = FrameDecoder(max_frame_size)
        self._ready: deque[list[bytes | memoryview]] = deque()
        self._eof = False

    async def next_frame(self) -> bytes | None:
        pieces = await self.next_frame_pieces()
        return None if pieces is None else b"".join(pieces)

    async def next_frame_pieces(self) -> list[bytes | memoryview] | None:
        """As :meth:`next_frame`, the body as the pieces it arrived in (not joined:
        see :meth:`p2phier.bitswap.FrameDecoder.feed_pieces`)."""
        while not self._ready:
            if self._eof:
                return None
            await self._read_more()
        return self._ready.popleft()

    async def _read_more(self) -> None:
        idle = self._decoder.at_boundary
        limit = self.idle_timeout if idle else self.frame_timeout
        try:
            with trio.fail_after(math.inf if limit is None else limit):
                data = await self.stream.read(self.read_size)
        except trio.TooSlowError:
            state = "waiting for a message" if idle else "inside a message"
            raise PeerTimeoutError(
                f"{self.peer} sent nothing for {limit}s {state} "
                f"({self._decoder.buffered} bytes of a frame held)"
            ) from None
        except StreamEOF:
            data = b""
        except STREAM_ERRORS as exc:
            raise StreamClosedError(f"stream from {self.peer} broke: {_describe(exc)}") from None
        if not data:
            # A killed peer looks exactly like this: only the framing tells a cut
            # stream from a finished one.
            self._eof = True
            try:
                self._decoder.close()
            except ProtocolViolationError as exc:
                raise StreamTruncatedError(f"stream from {self.peer}: {exc}") from None
            return
        self.bytes_read += len(data)
        self._ready.extend(self._decoder.feed_pieces(data))


async def read_frame(stream: INetStream, *, max_frame_size: int, timeout: float) -> bytes:
    """Read exactly one frame within ``timeout``; an EOF before it is an error."""
    reader = FrameReader(
        stream, max_frame_size=max_frame_size, frame_timeout=timeout, idle_timeout=timeout
    )
    frame = await reader.next_frame()
    if frame is None:
        raise StreamClosedError(f"{reader.peer} closed the stream before sending a message")
    return frame


#: multistream-select 1.0's header line (libp2p/specs connections, multiformats)
MULTISTREAM = b"/multistream/1.0.0"
#: longest multistream-select line accepted (a protocol id; libp2p caps them at 1 KiB)
MAX_SELECT_LINE = 1024


class ProtocolRefusedError(StreamClosedError):
    """The peer answered ``na`` to the protocol proposed on a new stream."""


async def select_protocol(stream: INetStream, protocol: str) -> None:
    """Negotiate ``protocol`` on a stream we opened, in one round trip.

    The header and the proposal go out in ONE write, and both answers are read
    after it (pipelined, as go-libp2p and js-libp2p dial; the listener just finds
    both lines buffered).  py-libp2p 0.8.1's client waits for the header's echo
    before it proposes: a second round trip on every stream a node opens, e.g.
    before the first want of a fetch and before a provider's first answer.
    Exactly the two answer lines are read (a byte at a time for each length), so
    nothing the peer sends after them is taken.  The caller bounds the time.
    """
    proposal = protocol.encode()
    if len(proposal) + 1 > MAX_SELECT_LINE or b"\n" in proposal:
        raise ProtocolViolationError(f"not a protocol id: {protocol!r}")
    lines = [MULTISTREAM, proposal]
    try:
        await stream.write(b"".join(encode_frame(line + b"\n") for line in lines))
        header = await _read_select_line(stream)
        if header != MULTISTREAM:
            raise ProtocolViolationError(
                f"{stream_peer(stream)} answered {header[:64]!r}, not the multistream header"
            )
        answer = await _read_select_line(stream)
    except STREAM_ERRORS as exc:
        raise StreamClosedError(
            f"cannot negotiate {protocol} with {stream_peer(stream)}: {_describe(exc)}"
        ) from None
    if answer == b"na":
        raise ProtocolRefusedError(f"{stream_peer(stream)} does not speak {protocol}")
    if answer != proposal:
        raise ProtocolViolationError(
            f"{stream_peer(stream)} answered {answer[:64]!r} to the proposal of {protocol}"
        )


async def _read_select_line(stream: INetStream) -> bytes:
    """One ``varint(len) || line \\n`` message of multistream-select, read exactly."""
    prefix = b""
    while not prefix or prefix[-1] & 0x80:
        if len(prefix) == 2:  # 14 bits already cover MAX_SELECT_LINE
            raise ProtocolViolationError("multistream-select length varint too long")
        prefix += await _read_exactly(stream, 1)
    try:
        length, _ = decode_varint(prefix)
    except CIDError as exc:
        raise ProtocolViolationError(f"multistream-select length: {exc}") from None
    if not 1 <= length <= MAX_SELECT_LINE:
        raise ProtocolViolationError(f"multistream-select line of {length} bytes refused")
    line = await _read_exactly(stream, length)
    if not line.endswith(b"\n"):
        raise ProtocolViolationError("multistream-select line without its newline")
    return line[:-1]


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = await stream.read(n - len(data))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise StreamClosedError(f"{stream_peer(stream)} closed the stream while negotiating")
        data += chunk
    return data


async def reset_quietly(stream: INetStream, timeout: float = 2.0) -> None:
    """Reset a stream we give up on; errors (it may already be dead) are logged, not raised."""
    with trio.move_on_after(timeout) as scope:
        try:
            await stream.reset()
        except STREAM_ERRORS as exc:
            logger.debug("reset of a stream to %s failed: %s", stream_peer(stream), exc)
    if scope.cancelled_caught:
        logger.debug("reset of a stream to %s timed out", stream_peer(stream))


async def close_quietly(stream: INetStream, timeout: float = 2.0) -> None:
    """Close (half-close our side of) a stream; on failure or timeout, reset it."""
    with trio.move_on_after(timeout) as scope:
        try:
            await stream.close()
            return
        except STREAM_ERRORS as exc:
            logger.debug("close of a stream to %s failed: %s", stream_peer(stream), exc)
    if scope.cancelled_caught:
        logger.debug("close of a stream to %s timed out; resetting it", stream_peer(stream))
    await reset_quietly(stream, timeout)


def _what(what: str) -> str:
    return f" ({what})" if what else ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
