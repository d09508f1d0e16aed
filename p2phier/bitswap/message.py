"""Bitswap 1.2.0 messages: frozen dataclasses and their strict protobuf codec.

Owns the in-memory form of a Bitswap message (:class:`Message` and its parts),
the limits a received message must respect (:class:`Limits`), and the two
conversions: :meth:`Message.encode` (dataclass -> protobuf bytes, via the
generated ``p2phier.wire.bitswap_pb2``) and :meth:`Message.decode` (bytes ->
dataclass).  No I/O.

Decoding treats every byte as hostile.  Before protobuf allocates anything, a
small wire scanner walks the top-level fields and the wantlist and refuses a
message whose entry, block or presence counts exceed the limits (a 4 MiB
message of two-byte entries would otherwise become two million objects).  Only
then is it parsed, and every field is checked: CIDs must parse, enums must be
known values, block prefixes must name CIDv0/CIDv1 with sha2-256, block data
must fit :attr:`Limits.max_block_size` (checked on the declared length, before
the data is touched).  Blocks (``payload``) are read by the scanner itself,
with protobuf's rules for a ``Block`` (last value wins, unknown fields and
fields of another wire type skipped); the rest of the message goes through the
generated protobuf class.  :meth:`Message.decode_pieces` decodes a message
still in the pieces it arrived in: each block is then copied out of them once,
and the message as a whole is never joined.  Any failure is a
:class:`~p2phier.errors.ProtocolViolationError` naming what was wrong; nothing else
escapes :meth:`Message.decode`.

Fields this schema does not know (a newer peer's additions, or Bitswap 1.0.0's
``blocks`` field 2) are skipped, as proto3 prescribes; they still count against
the message size and field-count limits.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from p2phier.cid import (
    CID,
    DAG_PB,
    MAX_CID_BYTES,
    SHA2_256,
    Multihash,
    decode_varint,
)
from p2phier.errors import CIDError, ProtocolViolationError, UsageError
from p2phier.wire import bitswap_pb2 as pb

PROTOCOL_ID = "/ipfs/bitswap/1.2.0"

#: The spec's ceiling for one message (ipfs/specs bitswap-protocol.md, "Protocol Format").
MAX_MESSAGE_SIZE = 4 << 20
#: Largest block p2phier accepts from a peer; equals ``p2phier.store.MAX_BLOCK_SIZE``
#: (the store refuses anything bigger, so receiving it would be wasted bandwidth).
MAX_BLOCK_SIZE = 1 << 20
#: Largest block the spec says an implementation must be able to serve.
MAX_SERVED_BLOCK_SIZE = 2 << 20
MAX_WANTLIST_ENTRIES = 1024
MAX_PAYLOAD_BLOCKS = 1024
MAX_PRESENCES = 4096
_INT32_MAX = (1 << 31) - 1
_INT32_MIN = -(1 << 31)
_SHA256_PREFIX_TAIL = bytes([SHA2_256, 32])


class LocalProtocolError(UsageError):
    """This node was about to send something the protocol forbids (a bug or bad input)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a received message; all counts are per message."""

    max_message_size: int = MAX_MESSAGE_SIZE
    max_block_size: int = MAX_BLOCK_SIZE
    max_wantlist_entries: int = MAX_WANTLIST_ENTRIES
    max_payload_blocks: int = MAX_PAYLOAD_BLOCKS
    max_presences: int = MAX_PRESENCES
    #: fields this schema does not know; a few are tolerated, a flood is not
    max_unknown_fields: int = 64

    def __post_init__(self) -> None:
        for name in (
            "max_message_size",
            "max_block_size",
            "max_wantlist_entries",
            "max_payload_blocks",
            "max_presences",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"bitswap limit {name} must be at least 1")
        if self.max_block_size >= self.max_message_size:
            raise UsageError("bitswap max_block_size must be smaller than max_message_size")


DEFAULT_LIMITS = Limits()


class WantType(enum.IntEnum):
    BLOCK = 0
    HAVE = 1


class PresenceType(enum.IntEnum):
    HAVE = 0
    DONT_HAVE = 1


def block_key(cid: CID) -> CID:
    """The identity of a block regardless of CID version (CIDv0 == CIDv1 dag-pb)."""
    return cid if cid.version == 1 else cid.to_v1()


def _check_int32(name: str, value: int) -> None:
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise LocalProtocolError(f"bitswap {name} {value} does not fit in int32")


@dataclass(frozen=True, slots=True)
class WantEntry:
    """One wantlist entry: ask for a block (or whether the peer has it), or revoke that."""

    cid: CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False

    def __post_init__(self) -> None:
        _check_int32("priority", self.priority)

    @classmethod
    def cancel_of(cls, cid: CID) -> WantEntry:
        """A cancel entry (go-bitswap sends cancels with priority 0 and default fields)."""
        return cls(cid, priority=0, cancel=True)


@dataclass(frozen=True, slots=True)
class Wantlist:
    entries: tuple[WantEntry, ...] = ()
    full: bool = False


@dataclass(frozen=True, slots=True)
class BlockPayload:
    """A block on the wire: its CID prefix (everything but the digest) and its bytes.

    A payload names no digest, so nothing about it is trusted: the receiver
    hashes ``data`` and matches the result against the CIDs it asked for.
    """

    prefix: bytes
    data: bytes = field(repr=False)

    @classmethod
    def of(cls, cid: CID, data: bytes) -> BlockPayload:
        """The payload that carries ``data`` as the block ``cid`` (CIDv0 keeps its v0 prefix)."""
        return cls(cid.prefix(), data)

    @property
    def version(self) -> int:
        return _parse_prefix(self.prefix)[0]

    @property
    def codec(self) -> int:
        return _parse_prefix(self.prefix)[1]

    def claimed_key(self) -> CID:
        """The CIDv1 this payload hashes to under its own prefix (hashes ``data``)."""
        version, codec = _parse_prefix(self.prefix)
        del version  # v0 and v1 name the same block: keys are always v1
        return CID(1, codec, Multihash.sha256(self.data))


@dataclass(frozen=True, slots=True)
class BlockPresence:
    cid: CID
    type: PresenceType


@dataclass(frozen=True, slots=True)
class Message:
    """One Bitswap 1.2.0 message; ``wantlist=None`` means the field is absent."""

    wantlist: Wantlist | None = None
    blocks: tuple[BlockPayload, ...] = ()
    presences: tuple[BlockPresence, ...] = ()
    pending_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pending_bytes <= _INT32_MAX:
            raise LocalProtocolError(f"bitswap pending_bytes {self.pending_bytes} out of range")

    @property
    def is_empty(self) -> bool:
        return (
            (self.wantlist is None or (not self.wantlist.entries and not self.wantlist.full))
            and not self.blocks
            and not self.presences
        )

    # --- encoding ----------------------------------------------------------------
    def to_protobuf(self) -> pb.Message:
        msg = pb.Message()
        if self.wantlist is not None:
            msg.wantlist.SetInParent()  # present even when empty: round trips exactly
            for e in self.wantlist.entries:
                entry = msg.wantlist.entries.add()
                entry.block = e.cid.to_bytes()
                entry.priority = e.priority
                entry.cancel = e.cancel
                entry.wantType = int(e.want_type)  # type: ignore[assignment]
                entry.sendDontHave = e.send_dont_have
            msg.wantlist.full = self.wantlist.full
        for b in self.blocks:
            block = msg.payload.add()
            block.prefix = b.prefix
            block.data = b.data
        for p in self.presences:
            presence = msg.blockPresences.add()
            presence.cid = p.cid.to_bytes()
            presence.type = int(p.type)  # type: ignore[assignment]
        msg.pendingBytes = self.pending_bytes
        return msg

    def encode(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        """Protobuf bytes; refuses to produce a message larger than ``max_size``."""
        parts, size = _encode_parts(self)
        _check_size(size, max_size)
        return b"".join(parts)

    def encode_frame(self, max_size: int = MAX_MESSAGE_SIZE) -> bytes:
        """``varint(len) || protobuf``, built with a single copy of the block data."""
        return b"".join(self.encode_frame_parts(max_size))

    def encode_frame_parts(self, max_size: int = MAX_MESSAGE_SIZE) -> list[bytes]:
        """The frame as consecutive pieces, the blocks' data among them uncopied
        (joined, they are :meth:`encode_frame`): a writer that cuts its writes to
        its own size copies each byte once."""
        parts, size = _encode_parts(self)
        _check_size(size, max_size)
        parts.insert(0, _uvarint(size))
        return parts

    # --- decoding ----------------------------------------------------------------
    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
    ) -> Message:
        """Parse and validate one received message; raises only ProtocolViolationError."""
        _check_received_size(len(data), limits)
        return _decode(data if isinstance(data, bytes) else bytes(data), limits)

    @classmethod
    def decode_pieces(
        cls, pieces: Sequence[bytes | memoryview], limits: Limits = DEFAULT_LIMITS
    ) -> Message:
        """As :meth:`decode`, for a message given as consecutive pieces (as a stream
        delivered it): blocks are copied out of the pieces once, nothing else is
        joined but the small non-block fields.  The pieces must not change meanwhile."""
        buf = _Pieces(pieces)
        _check_received_size(len(buf), limits)
        return _decode(buf, limits)


def _check_received_size(size: int, limits: Limits) -> None:
    if size > limits.max_message_size:
        raise ProtocolViolationError(
            f"bitswap message of {size} bytes exceeds the {limits.max_message_size}-byte limit"
        )


class _Pieces:
    """A message held as the pieces it arrived in, read in place by the scanner.

    ``buf[i]`` is one byte (the scanner reads field headers byte by byte, mostly
    in order, so the piece last used is tried first); :meth:`slice` copies a
    range out once, however many pieces it spans.
    """

    __slots__ = ("_cur", "_len", "_pieces", "_starts")

    def __init__(self, pieces: Sequence[bytes | memoryview]) -> None:
        self._pieces = [memoryview(p).cast("B") for p in pieces if len(p)]
        self._starts: list[int] = []
        total = 0
        for piece in self._pieces:
            self._starts.append(total)
            total += len(piece)
        self._len = total
        self._cur = 0

    def __len__(self) -> int:
        return self._len

    def _locate(self, pos: int) -> int:
        i = self._cur
        start = self._starts[i]
        if not start <= pos < start + len(self._pieces[i]):
            i = self._cur = bisect_right(self._starts, pos) - 1
        return i

    def __getitem__(self, pos: int) -> int:
        if not 0 <= pos < self._len:
            raise IndexError(pos)
        i = self._locate(pos)
        return self._pieces[i][pos - self._starts[i]]

    def slice(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        i = self._locate(start)
        piece, offset = self._pieces[i], start - self._starts[i]
        if offset + (end - start) <= len(piece):
            return piece[offset : offset + (end - start)].tobytes()
        parts = [piece[offset:]]
        pos = self._starts[i] + len(piece)
        while pos < end:
            i += 1
            piece = self._pieces[i]
            parts.append(piece[: end - pos])
            pos += len(piece)
        return b"".join(parts)


_Buf = bytes | _Pieces


def _slice(buf: _Buf, start: int, end: int) -> bytes:
    return buf[start:end] if isinstance(buf, bytes) else buf.slice(start, end)


def _decode(buf: _Buf, limits: Limits) -> Message:
    fields = _scan(buf, limits)
    # Blocks are taken out here (the bulk of the bytes); everything else is
    # parsed by protobuf from what remains, in the original order.
    spans = [(vs, ve) for number, vs, ve, _, _ in fields if number == 3 and vs >= 0]
    if spans or not isinstance(buf, bytes):
        rest = b"".join(
            _slice(buf, fs, fe) for number, vs, _, fs, fe in fields if not (number == 3 and vs >= 0)
        )
    else:
        rest = buf
    msg = pb.Message()
    try:
        msg.ParseFromString(rest)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ProtocolViolationError(f"malformed bitswap message: {exc}") from None
    blocks = tuple(_decode_block(buf, vs, ve, limits) for vs, ve in spans)
    return _from_protobuf(msg, limits, blocks)


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Action: send ``message`` to ``peer``; :meth:`frame` gives the bytes for the stream."""

    peer: str
    message: Message

    def frame(self) -> bytes:
        return self.message.encode_frame()

    def frame_parts(self) -> list[bytes]:
        return self.message.encode_frame_parts()


# --- encoding -------------------------------------------------------------------------
#
# Written out by hand rather than through the generated class: ``SerializeToString``
# copies every block twice (into the protobuf object, then out of it) and a frame
# header would copy it a third time; here the block bytes are copied once, into the
# frame.  The output is byte for byte what protobuf produces (fields in number
# order, proto3 defaults omitted); tests/bitswap/test_message.py checks that.


def _uvarint(value: int) -> bytes:
    """A protobuf varint of a value in [0, 2**64)."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int32(value: int) -> bytes:
    """An int32 field value: negatives are sign-extended to 64 bits, as protobuf does."""
    return _uvarint(value & 0xFFFFFFFFFFFFFFFF)


def _check_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise LocalProtocolError(
            f"bitswap message of {size} bytes exceeds the {max_size}-byte limit; "
            "split it into several messages"
        )


def _len_field(tag: int, value: bytes) -> bytes:
    """A length-delimited field whose value is small (CIDs, prefixes, entries)."""
    return bytes((tag,)) + _uvarint(len(value)) + value


def _entry_bytes(e: WantEntry) -> bytes:
    out = _len_field(0x0A, e.cid.to_bytes())
    if e.priority:
        out += b"\x10" + _int32(e.priority)
    if e.cancel:
        out += b"\x18\x01"
    if e.want_type:
        out += b"\x20" + _uvarint(int(e.want_type))
    if e.send_dont_have:
        out += b"\x28\x01"
    return out


def _encode_parts(msg: Message) -> tuple[list[bytes], int]:
    """The protobuf encoding of ``msg`` as pieces to join, and their total length."""
    parts: list[bytes] = []
    if msg.wantlist is not None:
        body = b"".join(_len_field(0x0A, _entry_bytes(e)) for e in msg.wantlist.entries)
        if msg.wantlist.full:
            body += b"\x10\x01"
        parts.append(_len_field(0x0A, body))
    for b in msg.blocks:
        inner = _len_field(0x0A, b.prefix) if b.prefix else b""
        if b.data:
            inner += b"\x12" + _uvarint(len(b.data))
            parts.append(b"\x1a" + _uvarint(len(inner) + len(b.data)) + inner)
            parts.append(b.data)
        else:
            parts.append(_len_field(0x1A, inner))
    for p in msg.presences:
        inner = _len_field(0x0A, p.cid.to_bytes())
        if p.type:
            inner += b"\x10" + _uvarint(int(p.type))
        parts.append(_len_field(0x22, inner))
    if msg.pending_bytes:
        parts.append(b"\x28" + _int32(msg.pending_bytes))
    return parts, sum(len(part) for part in parts)


# --- validation of a parsed protobuf ---------------------------------------------


def _parse_cid(raw: bytes, what: str) -> CID:
    if not raw:
        raise ProtocolViolationError(f"bitswap {what} has an empty CID")
    if len(raw) > MAX_CID_BYTES:
        raise ProtocolViolationError(
            f"bitswap {what} CID is {len(raw)} bytes (limit {MAX_CID_BYTES})"
        )
    try:
        return CID.from_bytes(raw)
    except CIDError as exc:
        raise ProtocolViolationError(f"bitswap {what} has an invalid CID: {exc}") from None


def _parse_prefix(prefix: bytes) -> tuple[int, int]:
    """``(version, codec)`` of a block prefix; only sha2-256 with a 32-byte digest is accepted."""
    try:
        version, off = decode_varint(prefix)
        codec, off = decode_varint(prefix, off)
    except CIDError as exc:
        raise ProtocolViolationError(
            f"bitswap block prefix {prefix.hex()!r} is invalid: {exc}"
        ) from None
    if prefix[off:] != _SHA256_PREFIX_TAIL:
        raise ProtocolViolationError(
            f"bitswap block prefix {prefix.hex()!r} must end in sha2-256/32 (1220), "
            "the only hash p2phier accepts"
        )
    if version == 0 and codec != DAG_PB:
        raise ProtocolViolationError("bitswap CIDv0 block prefix must name dag-pb")
    if version not in (0, 1):
        raise ProtocolViolationError(f"bitswap block prefix has unsupported CID version {version}")
    return version, codec


def _decode_block(buf: _Buf, start: int, end: int, limits: Limits) -> BlockPayload:
    """One ``Block`` from ``buf[start:end]`` (its data copied out once)."""
    prefix: tuple[int, int] | None = None
    data: tuple[int, int] | None = None
    # prefix, data, and a few unknown fields; a flood of fields is refused
    cap = limits.max_unknown_fields + 2
    for number, vstart, vend, _, _ in _fields(buf, start, end, cap, "block"):
        if vstart < 0:
            continue  # not length-delimited: unknown, or a known field of another type
        if number == 1:
            prefix = (vstart, vend)
        elif number == 2:
            data = (vstart, vend)
    size = data[1] - data[0] if data is not None else 0
    if size > limits.max_block_size:
        raise ProtocolViolationError(
            f"bitswap block of {size} bytes exceeds the {limits.max_block_size}-byte block limit"
        )
    raw_prefix = _slice(buf, *prefix) if prefix is not None else b""
    _parse_prefix(raw_prefix)
    return BlockPayload(raw_prefix, _slice(buf, *data) if data is not None else b"")


def _from_protobuf(
    msg: pb.Message, limits: Limits, blocks: tuple[BlockPayload, ...] = ()
) -> Message:
    wantlist: Wantlist | None = None
    if msg.HasField("wantlist"):
        entries: list[WantEntry] = []
        seen: set[CID] = set()
        for e in msg.wantlist.entries:
            cid = _parse_cid(e.block, "wantlist entry")
            if block_key(cid) in seen:
                raise ProtocolViolationError(f"bitswap wantlist names {cid} twice in one message")
            seen.add(block_key(cid))
            if int(e.wantType) not in (WantType.BLOCK, WantType.HAVE):
                raise ProtocolViolationError(
                    f"bitswap wantlist entry has unknown wantType {e.wantType}"
                )
            entries.append(
                WantEntry(
                    cid,
                    priority=e.priority,
                    cancel=e.cancel,
                    want_type=WantType(e.wantType),
                    send_dont_have=e.sendDontHave,
                )
            )
        wantlist = Wantlist(tuple(entries), msg.wantlist.full)
    # (payload fields were taken out before parsing: ``blocks`` are already decoded)
    presences: list[BlockPresence] = []
    for p in msg.blockPresences:
        cid = _parse_cid(p.cid, "block presence")
        if int(p.type) not in (PresenceType.HAVE, PresenceType.DONT_HAVE):
            raise ProtocolViolationError(f"bitswap block presence has unknown type {p.type}")
        presences.append(BlockPresence(cid, PresenceType(p.type)))
    if msg.pendingBytes < 0:
        raise ProtocolViolationError(f"bitswap pendingBytes is negative ({msg.pendingBytes})")
    return Message(wantlist, blocks, tuple(presences), msg.pendingBytes)


# --- the pre-parse wire scan --------------------------------------------------------

_WT_VARINT, _WT_I64, _WT_LEN, _WT_I32 = 0, 1, 2, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1  # protobuf's; larger ones do not parse


def _pb_varint(buf: _Buf, pos: int, end: int) -> tuple[int, int]:
    """A protobuf varint (up to 10 bytes; protobuf tolerates non-minimal forms)."""
    value = 0
    for i in range(10):
        if pos >= end:
            raise ProtocolViolationError("malformed bitswap message: truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ProtocolViolationError("malformed bitswap message: varint longer than 10 bytes")


def _fields(
    buf: _Buf, start: int, end: int, max_fields: int, where: str
) -> list[tuple[int, int, int, int, int]]:
    """``(number, value start, value end, field start, field end)`` of each field in
    ``buf[start:end]``; the value bounds are -1 unless it is length-delimited.

    Stops with ProtocolViolationError after ``max_fields`` fields, so the work done on
    a hostile message is bounded by the limits, not by its length.
    """
    out: list[tuple[int, int, int, int, int]] = []
    pos = start
    while pos < end:
        if len(out) >= max_fields:
            raise ProtocolViolationError(f"bitswap {where} has more than {max_fields} fields")
        fstart = pos
        key, pos = _pb_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtocolViolationError(f"malformed bitswap {where}: field number 0")
        if number > _MAX_FIELD_NUMBER or key > 0xFFFFFFFF:
            raise ProtocolViolationError(
                f"malformed bitswap {where}: field number {number} out of range"
            )
        if wire_type == _WT_VARINT:
            vstart = pos
            _, pos = _pb_varint(buf, pos, end)
        elif wire_type == _WT_I64:
            vstart, pos = pos, pos + 8
        elif wire_type == _WT_I32:
            vstart, pos = pos, pos + 4
        elif wire_type == _WT_LEN:
            length, vstart = _pb_varint(buf, pos, end)
            pos = vstart + length
        else:
            raise ProtocolViolationError(
                f"malformed bitswap {where}: wire type {wire_type} not allowed"
            )
        if pos > end:
            raise ProtocolViolationError(f"malformed bitswap {where}: field {number} is truncated")
        if wire_type == _WT_LEN:
            out.append((number, vstart, pos, fstart, pos))
        else:
            out.append((number, -1, -1, fstart, pos))
    return out


def _scan(buf: _Buf, limits: Limits) -> list[tuple[int, int, int, int, int]]:
    """Refuse a message whose counts exceed ``limits`` before protobuf allocates it;
    returns its top-level fields (as :func:`_fields`)."""
    top_cap = limits.max_payload_blocks + limits.max_presences + limits.max_unknown_fields + 8
    entries = blocks = presences = unknown = 0
    fields = _fields(buf, 0, len(buf), top_cap, "message")
    for number, vstart, vend, _, _ in fields:
        if number == 1 and vstart >= 0:
            inner_cap = limits.max_wantlist_entries + limits.max_unknown_fields + 8
            inner = _fields(buf, vstart, vend, inner_cap, "wantlist")
            entries += sum(1 for n, s, _, _, _ in inner if n == 1 and s >= 0)
            if entries > limits.max_wantlist_entries:
                raise ProtocolViolationError(
                    f"bitswap wantlist has more than {limits.max_wantlist_entries} entries"
                )
        elif number == 3:
            blocks += 1
            if blocks > limits.max_payload_blocks:
                raise ProtocolViolationError(
                    f"bitswap message carries more than {limits.max_payload_blocks} blocks"
                )
        elif number == 4:
            presences += 1
            if presences > limits.max_presences:
                raise ProtocolViolationError(
                    f"bitswap message carries more than {limits.max_presences} block presences"
                )
        elif number not in (1, 5):
            unknown += 1
            if unknown > limits.max_unknown_fields:
                raise ProtocolViolationError(
                    f"bitswap message has more than {limits.max_unknown_fields} unknown fields"
                )
    return fields
