"""Signed node records and the book of records a node knows (pure, no I/O).

Owns the hierarchy's vocabulary (:class:`Layer`, :class:`HardwareClass`, domain
paths and the rule that ties a layer to a domain depth), the :class:`NodeRecord`
a node publishes about itself, its signed envelope (``SignedNodeRecord`` in
``protocol/p2phier.proto``) and :class:`RecordBook`, which keeps the newest
valid record per peer.  Specification: ``protocol/node.md``.

* Records are serialised canonically (protobuf deterministic form, defaults
  omitted, no unknown fields); :meth:`NodeRecord.from_bytes` refuses any other
  byte form, so a record has exactly one encoding.
* The signature is Ed25519 over the exact record bytes, framed with the domain
  :data:`SIGNING_DOMAIN`; the key is the one embedded in the record's own peer
  id, so a record is checkable from nothing but its bytes.
* Every input is hostile: sizes are checked before parsing, every field is
  bounded, and :class:`RecordBook` answers each offered record with a status
  instead of raising, so the daemon can count and log refusals.

Clocks are passed in: ``now`` is Unix time in seconds (float); the wire carries
Unix milliseconds.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from p2phier.cid import CID, DAG_PB, RAW, SHA2_256
from p2phier.errors import (
    CIDError,
    IdentityError,
    P2PHierError,
    ProtocolViolationError,
    SignatureError,
)
from p2phier.identity import Identity, PeerId
from p2phier.signing import check_signed, sign_as
from p2phier.wire import p2phier_pb2 as pb

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"p2phier/node-record/v1"

MAX_SIGNED_RECORD = 8192  # bytes of a SignedNodeRecord; checked before parsing (16 long addrs fit)
MAX_ADDRS = 16
MAX_ADDR = 256
MAX_BASE_MODEL_ID = 256
MAX_DOMAIN = 128
MAX_DOMAIN_DEPTH = 4
MAX_SEGMENT = 32
MAX_U63 = 2**63 - 1
MAX_RECORD_LIFETIME_MS = 24 * 3600 * 1000  # a record can never claim to live longer
DEFAULT_CLOCK_SKEW_S = 300.0  # how far in the future an issued time may be
DEFAULT_MAX_RECORDS = 10_000

# A segment is a DNS-label-like token: the brief's [a-z0-9-]+ without a leading or
# trailing '-', which also makes every record domain a valid manifest domain.
_SEGMENT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_MODEL_ID_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_ADDR_RE = re.compile(r"(?:/[\x21-\x2e\x30-\x7e]+)+")  # "/seg/seg...", printable, no '//'


class RecordError(ProtocolViolationError):
    """A node record is malformed, violates a limit or cannot be used as asked."""


class RecordSignatureError(RecordError, SignatureError):
    """A node record's signature is missing or was not made by the record's peer."""


# --- the hierarchy's vocabulary ----------------------------------------------------------


class Layer(enum.IntEnum):
    """A node's layer; ordered from the top (master is 0)."""

    MASTER = 0
    LANGUAGE = 1
    DOMAIN = 2
    SUBDOMAIN = 3
    DEVICE = 4

    @property
    def label(self) -> str:
        """The lower-case name used in configs, topics, keys and manifests."""
        return self.name.lower()

    @property
    def above(self) -> Layer | None:
        """The layer a node of this layer takes its parent from (None for the master)."""
        return None if self is Layer.MASTER else Layer(self - 1)

    @property
    def below(self) -> Layer | None:
        """The layer of this layer's children (None for devices)."""
        return None if self is Layer.DEVICE else Layer(self + 1)

    @property
    def depth_range(self) -> tuple[int, int]:
        """Allowed domain depths (segment counts), inclusive; see :func:`check_layer_domain`."""
        return _DEPTHS[self]

    @classmethod
    def parse(cls, text: str) -> Layer:
        if isinstance(text, Layer):
            return text
        if isinstance(text, str):
            for layer in cls:
                if layer.label == text.strip().lower():
                    return layer
        raise RecordError(
            f"layer {text!r:.40} is not one of {', '.join(layer.label for layer in cls)}"
        )


# master: the root only; language: one segment (en); domain, subdomain, device: at least
# as deep as their index, so the parent's domain can always be a prefix of the child's.
_DEPTHS = {
    Layer.MASTER: (0, 0),
    Layer.LANGUAGE: (1, 1),
    Layer.DOMAIN: (2, MAX_DOMAIN_DEPTH),
    Layer.SUBDOMAIN: (3, MAX_DOMAIN_DEPTH),
    Layer.DEVICE: (3, MAX_DOMAIN_DEPTH),
}


class HardwareClass(enum.StrEnum):
    """Coarse class of the machine a node runs on."""

    GPU = "gpu"
    CPU = "cpu"
    MOBILE = "mobile"
    EMBEDDED = "embedded"

    @classmethod
    def parse(cls, text: str) -> HardwareClass:
        if isinstance(text, str):
            try:
                return cls(text.strip().lower())
            except ValueError:
                pass
        raise RecordError(
            f"hardware class {text!r:.40} is not one of {', '.join(h.value for h in cls)}"
        )


_LAYER_TO_PB = {  # 0 is NODE_LAYER_UNSPECIFIED, never valid
    Layer.MASTER: pb.NODE_LAYER_MASTER,
    Layer.LANGUAGE: pb.NODE_LAYER_LANGUAGE,
    Layer.DOMAIN: pb.NODE_LAYER_DOMAIN,
    Layer.SUBDOMAIN: pb.NODE_LAYER_SUBDOMAIN,
    Layer.DEVICE: pb.NODE_LAYER_DEVICE,
}
_LAYER_FROM_PB: dict[int, Layer] = {int(v): k for k, v in _LAYER_TO_PB.items()}
_HW_TO_PB = {
    HardwareClass.GPU: pb.HARDWARE_CLASS_GPU,
    HardwareClass.CPU: pb.HARDWARE_CLASS_CPU,
    HardwareClass.MOBILE: pb.HARDWARE_CLASS_MOBILE,
    HardwareClass.EMBEDDED: pb.HARDWARE_CLASS_EMBEDDED,
}
_HW_FROM_PB: dict[int, HardwareClass] = {int(v): k for k, v in _HW_TO_PB.items()}


def layer_to_wire(layer: Layer) -> int:
    """The ``NodeLayer`` enum number of a layer."""
    return int(_LAYER_TO_PB[layer])


def layer_from_wire(number: int, err: type[P2PHierError] = RecordError) -> Layer:
    """The layer of a ``NodeLayer`` enum number; ``err`` for unknown ones."""
    try:
        return _LAYER_FROM_PB[number]
    except KeyError:
        raise err(f"unknown node layer number {number}") from None


def validate_domain(domain: str, err: type[P2PHierError] = RecordError) -> str:
    """A domain path: ``""`` (the root) or 1-4 ``/``-joined lower-case segments."""
    if not isinstance(domain, str):
        raise err("a domain path must be a string")
    if len(domain) > MAX_DOMAIN:
        raise err(f"domain path is {len(domain)} characters, over {MAX_DOMAIN}")
    if domain == "":
        return domain
    segments = domain.split("/")
    if len(segments) > MAX_DOMAIN_DEPTH:
        raise err(f"domain path {domain!r} has {len(segments)} segments, over {MAX_DOMAIN_DEPTH}")
    for seg in segments:
        if len(seg) > MAX_SEGMENT or not _SEGMENT_RE.fullmatch(seg):
            raise err(
                f"domain segment {seg!r} in {domain!r} must be 1-{MAX_SEGMENT} lower-case "
                "letters, digits or inner '-' (e.g. en/healthcare/cardiology)"
            )
    return domain


def domain_depth(domain: str) -> int:
    """Number of segments (0 for the root)."""
    return 0 if domain == "" else domain.count("/") + 1


def is_domain_prefix(prefix: str, domain: str) -> bool:
    """True when ``prefix`` is ``domain`` or one of its ancestors, segment by segment."""
    return prefix in ("", domain) or domain.startswith(prefix + "/")


def domain_ancestors(domain: str) -> list[str]:
    """``domain`` and every ancestor, longest first, ending with the root ``""``."""
    out = [domain]
    while domain:
        domain = domain.rpartition("/")[0]
        out.append(domain)
    return out


def check_layer_domain(layer: Layer, domain: str, err: type[P2PHierError] = RecordError) -> None:
    """Refuse a domain whose depth does not fit the layer (the master owns the root)."""
    validate_domain(domain, err)
    lo, hi = layer.depth_range
    depth = domain_depth(domain)
    if not lo <= depth <= hi:
        if hi == 0:
            want = 'be the root "" (no segment)'
        elif lo == hi:
            want = f"have exactly {lo} segment{'s' if lo > 1 else ''}"
        else:
            want = f"have {lo} to {hi} segments"
        raise err(
            f"a {layer.label} node's domain must {want}; {domain!r} has {depth} "
            '(e.g. master: "", language: en, domain: en/healthcare, '
            "subdomain and device: en/healthcare/cardiology)"
        )


def validate_addr(addr: str, err: type[P2PHierError] = RecordError) -> str:
    """Light syntax check of a multiaddr string (the daemon parses it fully before dialing)."""
    if not isinstance(addr, str) or not 2 <= len(addr) <= MAX_ADDR:
        raise err(f"address {addr!r:.60} must be a multiaddr string of 2-{MAX_ADDR} characters")
    if not _ADDR_RE.fullmatch(addr):
        raise err(
            f"address {addr!r:.60} is not a multiaddr (expected e.g. /ip4/203.0.113.7/tcp/4001)"
        )
    return addr


def validate_base_model_id(model: str, err: type[P2PHierError] = RecordError) -> str:
    if (
        not isinstance(model, str)
        or not 1 <= len(model) <= MAX_BASE_MODEL_ID
        or not _MODEL_ID_RE.fullmatch(model)
    ):
        raise err(
            f"base model id {model!r:.80} must be 1-{MAX_BASE_MODEL_ID} printable ASCII "
            "characters without spaces (e.g. sentence-transformers/all-MiniLM-L6-v2)"
        )
    return model


def content_cid(cid: CID, what: str, err: type[P2PHierError] = RecordError) -> CID:
    """Refuse anything but a CIDv1 sha2-256 raw or dag-pb CID (what artifacts are)."""
    if cid.version != 1 or cid.codec not in (RAW, DAG_PB) or cid.multihash.code != SHA2_256:
        raise err(f"{what} must be a CIDv1 (raw or dag-pb, sha2-256), not {cid}")
    return cid


def cid_from_wire(raw: bytes, what: str, err: type[P2PHierError] = RecordError) -> CID | None:
    """A content CID from its binary form; ``None`` for empty bytes."""
    if not raw:
        return None
    try:
        return content_cid(CID.from_bytes(bytes(raw)), what, err)
    except CIDError as exc:
        raise err(f"{what} is malformed: {exc}") from None


def peer_from_wire(raw: bytes, what: str, err: type[P2PHierError] = RecordError) -> PeerId:
    try:
        return PeerId.from_bytes(bytes(raw))
    except IdentityError as exc:
        raise err(f"{what} is not an Ed25519 peer id: {exc}") from None


def parse_canonical(cls: Any, data: bytes, what: str, err: type[P2PHierError]) -> Any:
    """Parse protobuf bytes, refusing every byte form but the canonical one."""
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise err(f"{what} is not a valid protobuf message: {exc}") from None
    # Serialisation re-emits unknown fields: drop them so that the comparison refuses them.
    msg.DiscardUnknownFields()
    if msg.SerializeToString(deterministic=True) != bytes(data):
        raise err(f"{what} is not canonically encoded (unknown, repeated or out-of-order fields)")
    return msg


def now_ms(now: float) -> int:
    """Unix seconds (the API's clock) to the wire's Unix milliseconds."""
    return int(now * 1000)


def next_seq(previous: int | None, now: float) -> int:
    """A sequence number above ``previous`` that also survives a restart that lost it.

    Using the clock (ms) as a floor means a node that forgot its last seq still
    issues a larger one, unless its clock went backwards.
    """
    floor = now_ms(now)
    return max(floor, (previous or 0) + 1)


# --- the record ----------------------------------------------------------------------------


def _u63(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U63:
        raise RecordError(f"{what} {value!r:.40} must be an integer in [0, 2^63)")
    return value


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node can run."""

    ram_bytes: int
    max_params: int
    hardware: HardwareClass

    def __post_init__(self) -> None:
        _u63(self.ram_bytes, "RAM bytes")
        _u63(self.max_params, "parameter count")
        if not isinstance(self.hardware, HardwareClass):
            raise RecordError(f"hardware {self.hardware!r:.40} is not a HardwareClass")


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node's signed self-description; immutable and always valid."""

    peer_id: PeerId
    addrs: tuple[str, ...]
    layer: Layer
    domain: str
    base_model_id: str
    capabilities: Capabilities
    head: CID | None
    seq: int
    issued_ms: int
    expires_ms: int
    started_ms: int
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise RecordError(
                f"node record format version {self.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if not isinstance(self.peer_id, PeerId):
            raise RecordError("a record's peer id must be a PeerId")
        if not isinstance(self.addrs, tuple) or len(self.addrs) > MAX_ADDRS:
            raise RecordError(f"a record lists at most {MAX_ADDRS} addresses (as a tuple)")
        for addr in self.addrs:
            validate_addr(addr)
        if len(set(self.addrs)) != len(self.addrs):
            raise RecordError("a record's addresses must be unique")
        if not isinstance(self.layer, Layer):
            raise RecordError(f"layer {self.layer!r:.40} is not a Layer")
        check_layer_domain(self.layer, self.domain)
        validate_base_model_id(self.base_model_id)
        if not isinstance(self.capabilities, Capabilities):
            raise RecordError("a record's capabilities must be a Capabilities")
        if self.head is not None:
            if not isinstance(self.head, CID):
                raise RecordError("a record's head must be a CID or None")
            content_cid(self.head, "head update CID")
        _u63(self.seq, "sequence number")
        _u63(self.issued_ms, "issued time")
        _u63(self.expires_ms, "expiry time")
        _u63(self.started_ms, "start time")
        if self.expires_ms <= self.issued_ms:
            raise RecordError("a record must expire after it was issued")
        if self.expires_ms - self.issued_ms > MAX_RECORD_LIFETIME_MS:
            raise RecordError(
                f"a record may live at most {MAX_RECORD_LIFETIME_MS // 3_600_000} h "
                f"({self.expires_ms - self.issued_ms} ms asked)"
            )
        if self.started_ms > self.issued_ms:
            raise RecordError("a node cannot have started after it issued its record")

    # views -------------------------------------------------------------------------------
    def is_expired(self, now: float) -> bool:
        return now_ms(now) >= self.expires_ms

    def to_json(self) -> dict[str, Any]:
        """A JSON-able view (peer ids and CIDs as strings), e.g. for ``p2phier peers --json``."""
        return {
            "format_version": self.format_version,
            "peer_id": str(self.peer_id),
            "addrs": list(self.addrs),
            "layer": self.layer.label,
            "domain": self.domain,
            "base_model_id": self.base_model_id,
            "capabilities": {
                "ram_bytes": self.capabilities.ram_bytes,
                "max_params": self.capabilities.max_params,
                "hardware": self.capabilities.hardware.value,
            },
            "head": str(self.head) if self.head else None,
            "seq": self.seq,
            "issued_ms": self.issued_ms,
            "expires_ms": self.expires_ms,
            "started_ms": self.started_ms,
        }

    # codec ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        msg = pb.NodeRecord(
            format_version=self.format_version,
            peer_id=self.peer_id.multihash_bytes,
            addrs=list(self.addrs),
            layer=_LAYER_TO_PB[self.layer],
            domain=self.domain,
            base_model_id=self.base_model_id,
            capabilities=pb.Capabilities(
                ram_bytes=self.capabilities.ram_bytes,
                max_params=self.capabilities.max_params,
                hardware=_HW_TO_PB[self.capabilities.hardware],
            ),
            head=self.head.to_bytes() if self.head else b"",
            seq=self.seq,
            issued_ms=self.issued_ms,
            expires_ms=self.expires_ms,
            started_ms=self.started_ms,
        )
        data: bytes = msg.SerializeToString(deterministic=True)
        # The envelope adds at most ~80 bytes; keep the whole under the reader's limit.
        if len(data) > MAX_SIGNED_RECORD - 96:
            raise RecordError(f"node record is {len(data)} bytes, over the limit")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeRecord:
        """Strict parse: bounded, canonical encoding only, every field validated."""
        if len(data) > MAX_SIGNED_RECORD:
            raise RecordError(f"node record is {len(data)} bytes, over {MAX_SIGNED_RECORD}")
        msg = parse_canonical(pb.NodeRecord, data, "node record", RecordError)
        if msg.format_version != FORMAT_VERSION:
            raise RecordError(
                f"node record format version {msg.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if not msg.HasField("capabilities"):
            raise RecordError("node record lacks its capabilities")
        hw = msg.capabilities.hardware
        if hw not in _HW_FROM_PB:
            raise RecordError(f"node record has unknown hardware class number {hw}")
        if len(msg.addrs) > MAX_ADDRS:
            raise RecordError(f"node record lists {len(msg.addrs)} addresses, over {MAX_ADDRS}")
        return cls(
            peer_id=peer_from_wire(msg.peer_id, "record peer id"),
            addrs=tuple(msg.addrs),
            layer=layer_from_wire(msg.layer),
            domain=msg.domain,
            base_model_id=msg.base_model_id,
            capabilities=Capabilities(
                msg.capabilities.ram_bytes, msg.capabilities.max_params, _HW_FROM_PB[hw]
            ),
            head=cid_from_wire(msg.head, "head update CID"),
            seq=msg.seq,
            issued_ms=msg.issued_ms,
            expires_ms=msg.expires_ms,
            started_ms=msg.started_ms,
            format_version=msg.format_version,
        )


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """The exact record bytes and their signature (``SignedNodeRecord``)."""

    record_bytes: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        msg = pb.SignedNodeRecord(record=self.record_bytes, signature=self.signature)
        data: bytes = msg.SerializeToString(deterministic=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_SIGNED_RECORD) -> SignedRecord:
        if len(data) > max_size:
            raise RecordError(f"signed node record is {len(data)} bytes, over {max_size}")
        msg = parse_canonical(pb.SignedNodeRecord, data, "signed node record", RecordError)
        if not msg.record:
            raise RecordError("signed node record carries no record")
        return cls(bytes(msg.record), bytes(msg.signature))

    def open(self) -> NodeRecord:
        """Parse the record and check it was signed by its own peer id's key."""
        record = NodeRecord.from_bytes(self.record_bytes)
        check_signed(
            record.peer_id,
            SIGNING_DOMAIN,
            self.record_bytes,
            self.signature,
            what="node record",
            error=RecordSignatureError,
        )
        return record


def sign_record(record: NodeRecord, identity: Identity) -> bytes:
    """The ``SignedNodeRecord`` bytes of ``record``; the identity must be the record's peer."""
    data = record.to_bytes()
    signature = sign_as(
        identity, record.peer_id, SIGNING_DOMAIN, data, what="record", error=RecordSignatureError
    )
    return SignedRecord(data, signature).to_bytes()


def open_record(data: bytes, *, max_size: int = MAX_SIGNED_RECORD) -> NodeRecord:
    """Size check, strict parse and signature check of ``SignedNodeRecord`` bytes."""
    return SignedRecord.from_bytes(data, max_size=max_size).open()


# --- the record book -------------------------------------------------------------------------


class RecordStatus(enum.StrEnum):
    """What :meth:`RecordBook.accept` did with an offered record."""

    NEW = "new"  # first record from this peer: stored
    REPLACED = "replaced"  # higher seq than the stored one: stored
    DUPLICATE = "duplicate"  # the very bytes already stored (gossip echo): nothing to do
    STALE_SEQ = "stale-seq"  # seq not above the newest seen from this peer
    CONFLICT = "conflict"  # same seq, different content: the peer equivocates
    EXPIRED = "expired"
    FUTURE = "future"  # issued further in the future than the clock skew allows
    BAD_SIGNATURE = "bad-signature"
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    FULL = "full"  # the book is full of records that outlive this one

    @property
    def accepted(self) -> bool:
        return self in (RecordStatus.NEW, RecordStatus.REPLACED)


@dataclass(frozen=True, slots=True)
class AcceptResult:
    status: RecordStatus
    reason: str
    record: NodeRecord | None = None  # the parsed record when it got that far
    previous: NodeRecord | None = None  # the record it replaced

    @property
    def accepted(self) -> bool:
        return self.status.accepted


@dataclass(slots=True)
class _Entry:
    record: NodeRecord
    signed: bytes


class RecordBook:
    """The newest valid record per peer, bounded in size; the clock is passed in."""

    def __init__(
        self,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_size: int = MAX_SIGNED_RECORD,
        clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.max_records = max_records
        self.max_size = max_size
        self.clock_skew_s = clock_skew_s
        self._entries: dict[PeerId, _Entry] = {}
        # Highest seq of peers whose record expired, until that record's lifetime bound
        # passes: an older, longer-lived record of theirs must not come back.
        self._tombstones: dict[PeerId, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter([e.record for e in self._entries.values()])

    def get(self, peer: PeerId) -> NodeRecord | None:
        entry = self._entries.get(peer)
        return entry.record if entry else None

    def signed_bytes(self, peer: PeerId) -> bytes | None:
        """The exact signed bytes stored for ``peer`` (to serve or re-gossip unchanged)."""
        entry = self._entries.get(peer)
        return entry.signed if entry else None

    def accept(self, signed: bytes, now: float) -> AcceptResult:
        """Offer ``SignedNodeRecord`` bytes from anywhere; never raises on bad input."""
        if len(signed) > self.max_size:
            return AcceptResult(
                RecordStatus.OVERSIZED,
                f"signed node record is {len(signed)} bytes, over {self.max_size}",
            )
        try:
            envelope = SignedRecord.from_bytes(signed, max_size=self.max_size)
            record = NodeRecord.from_bytes(envelope.record_bytes)
        except RecordError as exc:
            return AcceptResult(RecordStatus.MALFORMED, str(exc))
        try:
            envelope.open()
        except RecordSignatureError as exc:
            return AcceptResult(RecordStatus.BAD_SIGNATURE, str(exc), record)
        t = now_ms(now)
        if t >= record.expires_ms:
            return AcceptResult(
                RecordStatus.EXPIRED,
                f"record of {record.peer_id} expired {(t - record.expires_ms) / 1000:.1f} s ago",
                record,
            )
        if record.issued_ms > t + int(self.clock_skew_s * 1000):
            return AcceptResult(
                RecordStatus.FUTURE,
                f"record of {record.peer_id} is issued {(record.issued_ms - t) / 1000:.1f} s "
                f"in the future (allowed skew {self.clock_skew_s:g} s)",
                record,
            )
        peer = record.peer_id
        current = self._entries.get(peer)
        if current is not None:
            old = current.record
            if record.seq == old.seq:
                if bytes(signed) == current.signed or envelope.record_bytes == old.to_bytes():
                    return AcceptResult(RecordStatus.DUPLICATE, "record already known", record)
                return AcceptResult(
                    RecordStatus.CONFLICT,
                    f"{peer} signed two different records with seq {record.seq}",
                    record,
                )
            if record.seq < old.seq:
                return AcceptResult(
                    RecordStatus.STALE_SEQ,
                    f"record of {peer} has seq {record.seq}, not above {old.seq}",
                    record,
                )
        else:
            tomb = self._tombstones.get(peer)
            if tomb is not None and record.seq <= tomb[0]:
                return AcceptResult(
                    RecordStatus.STALE_SEQ,
                    f"record of {peer} has seq {record.seq}, not above {tomb[0]} "
                    "(of a record that already expired)",
                    record,
                )
            if len(self._entries) >= self.max_records and not self._evict_for(record):
                return AcceptResult(
                    RecordStatus.FULL,
                    f"the book holds {self.max_records} records that all outlive this one",
                    record,
                )
        self._tombstones.pop(peer, None)
        self._entries[peer] = _Entry(record, bytes(signed))
        if current is None:
            return AcceptResult(RecordStatus.NEW, "stored", record)
        return AcceptResult(RecordStatus.REPLACED, "stored", record, current.record)

    def _evict_for(self, record: NodeRecord) -> bool:
        """Make room: drop the record expiring soonest, if it expires before ``record``."""
        victim = min(self._entries.values(), key=lambda e: e.record.expires_ms)
        if victim.record.expires_ms >= record.expires_ms:
            return False
        self._remove(victim.record)
        return True

    def _remove(self, record: NodeRecord) -> None:
        del self._entries[record.peer_id]
        self._tombstones[record.peer_id] = (record.seq, record.issued_ms + MAX_RECORD_LIFETIME_MS)
        if len(self._tombstones) > self.max_records:
            # Bounded memory: forget the tombstones that run out first.
            for peer, _ in sorted(self._tombstones.items(), key=lambda kv: kv[1][1])[
                : len(self._tombstones) - self.max_records
            ]:
                del self._tombstones[peer]

    def remove(self, peer: PeerId, now: float) -> NodeRecord | None:
        """Forget a peer's record (e.g. it proved invalid); its seq stays remembered."""
        entry = self._entries.get(peer)
        if entry is None:
            return None
        self._remove(entry.record)
        return entry.record

    def expire(self, now: float) -> list[NodeRecord]:
        """Drop every record expired at ``now``; return them (the daemon tells the hierarchy)."""
        t = now_ms(now)
        gone = [e.record for e in self._entries.values() if t >= e.record.expires_ms]
        for record in gone:
            self._remove(record)
        for peer in [p for p, (_, until) in self._tombstones.items() if until <= t]:
            del self._tombstones[peer]
        return gone

    def query(
        self,
        layer: Layer | None = None,
        domain: str | None = None,
        domain_prefix: str | None = None,
        *,
        now: float | None = None,
        where: Callable[[NodeRecord], bool] | None = None,
    ) -> list[NodeRecord]:
        """Records matching every given filter, sorted by (layer, domain, peer id).

        ``domain`` matches exactly; ``domain_prefix`` matches that path and everything
        under it, segment by segment (``en`` matches ``en/healthcare``, not ``english``).
        With ``now`` given, records already expired at ``now`` are left out.
        """
        out = []
        for entry in self._entries.values():
            r = entry.record
            if layer is not None and r.layer is not layer:
                continue
            if domain is not None and r.domain != domain:
                continue
            if domain_prefix is not None and not is_domain_prefix(domain_prefix, r.domain):
                continue
            if now is not None and r.is_expired(now):
                continue
            if where is not None and not where(r):
                continue
            out.append(r)
        out.sort(key=lambda r: (r.layer, r.domain, str(r.peer_id)))
        return out
