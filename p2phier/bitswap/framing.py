"""Length-prefixed framing of Bitswap messages on a stream (sans-IO).

Owns the stream format of ipfs/specs bitswap-protocol.md: every message is
preceded by its length as a multiformats unsigned varint.  :func:`encode_frame`
produces a frame; :class:`FrameDecoder` is an incremental decoder that is fed
whatever bytes the transport delivered (any split: one byte, half a header,
three frames at once) and returns the complete frame bodies.

The declared length is checked against the maximum as soon as the header is
complete, BEFORE any of the body is buffered, so a peer announcing a 4 GiB
frame costs us a few header bytes, not 4 GiB.  A header longer than the
largest allowed length could need, or not minimally encoded, is refused as
soon as it is seen.  Truncation looks like success on libp2p streams (a killed
peer reads as a clean EOF), so :meth:`FrameDecoder.close` raises when a frame
was cut short.  After any error the decoder stays failed: a stream that broke
framing once cannot be trusted to resynchronise.
"""

from __future__ import annotations

from p2phier.cid import encode_varint
from p2phier.errors import ProtocolViolationError

from .message import MAX_MESSAGE_SIZE, LocalProtocolError


def encode_frame(payload: bytes, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
    """``varint(len(payload)) || payload``; refuses payloads over ``max_size``."""
    if len(payload) > max_size:
        raise LocalProtocolError(
            f"bitswap frame of {len(payload)} bytes exceeds the {max_size}-byte limit"
        )
    return encode_varint(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: ``feed(bytes) -> [frame bodies]``, ``close()`` at EOF.

    A frame's pieces are held as views of the ``bytes`` objects fed in (other
    buffer types are copied, since their owner may reuse them).
    :meth:`feed_pieces` hands a complete frame over as those pieces, copying
    nothing; :meth:`feed` joins them (a fed ``bytes`` that is exactly one frame
    body is returned as is).
    """

    def __init__(self, max_frame_size: int = MAX_MESSAGE_SIZE) -> None:
        if max_frame_size < 0:
            raise ValueError("max_frame_size must be non-negative")
        self.max_frame_size = max_frame_size
        # the longest header a legal length can need
        self._max_header = len(encode_varint(max_frame_size))
        self._header = bytearray()
        self._parts: list[bytes | memoryview] = []  # the body so far, in pieces
        self._have = 0  # bytes in _parts
        self._need: int | None = None  # body length once the header is complete
        self._failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._header) + self._have

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is held (EOF here is a clean end)."""
        return not self._header and self._need is None

    def _fail(self, reason: str) -> ProtocolViolationError:
        self._failed = reason
        self._header.clear()
        self._parts.clear()
        self._have = 0
        self._need = None
        return ProtocolViolationError(reason)

    def _header_byte(self, byte: int) -> None:
        """Add one header byte; sets ``_need`` when the length varint is complete."""
        self._header.append(byte)
        if byte & 0x80:
            if len(self._header) >= self._max_header:
                raise self._fail(
                    f"bitswap frame length header exceeds {self._max_header} bytes "
                    f"(limit {self.max_frame_size} bytes per frame)"
                )
            return
        if byte == 0 and len(self._header) > 1:
            raise self._fail("bitswap frame length is not a minimal varint")
        value = 0
        for i, b in enumerate(self._header):
            value |= (b & 0x7F) << (7 * i)
        if value > self.max_frame_size:
            raise self._fail(
                f"bitswap frame declares {value} bytes; the limit is {self.max_frame_size}"
            )
        self._header.clear()
        self._need = value

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take newly received bytes; return every frame they complete, in order."""
        return [b"".join(pieces) for pieces in self.feed_pieces(data)]

    def feed_pieces(self, data: bytes | bytearray | memoryview) -> list[list[bytes | memoryview]]:
        """As :meth:`feed`, each frame as the consecutive pieces it arrived in (read-only
        views of what was fed, or copies of it; joined, they are the frame body)."""
        if self._failed is not None:
            raise ProtocolViolationError(f"bitswap stream already failed: {self._failed}")
        frames: list[list[bytes | memoryview]] = []
        # Views of an immutable bytes object stay valid; anything else is copied when
        # held past this call (its owner may reuse the buffer).
        owned = isinstance(data, bytes)
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while True:
            # Header bytes go one at a time (at most a few per frame), so the
            # declared length is judged before a single body byte is kept.
            while self._need is None and pos < end:
                self._header_byte(view[pos])
                pos += 1
            need = self._need
            if need is None:
                return frames
            take = min(end - pos, need - self._have)
            if take:
                piece = view[pos : pos + take]
                if isinstance(data, bytes) and take == end:
                    self._parts.append(data)  # the whole chunk is body: no view needed
                else:
                    self._parts.append(piece if owned else piece.tobytes())
                self._have += take
                pos += take
            if self._have < need:  # the frame goes on in a later feed
                return frames
            frames.append(self._parts)
            self._parts = []
            self._have = 0
            self._need = None
            if pos == end:
                return frames

    def close(self) -> None:
        """Declare end of stream; raises ProtocolViolationError if a frame was cut short."""
        if self._failed is not None:
            raise ProtocolViolationError(f"bitswap stream already failed: {self._failed}")
        if not self.at_boundary:
            held = self._have
            need = self._need
            raise self._fail(
                "bitswap stream ended inside a frame "
                + (
                    f"({held} of {need} body bytes received)"
                    if need is not None
                    else "(in its header)"
                )
            )
