"""The Bitswap server side: answering other peers' wants (sans-IO).

Owns per-peer want lists and the queue of responses owed to each peer.  The
caller feeds it decoded messages (:meth:`Engine.receive_message`), tells it
about blocks that arrived in the store (:meth:`Engine.blocks_added`) and peers
that left (:meth:`Engine.peer_disconnected`), and calls :meth:`Engine.poll`
to get the messages to send.  Blocks are looked up through a
:class:`BlockSource`; everything time-based takes ``now``.

Behaviour (the rules, in one place):

* ``want-have`` for a block we hold -> ``HAVE``; for one we lack -> ``DONT_HAVE``
  when the peer set ``sendDontHave``, else the want is kept and answered with
  ``HAVE`` if the block arrives later.  We never answer a want-have with the
  block itself (the spec allows it for small blocks; we keep it simple).
* ``want-block`` for a block we hold -> the block (with the CID prefix of the
  CID the peer named, so CIDv0 stays CIDv0); for one we lack -> ``DONT_HAVE``
  when asked for, and the want is kept and served if the block arrives later.
  A want-block is never downgraded by a later want-have for the same block.
* ``cancel`` removes the want and any response not yet sent; ``full`` replaces
  the peer's whole want list.
* Served or HAVE-answered wants leave the list; DONT_HAVE-answered ones stay.
* Limits: at most ``max_wants_per_peer`` wants held per peer (entries beyond are
  dropped and counted in the peer's ledger).  Want entries are charged against a
  per-peer token bucket (``request_rate``/``request_burst``) that paces the peer
  rather than dropping its wants: once a message puts the bucket into debt,
  :meth:`Engine.read_ready_at` says when the caller may read that peer's next
  message, so a fast peer is slowed by backpressure (its writes wait) and a
  legitimate one that asks for many objects in a row never loses a want and
  times out on it.
* Blocks are sent highest ``priority`` first, then oldest first.  Peers with
  pending blocks are served in turn (round robin), at most
  ``turn_bytes`` of blocks per turn, so one peer asking for a lot cannot starve
  another.  A caller that passes ``room`` to :meth:`Engine.poll` gets only as
  many messages per peer as that peer's send queue can take: blocks are read
  when they can be sent, not all at once, and :meth:`Engine.upcoming` names
  the ones the next poll will read, so the caller can read them ahead.  The
  operator's ``upload_rate`` (bytes/s, token bucket) bounds all block traffic;
  presences are small and are not charged to it.
* Peers the caller ranks last (:attr:`Engine.serve_last`: the node's guard names
  the peers it distrusts) are served only while no other peer has anything left
  to send: strict priority, so a peer the network distrusts gets what honest
  peers leave of the upload, not a share of it.
* Every block is re-hashed against its CID before it is served
  (``verify_before_serving``); a corrupt local block is reported
  (:class:`LocalBlockCorrupt`) and treated as absent.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from p2phier.cid import CID, SHA2_256
from p2phier.errors import BlockNotFoundError, HashMismatchError, StoreError, UsageError

from .ledger import LedgerBook, TokenBucket
from .message import (
    DEFAULT_LIMITS,
    MAX_SERVED_BLOCK_SIZE,
    BlockPayload,
    BlockPresence,
    Limits,
    Message,
    PresenceType,
    SendMessage,
    WantEntry,
    WantType,
    block_key,
)

logger = logging.getLogger(__name__)

_INT32_MAX = (1 << 31) - 1


class BlockSource(Protocol):
    """Where the engine reads blocks: ``p2phier.store.ContentStore`` satisfies it as is."""

    def block_size(self, cid: CID) -> int:
        """Size of the block in bytes; raises BlockNotFoundError when it is not held."""

    def get_block(self, cid: CID) -> bytes:
        """The block's bytes; raises BlockNotFoundError when it is not held (any more)
        and HashMismatchError (CorruptBlockError) when it no longer matches its CID."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    limits: Limits = DEFAULT_LIMITS
    max_wants_per_peer: int = 1024
    #: want entries per second a peer may send (cancels are free); a peer over it is
    #: paced (see ``read_ready_at``).  2048/s lets one peer pull 256 KiB blocks at
    #: ~256 MiB/s (a want-have and a want-block each), well above what one core
    #: decrypts, while bounding the lookups a flood of wants costs
    request_rate: float = 2048.0
    request_burst: float = 2048.0
    #: bytes per second of blocks to all peers together; None: unlimited
    upload_rate: float | None = None
    upload_burst: int = MAX_SERVED_BLOCK_SIZE
    #: bytes of blocks one peer gets per round-robin turn (at least one block)
    turn_bytes: int = 1 << 20
    #: blocks larger than this are treated as absent (the spec's 2 MiB)
    max_served_block_size: int = MAX_SERVED_BLOCK_SIZE
    verify_before_serving: bool = True

    def __post_init__(self) -> None:
        if self.max_wants_per_peer < 1 or self.turn_bytes < 1:
            raise UsageError("bitswap engine limits must be positive")
        if self.request_rate <= 0 or self.request_burst < 1:
            raise UsageError("bitswap request_rate and request_burst must be positive")
        if self.upload_rate is not None and self.upload_rate <= 0:
            raise UsageError("bitswap upload_rate must be positive (or None for unlimited)")
        # One turn's message (its blocks, or one block bigger than a turn, plus every
        # presence that fits) must stay within the message limit.  140 bytes bounds an
        # encoded presence (a peer's CID is at most 128 bytes); 64 per block covers its
        # prefix and field headers.
        worst = (
            max(self.turn_bytes, self.max_served_block_size)
            + 64 * self.limits.max_payload_blocks
            + 140 * self.limits.max_presences
            + 16
        )
        if worst > self.limits.max_message_size:
            raise UsageError(
                "bitswap turn_bytes / max_served_block_size are too large for one "
                f"{self.limits.max_message_size}-byte message"
            )


class ReadAheadSource:
    """A :class:`BlockSource` whose blocks a caller can read ahead, off its event loop.

    Before each poll the caller asks :meth:`Engine.upcoming` which blocks are
    next, :meth:`retain` s only those, runs :meth:`read` for the :meth:`missing`
    ones in a worker thread (the source must allow that; a ContentStore does)
    and hands the result to :meth:`keep`.  ``get_block`` answers from what was
    kept (once), or reads the source itself; an error met while reading ahead
    is kept and raised by ``get_block``, so the engine reports a corrupt block
    exactly as if it had read it.  What is kept is bounded by what ``upcoming``
    names.

    It also remembers the sizes of the last ``sizes`` blocks found held (a
    block's size never changes; a peer usually asks want-have, then want-block,
    for the same block), forgetting one whenever reading it fails.
    """

    def __init__(self, source: BlockSource, sizes: int = 4096) -> None:
        self.source = source
        self._kept: dict[CID, bytes | StoreError] = {}
        self._sizes: dict[CID, int] = {}
        self._max_sizes = sizes

    def block_size(self, cid: CID) -> int:
        key = block_key(cid)
        size = self._sizes.get(key)
        if size is None:
            size = self.source.block_size(cid)
            if len(self._sizes) >= self._max_sizes:
                del self._sizes[next(iter(self._sizes))]  # the oldest
            self._sizes[key] = size
        return size

    def get_block(self, cid: CID) -> bytes:
        got = self._kept.pop(block_key(cid), None)
        if got is None:
            try:
                return self.source.get_block(cid)
            except StoreError:
                self._sizes.pop(block_key(cid), None)
                raise
        if isinstance(got, StoreError):
            self._sizes.pop(block_key(cid), None)
            raise got
        return got

    def missing(self, cids: Iterable[CID]) -> list[CID]:
        """Those of ``cids`` not read ahead yet."""
        return [c for c in cids if block_key(c) not in self._kept]

    def read(self, cids: Iterable[CID]) -> dict[CID, bytes | StoreError]:
        """Read blocks from the source (blocking: meant for a worker thread)."""
        out: dict[CID, bytes | StoreError] = {}
        for cid in cids:
            try:
                out[block_key(cid)] = self.source.get_block(cid)
            except StoreError as exc:
                out[block_key(cid)] = exc
        return out

    def keep(self, blocks: dict[CID, bytes | StoreError]) -> None:
        self._kept.update(blocks)

    def retain(self, cids: Iterable[CID]) -> None:
        """Drop what was read ahead for blocks not in ``cids`` (no longer upcoming)."""
        wanted = {block_key(c) for c in cids}
        for key in [k for k in self._kept if k not in wanted]:
            del self._kept[key]


# --- actions out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WantsDropped:
    """Want entries from ``peer`` refused by a limit (``reason``: "capacity": the peer
    already has ``max_wants_per_peer`` wants held)."""

    peer: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class LocalBlockCorrupt:
    """A stored block no longer hashes to its CID; it was not served."""

    cid: CID


EngineAction = SendMessage | WantsDropped | LocalBlockCorrupt

#: ``room(peer)``: how many more messages ``peer`` can take now (the caller's send
#: queue for it has space for that many); a peer without room keeps its turn
RoomFn = Callable[[str], int]


# --- per-peer state ----------------------------------------------------------------------


class _Kind(enum.Enum):
    BLOCK = "block"
    HAVE = "have"
    DONT_HAVE = "dont-have"


@dataclass(slots=True)
class _Want:
    cid: CID  # as the peer named it
    want_type: WantType
    priority: int
    send_dont_have: bool
    seq: int


@dataclass(slots=True)
class _Task:
    kind: _Kind
    cid: CID
    priority: int
    seq: int
    size: int = 0  # block tasks: bytes


@dataclass(slots=True)
class _Peer:
    bucket: TokenBucket
    wants: dict[CID, _Want] = field(default_factory=dict)
    tasks: dict[CID, _Task] = field(default_factory=dict)

    def pending_block_bytes(self) -> int:
        return sum(t.size for t in self.tasks.values() if t.kind is _Kind.BLOCK)


class Engine:
    """Bitswap server state for all peers; see the module docstring for the rules."""

    def __init__(
        self,
        source: BlockSource,
        config: EngineConfig | None = None,
        ledgers: LedgerBook | None = None,
        now: float = 0.0,
    ) -> None:
        self.source = source
        self.config = config or EngineConfig()
        self.ledgers = ledgers if ledgers is not None else LedgerBook()
        self._peers: dict[str, _Peer] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._turns: deque[str] = deque()  # peers with tasks, in serving order
        self._seq = itertools.count()
        self._upload: TokenBucket | None = None
        self.set_upload_rate(self.config.upload_rate, self.config.upload_burst, now)
        #: peers served only when no other has anything to send (None: nobody)
        self.serve_last: Callable[[str], bool] | None = None

    # --- operator controls -------------------------------------------------------------
    def set_upload_rate(self, rate: float | None, burst: int | None, now: float) -> None:
        """Limit block uploads to ``rate`` bytes/s (None: unlimited); burst defaults to 2 MiB."""
        if rate is None:
            self._upload = None
            return
        burst = burst if burst is not None else MAX_SERVED_BLOCK_SIZE
        self._upload = TokenBucket(rate, burst, now)

    # --- introspection -------------------------------------------------------------------
    def peers(self) -> list[str]:
        return list(self._peers)

    def wantlist(self, peer: str) -> list[WantEntry]:
        """The wants held for ``peer``, highest priority first."""
        st = self._peers.get(peer)
        if st is None:
            return []
        wants = sorted(st.wants.values(), key=lambda w: (-w.priority, w.seq))
        return [WantEntry(w.cid, w.priority, False, w.want_type, w.send_dont_have) for w in wants]

    def pending(self, peer: str) -> int:
        """Responses queued for ``peer`` and not yet sent."""
        st = self._peers.get(peer)
        return len(st.tasks) if st else 0

    # --- input ---------------------------------------------------------------------------
    def _peer(self, peer: str, now: float) -> _Peer:
        st = self._peers.get(peer)
        if st is None:
            # the request bucket outlives a disconnect: reconnecting must not refill it
            bucket = self._buckets.get(peer)
            if bucket is None:
                bucket = TokenBucket(self.config.request_rate, self.config.request_burst, now)
                self._buckets[peer] = bucket
            st = self._peers[peer] = _Peer(bucket)
        return st

    def receive_message(self, peer: str, message: Message, now: float) -> list[EngineAction]:
        """Apply the wantlist part of a message from ``peer`` (blocks and presences are
        the client session's business)."""
        ledger = self.ledgers.get(peer)
        ledger.last_seen = now
        wl = message.wantlist
        if wl is None:
            return []
        st = self._peer(peer, now)
        if wl.full:
            named = {block_key(e.cid) for e in wl.entries if not e.cancel}
            for key in [k for k in st.wants if k not in named]:
                self._drop_want(st, key)
        # every want entry is charged, held or not (parsing a flood costs too); the
        # debt paces the peer's next message instead of dropping these wants
        st.bucket.charge(sum(1 for e in wl.entries if not e.cancel), now)
        dropped_capacity = 0
        for entry in wl.entries:
            key = block_key(entry.cid)
            if entry.cancel:
                self._drop_want(st, key)
                continue
            existing = st.wants.get(key)
            if (
                existing is not None
                and existing.want_type is WantType.BLOCK
                and entry.want_type is WantType.HAVE
            ):
                continue  # never downgrade a want-block
            if existing is None and len(st.wants) >= self.config.max_wants_per_peer:
                dropped_capacity += 1
                continue
            st.wants[key] = _Want(
                entry.cid, entry.want_type, entry.priority, entry.send_dont_have, next(self._seq)
            )
            self._evaluate(st, key)
        actions: list[EngineAction] = []
        if dropped_capacity:
            ledger.wants_dropped += dropped_capacity
            actions.append(WantsDropped(peer, dropped_capacity, "capacity"))
            logger.debug("bitswap dropped %d wants from %s (capacity)", dropped_capacity, peer)
        self._settle(peer, st)
        return actions

    def read_ready_at(self, peer: str, now: float) -> float:
        """When the caller may read ``peer``'s next message: ``now`` unless the want
        entries it sent put its request bucket into debt (then when that is paid off)."""
        st = self._peers.get(peer)
        bucket = st.bucket if st is not None else self._buckets.get(peer)
        return now if bucket is None else bucket.ready_at(0, now)

    def blocks_added(self, cids: Iterable[CID]) -> None:
        """Blocks arrived in the store: answer wants that were waiting for them."""
        keys = [block_key(c) for c in cids]
        for peer, st in self._peers.items():
            touched = False
            for key in keys:
                if key in st.wants:
                    self._evaluate(st, key)
                    touched = True
            if touched:
                self._settle(peer, st)

    def peer_disconnected(self, peer: str) -> None:
        """Forget ``peer``'s wants and queued responses (its ledger and request-rate
        bucket are kept; ``forget_peer`` drops those too)."""
        self._peers.pop(peer, None)
        if peer in self._turns:
            self._turns.remove(peer)

    def forget_peer(self, peer: str) -> None:
        """Drop everything known about ``peer`` (for a node pruning long-gone peers); its
        ledger's counters stay in the book's totals."""
        self.peer_disconnected(peer)
        self._buckets.pop(peer, None)
        self.ledgers.forget(peer)

    def prune(self, now: float, idle_s: float, keep: Collection[str] = ()) -> int:
        """Forget what peers without wants held here (and not in ``keep``) left behind:
        request buckets that have refilled (a full bucket is what a new peer gets, so
        nothing is lost) and ledgers idle for ``idle_s`` seconds (their counters stay in
        the book's totals).  Returns the number of ledgers forgotten."""
        for peer, bucket in list(self._buckets.items()):
            if peer not in self._peers and bucket.available(now) >= bucket.burst:
                del self._buckets[peer]
        held = self._peers.keys() | set(keep)
        return len(self.ledgers.prune(now, idle_s, keep=held))

    # --- internals -------------------------------------------------------------------------
    def _drop_want(self, st: _Peer, key: CID) -> None:
        st.wants.pop(key, None)
        st.tasks.pop(key, None)

    def _settle(self, peer: str, st: _Peer) -> None:
        if st.tasks and peer not in self._turns:
            self._turns.append(peer)

    def _held_size(self, cid: CID) -> int | None:
        if cid.multihash.code != SHA2_256:
            return None  # identity CIDs carry their own bytes; nothing to serve
        try:
            size: int | None = self.source.block_size(cid)
        except BlockNotFoundError:
            return None
        except StoreError as exc:  # an unreadable store must not take the server down
            logger.warning("bitswap: cannot look up block %s: %s", cid, exc)
            return None
        if size is not None and size > self.config.max_served_block_size:
            logger.warning("bitswap: block %s is %d bytes, larger than we serve", cid, size)
            return None
        return size

    def _evaluate(self, st: _Peer, key: CID) -> None:
        """(Re)compute the response owed for one want."""
        want = st.wants[key]
        size = self._held_size(want.cid)
        seq = want.seq
        if size is not None:
            kind = _Kind.BLOCK if want.want_type is WantType.BLOCK else _Kind.HAVE
            st.tasks[key] = _Task(kind, want.cid, want.priority, seq, size)
        elif want.send_dont_have:
            st.tasks[key] = _Task(_Kind.DONT_HAVE, want.cid, want.priority, seq)
        else:
            st.tasks.pop(key, None)

    # --- output ---------------------------------------------------------------------------
    def next_wakeup(self, now: float, *, room: RoomFn | None = None) -> float | None:
        """When :meth:`poll` may next have something to send (None: only after new input,
        or, with ``room``, once a peer without room gets some)."""
        best: float | None = None
        for peer in self._turns:
            if room is not None and room(peer) <= 0:
                continue
            st = self._peers[peer]
            for t in st.tasks.values():
                if t.kind is not _Kind.BLOCK or self._upload is None:
                    return now
                at = self._upload.ready_at(t.size, now)
                best = at if best is None else min(best, at)
        return best

    def poll(self, now: float, *, room: RoomFn | None = None) -> list[EngineAction]:
        """Build the messages that can be sent now: one per peer per turn, round robin,
        and (with ``room``) no more per peer than it has room for; peers ranked last
        only once no other peer has anything left."""
        actions: list[EngineAction] = []
        left: dict[str, int] = {}
        last = self.serve_last
        if last is None:
            self._turn_pass(now, room, left, actions, lambda _: True)
            return actions
        self._turn_pass(now, room, left, actions, lambda p: not last(p))
        if not any(self._peers[p].tasks for p in self._turns if p in self._peers and not last(p)):
            self._turn_pass(now, room, left, actions, last)
        return actions

    def _turn_pass(
        self,
        now: float,
        room: RoomFn | None,
        left: dict[str, int],
        actions: list[EngineAction],
        eligible: Callable[[str], bool],
    ) -> None:
        """Round robin over the eligible peers with tasks until none can make progress;
        the others keep their turn (O(1) per turn: the hot path of every poll)."""
        rounds_without_progress = 0
        while self._turns and rounds_without_progress < len(self._turns):
            peer = self._turns.popleft()
            st = self._peers.get(peer)
            if st is None or not st.tasks:
                continue
            if not eligible(peer):
                self._turns.append(peer)
                rounds_without_progress += 1
                continue
            if room is not None:
                if peer not in left:
                    left[peer] = room(peer)
                if left[peer] <= 0:
                    self._turns.append(peer)
                    rounds_without_progress += 1
                    continue
            msg = self._build(peer, st, now, actions)
            if st.tasks:
                self._turns.append(peer)
            if msg is None:
                rounds_without_progress += 1
                continue
            rounds_without_progress = 0
            if room is not None:
                left[peer] -= 1
            actions.append(SendMessage(peer, msg))

    def upcoming(self, room: RoomFn) -> list[CID]:
        """The blocks the next polls with ``room`` will read, most urgent first (each
        peer's next ``room(peer)`` turns, whether or not the upload budget allows
        them yet); changes nothing.

        For reading them ahead, off the caller's event loop, into a
        :class:`ReadAheadSource`: an estimate, so a block named here may go
        unsent (cancelled meanwhile), and one named no more must not be kept.
        """
        out: list[CID] = []
        for peer in self._turns:
            st = self._peers.get(peer)
            if st is None:
                continue
            turns = room(peer)
            if turns <= 0:
                continue
            cap = turns * self.config.turn_bytes
            for task in sorted(st.tasks.values(), key=lambda t: (-t.priority, t.seq)):
                if task.kind is not _Kind.BLOCK:
                    continue
                if cap <= 0:
                    break
                out.append(task.cid)
                cap -= task.size
        return out

    def _build(
        self, peer: str, st: _Peer, now: float, actions: list[EngineAction]
    ) -> Message | None:
        """One message for ``peer``: all presences that fit, and a turn's worth of blocks."""
        limits = self.config.limits
        order = sorted(st.tasks.items(), key=lambda kv: (-kv[1].priority, kv[1].seq))
        presences: list[BlockPresence] = []
        blocks: list[BlockPayload] = []
        block_bytes = 0
        budget_blocked = False
        ledger = self.ledgers.get(peer)
        for key, task in order:
            if task.kind is not _Kind.BLOCK:
                if len(presences) >= limits.max_presences:
                    continue
                ptype = PresenceType.HAVE if task.kind is _Kind.HAVE else PresenceType.DONT_HAVE
                presences.append(BlockPresence(task.cid, ptype))
                del st.tasks[key]
                if task.kind is _Kind.HAVE:
                    st.wants.pop(key, None)
                continue
            if budget_blocked or len(blocks) >= limits.max_payload_blocks:
                continue
            if blocks and block_bytes + task.size > self.config.turn_bytes:
                budget_blocked = True  # this turn is used up; keep priority order
                continue
            if self._upload is not None and self._upload.ready_at(task.size, now) > now:
                budget_blocked = True
                continue
            data = self._load(task.cid, actions)
            want = st.wants.get(key)
            if data is None:
                # vanished or corrupt since the want was evaluated: answer as absent
                del st.tasks[key]
                if want is not None and want.send_dont_have:
                    presences.append(BlockPresence(task.cid, PresenceType.DONT_HAVE))
                continue
            if self._upload is not None:
                self._upload.try_take(len(data), now)
            blocks.append(BlockPayload.of(task.cid, data))
            block_bytes += len(data)
            del st.tasks[key]
            st.wants.pop(key, None)
            ledger.blocks_sent += 1
            ledger.bytes_sent += len(data)
        if not presences and not blocks:
            return None
        pending = min(st.pending_block_bytes(), _INT32_MAX)
        return Message(None, tuple(blocks), tuple(presences), pending)

    def _load(self, cid: CID, actions: list[EngineAction]) -> bytes | None:
        try:
            data = self.source.get_block(cid)
        except BlockNotFoundError:
            return None  # removed (GC) since the want was evaluated
        except HashMismatchError as exc:
            logger.error("bitswap: stored block %s is corrupt; not served: %s", cid, exc)
            actions.append(LocalBlockCorrupt(cid))
            return None
        except StoreError as exc:
            logger.warning("bitswap: cannot read block %s: %s", cid, exc)
            return None
        if len(data) > self.config.max_served_block_size:
            return None
        # The store re-hashes on read too; this check keeps a source that does not
        # (or a bug in one) from ever putting wrong bytes on the wire under our name.
        if self.config.verify_before_serving and not cid.verify(data):
            logger.error("bitswap: stored block %s does not match its hash; not served", cid)
            actions.append(LocalBlockCorrupt(cid))
            return None
        return data
