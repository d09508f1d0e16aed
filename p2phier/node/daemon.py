"""The p2phier node daemon: one running peer, wired from the pure cores and the network layer.

Owns :class:`NodeDaemon`, built on network services that already run
(:mod:`p2phier.node.services`: host, gossipsub, kad-dht, Bitswap over the
on-disk store; :meth:`NodeDaemon.open` opens both).  Its :meth:`~NodeDaemon.run`
serves pulls, child registration (:mod:`p2phier.net.register`) and the local
control socket (:mod:`p2phier.net.control`), and feeds what arrives to the
pure state machines: the records (:mod:`p2phier.node.noderecords`),
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
  head, accepted artifacts, the pins the node made) is saved crash-safely under
  ``<home>/state``;
* resources stay bounded (:mod:`p2phier.node.housekeeping`): pins the hierarchy
  no longer needs are released and garbage collected, per-peer state pruned;
* SIGTERM/SIGINT stop it cleanly within ``timeouts.shutdown_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import trio

from p2phier.announce import (
    RECORDS_TOPIC,
    Announcement,
    SenderContext,
    down_topic,
    sign_announcement,
    up_topic,
)
from p2phier.artifact import Artifact, pin_artifact, verify_artifact
from p2phier.cid import CID
from p2phier.config import NodeConfig
from p2phier.errors import (
    InvalidPeerIdError,
    NetworkError,
    ProtocolViolationError,
    StoreError,
    UsageError,
)
from p2phier.hierarchy import (
    AcceptChild,
    Action,
    DropChild,
    HierarchyState,
    MeasuredScore,
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
from p2phier.net.bitswap import Bitswap
from p2phier.net.bitswap_state import FetchStats
from p2phier.net.control import serve_control
from p2phier.net.host import Host, PeerAddr
from p2phier.net.pubsub import pull_head, pull_records, serve_pulls
from p2phier.net.register import register_with, serve_registrations
from p2phier.node.control_api import control_handlers, node_peers, node_status
from p2phier.node.guard import Guard
from p2phier.node.housekeeping import housekeeping_for
from p2phier.node.intake import MAX_ACCEPTED, UpdateIntake
from p2phier.node.learner import Learner
from p2phier.node.measure import CandidateMeter
from p2phier.node.noderecords import NodeRecords
from p2phier.node.objfetch import fetch_any
from p2phier.node.services import NetServices, open_services
from p2phier.node.state import NodeState, load_node_state, save_node_state, saved_marks, state_path
from p2phier.records import NodeRecord, RecordBook, RecordStatus, next_seq, now_ms
from p2phier.store import DiskStore
from p2phier.trust.report import TRUST_TOPIC

logger = logging.getLogger(__name__)

#: seconds between maintenance rounds (hierarchy timers, expiry, saves)
TICK_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Publishable:
    """What an announcement says of the artifact it names, and the files it pinned."""

    parent: CID | None
    round: int
    metrics: tuple[tuple[str, float], ...]
    size: int  # envelope, config and payload bytes
    files: tuple[CID, ...]


class NodeDaemon:
    """One p2phier peer on running network services (:meth:`open` builds both).

    ``await run()`` until SIGTERM/SIGINT or :meth:`stop`.
    """

    #: the learning worker's class (the devnet's poisoning attackers substitute theirs)
    learner_class: type[Learner] = Learner

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        store: DiskStore,
        services: NetServices,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.identity = identity
        self.peer = identity.peer_id
        self.store = store
        self.services = services
        self.clock = clock
        self.started = clock()
        self.started_ms = now_ms(self.started)
        self.book = RecordBook()
        #: round trips this node measured (pings, registrations): what parent choice uses
        self.latencies: dict[PeerId, float] = {}
        score = MeasuredScore(self.latencies)
        plan = load_plan(config.learn_plan) if config.learn_enabled else None
        hierarchy_config = config.hierarchy
        if plan is not None and not plan.parent:
            hierarchy_config = dataclasses.replace(
                hierarchy_config,
                closed='this node\'s learning plan is a leaf ("parent": false): it publishes '
                "no versions for children",
            )
        self.hierarchy = HierarchyState(
            self.peer,
            config.layer,
            config.domain,
            config=hierarchy_config,
            score=score,
            anchors=config.anchors,
            measured=score.measured,
        )
        self.meter = CandidateMeter(
            self.peer,
            self.hierarchy,
            ping=self._ping,
            spawn=self._spawn,
            queue=self._queue,
            clock=clock,
            latencies=self.latencies,  # one table: pings and registration round trips
        )
        self.intake = UpdateIntake(
            self.peer,
            store,
            self.book.get,
            self._sender_context,
            clock=clock,
            block_timeout_s=config.block_timeout_s,
            on_accepted=self._on_accepted,
            on_evidence=lambda ev: self.guard.evidence(ev),  # noqa: PLW0108 - built below
            on_change=self._mark_dirty,
            rank_providers=lambda providers: self.guard.rank_providers(providers),  # noqa: PLW0108
            on_pinned=lambda ann, files: self.housekeeping.accepted(ann, files),  # noqa: PLW0108
            served_to=self._served_to,
        )
        #: evidence about peers in, trust's isolations enforced (p2phier/node/guard.py)
        self.guard = Guard(
            identity=identity,
            anchors=config.anchors,
            clock=clock,
            hierarchy=self.hierarchy,
            intake=self.intake,
            queue=self._queue,
            spawn=self._spawn,
            gossip=lambda: services.gossip,
            disconnect=services.host.disconnect,
            on_change=self._mark_dirty,
            global_interval_s=config.trust_global_interval_s,
        )
        services.bitswap.on_misbehaviour = self.guard.bitswap
        services.bitswap.engine.serve_last = self.guard.served_last
        #: peers refused as p2phier nodes (not as transport peers), by reason
        self.refused: Counter[str] = Counter()
        #: this node's record, everyone's records, children's registrations
        self.records = NodeRecords(
            identity,
            config,
            services,
            self.book,
            self.guard,
            clock=clock,
            refused=self.refused,
            on_record=self._record_heard,
            admit_child=self._admit_child,
            on_change=self._mark_dirty,
        )
        self.head: CID | None = None
        self.base_model_id = config.base_model_id
        self.learner: Learner | None = None
        if plan is not None:
            self.learner = self.learner_class(self, plan)
        #: the node's own pins, garbage collection, per-peer state pruned
        self.housekeeping = housekeeping_for(self, self._mark_dirty)
        self._ann_seq: int | None = None
        self._announcements: dict[str, bytes] = {}  # topic -> our latest signed announcement
        self._registering: set[PeerId] = set()
        self._dirty = False
        self._stop = trio.Event()
        self._actions_send, self._actions_recv = trio.open_memory_channel[Action](4096)
        self._state_path = state_path(config.home)
        load_node_state(self._state_path, self.peer, self._apply_state, max_accepted=MAX_ACCEPTED)

    # --- lifecycle -------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        config: NodeConfig,
        identity: Identity,
        store: DiskStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[Self]:
        """Open the node's network services and build the node on them."""
        async with open_services(config, identity, store) as services:
            node = cls(config, identity, store, services, clock=clock)
            yield node
        # What changed while the services shut down (registrations answered meanwhile).
        node._save_state()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        cfg = self.config
        host, gossip = self.services.host, self.services.gossip
        timeout = cfg.stream_timeout_s
        serve_pulls(host, self._announcements.get, self.records.all_signed, timeout=timeout)
        serve_registrations(
            host, self.records.decide_registration, lambda: self.records.signed, timeout=timeout
        )
        self._issue_record()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery_for_spawn = nursery
                await nursery.start(serve_control, cfg.control_socket, control_handlers(self))
                await gossip.subscribe(RECORDS_TOPIC, self._validate_record, _ignore)
                await gossip.subscribe(TRUST_TOPIC, self.guard.receive_report, _ignore)
                if cfg.layer.below is not None:
                    topic = up_topic(self.peer)
                    await gossip.subscribe(topic, self._announcement_validator(topic), _ignore)
                nursery.start_soon(self._signals)
                nursery.start_soon(self._action_loop)
                nursery.start_soon(self.intake.run, _Fetcher(self), self._spawn)
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

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("signal %s: shutting down", signal.Signals(signum).name)
                self._stop.set()
                return

    # --- node records ------------------------------------------------------------------------
    def _issue_record(self) -> None:
        self.records.issue(
            head=self.head, base_model_id=self.base_model_id, started_ms=self.started_ms
        )

    def _record_heard(self, record: NodeRecord, status: RecordStatus, now: float) -> None:
        """A record the book took (new, newer or again): what it means for the hierarchy."""
        if record.peer_id == self.hierarchy.parent:
            self._queue(self.hierarchy.parent_heard(record.peer_id, now))
        if status is not RecordStatus.DUPLICATE:
            self._queue(self.hierarchy.record_seen(record, now))
        self.meter.consider(record, now)

    def _admit_child(self, record: NodeRecord, now: float) -> tuple[bool, str]:
        """A registering peer's record checked out: the hierarchy decides."""
        actions = self.hierarchy.child_registered(record, now)
        self._queue(actions)
        for action in actions:
            if isinstance(action, RejectChild):
                return False, action.reason
        self._spawn(self._pull_child_head, record.peer_id)
        return True, "registered"

    async def _ping(self, peer: str) -> float:
        return await self.services.host.ping(peer, timeout=self.config.dial_timeout_s)

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
        gossip = self.services.gossip
        if isinstance(action, SelectParent):
            logger.info("parent: %s (%s)", action.peer, action.reason)
            if action.previous is not None:
                self.intake.author_gone(action.previous)
                await gossip.unsubscribe(down_topic(action.previous))
            topic = down_topic(action.peer)
            await gossip.subscribe(topic, self._announcement_validator(topic), _ignore)
            self._dirty = True
        elif isinstance(action, RegisterWith):
            if action.peer not in self._registering:
                self._registering.add(action.peer)
                nursery.start_soon(self._register, action.peer)
        elif isinstance(action, ParentLost):
            logger.warning("parent %s lost: %s", action.peer, action.reason)
            self.intake.author_gone(action.peer)
            await gossip.unsubscribe(down_topic(action.peer))
        elif isinstance(action, WaitForParent):
            logger.info("waiting for a parent: %s", action.reason)
        elif isinstance(action, AcceptChild | DropChild | RejectChild):
            logger.info("child %s: %s", action.peer, type(action).__name__)
            if isinstance(action, DropChild):
                self.intake.author_gone(action.peer)
            self._dirty = True

    async def _register(self, parent: PeerId) -> None:
        began = trio.current_time()
        try:
            verdict = await register_with(
                self.services.host,
                str(parent),
                self.records.signed,
                timeout=self.config.stream_timeout_s,
            )
        except (NetworkError, ProtocolViolationError) as exc:
            logger.info("registration with %s failed: %s", parent, exc)
            self._queue(self.hierarchy.registration_failed(parent, self.clock(), str(exc)))
            return
        finally:
            self._registering.discard(parent)
        self.latencies[parent] = trio.current_time() - began
        self.records.offer(verdict.parent_record)
        now = self.clock()
        if not verdict.accepted:
            logger.warning("%s refused our registration: %s", parent, verdict.reason)
            self._queue(self.hierarchy.registration_failed(parent, now, verdict.reason))
            return
        self._queue(self.hierarchy.parent_heard(parent, now))
        # The pull fallback for gossip: what did the parent announce while we were away?
        await self._pull_and_process(parent, down_topic(parent))

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
        try:
            data = await pull_head(
                self.services.host, str(peer), topic, timeout=self.config.stream_timeout_s
            )
        except NetworkError as exc:
            logger.debug("head pull from %s on %s failed: %s", peer, topic, exc)
            return
        if data is not None:
            self.intake.offer(topic, data, str(peer))

    # --- announcements --------------------------------------------------------------------------
    def _announcement_validator(self, topic: str) -> Callable[[str, bytes], bool]:
        def validate(origin: str, data: bytes) -> bool:
            return self.intake.offer(topic, data, origin)

        return validate

    def _sender_context(self, topic: str) -> SenderContext:
        return SenderContext(topic, self.hierarchy.parent, self.hierarchy.children)

    def _on_accepted(self, ann: Announcement, art: Artifact) -> None:
        if self.learner is None or not self.learner.judges(ann):
            self.guard.useful_update(str(ann.author))
        if self.learner is not None:
            self.learner.on_accepted(ann, art)

    def _mark_dirty(self) -> None:
        self._dirty = True

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Updates accepted (fetched, verified, pinned), oldest first."""
        return list(self.intake.accepted)

    async def fetch_object(
        self, cid_text: str, providers: list[str], *, purpose: str = "tiers"
    ) -> None:
        """Fetch and pin an object (e.g. a tier bundle) from ``providers`` and DHT providers."""
        await fetch_any(
            self.services.bitswap,
            CID.parse(cid_text),
            providers,
            self._dht_providers,
            timeout=self.config.block_timeout_s * 60,
            purpose=purpose,
        )

    def connected(self, peer: PeerId) -> bool:
        return self.services.host.is_connected(str(peer))

    def set_base_model(self, base_model_id: str) -> None:
        """The learner built or loaded its tier: advertise it (a new signed record)."""
        if base_model_id != self.base_model_id:
            self.base_model_id = base_model_id
            self._issue_record()
            self._spawn(self.records.publish)

    def _served_to(self, peer: str) -> int:
        """Block bytes this node has sent ``peer`` (its Bitswap ledger; 0 if it has none)."""
        ledgers = self.services.bitswap.ledgers
        return ledgers.get(peer).bytes_sent if peer in ledgers else 0

    async def _dht_providers(self, cid: CID) -> list[str]:
        try:
            found = await self.services.dht.find_providers(cid, count=5, timeout=5.0)
        except NetworkError as exc:
            logger.debug("no DHT providers for %s: %s", cid, exc)
            return []
        return [str(p) for p in found]

    # --- publish / fetch (control commands) ------------------------------------------------------
    async def publish(self, cid_text: str, to: str) -> dict[str, Any]:
        """Pin, provide and announce an artifact already in the local store."""
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
        facts = await self._publishable(cid)
        self.housekeeping.published(cid, topic, facts.round, facts.files)
        now = self.clock()
        self._ann_seq = next_seq(self._ann_seq, now)
        ann = Announcement(
            author=self.peer,
            topic=topic,
            cid=cid,
            parent=facts.parent,
            layer=self.config.layer,
            domain=self.config.domain,
            base_model_id=self.base_model_id,
            round=facts.round,
            seq=self._ann_seq,
            created_ms=now_ms(now),
            metrics=facts.metrics[:16],
            size=facts.size,
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
        await self.records.publish()
        return {
            "cid": str(cid),
            "topic": topic,
            "seq": ann.seq,
            "round": ann.round,
            "bytes": facts.size,
            "subscribers": self.services.gossip.peers_on(topic),
        }

    async def _publishable(self, cid: CID) -> Publishable:
        """What an announcement of ``cid`` says, once it is verified as this node's own
        update for its place, with its files pinned (the devnet's malformed-artifact attacker
        skips the checks)."""
        art = await trio.to_thread.run_sync(
            lambda: verify_artifact(self.store, cid, expected_base_model=self.base_model_id)
        )
        m = art.manifest
        self._check_publishable(cid, art)
        files = await trio.to_thread.run_sync(pin_artifact, self.store, cid)
        metrics = tuple(sorted((x.name, float(x.value)) for x in m.metrics))
        return Publishable(m.parent, m.round, metrics, art.stored_bytes, files)

    def _check_publishable(self, cid: CID, art: Artifact) -> None:
        """An announcement says "this is my update": only this node's own, for its place."""
        m = art.manifest
        if m.author != self.peer:
            raise UsageError(f"{cid} is signed by {m.author}, not by this node; not published")
        if m.layer != self.config.layer.label or m.domain != self.config.domain:
            raise UsageError(
                f"{cid} is an update for {m.layer}/{m.domain or '(root)'}, not for this node's "
                f"{self.config.layer.label}/{self.config.domain or '(root)'}; not published"
            )

    async def _provide(self, cid: CID) -> None:
        if not await self.services.dht.provide(cid, timeout=5.0):
            logger.info("no DHT peer took the provider record of %s (yet)", cid)

    def _validate_record(self, origin: str, data: bytes) -> bool:
        """The records topic's validator (the devnet's equivocator overrides it)."""
        return self.records.validate(origin, data)

    async def _publish_report(self) -> None:
        """Gossip this node's trust report (the devnet's slanderer overrides it)."""
        await self.guard.publish_report()

    async def _gossip_announcement(self, topic: str, signed: bytes) -> None:
        try:
            await self.services.gossip.publish(topic, signed)
        except NetworkError as exc:
            logger.warning("announcement publish on %s: %s", topic, exc)

    async def fetch(self, cid_text: str, timeout: float) -> dict[str, Any]:
        """Fetch any object by CID from connected peers and DHT providers; pin it."""
        return await fetch_any(
            self.services.bitswap,
            CID.parse(cid_text),
            self.services.host.connected_peers(),
            self._dht_providers,
            timeout=timeout,
        )

    # --- loops --------------------------------------------------------------------------------
    async def _maintenance_loop(self) -> None:
        next_refresh = self.clock() + self.config.record_refresh_s
        republish_every = max(2.0, 5 * self.config.gossip_heartbeat_s)
        next_republish = 0.0
        next_report = self.clock() + self.config.trust_report_interval_s
        while True:
            now = self.clock()
            for record in self.book.expire(now):
                self._queue(self.hierarchy.record_expired(record.peer_id, now))
            self._queue(self.hierarchy.tick(now))
            self.guard.tick()
            self.meter.consider_all(now)
            if now >= next_refresh:
                self._issue_record()
                next_refresh = now + self.config.record_refresh_s
            if now >= next_republish:
                # Gossip drops silently: re-publish our record and latest heads.
                next_republish = now + republish_every
                await self.records.publish()
                for topic, signed in list(self._announcements.items()):
                    await self._gossip_announcement(topic, signed)
            if self.guard.new_proof or now >= next_report:
                # A new proof goes out at once: siblings must learn of it before the
                # isolated peer knocks on their door.
                next_report = now + self.config.trust_report_interval_s
                await self._publish_report()
            await self.housekeeping.tick()
            if self._dirty:
                await trio.to_thread.run_sync(self._save_state)
            await trio.sleep(TICK_S)

    async def _bootstrap_loop(self) -> None:
        host = self.services.host
        targets = [PeerAddr.parse(a) for a in self.config.bootstrap]
        provided = False
        while True:
            for target in targets:
                if target.peer == host.peer_id or host.is_connected(target.peer):
                    continue
                try:
                    await host.connect(target)
                except NetworkError as exc:
                    logger.info("bootstrap %s unreachable: %s", target, exc)
                    continue
                await self._joined(target.peer)
            if not provided and (host.connected_peers() or not targets):
                provided = await self.services.dht.provide(
                    discovery_key(self.config.layer, self.config.domain)
                )
            await trio.sleep(2.0 if not provided else 5.0)

    async def _joined(self, peer: str) -> None:
        """A fresh connection: routing table, and pull the peer's records (gossip may lag)."""
        await self.services.dht.add_peer(peer)
        try:
            for signed in await pull_records(
                self.services.host, peer, timeout=self.config.stream_timeout_s
            ):
                self.records.offer(signed)
        except NetworkError as exc:
            logger.debug("records pull from %s failed: %s", peer, exc)

    async def _discovery_loop(self) -> None:
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
                            await self.services.host.connect(found)
                        except NetworkError:
                            continue
                        await self._joined(found.peer)
            await trio.sleep(2.0 if self.hierarchy.parent is None else 30.0)

    async def _providers_of(self, key: CID) -> list[PeerAddr]:
        try:
            return await self.services.dht.find_providers(key, timeout=5.0)
        except NetworkError:
            return []

    # --- status -------------------------------------------------------------------------------
    @property
    def host(self) -> Host:
        """The node's libp2p host."""
        return self.services.host

    @property
    def bitswap(self) -> Bitswap:
        """The node's Bitswap driver (its ledgers: the bytes it exchanged)."""
        return self.services.bitswap

    @property
    def record_seq(self) -> int | None:
        """The sequence number of this node's latest record."""
        return self.records.seq

    @property
    def topics(self) -> list[str]:
        """The gossip topics the node is subscribed to."""
        return self.services.gossip.topics

    def status(self) -> dict[str, Any]:
        return node_status(self)

    def peers(self, layer: str | None, domain: str | None) -> list[dict[str, Any]]:
        return node_peers(self, layer, domain)

    # --- persistence ---------------------------------------------------------------------------
    def _save_state(self) -> None:
        self._dirty = False  # first: a change made while this runs (in a thread) re-marks it
        state = NodeState(
            record_seq=self.records.seq,
            announcement_seq=self._ann_seq,
            head=self.head,
            hierarchy=self.hierarchy.snapshot(),
            marks=saved_marks(self.intake.filter.marks()),
            announcements=dict(self._announcements),
            accepted=tuple(self.intake.accepted),
            pins=self.housekeeping.ledger.snapshot(),
        )
        if not save_node_state(self._state_path, self.peer, state):
            self._dirty = True

    def _apply_state(self, state: NodeState) -> None:
        """Adopt saved state (on start); raising here moves the file aside."""
        self.records.restore(state.record_seq)
        self._ann_seq = state.announcement_seq
        self.head = state.head
        self.hierarchy.restore(state.hierarchy, self.clock())
        for m in state.marks:
            self.intake.filter.restore(m.topic, m.author, m.seq, m.round, m.digest)
        self._announcements.update(state.announcements)
        self.intake.restore(state.accepted)
        self.housekeeping.ledger.restore(state.pins)


class _Fetcher:
    """The intake's view of the network: this node's Bitswap and DHT."""

    def __init__(self, node: NodeDaemon) -> None:
        self.node = node

    async def fetch(
        self,
        cid: CID,
        providers: list[str],
        *,
        timeout: float,
        pin: bool,
        purpose: str = "other",
        stats: FetchStats | None = None,
    ) -> Any:
        return await self.node.services.bitswap.fetch(
            cid, providers, timeout=timeout, pin=pin, purpose=purpose, stats=stats
        )

    async def providers(self, cid: CID) -> list[str]:
        return await self.node._dht_providers(cid)


async def _ignore(origin: str, data: bytes) -> None:
    """Subscription handler: everything was done by the validator."""


def open_node_store(config: NodeConfig) -> DiskStore:
    return DiskStore(Path(config.store_path))


__all__ = ["NodeDaemon", "StoreError", "open_node_store"]
