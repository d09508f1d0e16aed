"""Bitswap 1.2.0 on a libp2p host: the trio driver of the sans-IO core.

Owns :class:`Bitswap` (started with :func:`open_bitswap`), which serves the
node's store to other peers and fetches DAGs from them.  The protocol logic
lives in :mod:`p2phier.bitswap` (``Engine`` answers wants, ``Session`` fetches
one DAG); this module moves its bytes, keeps its clocks and does its I/O:

* Streams (Bitswap's model, as go-bitswap): everything we send to a peer goes
  on ONE long-lived outbound stream that we open (a sender task per peer,
  frames queued and coalesced); whatever a peer sends us arrives on streams IT
  opened, each read by its own task (libp2p's handler task).  Every stream
  operation has a deadline (:mod:`.streams`); a stream that breaks a rule is
  reset.
* Inbound: frame -> ``Message.decode_pieces`` -> the engine (wants) and every
  active fetch session (blocks, presences).  A frame that does not decode, or a
  declared length over the limit, is ``malformed-message`` misbehaviour; the
  stream is reset and the node carries on.  The blocks of a message are hashed
  once for all sessions, in a worker thread, and so are the store lookups of
  the children a DAG node names (``_prepare``).
* Wrong blocks: a received block is judged against what THIS NODE asked that
  peer for (any session, until ``late_block_grace`` after the fetch ended).
  Bytes that hash to nothing we asked it for (corrupt data, unsolicited
  blocks) are ``wrong-block`` misbehaviour, and the peer is dropped from every
  fetch in progress; what it held is asked elsewhere.
* Serving: the engine builds a peer's next messages only while our send queue
  to it has room (``serve_ahead``), and their blocks are read from the store
  (which re-hashes them) in a worker thread just before (``ReadAheadSource``).
* Fetch (:meth:`Bitswap.fetch`): a ``Session`` against several providers at
  once; every block it hands over was hashed against the CID wanted, and is
  put in the store (which hashes again) by a writer task in a worker thread,
  in batches of a few MiB (each batch is one durability step of the store).
  The object is pinned and recorded only when every block of its DAG is in
  the store, so no partial object is ever visible in the index or the pins;
  blocks already present are skipped, so a fetch interrupted by a crash
  resumes where it stopped.
* A peer is "gone" when our stream to it fails (dial, timeout, reset), when
  our last connection to it closes, or when it breaks the protocol: the engine
  forgets its wants and sessions ask elsewhere what it held.  The end of one of
  its streams is not the peer leaving: boxo (kubo) and helia open a stream per
  message and close it (``protocol/bitswap.md``).
* Per-peer ledgers (``Bitswap.ledgers``), misbehaviour hook
  (``Bitswap.on_misbehaviour``, settable after opening, as ``engine.serve_last``
  is), and the operator's upload-rate limit (:meth:`Bitswap.set_upload_rate`,
  enforced by the engine).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import trio
from libp2p.abc import INetStream

from p2phier.bitswap import (
    MALFORMED,
    PROTOCOL_ID,
    WRONG_BLOCK,
    BlockFetched,
    BlockSource,
    Engine,
    EngineAction,
    EngineConfig,
    FetchComplete,
    FetchFailed,
    FetchFailedError,
    Ledger,
    LedgerBook,
    LocalBlockCorrupt,
    Message,
    Misbehaviour,
    PeerTimedOut,
    ReadAheadSource,
    SendMessage,
    Session,
    SessionEvent,
    WantsDropped,
    block_key,
)
from p2phier.cid import CID, DAG_PB
from p2phier.errors import (
    BlockNotFoundError,
    HashMismatchError,
    P2PHierError,
    PeerTimeoutError,
    ProtocolViolationError,
    StoreError,
    UnixFSError,
    UsageError,
)
from p2phier.store import ContentStore, MetaSpec
from p2phier.unixfs import child_links, file_size, iter_dag

from .bitswap_state import (
    NOT_LOOKED_UP,
    NOTHING_AHEAD,
    Ahead,
    BitswapConfig,
    Fetch,
    FetchStats,
    Outbound,
    Put,
    work_ahead,
)
from .bitswap_writer import StoreWriter
from .host import Host, PeerAddr
from .streams import (
    FrameReader,
    StreamClosedError,
    StreamTruncatedError,
    close_quietly,
    reset_quietly,
    stream_peer,
    write_all,
)

__all__ = ["Bitswap", "BitswapConfig", "open_bitswap"]

logger = logging.getLogger(__name__)


class Bitswap:
    """Bitswap for one host and one store; create it with :func:`open_bitswap`."""

    def __init__(
        self,
        host: Host,
        store: ContentStore,
        nursery: trio.Nursery,
        config: BitswapConfig | None = None,
        *,
        source: BlockSource | None = None,
        on_misbehaviour: Callable[[Misbehaviour], None] | None = None,
    ) -> None:
        self.host = host
        self.store = store
        self.config = config or BitswapConfig()
        self._nursery = nursery
        #: called for every peer caught breaking the protocol; settable, so that a node can
        #: open its network services first and wire in its guard when it is built
        self.on_misbehaviour = on_misbehaviour
        self.misbehaviour: deque[Misbehaviour] = deque(maxlen=self.config.keep_misbehaviour)
        self.ledgers = LedgerBook(on_misbehaviour=self._record)
        engine_config = self.config.engine or EngineConfig(
            verify_before_serving=not (source is None or isinstance(source, ContentStore))
        )
        self._source = ReadAheadSource(source or store)
        self.engine = Engine(self._source, engine_config, self.ledgers, now=_now())
        self.limits = engine_config.limits
        self._outbound: dict[str, Outbound] = {}
        self._inbound_streams: set[INetStream] = set()
        self._fetches: set[Fetch] = set()
        #: peer -> {block key -> trio time until which a block from it is welcome}
        self._asked: dict[str, dict[CID, float]] = {}
        #: what was worked out ahead for the message being applied (see ``_prepare``)
        self._ahead = NOTHING_AHEAD
        self._engine_wake = trio.Event()
        self._writer = StoreWriter(store, self.config, self._stored)
        self._forget_disconnects: Callable[[], None] = lambda: None
        self.streams_reset = 0  # inbound streams we reset for a protocol violation

    # --- public API ---------------------------------------------------------------------------
    @property
    def fetching(self) -> int:
        """How many fetches are running (their blocks are in the store, unpinned, until
        each completes: a garbage collection meanwhile would delete them)."""
        return len(self._fetches)

    def ledger(self, peer: str) -> Ledger:
        """Bytes and blocks exchanged with ``peer`` (created empty if unknown)."""
        return self.ledgers.get(peer)

    def set_upload_rate(self, rate: float | None, burst: int | None = None) -> None:
        """Cap block uploads to all peers at ``rate`` bytes/s (None: unlimited)."""
        self.engine.set_upload_rate(rate, burst, _now())
        self._engine_wake.set()

    def prune_peers(self, idle_s: float) -> int:
        """Forget the ledgers (their bytes stay in ``ledgers.totals()``) and refilled request
        buckets of peers that are not connected, hold no wants, are asked by no fetch and
        were idle for ``idle_s`` seconds; return how many ledgers went."""
        keep = set(self.host.connected_peers())
        for fetch in self._fetches:
            keep.update(fetch.session.providers())
        return self.engine.prune(_now(), idle_s, keep)

    def blocks_added(self, cids: Iterable[CID]) -> None:
        """Blocks were put in the store by someone else: serve wants waiting for them."""
        self.engine.blocks_added(list(cids))
        self._engine_wake.set()

    def add_providers(self, root: CID, peers: Sequence[str]) -> None:
        """More peers that may hold ``root``'s DAG (e.g. found in the DHT while a fetch
        of it already runs): every running fetch of ``root`` asks them too."""
        key = block_key(root)
        for fetch in list(self._fetches):
            if block_key(fetch.session.root) != key:
                continue
            for peer in peers:
                if peer != self.host.peer_id:
                    fetch.session.add_provider(peer)
            fetch.wake.set()

    async def fetch(
        self,
        root: CID | str,
        providers: Sequence[str | PeerAddr],
        *,
        timeout: float,
        meta: MetaSpec | None = None,
        pin: bool = True,
        purpose: str = "other",
        stats: FetchStats | None = None,
    ) -> CID:
        """Fetch the whole DAG under ``root`` from ``providers`` in parallel; return ``root``.

        ``providers`` are peer ids or ``/ip4/.../tcp/.../p2p/<id>`` addresses.
        Every block is hashed against the wanted CID before it is stored; the
        object is pinned (``pin``) and recorded in the index (when ``meta`` is
        given) only once complete.  Raises FetchFailedError when no provider can
        deliver some block, PeerTimeoutError after ``timeout`` seconds (blocks
        received so far stay in the store, unpinned, and a later fetch resumes
        from them), StoreError when the store refuses a block.

        The bytes of the blocks received from the network for it are counted in the
        ledger book under ``purpose`` (:attr:`LedgerBook.received_for`) and, when given,
        added to ``stats.bytes_received`` (a timed-out fetch's too).
        """
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise UsageError("fetch timeout must be a positive number of seconds")
        cid = CID.parse(root) if isinstance(root, str) else root
        peers: list[str] = []
        for provider in providers:
            addr = provider if isinstance(provider, PeerAddr) else PeerAddr.parse(provider)
            self.host.add_addrs(addr.peer, addr.addrs)
            if addr.peer != self.host.peer_id and addr.peer not in peers:
                peers.append(addr.peer)
        deadline = _now() + timeout
        try:
            with trio.fail_at(deadline):
                for _attempt in range(3):
                    await self._run_session(cid, peers, deadline, purpose, stats)
                    # shielded: once every block is stored, a deadline expiring during
                    # the pin must not report a timeout for an object that is complete
                    with trio.CancelScope(shield=True):
                        complete = await trio.to_thread.run_sync(self._finish, cid, meta, pin)
                    if complete:
                        return cid
                    # Every block was stored, yet some is gone now: a GC ran meanwhile.
                    logger.warning("blocks of %s vanished during the fetch; fetching again", cid)
        except trio.TooSlowError:
            raise PeerTimeoutError(
                f"fetching {cid} did not finish within {timeout}s; the blocks received are kept "
                "and a later fetch resumes from them"
            ) from None
        raise FetchFailedError(f"cannot fetch {cid}: its blocks keep disappearing from the store")

    # --- fetch internals -------------------------------------------------------------------------
    async def _run_session(
        self,
        root: CID,
        peers: list[str],
        deadline: float,
        purpose: str = "other",
        stats: FetchStats | None = None,
    ) -> None:
        now = _now()
        # Building the session walks every block already held (resume): disk reads, so
        # off the event loop.
        session = await trio.to_thread.run_sync(
            lambda: Session(
                root,
                peers,
                links=self._child_links,
                local=self._local_block,
                config=self.config.session,
                ledgers=self.ledgers,
                now=now,
            )
        )
        fetch = Fetch(session, deadline, purpose=purpose)
        fetch.flushed.set()
        self._fetches.add(fetch)
        try:
            await self._session_events(fetch, session.poll(_now()))
            while not session.done and fetch.error is None:
                next_deadline = session.next_deadline()
                fetch.sleep_until = math.inf if next_deadline is None else next_deadline
                with trio.move_on_at(fetch.sleep_until):
                    await fetch.wake.wait()
                fetch.wake = trio.Event()
                await self._session_events(fetch, session.poll(_now()))
            while fetch.pending_puts and fetch.error is None:
                await fetch.flushed.wait()
        finally:
            if stats is not None:
                stats.bytes_received += fetch.bytes_received
            self._fetches.discard(fetch)
            if not session.done:  # timed out or failed: withdraw every want still out
                for event in session.cancel():
                    if isinstance(event, SendMessage):
                        self._enqueue(event.peer, event.frame_parts())
            self._prune_asked()
            # Even a timed-out fetch returns only once the blocks it received are in
            # the store, so that the next fetch resumes from them (shielded, bounded).
            await self._writer.drain(fetch, self.config.drain_timeout)
        if fetch.error is not None:
            raise fetch.error
        if session.error is not None:
            raise session.error

    def _child_links(self, cid: CID, block: bytes) -> list[CID]:
        ahead = self._ahead.links.get(block_key(cid))  # parsed in a worker thread just now
        return list(ahead) if ahead is not None else child_links(cid, block)

    def _local_block(self, cid: CID) -> bytes | None:
        ahead = self._ahead.local.get(block_key(cid), NOT_LOOKED_UP)
        if ahead is not NOT_LOOKED_UP:  # looked up in a worker thread just now
            if ahead is None:
                raise BlockNotFoundError(f"block {cid} is not in the store")
            if isinstance(ahead, BlockNotFoundError | HashMismatchError):
                raise ahead
            if isinstance(ahead, StoreError):
                logger.warning("bitswap: cannot read local block %s (%s); fetching it", cid, ahead)
                return None
            assert isinstance(ahead, bytes)
            return ahead
        try:
            return self.store.get_block(cid)
        except (BlockNotFoundError, HashMismatchError):
            raise  # the session handles both: absent, corrupt
        except StoreError as exc:
            logger.warning("bitswap: cannot read local block %s (%s); fetching it", cid, exc)
            return None

    def _finish(self, root: CID, meta: MetaSpec | None, pin: bool) -> bool:
        """In a worker thread: pin and record ``root``; False if its DAG is incomplete.

        ``pin`` and ``record`` each walk the DAG in the store and refuse an
        incomplete one: that walk is the completeness check.
        """
        try:
            with self.store.ingest():
                if pin:
                    self.store.pin(root)
                if meta is not None:
                    self.store.record(meta.to_meta(root, self._object_size(root), time.time()))
                elif not pin and self.store.missing_blocks(root):
                    return False
        except BlockNotFoundError:
            return False
        return True

    def _object_size(self, root: CID) -> int:
        try:
            return file_size(root, self.store.get_block)
        except UnixFSError:  # not a UnixFS file: count its blocks' bytes
            return sum(len(block) for _, block in iter_dag(root, self.store.get_block))

    async def _session_events(self, fetch: Fetch, events: list[SessionEvent]) -> None:
        # Every block is counted as pending before the first await: the session may
        # complete in another task meanwhile (see StoreWriter.reserve).
        unput = self._writer.reserve(fetch, sum(isinstance(e, BlockFetched) for e in events))
        try:
            for event in events:
                if isinstance(event, BlockFetched):
                    unput -= 1  # put() itself gives it back if cancelled
                    await self._writer.put(fetch, event.cid, event.data)
                else:
                    self._session_event(fetch, event)
        finally:
            self._writer.release(fetch, unput)

    def _session_event(self, fetch: Fetch, event: SessionEvent) -> None:
        if isinstance(event, SendMessage):
            self._note_asked(event, fetch.deadline)
            self._enqueue(event.peer, event.frame_parts())
        elif isinstance(event, FetchComplete | FetchFailed):
            fetch.wake.set()
        elif isinstance(event, PeerTimedOut):
            logger.info(
                "bitswap: %s did not answer %s for %s in time; asking elsewhere",
                event.peer,
                event.want_type.name,
                event.cid,
            )
        elif isinstance(event, LocalBlockCorrupt):
            logger.error("bitswap: local block %s was corrupt; fetching it again", event.cid)
        # Misbehaviour events were recorded (and hooked) by the ledger book already.

    def _note_asked(self, send: SendMessage, deadline: float) -> None:
        wl = send.message.wantlist
        if wl is None:
            return
        until = deadline + self.config.late_block_grace
        asked = self._asked.setdefault(send.peer, {})
        for entry in wl.entries:
            if not entry.cancel:
                key = block_key(entry.cid)
                asked[key] = max(until, asked.get(key, 0.0))

    def _prune_asked(self) -> None:
        now = _now()
        for peer in list(self._asked):
            keys = self._asked[peer]
            for key in [k for k, until in keys.items() if until < now]:
                del keys[key]
            if not keys:
                del self._asked[peer]

    def _was_asked(self, peer: str, key: CID) -> bool:
        until = self._asked.get(peer, {}).get(key)
        return until is not None and until >= _now()

    async def _stored(self, stored: list[CID], batch: list[Put]) -> None:
        """The writer stored a batch: serve wants waiting for these blocks, and let other
        fetches take them from the store."""
        self.blocks_added(stored)
        await self._announce_stored(stored, batch)

    async def _announce_stored(self, stored: list[CID], batch: list[Put]) -> None:
        """Other fetches wanting a block just stored take it from the store."""
        origins = {id(put.fetch) for put in batch}
        for fetch in list(self._fetches):
            if id(fetch) in origins and len(origins) == 1:
                continue
            for cid in stored:
                fetch.session.block_stored(cid)
            await self._session_events(fetch, fetch.session.poll(_now()))

    # --- inbound --------------------------------------------------------------------------------
    async def _handle_stream(self, stream: INetStream) -> None:
        """libp2p runs this in its own task for every inbound Bitswap stream.

        The end of a stream is NOT the peer leaving: boxo (kubo) and helia open
        a stream per message and close it.  A peer is gone when its connection
        closes (:meth:`_disconnected`) or our stream to it cannot be opened.
        """
        peer = stream_peer(stream)
        self._inbound_streams.add(stream)
        reader = FrameReader(
            stream,
            max_frame_size=self.limits.max_message_size,
            frame_timeout=self.config.frame_timeout,
            idle_timeout=self.config.idle_timeout,
        )
        try:
            while True:
                pieces = await reader.next_frame_pieces()
                if pieces is None:
                    await close_quietly(stream)
                    return
                # Request-rate pacing: while a peer's wants have run over its budget,
                # no message of it is taken in, on ANY of its streams (a peer opening
                # a stream per message must not escape it), and this stream is not
                # read meanwhile (its writes wait).  Re-checked after every wake:
                # messages waiting on other streams charge the budget first.
                while (ready := self.engine.read_ready_at(peer, _now())) > _now():
                    await trio.sleep_until(ready)
                try:
                    # not joined: each block is copied out of the pieces once
                    message = Message.decode_pieces(pieces, self.limits)
                except ProtocolViolationError as exc:
                    await self._violation(stream, peer, str(exc))
                    return
                await self._on_message(peer, message)
        except StreamTruncatedError as exc:
            # a killed peer looks like this; not an offence (its connection's end,
            # if it died, makes it gone)
            logger.debug("bitswap: stream from %s cut: %s", peer, exc)
        except ProtocolViolationError as exc:  # framing: oversized or malformed length
            await self._violation(stream, peer, str(exc))
        except (PeerTimeoutError, StreamClosedError) as exc:
            logger.debug("bitswap: stream from %s ended: %s", peer, exc)
            await reset_quietly(stream)
        finally:
            self._inbound_streams.discard(stream)

    def _disconnected(self, peer: str) -> None:
        """The host's last connection to ``peer`` closed: it is gone."""
        self._peer_gone(peer, "disconnected")

    async def _violation(self, stream: INetStream, peer: str, detail: str) -> None:
        """A peer broke the protocol: its stream is reset, its wants forgotten."""
        self.ledgers.record_misbehaviour(peer, MALFORMED, detail, _now())
        self.streams_reset += 1
        await reset_quietly(stream)
        self._peer_gone(peer, f"broke the protocol ({detail})")

    async def _on_message(self, peer: str, message: Message) -> None:
        now = _now()
        for action in self.engine.receive_message(peer, message, now):
            self._engine_action(action)
        if message.wantlist is not None:
            self._engine_wake.set()
        if not message.blocks and not message.presences:
            return
        ahead = await self._prepare(message)
        now = _now()
        taken: set[CID] = set()  # blocks of this message some session accepted
        fetches = list(self._fetches)
        for fetch in fetches:
            # poll at once: freed slots are refilled before the next message arrives
            self._ahead = ahead  # (no checkpoint until it is cleared)
            try:
                events = fetch.session.receive_message(
                    peer,
                    message,
                    now,
                    report_unsolicited=False,
                    claimed=ahead.claimed,
                    account=False,
                )
                events += fetch.session.poll(now)
            finally:
                self._ahead = NOTHING_AHEAD
            for e in events:
                if isinstance(e, BlockFetched) and (key := block_key(e.cid)) not in taken:
                    taken.add(key)  # counted for the first fetch that took it only
                    fetch.bytes_received += len(e.data)
                    self.ledgers.count_received_for(fetch.purpose, len(e.data))
            await self._session_events(fetch, events)
            self._nudge(fetch)
        if not message.blocks:
            return
        # The peer's ledger counts each block it sent once, however many fetches
        # took it (each session would count it): a block asked of this peer is
        # received -- a duplicate (waste, not an offence) if no fetch needed it any
        # more -- and any other is judged below (it earns the sender no credit).
        ledger = self.ledgers.get(peer)
        unasked = False
        for payload, key in zip(message.blocks, ahead.claimed, strict=True):
            if key in taken:
                taken.discard(key)  # the same block twice in a message: then a duplicate
            elif self._was_asked(peer, key):
                ledger.duplicate_blocks += 1
            else:
                unasked = True
                continue
            ledger.blocks_received += 1
            ledger.bytes_received += len(payload.data)
        if unasked:
            await self._judge_blocks(peer, message, ahead.claimed, fetches, now)

    async def _prepare(self, message: Message) -> Ahead:
        """What each block of ``message`` hashes to (once for every session), and for
        each DAG node in it, its children and the store's answer for each.

        Hashing a message's worth of blocks (up to a few MiB) is the largest piece
        of work per message, and a session that accepts a DAG node parses it and
        looks up each child in the store (a file-system lookup each, hundreds in a
        row).  All of it goes to a worker thread (hashlib releases the GIL), so the
        event loop keeps receiving meanwhile; the sessions then find it here.
        """
        blocks = message.blocks
        nodes = self._fetches and any(b.codec == DAG_PB for b in blocks)
        if not nodes and sum(len(b.data) for b in blocks) < self.config.hash_in_thread_bytes:
            return Ahead([b.claimed_key() for b in blocks])
        return await trio.to_thread.run_sync(work_ahead, self.store, blocks, bool(nodes))

    async def _judge_blocks(
        self,
        peer: str,
        message: Message,
        claimed: Sequence[CID],
        fetches: list[Fetch],
        now: float,
    ) -> None:
        """A block is welcome only if this node asked THIS peer for it (and recently)."""
        for payload, key in zip(message.blocks, claimed, strict=True):
            if self._was_asked(peer, key):
                continue
            self.ledgers.record_misbehaviour(
                peer,
                WRONG_BLOCK,
                f"sent {len(payload.data)} bytes hashing to {key}, a block this node did "
                "not ask it for (corrupt or unsolicited)",
                now,
            )
            for fetch in fetches:
                if peer in fetch.session.providers():
                    fetch.session.peer_disconnected(peer)
                    await self._session_events(fetch, fetch.session.poll(now))
                    fetch.wake.set()
            return  # one offence per message is enough evidence

    def _nudge(self, fetch: Fetch) -> None:
        """Wake the fetch loop if the session finished or now has an earlier deadline."""
        next_deadline = fetch.session.next_deadline()
        if fetch.session.done or (next_deadline is not None and next_deadline < fetch.sleep_until):
            fetch.wake.set()

    def _peer_gone(self, peer: str, reason: str) -> None:
        """``peer`` cannot be reached (or left): forget its wants, ask elsewhere."""
        logger.info("bitswap: peer %s gone: %s", peer, reason)
        self.engine.peer_disconnected(peer)
        out = self._outbound.get(peer)
        if out is not None:
            out.frames.clear()
            out.queued = 0
            out.broken = out.stream is not None
            out.wake.set()
        for fetch in list(self._fetches):
            if peer in fetch.session.providers():
                fetch.session.peer_disconnected(peer)
                fetch.wake.set()  # the fetch loop's next poll asks elsewhere

    # --- outbound -------------------------------------------------------------------------------
    def _enqueue(self, peer: str, frame: list[bytes]) -> None:
        """Queue one frame (as the pieces ``SendMessage.frame_parts`` gives) for ``peer``."""
        out = self._outbound.get(peer)
        if out is None:
            out = self._outbound[peer] = Outbound(peer)
            self._nursery.start_soon(self._sender, out)
        size = sum(len(part) for part in frame)
        if out.queued + size > self.config.max_queued_bytes:
            self._peer_gone(
                peer, f"more than {self.config.max_queued_bytes} bytes queued; it cannot keep up"
            )
            return
        out.frames.append((frame, size))
        out.queued += size
        out.wake.set()

    async def _sender(self, out: Outbound) -> None:
        """Writes everything queued for one peer on our long-lived stream to it.

        A failed write is retried once on a fresh stream (the old connection may
        be a dead one libp2p still lists); whole frames are resent, so the peer
        never uses a cut one.  A second failure means the peer is gone.
        """
        cfg = self.config
        try:
            while True:
                if out.broken and out.stream is not None:
                    await reset_quietly(out.stream)
                    out.stream = None
                out.broken = False
                if not out.frames:
                    out.wake = trio.Event()  # (no checkpoint since the check: nothing missed)
                    with trio.move_on_after(cfg.idle_timeout):
                        await out.wake.wait()
                    if not out.frames:
                        if out.broken:
                            continue
                        return  # idle, or the peer is gone: close (finally) and forget it
                batch = self._take_batch(out)
                for attempt in (1, 2):
                    try:
                        if out.stream is None:
                            out.stream = await self.host.open_stream(
                                out.peer, PROTOCOL_ID, timeout=cfg.open_timeout
                            )
                        # Shielded: a write cut by a cancellation (this Bitswap closing)
                        # would leave half a Noise message on the connection and break
                        # every stream on it; write_all's own deadline still bounds it.
                        with trio.CancelScope(shield=True):
                            await write_all(
                                out.stream, batch, timeout=cfg.write_timeout, what="bitswap"
                            )
                        break
                    except P2PHierError as exc:  # dial, timeout, broken stream, bad peer id
                        if out.stream is not None:
                            await reset_quietly(out.stream)
                            out.stream = None
                        if attempt == 2 or not isinstance(exc, StreamClosedError):
                            self._peer_gone(out.peer, str(exc))
                            break
                        logger.debug("bitswap: stream to %s broke (%s); reopening", out.peer, exc)
        finally:
            if self._outbound.get(out.peer) is out:
                del self._outbound[out.peer]
            if out.stream is not None:
                with trio.CancelScope(shield=True):
                    if out.broken:
                        await reset_quietly(out.stream)
                    else:
                        await close_quietly(out.stream)

    def _take_batch(self, out: Outbound) -> list[bytes]:
        """The next write: one big frame alone, or small frames together (fewer writes),
        as pieces (``write_all`` copies each byte once, into its own write size)."""
        parts, size = out.frames.popleft()
        self._engine_wake.set()  # room for the next message of blocks, if one is owed
        parts = list(parts)
        while out.frames and size + out.frames[0][1] <= self.config.coalesce_bytes:
            more, more_size = out.frames.popleft()
            parts += more
            size += more_size
        out.queued -= size
        return parts

    # --- the engine -----------------------------------------------------------------------------
    def _engine_action(self, action: EngineAction) -> None:
        if isinstance(action, SendMessage):
            self._enqueue(action.peer, action.frame_parts())
        elif isinstance(action, WantsDropped):
            logger.info(
                "bitswap: dropped %d wants from %s (%s limit)",
                action.count,
                action.peer,
                action.reason,
            )
        elif isinstance(action, LocalBlockCorrupt):
            logger.error("bitswap: stored block %s is corrupt; it was not served", action.cid)

    def _room(self, peer: str) -> int:
        """Messages the engine may queue for ``peer`` now (see ``serve_ahead``)."""
        out = self._outbound.get(peer)
        return self.config.serve_ahead - (len(out.frames) if out is not None else 0)

    async def _engine_loop(self) -> None:
        """Sends what the engine owes peers, as the upload budget and the send queues allow.

        The blocks of the next messages are read (and re-hashed by the store) in a
        worker thread first, so the event loop only frames them (under an upload
        limit, while it waits for the budget); a peer's blocks are read only when
        its send queue has room, never all it asked for at once.
        """
        while True:
            self._engine_wake = trio.Event()
            upcoming = self.engine.upcoming(self._room)
            self._source.retain(upcoming)  # (a want cancelled meanwhile: not kept)
            ahead = self._source.missing(upcoming)
            if ahead:
                self._source.keep(await trio.to_thread.run_sync(self._source.read, ahead))
            actions = self.engine.poll(_now(), room=self._room)
            for action in actions:
                self._engine_action(action)
            wake_at = self.engine.next_wakeup(_now(), room=self._room)
            if wake_at is not None and wake_at <= _now():
                wake_at = _now() + 0.001  # never spin: the engine said "now" but sent nothing
            with trio.move_on_at(math.inf if wake_at is None else wake_at):
                await self._engine_wake.wait()

    # --- bookkeeping ----------------------------------------------------------------------------
    def _record(self, event: Misbehaviour) -> None:
        self.misbehaviour.append(event)
        if self.on_misbehaviour is not None:
            self.on_misbehaviour(event)

    def _start(self) -> None:
        self._nursery.start_soon(self._engine_loop)
        self._nursery.start_soon(self._writer.run)
        self.host.set_stream_handler(PROTOCOL_ID, self._handle_stream)
        self._forget_disconnects = self.host.on_disconnected(self._disconnected)

    async def _stop(self) -> None:
        """Stop serving: no new streams, and the ones being read are reset (their readers
        run in libp2p's tasks, not ours; a peer then reopens to whoever serves next)."""
        self.host.remove_stream_handler(PROTOCOL_ID)
        self._forget_disconnects()
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            for stream in list(self._inbound_streams):
                await reset_quietly(stream, timeout=1.0)


@asynccontextmanager
async def open_bitswap(
    host: Host,
    store: ContentStore,
    config: BitswapConfig | None = None,
    *,
    source: BlockSource | None = None,
    on_misbehaviour: Callable[[Misbehaviour], None] | None = None,
) -> AsyncIterator[Bitswap]:
    """Serve ``store`` (or ``source``) over Bitswap on ``host`` and fetch into ``store``.

    ``source`` replaces the store as the origin of served blocks (a read-only
    cache, or a test's faulty provider); ``on_misbehaviour`` is called for
    every peer caught breaking the protocol.
    """
    async with trio.open_nursery() as nursery:
        bitswap = Bitswap(
            host, store, nursery, config, source=source, on_misbehaviour=on_misbehaviour
        )
        bitswap._start()
        try:
            yield bitswap
        finally:
            await bitswap._stop()
            nursery.cancel_scope.cancel()


def _now() -> float:
    return trio.current_time()
