"""Update announcements, hierarchy topic names and the announcement filter (pure, no I/O).

Owns :class:`Announcement` ("author X has update CID Y, round R"), its signed
envelope (``SignedAnnouncement`` in ``protocol/p2phier.proto``), the gossip topic
names derived from the hierarchy, and :class:`AnnouncementFilter`, the check a
node runs on every announcement before it fetches anything.  Specification:
``protocol/node.md``.

An announcement is a pointer, a few hundred bytes: the data itself always moves
over Bitswap streams, never through gossip.  It names the topic it was signed
for, so it cannot be replayed on another topic; it carries a per-author sequence
number and a round, so a receiver can refuse replays of old updates.

The filter checks, cheapest first: size, strict parse, topic binding, that the
topic is one this node listens on, that the author is this node's child (upward
topic) or its parent (downward topic), the signature, consistency with the
author's node record (layer, domain, base model), freshness (``created_ms`` not
beyond the clock skew in the future and not older than ``max_age_s``), and
finally that ``(seq, round)`` moves forward.  Every refusal is a
:class:`FilterResult` with a reason, never an exception.

An exact copy (the same signed bytes) of the announcement last accepted from
an author on a topic is a ``duplicate``, not a ``replay``: authors re-publish
their latest announcement periodically because gossip drops silently, so
duplicates are the normal background and are ignored, never penalised.  Only
an announcement whose seq is below the mark, or a *different* message whose
seq is not above it, is a ``replay``.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from p2phier.cid import CID
from p2phier.errors import InvalidPeerIdError, ProtocolViolationError, SignatureError
from p2phier.identity import Identity, PeerId
from p2phier.records import (
    MAX_U63,
    Layer,
    NodeRecord,
    check_layer_domain,
    cid_from_wire,
    content_cid,
    layer_from_wire,
    layer_to_wire,
    now_ms,
    parse_canonical,
    peer_from_wire,
    validate_base_model_id,
)
from p2phier.signing import check_signed, sign_as
from p2phier.wire import p2phier_pb2 as pb

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"p2phier/announcement/v1"

MAX_SIGNED_ANNOUNCEMENT = 4096  # bytes; checked before parsing
MAX_METRICS = 16
MAX_METRIC_NAME = 64
MAX_TOPIC = 128
DEFAULT_MAX_SKEW_S = 30.0
DEFAULT_MAX_AGE_S = 600.0
DEFAULT_MAX_AUTHORS = 4096

TOPIC_PREFIX = "/p2phier/1"
RECORDS_TOPIC = f"{TOPIC_PREFIX}/records"

_METRIC_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # the manifest's metric-name rule


class AnnouncementError(ProtocolViolationError):
    """An announcement or topic name is malformed or violates a limit."""


class AnnouncementSignatureError(AnnouncementError, SignatureError):
    """An announcement's signature is missing or not its author's."""


# --- topics ------------------------------------------------------------------------------


class TopicKind(enum.StrEnum):
    UP = "up"  # children -> parent: published by children, read by the parent
    DOWN = "down"  # parent -> children: published by the parent, read by its children
    RECORDS = "records"  # node records, read by everyone


@dataclass(frozen=True, slots=True)
class Topic:
    kind: TopicKind
    owner: PeerId | None  # the parent the topic belongs to (None for RECORDS)

    def __str__(self) -> str:
        if self.kind is TopicKind.RECORDS:
            return RECORDS_TOPIC
        return f"{TOPIC_PREFIX}/{self.kind.value}/{self.owner}"


def topic_purpose(topic: str) -> str:
    """What fetching an announcement on ``topic`` is for, in byte counts: a child's
    ``updates`` (up topics), a parent's ``versions`` (down topics), else ``other``."""
    kind = topic.removeprefix(TOPIC_PREFIX + "/").partition("/")[0]
    return {TopicKind.UP.value: "updates", TopicKind.DOWN.value: "versions"}.get(kind, "other")


def up_topic(parent: PeerId) -> str:
    """Where ``parent``'s children publish their updates (and ``parent`` listens)."""
    return str(Topic(TopicKind.UP, parent))


def down_topic(parent: PeerId) -> str:
    """Where ``parent`` publishes its updates (and its children listen)."""
    return str(Topic(TopicKind.DOWN, parent))


def parse_topic(text: str) -> Topic:
    """Parse a p2phier topic name; :class:`AnnouncementError` for anything else."""
    if not isinstance(text, str) or len(text) > MAX_TOPIC:
        raise AnnouncementError(f"topic {text!r:.60} is not a p2phier topic name")
    if text == RECORDS_TOPIC:
        return Topic(TopicKind.RECORDS, None)
    head, _, owner = text.rpartition("/")
    for kind in (TopicKind.UP, TopicKind.DOWN):
        if head == f"{TOPIC_PREFIX}/{kind.value}":
            try:
                peer = PeerId.parse(owner)
            except InvalidPeerIdError as exc:
                raise AnnouncementError(f"topic {text!r:.60} names no valid peer: {exc}") from None
            if str(peer) != owner:  # one spelling per topic
                raise AnnouncementError(f"topic {text!r:.60} is not in canonical form")
            return Topic(kind, peer)
    raise AnnouncementError(
        f"topic {text!r:.60} is not a p2phier topic "
        f"({TOPIC_PREFIX}/up/<peer>, {TOPIC_PREFIX}/down/<peer> or {RECORDS_TOPIC})"
    )


# --- the announcement ---------------------------------------------------------------------


def _check_metrics(metrics: object) -> tuple[tuple[str, float], ...]:
    if not isinstance(metrics, tuple) or len(metrics) > MAX_METRICS:
        raise AnnouncementError(f"an announcement carries at most {MAX_METRICS} metrics (a tuple)")
    for item in metrics:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise AnnouncementError("each metric is a (name, value) pair")
        name, value = item
        if (
            not isinstance(name, str)
            or len(name) > MAX_METRIC_NAME
            or not _METRIC_RE.fullmatch(name)
        ):
            raise AnnouncementError(
                f"metric name {name!r:.70} must be lower-case letters, digits, '_', '.' or '-' "
                f"(at most {MAX_METRIC_NAME})"
            )
        if not isinstance(value, float) or not math.isfinite(value):
            raise AnnouncementError(f"metric {name!r} must be a finite float, not {value!r:.40}")
    names = [name for name, _ in metrics]
    if names != sorted(set(names)):
        raise AnnouncementError("metrics must be sorted by name with no duplicates")
    return metrics


def _u63(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_U63:
        raise AnnouncementError(f"{what} {value!r:.40} must be an integer in [0, 2^63)")
    return value


@dataclass(frozen=True, slots=True)
class Announcement:
    """A signed pointer to a new update; immutable and always valid."""

    author: PeerId
    topic: str
    cid: CID
    parent: CID | None
    layer: Layer
    domain: str
    base_model_id: str
    round: int
    seq: int
    created_ms: int
    metrics: tuple[tuple[str, float], ...] = ()
    size: int = 0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise AnnouncementError(
                f"announcement format version {self.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if not isinstance(self.author, PeerId):
            raise AnnouncementError("an announcement's author must be a PeerId")
        topic = parse_topic(self.topic)
        if topic.kind is TopicKind.RECORDS:
            raise AnnouncementError("announcements go on up/down topics, not the records topic")
        if not isinstance(self.cid, CID):
            raise AnnouncementError("an announcement's CID must be a CID")
        content_cid(self.cid, "announced CID", AnnouncementError)
        if self.parent is not None:
            if not isinstance(self.parent, CID):
                raise AnnouncementError("an announcement's parent must be a CID or None")
            content_cid(self.parent, "parent CID", AnnouncementError)
            if self.parent == self.cid:
                raise AnnouncementError("an update cannot be its own parent")
        if not isinstance(self.layer, Layer):
            raise AnnouncementError(f"layer {self.layer!r:.40} is not a Layer")
        check_layer_domain(self.layer, self.domain, AnnouncementError)
        validate_base_model_id(self.base_model_id, AnnouncementError)
        _u63(self.round, "round")
        _u63(self.seq, "sequence number")
        _u63(self.created_ms, "created time")
        _u63(self.size, "size")
        _check_metrics(self.metrics)

    @property
    def metrics_dict(self) -> dict[str, float]:
        return dict(self.metrics)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "author": str(self.author),
            "topic": self.topic,
            "cid": str(self.cid),
            "parent": str(self.parent) if self.parent else None,
            "layer": self.layer.label,
            "domain": self.domain,
            "base_model_id": self.base_model_id,
            "round": self.round,
            "seq": self.seq,
            "created_ms": self.created_ms,
            "metrics": self.metrics_dict,
            "size": self.size,
        }

    def to_bytes(self) -> bytes:
        msg = pb.Announcement(
            format_version=self.format_version,
            author=self.author.multihash_bytes,
            topic=self.topic,
            cid=self.cid.to_bytes(),
            parent=self.parent.to_bytes() if self.parent else b"",
            layer=layer_to_wire(self.layer),  # type: ignore[arg-type]
            domain=self.domain,
            base_model_id=self.base_model_id,
            round=self.round,
            seq=self.seq,
            created_ms=self.created_ms,
            size=self.size,
        )
        for name, value in self.metrics:
            msg.metrics.add(name=name, value=value)
        data: bytes = msg.SerializeToString(deterministic=True)
        if len(data) > MAX_SIGNED_ANNOUNCEMENT - 96:  # leave room for the envelope
            raise AnnouncementError(f"announcement is {len(data)} bytes, over the limit")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Announcement:
        """Strict parse: bounded, canonical encoding only, every field validated."""
        if len(data) > MAX_SIGNED_ANNOUNCEMENT:
            raise AnnouncementError(
                f"announcement is {len(data)} bytes, over {MAX_SIGNED_ANNOUNCEMENT}"
            )
        msg = parse_canonical(pb.Announcement, data, "announcement", AnnouncementError)
        if msg.format_version != FORMAT_VERSION:
            raise AnnouncementError(
                f"announcement format version {msg.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if len(msg.metrics) > MAX_METRICS:
            raise AnnouncementError(f"announcement carries {len(msg.metrics)} metrics")
        cid = cid_from_wire(msg.cid, "announced CID", AnnouncementError)
        if cid is None:
            raise AnnouncementError("announcement names no CID")
        return cls(
            author=peer_from_wire(msg.author, "announcement author", AnnouncementError),
            topic=msg.topic,
            cid=cid,
            parent=cid_from_wire(msg.parent, "parent CID", AnnouncementError),
            layer=layer_from_wire(msg.layer, AnnouncementError),
            domain=msg.domain,
            base_model_id=msg.base_model_id,
            round=msg.round,
            seq=msg.seq,
            created_ms=msg.created_ms,
            metrics=tuple((m.name, float(m.value)) for m in msg.metrics),
            size=msg.size,
            format_version=msg.format_version,
        )


def metrics_from_mapping(metrics: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Sorted ``(name, value)`` pairs from a mapping."""
    return tuple((str(k), float(v)) for k, v in sorted(metrics.items()))


@dataclass(frozen=True, slots=True)
class SignedAnnouncement:
    """The exact announcement bytes and their signature (``SignedAnnouncement``)."""

    announcement_bytes: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        msg = pb.SignedAnnouncement(announcement=self.announcement_bytes, signature=self.signature)
        data: bytes = msg.SerializeToString(deterministic=True)
        return data

    @classmethod
    def from_bytes(
        cls, data: bytes, *, max_size: int = MAX_SIGNED_ANNOUNCEMENT
    ) -> SignedAnnouncement:
        if len(data) > max_size:
            raise AnnouncementError(f"signed announcement is {len(data)} bytes, over {max_size}")
        msg = parse_canonical(pb.SignedAnnouncement, data, "signed announcement", AnnouncementError)
        if not msg.announcement:
            raise AnnouncementError("signed announcement carries no announcement")
        return cls(bytes(msg.announcement), bytes(msg.signature))

    def check_signature(self, announcement: Announcement) -> None:
        """Raise unless the signature is the author's over the exact announcement bytes."""
        check_signed(
            announcement.author,
            SIGNING_DOMAIN,
            self.announcement_bytes,
            self.signature,
            what="announcement",
            error=AnnouncementSignatureError,
        )

    def open(self) -> Announcement:
        announcement = Announcement.from_bytes(self.announcement_bytes)
        self.check_signature(announcement)
        return announcement


def sign_announcement(announcement: Announcement, identity: Identity) -> bytes:
    """``SignedAnnouncement`` bytes; the identity must be the author."""
    data = announcement.to_bytes()
    signature = sign_as(
        identity,
        announcement.author,
        SIGNING_DOMAIN,
        data,
        what="announcement",
        error=AnnouncementSignatureError,
    )
    return SignedAnnouncement(data, signature).to_bytes()


def open_announcement(data: bytes, *, max_size: int = MAX_SIGNED_ANNOUNCEMENT) -> Announcement:
    """Size check, strict parse and signature check (no topic, relationship or replay check)."""
    return SignedAnnouncement.from_bytes(data, max_size=max_size).open()


# --- the filter ----------------------------------------------------------------------------


class Reject(enum.StrEnum):
    """Why :meth:`AnnouncementFilter.validate` refused an announcement."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    WRONG_TOPIC = "wrong-topic"  # signed for another topic than the one it arrived on
    NOT_OUR_TOPIC = "not-our-topic"  # a topic this node does not read
    STRANGER = "stranger"  # author is not our child (up) / our parent (down)
    BAD_SIGNATURE = "bad-signature"
    NO_RECORD = "no-record"  # we hold no valid node record of the author yet
    RECORD_MISMATCH = "record-mismatch"  # layer, domain or base model differ from the record
    FUTURE = "future"
    TOO_OLD = "too-old"
    DUPLICATE = "duplicate"  # the very signed bytes last accepted (a benign re-announcement)
    REPLAY = "replay"  # seq not above the last accepted, and not that very announcement
    OLD_ROUND = "old-round"  # round below the last accepted one

    @property
    def action(self) -> str:
        """Gossipsub v1.1 verdict: ``reject`` (penalise the sender) or ``ignore``.

        Refusals an honest relay could cause (a replay seen twice, a record not yet
        received, clock skew) are ``ignore``; forgeries and junk are ``reject``.
        """
        return "ignore" if self in _IGNORABLE else "reject"


_IGNORABLE = frozenset(
    {
        Reject.NO_RECORD,
        Reject.FUTURE,
        Reject.TOO_OLD,
        Reject.DUPLICATE,
        Reject.REPLAY,
        Reject.OLD_ROUND,
    }
)


@dataclass(frozen=True, slots=True)
class FilterResult:
    accepted: bool
    reason: Reject | None
    detail: str
    announcement: Announcement | None = None  # parsed, when it got that far

    @property
    def action(self) -> str:
        """``accept``, ``ignore`` or ``reject`` (for a gossipsub topic validator)."""
        return "accept" if self.reason is None else self.reason.action


@dataclass(frozen=True, slots=True)
class SenderContext:
    """Where an announcement arrived and this node's place in the hierarchy right now."""

    topic: str  # the topic the message arrived on
    parent: PeerId | None  # this node's current parent
    children: frozenset[PeerId]  # this node's registered children


@dataclass(frozen=True, slots=True)
class HighWater:
    seq: int
    round: int
    #: SHA-256 (hex) of the signed bytes accepted at this mark; "" when unknown
    #: (a mark restored from state saved without it: a same-seq copy is then a replay)
    digest: str = ""


def announcement_digest(data: bytes) -> str:
    """The identity of one signed announcement, as kept in a :class:`HighWater` mark."""
    return hashlib.sha256(data).hexdigest()


RecordLookup = Callable[[PeerId], NodeRecord | None]


class AnnouncementFilter:
    """Decides whether an announcement may trigger a fetch; keeps per-author high-water marks."""

    def __init__(
        self,
        local: PeerId,
        records: RecordLookup,
        *,
        max_size: int = MAX_SIGNED_ANNOUNCEMENT,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_authors: int = DEFAULT_MAX_AUTHORS,
    ) -> None:
        self.local = local
        self.records = records
        self.max_size = max_size
        self.max_skew_s = max_skew_s
        self.max_age_s = max_age_s
        self.max_authors = max_authors
        # (topic, author) -> the last accepted (seq, round); least recently used first.
        self._marks: OrderedDict[tuple[str, PeerId], HighWater] = OrderedDict()

    # state ---------------------------------------------------------------------------------
    def high_water(self, topic: str, author: PeerId) -> HighWater | None:
        return self._marks.get((topic, author))

    def restore(self, topic: str, author: PeerId, seq: int, round_: int, digest: str = "") -> None:
        """Seed a high-water mark (from state saved before a restart); never lowers one."""
        key = (topic, author)
        old = self._marks.get(key)
        if old is not None:
            # The digest belongs to the seq it was accepted at.
            if old.seq > seq:
                digest = old.digest
            elif old.seq == seq:
                digest = digest or old.digest
            seq, round_ = max(seq, old.seq), max(round_, old.round)
        self._set(key, HighWater(seq, round_, digest))

    def marks(self) -> dict[tuple[str, PeerId], HighWater]:
        """Every high-water mark (to persist across restarts)."""
        return dict(self._marks)

    def forget(self, author: PeerId) -> None:
        """Drop an author's marks (e.g. a child that left for good)."""
        for key in [k for k in self._marks if k[1] == author]:
            del self._marks[key]

    def _set(self, key: tuple[str, PeerId], mark: HighWater) -> None:
        self._marks[key] = mark
        self._marks.move_to_end(key)
        while len(self._marks) > self.max_authors:
            self._marks.popitem(last=False)

    # the check ---------------------------------------------------------------------------
    def validate(self, data: bytes, ctx: SenderContext, now: float) -> FilterResult:
        """Check one announcement as it arrives on ``ctx.topic``; accepted ones move the mark."""
        if len(data) > self.max_size:
            return _no(Reject.OVERSIZED, f"announcement is {len(data)} bytes, over {self.max_size}")
        try:
            envelope = SignedAnnouncement.from_bytes(data, max_size=self.max_size)
            ann = Announcement.from_bytes(envelope.announcement_bytes)
        except AnnouncementError as exc:
            return _no(Reject.MALFORMED, str(exc))
        if ann.topic != ctx.topic:
            return _no(
                Reject.WRONG_TOPIC,
                f"announcement was signed for {ann.topic}, arrived on {ctx.topic}",
                ann,
            )
        topic = parse_topic(ann.topic)  # valid: Announcement checked it
        if topic.kind is TopicKind.UP:
            if topic.owner != self.local:
                return _no(Reject.NOT_OUR_TOPIC, f"{ann.topic} is another parent's topic", ann)
            if ann.author not in ctx.children:
                return _no(Reject.STRANGER, f"{ann.author} is not a child of this node", ann)
        else:  # DOWN: only our current parent publishes on its own down topic
            if ctx.parent is None or topic.owner != ctx.parent:
                return _no(Reject.NOT_OUR_TOPIC, f"{ann.topic} is not our parent's topic", ann)
            if ann.author != ctx.parent:
                return _no(Reject.STRANGER, f"{ann.author} is not this node's parent", ann)
        key = (ann.topic, ann.author)
        mark = self._marks.get(key)
        digest = announcement_digest(data)
        if mark is not None and ann.seq == mark.seq and digest == mark.digest:
            # The very bytes accepted before (so their signature verified then): the
            # author's periodic re-announcement, or a relay's late copy.  Benign.
            return _no(Reject.DUPLICATE, f"seq {ann.seq} was already accepted", ann)
        try:
            envelope.check_signature(ann)
        except AnnouncementSignatureError as exc:
            return _no(Reject.BAD_SIGNATURE, str(exc), ann)
        record = self.records(ann.author)
        if record is None or record.is_expired(now):
            return _no(Reject.NO_RECORD, f"no valid node record of {ann.author} is known", ann)
        for what, theirs, ours in (
            ("layer", ann.layer.label, record.layer.label),
            ("domain", ann.domain, record.domain),
            ("base model", ann.base_model_id, record.base_model_id),
        ):
            if theirs != ours:
                return _no(
                    Reject.RECORD_MISMATCH,
                    f"announcement {what} {theirs!r} differs from the node record's {ours!r}",
                    ann,
                )
        t = now_ms(now)
        if ann.created_ms > t + int(self.max_skew_s * 1000):
            return _no(
                Reject.FUTURE,
                f"announcement is dated {(ann.created_ms - t) / 1000:.1f} s in the future",
                ann,
            )
        if ann.created_ms < t - int(self.max_age_s * 1000):
            return _no(
                Reject.TOO_OLD,
                f"announcement is {(t - ann.created_ms) / 1000:.0f} s old "
                f"(limit {self.max_age_s:g} s)",
                ann,
            )
        if mark is not None:
            if ann.seq <= mark.seq:
                return _no(
                    Reject.REPLAY, f"seq {ann.seq} is not above the last accepted {mark.seq}", ann
                )
            if ann.round < mark.round:
                return _no(
                    Reject.OLD_ROUND,
                    f"round {ann.round} is older than the last accepted round {mark.round}",
                    ann,
                )
        self._set(key, HighWater(ann.seq, ann.round, digest))
        return FilterResult(True, None, "accepted", ann)


def _no(reason: Reject, detail: str, ann: Announcement | None = None) -> FilterResult:
    return FilterResult(False, reason, detail, ann)
