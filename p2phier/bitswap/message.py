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
must fit :attr:`Limits.max_block_size`.  Any failure is a
:class:`~p2phier.errors.ProtocolViolationError` naming what was wrong; nothing else
escapes :meth:`Message.decode`.

Fields this schema does not know (a newer peer's additions, or Bitswap 1.0.0's
``blocks`` field 2) are skipped, as proto3 prescribes; they still count against
the message size and field-count limits.
"""

from __future__ import annotations

import enum
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
        data: bytes = self.to_protobuf().SerializeToString()
        if len(data) > max_size:
            raise LocalProtocolError(
                f"bitswap message of {len(data)} bytes exceeds the {max_size}-byte limit; "
                "split it into several messages"
            )
        return data

    # --- decoding ----------------------------------------------------------------
    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS
    ) -> Message:
        """Parse and validate one received message; raises only ProtocolViolationError."""
        if len(data) > limits.max_message_size:
            raise ProtocolViolationError(
                f"bitswap message of {len(data)} bytes exceeds the "
                f"{limits.max_message_size}-byte limit"
            )
        buf = bytes(data)
        _scan(buf, limits)
        msg = pb.Message()
        try:
            msg.ParseFromString(buf)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise ProtocolViolationError(f"malformed bitswap message: {exc}") from None
        return _from_protobuf(msg, limits)


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Action: send ``message`` to ``peer``; :meth:`frame` gives the bytes for the stream."""

    peer: str
    message: Message

    def frame(self) -> bytes:
        from .framing import encode_frame  # framing imports this module

        return encode_frame(self.message.encode())


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


def _from_protobuf(msg: pb.Message, limits: Limits) -> Message:
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
    blocks: list[BlockPayload] = []
    for b in msg.payload:
        if len(b.data) > limits.max_block_size:
            raise ProtocolViolationError(
                f"bitswap block of {len(b.data)} bytes exceeds the "
                f"{limits.max_block_size}-byte block limit"
            )
        _parse_prefix(b.prefix)
        blocks.append(BlockPayload(b.prefix, b.data))
    presences: list[BlockPresence] = []
    for p in msg.blockPresences:
        cid = _parse_cid(p.cid, "block presence")
        if int(p.type) not in (PresenceType.HAVE, PresenceType.DONT_HAVE):
            raise ProtocolViolationError(f"bitswap block presence has unknown type {p.type}")
        presences.append(BlockPresence(cid, PresenceType(p.type)))
    if msg.pendingBytes < 0:
        raise ProtocolViolationError(f"bitswap pendingBytes is negative ({msg.pendingBytes})")
    return Message(wantlist, tuple(blocks), tuple(presences), msg.pendingBytes)


# --- the pre-parse wire scan --------------------------------------------------------

_WT_VARINT, _WT_I64, _WT_LEN, _WT_I32 = 0, 1, 2, 5


def _pb_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
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
    buf: bytes, start: int, end: int, max_fields: int, where: str
) -> list[tuple[int, int, int]]:
    """``(field number, value start, value end)`` of each field in ``buf[start:end]``.

    Stops with ProtocolViolationError after ``max_fields`` fields, so the work done on
    a hostile message is bounded by the limits, not by its length.
    """
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        if len(out) >= max_fields:
            raise ProtocolViolationError(f"bitswap {where} has more than {max_fields} fields")
        key, pos = _pb_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtocolViolationError(f"malformed bitswap {where}: field number 0")
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
        out.append((number, vstart, pos) if wire_type == _WT_LEN else (number, -1, -1))
    return out


def _scan(buf: bytes, limits: Limits) -> None:
    """Refuse a message whose counts exceed ``limits`` before protobuf allocates it."""
    top_cap = limits.max_payload_blocks + limits.max_presences + limits.max_unknown_fields + 8
    entries = blocks = presences = unknown = 0
    for number, vstart, vend in _fields(buf, 0, len(buf), top_cap, "message"):
        if number == 1 and vstart >= 0:
            inner_cap = limits.max_wantlist_entries + limits.max_unknown_fields + 8
            inner = _fields(buf, vstart, vend, inner_cap, "wantlist")
            entries += sum(1 for n, s, _ in inner if n == 1 and s >= 0)
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
