"""The Bitswap client side: fetching one DAG from several providers (sans-IO).

Owns :class:`Session`, which fetches every block reachable from a root CID.
It is given the providers to ask, a function listing a block's children
(``links(cid, block) -> [CID]``, e.g. ``p2phier.unixfs.child_links``) and a
function returning a block already held locally (``local(cid) -> bytes | None``).
It never touches a socket, a store or a clock: the caller feeds it decoded
messages (:meth:`Session.receive_message`) and calls :meth:`Session.poll` with
the current time, then carries out what comes back: :class:`SendMessage`
actions to put on the wire, :class:`BlockFetched` blocks to put in the store.

How a fetch proceeds:

1. Resume: a block the local store already holds (and that still hashes to its
   CID) is not fetched; its children are explored from the local copy.
2. Discovery: every missing block is asked as ``want-have`` (with
   ``sendDontHave``) of every provider not yet *confirmed*.  A provider is
   confirmed once it answered ``HAVE`` to, or delivered, some block of this DAG.
3. Transfer: a block is asked as ``want-block`` (again with ``sendDontHave``)
   from one peer that answered ``HAVE`` to it or is confirmed, the one with the
   fewest blocks in flight (at most ``max_inflight_per_peer`` each), so the
   blocks of a DAG are split across all providers that have them.  A confirmed
   provider is asked for the block itself at once, without a want-have round
   first (as boxo's sessions do once a peer has shown it holds the DAG): a
   provider holding a root almost always holds the whole DAG, and one that does
   not answers ``DONT_HAVE`` at once.  Each level of the DAG (root, inner
   nodes, leaves) so costs one round trip, not two.  A confirmed peer that lets
   a want run out is confirmed no more (it is asked want-have again).
4. Deadlines: a want-block not answered within ``block_timeout``, or a
   want-have not answered within ``have_timeout``, counts as a failure of that
   peer for that block: it is cancelled there and asked elsewhere.  A DONT_HAVE
   from the peer holding a want-block moves it elsewhere at once.
5. Verification: a received block's bytes are hashed and the digest looked up
   among the CIDs this session WANTED FROM THAT PEER; only a match is handed
   over (:class:`BlockFetched` carries the wanted CID, never one derived from
   the sender's prefix).  Bytes matching nothing asked of that peer are wrong
   or unsolicited: the peer is recorded as misbehaving
   (:class:`~p2phier.bitswap.ledger.Misbehaviour`, also via the ledger hook),
   dropped from the session, and everything it held is asked elsewhere.
6. When a block arrives, peers still asked for it get a ``cancel``.  When no
   provider is left for some block, the session fails (:class:`FetchFailed`,
   with what each provider answered) and cancels everything outstanding.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from p2phier.cid import CID, IDENTITY
from p2phier.errors import (
    BlockNotFoundError,
    HashMismatchError,
    NetworkError,
    P2PHierError,
    UsageError,
)

from .engine import LocalBlockCorrupt
from .ledger import WRONG_BLOCK, LedgerBook, Misbehaviour
from .message import (
    DEFAULT_LIMITS,
    Limits,
    Message,
    PresenceType,
    SendMessage,
    WantEntry,
    Wantlist,
    WantType,
    block_key,
)

logger = logging.getLogger(__name__)

LinksFn = Callable[[CID, bytes], Sequence[CID]]
#: a block held locally: bytes, or None / BlockNotFoundError when absent; a
#: HashMismatchError (CorruptBlockError) means it is held but corrupt, so
#: ``ContentStore.get_block`` can be passed as is
LocalFn = Callable[[CID], bytes | None]

_TOP_PRIORITY = 1 << 30


#: why a provider is ruled out for a block it answered DONT_HAVE to
SAID_DONT_HAVE = "said DONT_HAVE"


class FetchFailedError(NetworkError, LookupError):
    """A DAG could not be fetched: some block is held by no reachable, honest provider.

    ``dont_have``: the providers that answered DONT_HAVE for the block the fetch failed
    on (a peer that announced the DAG and then says it lacks it withheld it)."""

    def __init__(self, message: str, *, dont_have: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.dont_have = dont_have


@dataclass(frozen=True, slots=True)
class SessionConfig:
    limits: Limits = DEFAULT_LIMITS
    #: seconds a provider has to deliver a block after a want-block
    block_timeout: float = 15.0
    #: seconds a provider has to answer a want-have (HAVE or DONT_HAVE)
    have_timeout: float = 5.0
    max_inflight_per_peer: int = 32
    #: refuse DAGs with more blocks than this (a hostile root can name millions)
    max_blocks: int = 1 << 20
    #: refuse DAGs whose fetched blocks total more bytes than this (None: no cap)
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.block_timeout <= 0 or self.have_timeout <= 0:
            raise UsageError("bitswap session timeouts must be positive")
        if self.max_inflight_per_peer < 1 or self.max_blocks < 1:
            raise UsageError("bitswap session limits must be at least 1")


# --- events out -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockFetched:
    """A block that hashes to ``cid`` (a CID this session asked for): store it."""

    cid: CID
    data: bytes = field(repr=False)
    peer: str


@dataclass(frozen=True, slots=True)
class PeerTimedOut:
    peer: str
    cid: CID
    want_type: WantType


@dataclass(frozen=True, slots=True)
class FetchFailed:
    """The session gave up; ``cid`` is the block no provider could deliver (None:
    a session-wide limit was hit)."""

    cid: CID | None
    reason: str


@dataclass(frozen=True, slots=True)
class FetchComplete:
    root: CID
    fetched: int  # blocks received from peers
    skipped: int  # blocks already held locally
    bytes_fetched: int


SessionEvent = (
    SendMessage
    | BlockFetched
    | PeerTimedOut
    | Misbehaviour
    | LocalBlockCorrupt
    | FetchFailed
    | FetchComplete
)


# --- state --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Want:
    """One missing block."""

    cid: CID  # as first named (its version is kept on the wire)
    priority: int
    haves: set[str] = field(default_factory=set)
    #: peers ruled out for this block, with why (for the failure message)
    ruled_out: dict[str, str] = field(default_factory=dict)
    have_pending: dict[str, float] = field(default_factory=dict)  # peer -> deadline
    holder: str | None = None  # peer asked for the block itself
    deadline: float = 0.0


@dataclass(slots=True)
class _Provider:
    order: int
    inflight: set[CID] = field(default_factory=set)  # keys with a want-block here
    asked: set[CID] = field(default_factory=set)  # keys ever asked here
    banned: bool = False
    #: said HAVE to, or delivered, some block of this DAG: asked want-block directly
    confirmed: bool = False
    #: (-priority, tie, key) of blocks this peer can be asked for that wait for a free
    #: slot; entries go stale (want settled, asked elsewhere) and are dropped when seen
    ready: list[tuple[int, int, CID]] = field(default_factory=list)


class Session:
    """Fetch the DAG under ``root`` from ``providers``; see the module docstring."""

    def __init__(
        self,
        root: CID,
        providers: Iterable[str],
        *,
        links: LinksFn,
        local: LocalFn,
        config: SessionConfig | None = None,
        ledgers: LedgerBook | None = None,
        now: float = 0.0,
    ) -> None:
        self.root = root
        self.config = config or SessionConfig()
        self.ledgers = ledgers if ledgers is not None else LedgerBook()
        self._links = links
        self._local = local
        self._order = itertools.count()
        self._providers: dict[str, _Provider] = {}
        self._wants: dict[CID, _Want] = {}
        self._known: set[CID] = set()
        self._dirty: set[CID] = set()
        self._heap: list[tuple[float, int, CID, str, WantType]] = []
        self._tie = itertools.count()
        self._outbox: dict[str, dict[CID, WantEntry]] = {}
        self._events: list[SessionEvent] = []
        self._next_priority = _TOP_PRIORITY
        self.fetched = 0
        self.skipped = 0
        self.bytes_fetched = 0
        self.error: FetchFailedError | None = None
        self._finished = False
        self._started = now
        for peer in providers:
            self.add_provider(peer)
        self._discover([root])

    # --- state ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True once the fetch completed or failed."""
        return self._finished

    @property
    def complete(self) -> bool:
        return self._finished and self.error is None

    @property
    def missing(self) -> int:
        """Blocks known to be needed and not yet received."""
        return len(self._wants)

    def providers(self) -> list[str]:
        return [p for p, st in self._providers.items() if not st.banned]

    def asked(self, peer: str, cid: CID) -> bool:
        """True when this session asked ``peer`` for ``cid`` (lets a node that runs
        several sessions decide whether a block is unsolicited)."""
        st = self._providers.get(peer)
        return st is not None and block_key(cid) in st.asked

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`poll` has a deadline to fire."""
        while self._heap and self._stale(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap and not self._finished else None

    # --- input ----------------------------------------------------------------------------
    def add_provider(self, peer: str) -> None:
        """Another peer that may hold the DAG; it is asked about every missing block."""
        if peer in self._providers:
            return
        self._providers[peer] = _Provider(next(self._order))
        self._dirty.update(self._wants)

    def peer_disconnected(self, peer: str) -> None:
        """``peer`` is gone: what it was asked is asked elsewhere."""
        st = self._providers.pop(peer, None)
        self._outbox.pop(peer, None)
        if st is not None:
            self._rule_out_everywhere(peer, st, "disconnected")

    def block_stored(self, cid: CID) -> None:
        """A block reached the store by other means (another session): stop fetching it
        and explore its children from the local copy."""
        key = block_key(cid)
        want = self._wants.get(key)
        if want is None or self._finished:
            return
        data = self._local_block(want.cid)
        if data is None:
            return
        self._settle(key, want, sender=None)
        self.skipped += 1
        self._explore(want.cid, data)
        self._maybe_complete()

    def receive_message(
        self,
        peer: str,
        message: Message,
        now: float,
        *,
        report_unsolicited: bool = True,
        claimed: Sequence[CID] | None = None,
        account: bool = True,
    ) -> list[SessionEvent]:
        """Apply the blocks and presences ``peer`` sent.

        ``report_unsolicited=False`` is for a node running several sessions: a
        block this session did not ask ``peer`` for is then ignored instead of
        being reported (the node judges it against all its sessions).
        ``account=False`` is for the same node: the peer's ledger counts of blocks
        received and duplicates are left to it, since several sessions taking the
        same block would each count it.
        ``claimed`` is, when given, ``[b.claimed_key() for b in message.blocks]``
        computed by the caller (a driver hashes in a worker thread, once for all
        its sessions); the caller vouches that it was computed from these bytes.
        """
        if claimed is not None and len(claimed) != len(message.blocks):
            raise UsageError("claimed must hold one key per block of the message")
        ledger = self.ledgers.get(peer)
        ledger.last_seen = now
        st = self._providers.get(peer)
        max_block = self.config.limits.max_block_size
        for n, payload in enumerate(message.blocks):
            if len(payload.data) > max_block:
                self._misbehaved(peer, st, f"sent a {len(payload.data)}-byte block", now)
                continue
            # Hash the received bytes once; the result is only ever compared with
            # the CIDs this session wanted from this peer.  The CID handed over is
            # the wanted one: the sender's prefix never names what we store.
            key = payload.claimed_key() if claimed is None else claimed[n]
            if st is None or key not in st.asked:
                if report_unsolicited:  # every wrong block is recorded: each is evidence
                    self._misbehaved(
                        peer,
                        st,
                        f"sent {len(payload.data)} bytes (hash {key}) that match no block "
                        "asked of it",
                        now,
                    )
                continue
            if st.banned:
                continue  # nothing from a peer caught sending wrong bytes is used
            want = self._wants.get(key)
            if want is None:
                if account:  # already had it: a race, not an offence
                    ledger.duplicate_blocks += 1
                    ledger.blocks_received += 1
                    ledger.bytes_received += len(payload.data)
                continue
            if want.cid.multihash != key.multihash:  # pragma: no cover - same key, same digest
                raise AssertionError("bitswap session key mismatch")
            self._accept(key, want, payload.data, peer, account)
        if st is not None and not st.banned and not self._finished:
            for presence in message.presences:
                self._presence(peer, st, presence.cid, presence.type)
        self._maybe_complete()
        return self._drain()

    def cancel(self) -> list[SessionEvent]:
        """Abandon the fetch: cancels go to every peer still asked for something."""
        if not self._finished:
            self._fail(None, "fetch cancelled by the caller")
        return self.poll(self._started)

    # --- output -----------------------------------------------------------------------------
    def poll(self, now: float) -> list[SessionEvent]:
        """Fire due deadlines, schedule wants, and return everything to act on."""
        if not self._finished:
            self._fire_deadlines(now)
        if not self._finished:
            self._schedule(now)
        self._maybe_complete()
        self._flush()
        return self._drain()

    # --- internals: discovery ----------------------------------------------------------------
    def _drain(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events

    def _local_block(self, cid: CID) -> bytes | None:
        if cid.multihash.code == IDENTITY:
            return cid.multihash.digest  # the CID carries the block itself
        try:
            data = self._local(cid)
        except BlockNotFoundError:
            return None
        except HashMismatchError:
            data = b""
        else:
            if data is None or cid.verify(data):
                return data
        logger.error("bitswap: local block %s is corrupt; fetching it again", cid)
        self._events.append(LocalBlockCorrupt(cid))
        return None

    def _explore(self, cid: CID, data: bytes) -> None:
        try:
            children = list(self._links(cid, data))
        except P2PHierError as exc:
            self._fail(cid, f"block {cid} is not a valid DAG node: {exc}")
            return
        self._discover(children)

    def _discover(self, cids: Sequence[CID]) -> None:
        stack = list(reversed(cids))
        while stack and not self._finished:
            cid = stack.pop()
            key = block_key(cid)
            if key in self._known:
                continue
            if len(self._known) >= self.config.max_blocks:
                self._fail(None, f"the DAG has more than {self.config.max_blocks} blocks")
                return
            self._known.add(key)
            data = self._local_block(cid)
            if data is None:
                self._wants[key] = _Want(cid, max(1, self._next_priority))
                self._next_priority -= 1
                self._dirty.add(key)
                continue
            self.skipped += 1
            try:
                children = list(self._links(cid, data))
            except P2PHierError as exc:
                self._fail(cid, f"local block {cid} is not a valid DAG node: {exc}")
                return
            stack.extend(reversed(children))

    # --- internals: messages in ---------------------------------------------------------------
    def _accept(self, key: CID, want: _Want, data: bytes, peer: str, account: bool) -> None:
        self._settle(key, want, sender=peer)
        self._providers[peer].confirmed = True
        if account:
            ledger = self.ledgers.get(peer)
            ledger.blocks_received += 1
            ledger.bytes_received += len(data)
        self.fetched += 1
        self.bytes_fetched += len(data)
        self._events.append(BlockFetched(want.cid, data, peer))
        cap = self.config.max_bytes
        if cap is not None and self.bytes_fetched > cap:
            self._fail(None, f"the DAG is larger than the {cap}-byte cap")
            return
        self._explore(want.cid, data)

    def _settle(self, key: CID, want: _Want, sender: str | None) -> None:
        """``key`` is no longer needed: free its peer slots and cancel it elsewhere."""
        del self._wants[key]
        self._dirty.discard(key)
        asked_elsewhere = set(want.have_pending)
        if want.holder is not None:
            asked_elsewhere.add(want.holder)
            holder = self._providers.get(want.holder)
            if holder is not None:
                holder.inflight.discard(key)
        for peer in asked_elsewhere - {sender}:
            self._queue(peer, WantEntry.cancel_of(want.cid))

    def _presence(self, peer: str, st: _Provider, cid: CID, kind: PresenceType) -> None:
        key = block_key(cid)
        if kind is PresenceType.HAVE and key in st.asked:
            st.confirmed = True  # even for a block settled meanwhile (see _schedule)
        want = self._wants.get(key)
        if want is None or key not in st.asked or peer in want.ruled_out:
            return
        want.have_pending.pop(peer, None)
        if kind is PresenceType.HAVE:
            want.haves.add(peer)
        else:
            want.haves.discard(peer)
            want.ruled_out[peer] = SAID_DONT_HAVE
            if want.holder == peer:
                want.holder = None
                st.inflight.discard(key)
        self._dirty.add(key)

    def _misbehaved(self, peer: str, st: _Provider | None, detail: str, now: float) -> None:
        event = self.ledgers.record_misbehaviour(peer, WRONG_BLOCK, detail, now)
        self._events.append(event)
        if st is not None and not st.banned:
            st.banned = True
            # tell it to stop: cancel whatever it was asked and has not answered
            for key in st.asked:
                want = self._wants.get(key)
                if want is not None and (want.holder == peer or peer in want.have_pending):
                    self._queue(peer, WantEntry.cancel_of(want.cid))
            self._rule_out_everywhere(peer, st, "sent a wrong or unsolicited block")

    def _rule_out_everywhere(self, peer: str, st: _Provider, why: str) -> None:
        for key in st.asked:
            want = self._wants.get(key)
            if want is None:
                continue
            want.ruled_out[peer] = why
            want.haves.discard(peer)
            want.have_pending.pop(peer, None)
            if want.holder == peer:
                want.holder = None
            self._dirty.add(key)
        st.inflight.clear()
        self._unconfirm(st)

    def _unconfirm(self, st: _Provider) -> None:
        """``st`` is no longer asked for blocks on trust: what waited only for its free
        slots is scheduled afresh (or it would wait for nothing)."""
        st.confirmed = False
        self._dirty.update(key for _, _, key in st.ready if key in self._wants)
        st.ready.clear()

    # --- internals: scheduling -----------------------------------------------------------------
    def _usable(self, peer: str) -> bool:
        st = self._providers.get(peer)
        return st is not None and not st.banned

    def _stale(self, entry: tuple[float, int, CID, str, WantType]) -> bool:
        """True when a deadline no longer applies (answered, re-asked, peer gone)."""
        at, _, key, peer, kind = entry
        want = self._wants.get(key)
        if want is None or not self._usable(peer):
            return True
        if kind is WantType.BLOCK:
            return want.holder != peer or want.deadline != at
        return want.have_pending.get(peer) != at

    def _fire_deadlines(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._stale(entry):
                continue
            _, _, key, peer, kind = entry
            want = self._wants[key]
            if kind is WantType.BLOCK:
                want.holder = None
                self._providers[peer].inflight.discard(key)
                self._unconfirm(self._providers[peer])  # slow or stalling: ask it first
                want.haves.discard(peer)
                want.ruled_out[peer] = f"did not deliver within {self.config.block_timeout}s"
                self.ledgers.get(peer).timeouts += 1
            else:
                del want.have_pending[peer]
                want.ruled_out[peer] = (
                    f"did not answer want-have within {self.config.have_timeout}s"
                )
            logger.debug("bitswap: %s timed out on %s (%s)", peer, want.cid, kind.name)
            self._queue(peer, WantEntry.cancel_of(want.cid))
            self._events.append(PeerTimedOut(peer, want.cid, kind))
            self._dirty.add(key)

    def _schedule(self, now: float) -> None:
        """Ask for what can be asked now, highest priority first.

        Two sources, merged by priority: the keys whose state changed since the
        last call (``_dirty``), and, for every provider with a free slot, the
        blocks it said HAVE to that were waiting for one (its ``ready`` heap).
        Each step costs O(providers + log n), so a large DAG is not re-sorted on
        every message.
        """
        wants = self._wants
        dirty = sorted(
            (k for k in self._dirty if k in wants), key=lambda k: wants[k].priority, reverse=True
        )
        self._dirty = set()
        i = 0
        while not self._finished:
            best = self._best_ready()
            if best is not None and (i >= len(dirty) or best[0] > wants[dirty[i]].priority):
                key = best[1]
            elif i < len(dirty):
                key = dirty[i]
                i += 1
            else:
                return
            want = wants.get(key)
            if want is None or want.holder is not None:
                continue
            holders = self._holders(want)
            # discovery: every provider not known to hold the DAG is asked whether it
            # has the block (a HAVE confirms it, and it takes its share)
            for peer, st in self._providers.items():
                if (
                    st.banned
                    or st.confirmed
                    or peer in want.haves
                    or peer in want.ruled_out
                    or peer in want.have_pending
                ):
                    continue
                self._ask_have(key, want, peer, now)
            if holders:
                cap = self._cap()
                free = [p for p in holders if len(self._providers[p].inflight) < cap]
                if not free:
                    # every holder is busy: wait in their queues (seen again when a slot frees)
                    entry = (-want.priority, next(self._tie), key)
                    for p in holders:
                        heapq.heappush(self._providers[p].ready, entry)
                    continue
                peer = min(
                    free, key=lambda p: (len(self._providers[p].inflight), self._providers[p].order)
                )
                self._ask_block(key, want, peer, now)
                continue
            if not want.have_pending:
                refused = frozenset(p for p, why in want.ruled_out.items() if why == SAID_DONT_HAVE)
                self._fail(want.cid, self._why_unavailable(want), dont_have=refused)
                return

    def _holders(self, want: _Want) -> list[str]:
        """Usable peers that can be asked for ``want``'s block itself: those that said
        HAVE to it, and the confirmed ones (unless ruled out for it)."""
        return [
            p
            for p, st in self._providers.items()
            if not st.banned and p not in want.ruled_out and (st.confirmed or p in want.haves)
        ]

    def _best_ready(self) -> tuple[int, CID] | None:
        """``(priority, key)`` of the most urgent block waiting for a provider that now
        has a free slot (stale queue entries are dropped on the way)."""
        best: tuple[int, CID] | None = None
        cap = self._cap()
        for peer, st in self._providers.items():
            if st.banned or len(st.inflight) >= cap:
                continue
            heap = st.ready
            while heap:
                key = heap[0][2]
                want = self._wants.get(key)
                if (
                    want is not None
                    and want.holder is None
                    and (st.confirmed or peer in want.haves)
                    and peer not in want.ruled_out
                ):
                    break
                heapq.heappop(heap)
            if heap and (best is None or -heap[0][0] > best[0]):
                best = (-heap[0][0], heap[0][2])
        return best

    def _cap(self) -> int:
        return self.config.max_inflight_per_peer

    def _ask_block(self, key: CID, want: _Want, peer: str, now: float) -> None:
        st = self._providers[peer]
        want.holder = peer
        want.deadline = now + self.config.block_timeout
        want.have_pending.pop(peer, None)  # a want-block supersedes the want-have
        st.inflight.add(key)
        st.asked.add(key)
        heapq.heappush(self._heap, (want.deadline, next(self._tie), key, peer, WantType.BLOCK))
        self._queue(peer, WantEntry(want.cid, want.priority, False, WantType.BLOCK, True))

    def _ask_have(self, key: CID, want: _Want, peer: str, now: float) -> None:
        st = self._providers[peer]
        deadline = now + self.config.have_timeout
        want.have_pending[peer] = deadline
        st.asked.add(key)
        heapq.heappush(self._heap, (deadline, next(self._tie), key, peer, WantType.HAVE))
        self._queue(peer, WantEntry(want.cid, want.priority, False, WantType.HAVE, True))

    def _why_unavailable(self, want: _Want) -> str:
        if not self._providers:
            return f"no provider to ask for {want.cid}"
        answers = "; ".join(f"{p}: {why}" for p, why in sorted(want.ruled_out.items()))
        return f"no provider could deliver block {want.cid} ({answers or 'no usable provider'})"

    def _fail(self, cid: CID | None, reason: str, dont_have: frozenset[str] = frozenset()) -> None:
        if self._finished:
            return
        logger.info("bitswap fetch of %s failed: %s", self.root, reason)
        for key, want in list(self._wants.items()):
            self._settle(key, want, sender=None)
        self._finished = True
        self.error = FetchFailedError(f"cannot fetch {self.root}: {reason}", dont_have=dont_have)
        self._events.append(FetchFailed(cid, reason))
        self._heap.clear()

    def _maybe_complete(self) -> None:
        if not self._finished and not self._wants:
            self._finished = True
            self._heap.clear()
            self._events.append(
                FetchComplete(self.root, self.fetched, self.skipped, self.bytes_fetched)
            )

    # --- internals: messages out -----------------------------------------------------------------
    def _queue(self, peer: str, entry: WantEntry) -> None:
        if peer in self._providers:
            # one entry per CID per message: a later one (e.g. cancel) replaces an earlier one
            self._outbox.setdefault(peer, {})[block_key(entry.cid)] = entry

    def _flush(self) -> None:
        step = self.config.limits.max_wantlist_entries
        for peer, entries in self._outbox.items():
            items = list(entries.values())
            for i in range(0, len(items), step):
                wl = Wantlist(tuple(items[i : i + step]))
                self._events.append(SendMessage(peer, Message(wantlist=wl)))
        self._outbox.clear()
