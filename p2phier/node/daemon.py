"""The p2phier node daemon: one running peer, wired from the pure cores and the network layer.

Owns :class:`NodeDaemon`: it runs a libp2p host (:mod:`p2phier.net.host`),
gossipsub (:mod:`p2phier.net.pubsub`), kad-dht (:mod:`p2phier.net.dht`),
Bitswap over the on-disk store (:mod:`p2phier.net.bitswap`), child
registration (:mod:`p2phier.net.register`) and the local control socket
(:mod:`p2phier.net.control`), and feeds what arrives to the pure state
machines: :class:`~p2phier.records.RecordBook`,
:class:`~p2phier.hierarchy.HierarchyState` and
:class:`~p2phier.announce.AnnouncementFilter`.  Their actions come back here
and become network I/O.

Rules it keeps (protocol/node.md):

* everything from a peer is validated before use: records by the book,
  announcements by the filter BEFORE any fetch; a fetched artifact is verified
  fully (signature, content, lineage, announced base model and size budget)
  before it is pinned and listed as accepted; a failed one is left unpinned;
* gossip may drop anything, so the node re-publishes its record and its latest
  announcements, pulls records from bootstrap peers and providers, and pulls
  heads on every registration (both ways): a drop only delays;
* state that must survive a restart (children, replay marks, sequence numbers,
  head, accepted artifacts) is saved crash-safely under ``<home>/state``;
* SIGTERM/SIGINT stop it cleanly within ``timeouts.shutdown_s``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from p2phier.announce import (
    RECORDS_TOPIC,
    Announcement,
    AnnouncementFilter,
    Reject,
    SenderContext,
    down_topic,
    sign_announcement,
    up_topic,
)
from p2phier.artifact import DEFAULT_LIMITS, Artifact, verify_artifact
from p2phier.artifact.verify import read_artifact
from p2phier.bitswap import Misbehaviour
from p2phier.cid import CID
from p2phier.config import NodeConfig
from p2phier.errors import (
    ArtifactError,
    InvalidPeerIdError,
    MissingBlocksError,
    NetworkError,
    P2PHierError,
    ProtocolViolationError,
    StoreError,
    UsageError,
)
from p2phier.hierarchy import (
    AcceptChild,
    Action,
    DropChild,
    HierarchyState,
    LatencyUptimeScore,
    ParentLost,
    RegisterWith,
    RejectChild,
    SelectParent,
    WaitForParent,
    discovery_key,
    parent_search_keys,
)
from p2phier.identity import Identity, PeerId
from p2phier.learnplan import load_plan
from p2phier.net.bitswap import BitswapConfig, open_bitswap
from p2phier.net.control import serve_control
from p2phier.net.dht import open_dht
from p2phier.net.host import Host, HostConfig, PeerAddr, open_host
from p2phier.net.pubsub import (
    Gossip,
    GossipConfig,
    open_gossip,
    pull_head,
    pull_records,
    serve_pulls,
)
from p2phier.net.register import register_with, serve_registrations
from p2phier.node.control_api import control_handlers, node_peers, node_status
from p2phier.node.learner import Learner
from p2phier.node.objfetch import fetch_any
from p2phier.node.state import NodeState, load_node_state, save_node_state, saved_marks, state_path
from p2phier.records import (
    Capabilities,
    NodeRecord,
    RecordBook,
    RecordStatus,
    next_seq,
    now_ms,
    open_record,
    sign_record,
)
from p2phier.store import DiskStore

logger = logging.getLogger(__name__)

MAX_ACCEPTED = 256  # accepted artifacts listed in status (all stay pinned)
MAX_PARALLEL_FETCHES = 4
#: waits before re-fetching an announced update whose bytes did not arrive
FETCH_RETRY_S = (5.0, 15.0, 30.0, 60.0, 120.0)
#: peers whose announcement drops are counted one by one in status (least recent go first)
MAX_DROP_PEERS = 256
#: seconds between maintenance rounds (hierarchy timers, expiry, saves)
TICK_S = 0.5


class NodeDaemon:
    """One p2phier peer.  ``await run()`` until SIGTERM/SIGINT or :meth:`stop`."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: DiskStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.identity = identity
        self.peer = identity.peer_id
        self.store = store
        self.clock = clock
        self.started = clock()
        self.started_ms = now_ms(self.started)
        self.book = RecordBook()
        self.latencies: dict[PeerId, float] = {}
        self.hierarchy = HierarchyState(
            self.peer,
            config.layer,
            config.domain,
            config=config.hierarchy,
            score=LatencyUptimeScore(self.latencies),
        )
        self.filter = AnnouncementFilter(self.peer, self.book.get)
        self.head: CID | None = None
        self.base_model_id = config.base_model_id
        self.learner: Learner | None = None
        if config.learn_enabled:
            self.learner = Learner(self, load_plan(config.learn_plan))
        self.accepted: deque[dict[str, Any]] = deque(maxlen=MAX_ACCEPTED)
        self.rejected: Counter[str] = Counter()  # announcement drop reasons
        #: peers refused as p2phier nodes (not as transport peers), by reason
        self.refused: Counter[str] = Counter()
        # sending peer (gossip origin, or the peer a head was pulled from) -> drop reasons
        self.rejected_by_peer: OrderedDict[str, Counter[str]] = OrderedDict()
        self.fetch_failures: deque[dict[str, Any]] = deque(maxlen=64)
        self.fetching: set[str] = set()
        self.misbehaviour: deque[dict[str, Any]] = deque(maxlen=64)
        self._record_seq: int | None = None
        self._ann_seq: int | None = None
        self._announcements: dict[str, bytes] = {}  # topic -> our latest signed announcement
        self._signed_record = b""
        self._record: NodeRecord | None = None
        self._registering: set[PeerId] = set()
        self._dirty = False
        self._stop = trio.Event()
        self._actions_send, self._actions_recv = trio.open_memory_channel[Action](4096)
        self._fetch_send, self._fetch_recv = trio.open_memory_channel[Announcement](256)
        self._host: Host | None = None
        self._fetch_limiter = trio.CapacityLimiter(MAX_PARALLEL_FETCHES)
        self._gossip: Gossip | None = None
        self._state_path = state_path(config.home)
        load_node_state(self._state_path, self.peer, self._apply_state, max_accepted=MAX_ACCEPTED)

    # --- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        cfg = self.config
        host_cfg = HostConfig(
            listen=cfg.listen,
            dial_timeout=cfg.dial_timeout_s,
            stream_open_timeout=cfg.dial_timeout_s,
            shutdown_timeout=cfg.shutdown_timeout_s,
        )
        bs_cfg = BitswapConfig(write_timeout=cfg.stream_timeout_s, open_timeout=cfg.dial_timeout_s)
        async with open_host(self.identity, config=host_cfg) as host:
            self._host = host
            async with (
                open_gossip(host, GossipConfig(heartbeat_s=cfg.gossip_heartbeat_s)) as gossip,
                open_dht(host, timeout=cfg.dial_timeout_s) as dht,
                open_bitswap(
                    host, self.store, bs_cfg, on_misbehaviour=self._on_misbehaviour
                ) as bitswap,
            ):
                self._gossip = gossip
                self.dht = dht
                self.bitswap = bitswap
                if cfg.upload_rate_limit:
                    bitswap.set_upload_rate(float(cfg.upload_rate_limit))
                timeout = cfg.stream_timeout_s
                serve_pulls(host, self._announcements.get, self._all_records, timeout=timeout)
                serve_registrations(
                    host, self._decide_registration, lambda: self._signed_record, timeout=timeout
                )
                self._issue_record()
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery_for_spawn = nursery
                        await nursery.start(
                            serve_control, cfg.control_socket, control_handlers(self)
                        )
                        await gossip.subscribe(RECORDS_TOPIC, self._validate_record, _ignore)
                        if cfg.layer.below is not None:
                            topic = up_topic(self.peer)
                            await gossip.subscribe(
                                topic, self._announcement_validator(topic), _ignore
                            )
                        nursery.start_soon(self._signals)
                        nursery.start_soon(self._action_loop)
                        nursery.start_soon(self._fetch_loop)
                        nursery.start_soon(self._maintenance_loop)
                        nursery.start_soon(self._bootstrap_loop)
                        nursery.start_soon(self._discovery_loop)
                        if self.learner is not None:
                            nursery.start_soon(self.learner.run)
                        # Children restored from the last run: pull what they published meanwhile.
                        for child in self.hierarchy.children:
                            nursery.start_soon(self._pull_child_head, child)
                        if on_ready is not None:
                            on_ready(self.status())
                        await self._stop.wait()
                        logger.info("node %s stopping", self.peer)
                        self._save_state()
                        nursery.cancel_scope.cancel()
                finally:
                    # Inbound stream handlers (registrations, pulls) run until the host is
                    # down, after this nursery has closed: they must not spawn into it.
                    self._nursery_for_spawn = None
        self._save_state()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("signal %s: shutting down", signal.Signals(signum).name)
                self._stop.set()
                return

    # --- node record --------------------------------------------------------------------------
    def _advertised(self) -> tuple[str, ...]:
        addrs = self.config.advertise or tuple(self._host.listen_addrs if self._host else ())
        return tuple(dict.fromkeys(addrs))[:16]

    def _issue_record(self) -> None:
        now = self.clock()
        self._record_seq = next_seq(self._record_seq, now)
        ram = self.config.ram_bytes or _physical_memory()
        record = NodeRecord(
            peer_id=self.peer,
            addrs=self._advertised(),
            layer=self.config.layer,
            domain=self.config.domain,
            base_model_id=self.base_model_id,
            capabilities=Capabilities(ram, self.config.max_params, self.config.hardware),
            head=self.head,
            seq=self._record_seq,
            issued_ms=now_ms(now),
            expires_ms=now_ms(now) + int(self.config.record_ttl_s * 1000),
            started_ms=min(self.started_ms, now_ms(now)),
        )
        self._record = record
        self._signed_record = sign_record(record, self.identity)
        self.book.accept(self._signed_record, now)
        self._dirty = True

    async def _publish_record(self) -> None:
        if self._gossip is None:
            return
        try:
            await self._gossip.publish(RECORDS_TOPIC, self._signed_record)
        except NetworkError as exc:
            logger.debug("record publish: %s", exc)

    def _all_records(self) -> list[bytes]:
        now = self.clock()
        out = []
        for record in self.book.query(now=now):
            signed = self.book.signed_bytes(record.peer_id)
            if signed is not None:
                out.append(signed)
        return out

    def offer_record(self, signed: bytes) -> RecordStatus:
        """Offer a signed record from anywhere (gossip, pull, registration) to the book."""
        now = self.clock()
        result = self.book.accept(signed, now)
        record = result.record
        if record is not None and result.status in (
            RecordStatus.NEW,
            RecordStatus.REPLACED,
            RecordStatus.DUPLICATE,
        ):
            if record.peer_id != self.peer and self._host is not None and record.addrs:
                self._host.add_addrs(str(record.peer_id), record.addrs)
            if record.peer_id == self.hierarchy.parent:
                self._queue(self.hierarchy.parent_heard(record.peer_id, now))
            if result.status is not RecordStatus.DUPLICATE:
                self._queue(self.hierarchy.record_seen(record, now))
        return result.status

    def _validate_record(self, origin: str, data: bytes) -> bool:
        status = self.offer_record(data)
        return status in (RecordStatus.NEW, RecordStatus.REPLACED, RecordStatus.DUPLICATE)

    # --- hierarchy actions ---------------------------------------------------------------------
    def _queue(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._actions_send.send_nowait(action)
            except trio.WouldBlock:
                logger.warning("hierarchy action queue full; dropped %s", action)

    async def _action_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            async for action in self._actions_recv:
                await self._do(action, nursery)

    async def _do(self, action: Action, nursery: trio.Nursery) -> None:
        assert self._gossip is not None
        if isinstance(action, SelectParent):
            logger.info("parent: %s (%s)", action.peer, action.reason)
            if action.previous is not None:
                await self._gossip.unsubscribe(down_topic(action.previous))
            topic = down_topic(action.peer)
            await self._gossip.subscribe(topic, self._announcement_validator(topic), _ignore)
            self._dirty = True
        elif isinstance(action, RegisterWith):
            if action.peer not in self._registering:
                self._registering.add(action.peer)
                nursery.start_soon(self._register, action.peer)
        elif isinstance(action, ParentLost):
            logger.warning("parent %s lost: %s", action.peer, action.reason)
            await self._gossip.unsubscribe(down_topic(action.peer))
        elif isinstance(action, WaitForParent):
            logger.info("waiting for a parent: %s", action.reason)
        elif isinstance(action, AcceptChild | DropChild | RejectChild):
            logger.info("child %s: %s", action.peer, type(action).__name__)
            self._dirty = True

    async def _register(self, parent: PeerId) -> None:
        assert self._host is not None
        began = trio.current_time()
        try:
            verdict = await register_with(
                self._host, str(parent), self._signed_record, timeout=self.config.stream_timeout_s
            )
        except (NetworkError, ProtocolViolationError) as exc:
            logger.info("registration with %s failed: %s", parent, exc)
            self._queue(self.hierarchy.registration_failed(parent, self.clock(), str(exc)))
            return
        finally:
            self._registering.discard(parent)
        self.latencies[parent] = trio.current_time() - began
        self.offer_record(verdict.parent_record)
        now = self.clock()
        if not verdict.accepted:
            logger.warning("%s refused our registration: %s", parent, verdict.reason)
            self._queue(self.hierarchy.registration_failed(parent, now, verdict.reason))
            return
        self._queue(self.hierarchy.parent_heard(parent, now))
        # The pull fallback for gossip: what did the parent announce while we were away?
        await self._pull_and_process(parent, down_topic(parent))

    def _decide_registration(self, remote: str, signed: bytes) -> tuple[bool, str]:
        accepted, reason = self._registration_verdict(remote, signed)
        if not accepted:
            self.refused["registration"] += 1
            logger.info("registration from %s refused: %s", remote, reason)
        return accepted, reason

    def _registration_verdict(self, remote: str, signed: bytes) -> tuple[bool, str]:
        now = self.clock()
        status = self.offer_record(signed)
        try:
            record = open_record(signed)
        except ProtocolViolationError as exc:
            return False, f"your node record was refused: {exc}"
        newer = self.book.get(record.peer_id) if status is RecordStatus.STALE_SEQ else None
        if newer is not None:
            # Its newer record reached us by gossip while this registration was in flight
            # (e.g. it just loaded its tier): register it with the newest one we hold.
            record = newer
        elif not status.accepted and status is not RecordStatus.DUPLICATE:
            return False, f"your node record was refused: {status.value}"
        if str(record.peer_id) != remote:
            return False, "the record is not the registering peer's own"
        actions = self.hierarchy.child_registered(record, now)
        self._queue(actions)
        for action in actions:
            if isinstance(action, RejectChild):
                return False, action.reason
        if self._host is not None:
            self._spawn(self._pull_child_head, record.peer_id)
        return True, "registered"

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start a background task, unless the node is shutting down (then: skip it)."""
        nursery = self._nursery_for_spawn
        if nursery is None or self._stop.is_set():
            logger.debug("shutting down: %s not started", getattr(fn, "__name__", fn))
            return
        nursery.start_soon(fn, *args)

    _nursery_for_spawn: trio.Nursery | None = None

    async def _pull_child_head(self, child: PeerId) -> None:
        await self._pull_and_process(child, up_topic(self.peer))

    async def _pull_and_process(self, peer: PeerId, topic: str) -> None:
        assert self._host is not None
        try:
            data = await pull_head(
                self._host, str(peer), topic, timeout=self.config.stream_timeout_s
            )
        except NetworkError as exc:
            logger.debug("head pull from %s on %s failed: %s", peer, topic, exc)
            return
        if data is not None:
            self._check_announcement(topic, data, str(peer))

    # --- announcements --------------------------------------------------------------------------
    def _announcement_validator(self, topic: str) -> Callable[[str, bytes], bool]:
        def validate(origin: str, data: bytes) -> bool:
            return self._check_announcement(topic, data, origin)

        return validate

    def _check_announcement(self, topic: str, data: bytes, sender: str) -> bool:
        """Filter one announcement from ``sender`` (the gossip message's signed origin,
        or the peer its head was pulled from); count a drop under both."""
        ctx = SenderContext(topic, self.hierarchy.parent, self.hierarchy.children)
        result = self.filter.validate(data, ctx, self.clock())
        if not result.accepted:
            reason = result.reason.value if result.reason else "?"
            self.rejected[reason] += 1
            per_peer = self.rejected_by_peer.get(sender)
            if per_peer is None:
                per_peer = self.rejected_by_peer[sender] = Counter()
                while len(self.rejected_by_peer) > MAX_DROP_PEERS:
                    self.rejected_by_peer.popitem(last=False)
            self.rejected_by_peer.move_to_end(sender)
            per_peer[reason] += 1
            # Duplicates are every child's periodic re-announcement: not worth a line each.
            level = logging.DEBUG if result.reason is Reject.DUPLICATE else logging.INFO
            logger.log(
                level,
                "announcement on %s from %s dropped (%s): %s",
                topic,
                sender,
                reason,
                result.detail,
            )
            return False
        assert result.announcement is not None
        self._dirty = True
        try:
            self._fetch_send.send_nowait(result.announcement)
        except trio.WouldBlock:
            logger.warning("fetch queue full; announcement of %s dropped", result.announcement.cid)
        return True

    async def _fetch_loop(self) -> None:
        limiter = self._fetch_limiter
        async with trio.open_nursery() as nursery:
            async for ann in self._fetch_recv:
                nursery.start_soon(self._fetch_announced, ann, limiter)

    async def _fetch_announced(
        self, ann: Announcement, limiter: trio.CapacityLimiter, attempt: int = 0
    ) -> None:
        key = str(ann.cid)
        if key in self.fetching or any(a["cid"] == key for a in self.accepted):
            return
        self.fetching.add(key)
        try:
            async with limiter:
                # The author has it (it just announced it): ask it first, and the DHT's
                # providers only when a retry is needed (a lookup costs seconds per hop).
                providers = [str(ann.author)]
                if attempt:
                    providers += [
                        p for p in await self._dht_providers(ann.cid) if p not in providers
                    ]
                art = await self._fetch_artifact(ann.cid, providers, ann)
            await trio.to_thread.run_sync(self.store.pin, ann.cid)
            self.accepted.append(
                {
                    "cid": key,
                    "author": str(ann.author),
                    "topic": ann.topic,
                    "round": ann.round,
                    "seq": ann.seq,
                    "parent": str(ann.parent) if ann.parent else None,
                    "bytes": art.stored_bytes,
                    "accepted_ms": now_ms(self.clock()),
                    "created_ms": ann.created_ms,
                }
            )
            self._dirty = True
            logger.info("accepted %s from %s (round %d)", key, ann.author, ann.round)
            if self.learner is not None:
                self.learner.on_accepted(ann, art)
        except (P2PHierError, trio.TooSlowError) as exc:
            self.fetch_failures.append({"cid": key, "author": str(ann.author), "error": str(exc)})
            # The announcement was valid: only its bytes did not arrive (a connection reset, a
            # busy provider).  Its re-publications are duplicates and never fetched again, so
            # retry it here while it is still the author's newest on that topic.
            transient = isinstance(exc, NetworkError | MissingBlocksError | trio.TooSlowError)
            if transient and attempt < len(FETCH_RETRY_S):
                logger.info("update %s from %s not fetched (%s); retry in %.0f s", key,
                            ann.author, exc, FETCH_RETRY_S[attempt])  # fmt: skip
                self._spawn(self._retry_fetch, ann, limiter, attempt + 1)
            else:
                logger.warning("update %s from %s rejected: %s", key, ann.author, exc)
        finally:
            self.fetching.discard(key)

    async def _retry_fetch(
        self, ann: Announcement, limiter: trio.CapacityLimiter, attempt: int
    ) -> None:
        await trio.sleep(FETCH_RETRY_S[attempt - 1])
        mark = self.filter.high_water(ann.topic, ann.author)
        if mark is not None and mark.seq != ann.seq:
            return  # superseded by a newer announcement, which is fetched instead
        await self._fetch_announced(ann, limiter, attempt)

    async def _fetch_artifact(self, cid: CID, providers: list[str], ann: Announcement) -> Artifact:
        """Fetch an artifact's envelope, content and lineage, then verify it fully."""
        timeout = self.config.block_timeout_s * 6
        current: CID | None = cid
        for _ in range(DEFAULT_LIMITS.max_chain):
            assert current is not None
            await self.bitswap.fetch(current, providers, timeout=timeout, pin=False)
            art = await trio.to_thread.run_sync(read_artifact, self.store.get_block, current)
            m = art.manifest
            if (
                current == cid
                and ann.size
                and len(art.envelope_bytes) + m.config.size + (m.tensors.size) > ann.size
            ):
                raise ProtocolViolationError(
                    f"artifact {cid} is larger than the {ann.size} bytes its announcement declared"
                )
            for ref in (m.config.cid, m.tensors.cid):
                await self.bitswap.fetch(ref, providers, timeout=timeout, pin=False)
            current = m.parent
            if current is None:
                break
        art = await trio.to_thread.run_sync(
            lambda: verify_artifact(self.store, cid, expected_base_model=ann.base_model_id)
        )
        if art.manifest.parent != ann.parent:
            raise ArtifactError(f"artifact {cid}'s lineage differs from its announcement")
        return art

    async def fetch_object(self, cid_text: str, providers: list[str]) -> None:
        """Fetch and pin an object (e.g. a tier bundle) from ``providers`` and DHT providers."""
        await fetch_any(
            self.bitswap,
            CID.parse(cid_text),
            providers,
            self._dht_providers,
            timeout=self.config.block_timeout_s * 60,
        )

    def connected(self, peer: PeerId) -> bool:
        return self._host is not None and self._host.is_connected(str(peer))

    def set_base_model(self, base_model_id: str) -> None:
        """The learner built or loaded its tier: advertise it (a new signed record)."""
        if base_model_id != self.base_model_id:
            self.base_model_id = base_model_id
            self._issue_record()
            self._spawn(self._publish_record)

    async def _dht_providers(self, cid: CID) -> list[str]:
        try:
            found = await self.dht.find_providers(cid, count=5, timeout=5.0)
        except NetworkError as exc:
            logger.debug("no DHT providers for %s: %s", cid, exc)
            return []
        return [str(p) for p in found]

    # --- publish / fetch (control commands) ------------------------------------------------------
    async def publish(self, cid_text: str, to: str) -> dict[str, Any]:
        """Pin, provide and announce an artifact already in the local store."""
        assert self._gossip is not None
        cid = CID.parse(cid_text)
        if to == "parent":
            parent = self.hierarchy.parent
            if parent is None:
                raise UsageError("this node has no parent yet; cannot publish --to parent")
            topic = up_topic(parent)
        elif to == "children":
            if self.config.layer.below is None:
                raise UsageError(f"a {self.config.layer.label} node has no children")
            topic = down_topic(self.peer)
        else:
            raise UsageError(f"--to must be parent or children, not {to!r}")
        art = await trio.to_thread.run_sync(
            lambda: verify_artifact(self.store, cid, expected_base_model=self.base_model_id)
        )
        await trio.to_thread.run_sync(self.store.pin, cid)
        now = self.clock()
        self._ann_seq = next_seq(self._ann_seq, now)
        m = art.manifest
        ann = Announcement(
            author=self.peer,
            topic=topic,
            cid=cid,
            parent=m.parent,
            layer=self.config.layer,
            domain=self.config.domain,
            base_model_id=self.base_model_id,
            round=m.round,
            seq=self._ann_seq,
            created_ms=now_ms(now),
            metrics=tuple(sorted((x.name, float(x.value)) for x in m.metrics))[:16],
            size=art.stored_bytes,
        )
        signed = sign_announcement(ann, self.identity)
        self._announcements[topic] = signed
        self.head = cid
        self._issue_record()
        self._save_state()
        # Announce first: receivers fetch from the author at once. The DHT provider record
        # (for other providers' fetches and later readers) follows in the background: a
        # lookup can take seconds, and every hop of a round would wait for it.
        await self._gossip_announcement(topic, signed)
        self._spawn(self._provide, cid)
        await self._publish_record()
        return {
            "cid": str(cid),
            "topic": topic,
            "seq": ann.seq,
            "round": ann.round,
            "bytes": art.stored_bytes,
            "subscribers": self._gossip.peers_on(topic),
        }

    async def _provide(self, cid: CID) -> None:
        if not await self.dht.provide(cid, timeout=5.0):
            logger.info("no DHT peer took the provider record of %s (yet)", cid)

    async def _gossip_announcement(self, topic: str, signed: bytes) -> None:
        assert self._gossip is not None
        try:
            await self._gossip.publish(topic, signed)
        except NetworkError as exc:
            logger.warning("announcement publish on %s: %s", topic, exc)

    async def fetch(self, cid_text: str, timeout: float) -> dict[str, Any]:
        """Fetch any object by CID from connected peers and DHT providers; pin it."""
        assert self._host is not None
        return await fetch_any(
            self.bitswap,
            CID.parse(cid_text),
            self._host.connected_peers(),
            self._dht_providers,
            timeout=timeout,
        )

    # --- loops --------------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        next_refresh = self.clock() + self.config.record_refresh_s
        republish_every = max(2.0, 5 * self.config.gossip_heartbeat_s)
        next_republish = 0.0
        while True:
            now = self.clock()
            for record in self.book.expire(now):
                self._queue(self.hierarchy.record_expired(record.peer_id, now))
            self._queue(self.hierarchy.tick(now))
            if now >= next_refresh:
                self._issue_record()
                next_refresh = now + self.config.record_refresh_s
            if now >= next_republish:
                # Gossip drops silently: re-publish our record and latest heads.
                next_republish = now + republish_every
                await self._publish_record()
                for topic, signed in list(self._announcements.items()):
                    await self._gossip_announcement(topic, signed)
            if self._dirty:
                await trio.to_thread.run_sync(self._save_state)
            await trio.sleep(TICK_S)

    async def _bootstrap_loop(self) -> None:
        assert self._host is not None
        targets = [PeerAddr.parse(a) for a in self.config.bootstrap]
        provided = False
        while True:
            for target in targets:
                if target.peer == self._host.peer_id or self._host.is_connected(target.peer):
                    continue
                try:
                    await self._host.connect(target)
                except NetworkError as exc:
                    logger.info("bootstrap %s unreachable: %s", target, exc)
                    continue
                await self._joined(target.peer)
            if not provided and (self._host.connected_peers() or not targets):
                provided = await self.dht.provide(
                    discovery_key(self.config.layer, self.config.domain)
                )
            await trio.sleep(2.0 if not provided else 5.0)

    async def _joined(self, peer: str) -> None:
        """A fresh connection: routing table, and pull the peer's records (gossip may lag)."""
        assert self._host is not None
        await self.dht.add_peer(peer)
        try:
            for signed in await pull_records(
                self._host, peer, timeout=self.config.stream_timeout_s
            ):
                self.offer_record(signed)
        except NetworkError as exc:
            logger.debug("records pull from %s failed: %s", peer, exc)

    async def _discovery_loop(self) -> None:
        assert self._host is not None
        if self.config.layer.above is None:
            return
        while True:
            if self.hierarchy.parent is None:
                for _layer, _domain, key in parent_search_keys(
                    self.config.layer, self.config.domain
                ):
                    for found in await self._providers_of(key):
                        try:
                            known = PeerId.parse(found.peer) in self.book
                        except InvalidPeerIdError:
                            # any peer may put itself under a discovery key; one with a
                            # non-Ed25519 key can sign no node record: not a parent
                            self.refused["provider-not-ed25519"] += 1
                            continue
                        if known:
                            continue
                        try:
                            await self._host.connect(found)
                        except NetworkError:
                            continue
                        await self._joined(found.peer)
            await trio.sleep(2.0 if self.hierarchy.parent is None else 30.0)

    async def _providers_of(self, key: CID) -> list[PeerAddr]:
        try:
            return await self.dht.find_providers(key, timeout=5.0)
        except NetworkError:
            return []

    def _on_misbehaviour(self, event: Misbehaviour) -> None:
        self.misbehaviour.append(
            {"peer": event.peer, "reason": event.reason, "detail": event.detail}
        )

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return node_status(self)

    def peers(self, layer: str | None, domain: str | None) -> list[dict[str, Any]]:
        return node_peers(self, layer, domain)

    # --- persistence ---------------------------------------------------------------------------
    def _save_state(self) -> None:
        self._dirty = False  # first: a change made while this runs (in a thread) re-marks it
        state = NodeState(
            record_seq=self._record_seq,
            announcement_seq=self._ann_seq,
            head=self.head,
            hierarchy=self.hierarchy.snapshot(),
            marks=saved_marks(self.filter.marks()),
            announcements=dict(self._announcements),
            accepted=tuple(self.accepted),
        )
        if not save_node_state(self._state_path, self.peer, state):
            self._dirty = True

    def _apply_state(self, state: NodeState) -> None:
        """Adopt saved state (on start); raising here moves the file aside."""
        self._record_seq = state.record_seq
        self._ann_seq = state.announcement_seq
        self.head = state.head
        self.hierarchy.restore(state.hierarchy, self.clock())
        for m in state.marks:
            self.filter.restore(m.topic, m.author, m.seq, m.round, m.digest)
        self._announcements.update(state.announcements)
        self.accepted.extend(state.accepted)


async def _ignore(origin: str, data: bytes) -> None:
    """Subscription handler: everything was done by the validator."""


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


def open_node_store(config: NodeConfig) -> DiskStore:
    return DiskStore(Path(config.store_path))


__all__ = ["NodeDaemon", "StoreError", "open_node_store"]
