"""Network attackers: real node processes that abuse the protocols rather than the learning.

Each class here is a :class:`~p2phier.node.daemon.NodeDaemon` with one behaviour
changed, run by :mod:`p2phier.devnet.attacker` (``python -m p2phier.devnet.attacker
ATTACK node run ...``) for a scenario's ``[[attackers]]``.  The node keeps doing its
honest work (it trains, publishes, answers) unless the attack is that it does not,
so what a devnet measures is what the honest nodes' defences do against a peer that
speaks every protocol and lies where it matters.  None of this runs in an honest
node.  The tests of ``tests/node/`` hold each defence with a minimal hostile process
of their own; these are the same attacks on a whole running network.

``wrong-blocks``
    serves every block with one bit flipped (its Bitswap engine's hash check before
    serving, which keeps an honest node from ever sending a corrupt block, is off):
    whoever fetches from it receives bytes that fail their CID;
``withhold``
    a free-rider: it fetches what it wants like any node, announces its updates as
    usual, and serves nothing (its Bitswap engine finds no block it holds, so every
    want is answered DONT_HAVE);
``flood[:RATE]``
    announces RATE (default 50) updates per second on its parent's up topic, each a
    new CID it never serves (the announcement flood of issue 14);
``equivocate``
    signs two different node records with each sequence number (its real one and a
    twin with another head) and gossips both: a proof anyone can check;
``slander``
    its trust reports rate every other node it knows at the lowest opinion a report
    can carry (a scenario's 30 % of slanderers is several such nodes);
``fake-master``
    its signed record claims layer ``master`` (no domain) and 23 hours of uptime, to
    capture nodes looking for a parent; it starts before the other nodes;
``sybil[:COUNT]``
    runs COUNT (default 10) more identities in its own process, from its own address:
    each registers as a child of the node's parent (in the node's layer, under a
    domain of its own below the node's) and gossips trust reports that praise the
    whole cluster and rate every other node at the lowest opinion.  The cluster joins a
    running network: once the node (a learner) has applied its parent's first
    aggregate.  In a network's first round everyone is a newcomer and a round waits for
    all (``node/collect.py``, unit-tested there); from then on newcomers that never send
    must not hold any round to ``collect_s``, which is what a devnet can show.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import trio

from p2phier.announce import RECORDS_TOPIC, Announcement, sign_announcement, up_topic
from p2phier.cid import CID
from p2phier.errors import BlockNotFoundError, NetworkError, P2PHierError
from p2phier.identity import Identity, PeerId
from p2phier.net.host import PeerAddr, open_host
from p2phier.net.pubsub import GossipConfig, open_gossip
from p2phier.net.register import register_with
from p2phier.node.daemon import NodeDaemon
from p2phier.records import (
    Capabilities,
    HardwareClass,
    Layer,
    NodeRecord,
    next_seq,
    now_ms,
    open_record,
    sign_record,
)
from p2phier.trust.report import MAX_OPINIONS, TRUST_TOPIC, TrustReport, sign_report

logger = logging.getLogger(__name__)

#: the lowest and highest opinion a trust report carries (it clamps what it is given)
WORST, BEST = -1000.0, 1000.0


class AttackLoopDaemon(NodeDaemon):
    """A node with one more task beside its maintenance loop: :meth:`attack`."""

    async def _maintenance_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._attack_guarded)
            await super()._maintenance_loop()

    async def _attack_guarded(self) -> None:
        try:
            await self.attack()
        except (P2PHierError, OSError) as exc:  # an attacker's failure is its own business
            logger.warning("attack stopped: %s", exc)

    async def attack(self) -> None:
        await trio.sleep_forever()


class _Corrupting:
    """A block source whose every block has one bit flipped."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def block_size(self, cid: CID) -> int:
        return int(self.inner.block_size(cid))

    def get_block(self, cid: CID) -> bytes:
        data = bytes(self.inner.get_block(cid))
        return data[:-1] + bytes([data[-1] ^ 1]) if data else b"\x00"


class WrongBlocksDaemon(NodeDaemon):
    """Serves corrupt blocks (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        engine = self.services.bitswap.engine
        engine.config = dataclasses.replace(engine.config, verify_before_serving=False)
        reader = engine.source  # the driver's read-ahead source over the store
        reader.source = _Corrupting(reader.source)  # type: ignore[attr-defined]


class _Withholding:
    """A block source that holds nothing."""

    def block_size(self, cid: CID) -> int:
        raise BlockNotFoundError(f"withheld: {cid}")

    def get_block(self, cid: CID) -> bytes:
        raise BlockNotFoundError(f"withheld: {cid}")


class WithholdDaemon(NodeDaemon):
    """Takes and never serves (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reader = self.services.bitswap.engine.source  # the read-ahead source over the store
        reader.source = _Withholding()  # type: ignore[attr-defined]


class FloodDaemon(AttackLoopDaemon):
    """Announces a stream of updates it never serves (see the module docstring)."""

    rate = 50.0

    async def attack(self) -> None:
        seq = 0
        while True:
            await trio.sleep(1.0 / self.rate)
            parent = self.hierarchy.parent
            if parent is None:
                continue
            seq = next_seq(seq, time.time())
            now = time.time()
            fake = CID.raw(os.urandom(32))
            ann = Announcement(
                author=self.peer,
                topic=up_topic(parent),
                cid=fake,
                parent=None,
                layer=self.config.layer,
                domain=self.config.domain,
                base_model_id=self.base_model_id,
                round=max(1, self.learner.requested_round if self.learner else 1),
                seq=seq,
                created_ms=now_ms(now),
            )
            await self._gossip_announcement(ann.topic, sign_announcement(ann, self.identity))


class EquivocateDaemon(AttackLoopDaemon):
    """Signs a twin of each of its records (see the module docstring)."""

    def _validate_record(self, origin: str, data: bytes) -> bool:
        # py-libp2p runs a topic's validator on what the node itself publishes too: its
        # own book would refuse the twin (a conflict) and nothing would leave the node
        return origin == str(self.peer) or super()._validate_record(origin, data)

    async def attack(self) -> None:
        while True:
            await trio.sleep(1.0)
            signed = self.records.signed
            if not signed:
                continue
            record = open_record(signed)
            twin = dataclasses.replace(record, head=CID.raw(b"twin %d" % record.seq))
            for data in (signed, sign_record(twin, self.identity)):
                try:
                    await self.services.gossip.publish(RECORDS_TOPIC, data)
                except NetworkError as exc:
                    logger.debug("equivocation publish: %s", exc)


def _slanderous_report(me: Identity, seq: int, friends: set[PeerId], known: list[PeerId]) -> bytes:
    """A signed report praising ``friends`` and rating every other of ``known`` worst."""
    opinions = [(p, BEST) for p in sorted(friends, key=str) if p != me.peer_id]
    opinions += [(p, WORST) for p in known if p not in friends and p != me.peer_id]
    report = TrustReport(me.peer_id, seq, now_ms(time.time()), tuple(opinions[:MAX_OPINIONS]))
    return sign_report(report, me)


class SlanderDaemon(AttackLoopDaemon):
    """Reports every other node it knows as the worst (see the module docstring)."""

    every_s = 5.0

    async def attack(self) -> None:
        seq = 0
        while True:
            await trio.sleep(self.every_s)
            seq = next_seq(seq, time.time())
            known = [r.peer_id for r in self.book.query(now=self.clock())]
            signed = _slanderous_report(self.identity, seq, set(), known)
            try:
                await self.services.gossip.publish(TRUST_TOPIC, signed)
            except NetworkError as exc:
                logger.debug("slander publish: %s", exc)

    async def _publish_report(self) -> None:
        """Its own honest report would contradict the slander: it sends only the slander."""


class FakeMasterDaemon(NodeDaemon):
    """Claims in its record to be a master up for 23 hours (see the module docstring)."""

    CLAIMED_UPTIME_S = 23 * 3600

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_ms -= self.CLAIMED_UPTIME_S * 1000
        self.records.config = dataclasses.replace(self.config, layer=Layer.MASTER, domain="")


class SybilDaemon(AttackLoopDaemon):
    """A node with ``count`` more identities in its process (see the module docstring)."""

    count = 10

    async def attack(self) -> None:
        while not self._network_running():
            await trio.sleep(0.5)
        ids = [Identity.generate() for _ in range(self.count)]
        cluster = {self.peer, *(i.peer_id for i in ids)}
        async with trio.open_nursery() as nursery:
            for k, me in enumerate(ids):
                nursery.start_soon(self._sybil, k, me, cluster)

    def _network_running(self) -> bool:
        """This node applied its parent's aggregate of a round (or does not learn)."""
        if self.learner is None:
            return True
        base = self.learner.state.base
        return base is not None and base.round >= 1

    async def _sybil(self, k: int, me: Identity, cluster: set[PeerId]) -> None:
        domain = f"{self.config.domain}/sybil{k}" if self.config.domain else f"sybil{k}"
        seq = 0
        async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=1.0)) as g:
            while True:
                parent = self.hierarchy.parent
                record = self.book.get(parent) if parent is not None else None
                if parent is not None and record is not None and record.addrs:
                    seq = next_seq(seq, time.time())
                    try:
                        await host.connect(PeerAddr(str(parent), tuple(record.addrs)))
                        signed = _sybil_record(
                            me, host.listen_addrs, layer=self.config.layer, domain=domain,
                            seq=seq, base_model_id=self.base_model_id,
                        )  # fmt: skip
                        verdict = await register_with(host, str(parent), signed, timeout=10.0)
                        if not verdict.accepted:
                            logger.info("sybil %d refused: %s", k, verdict.reason)
                        known = [r.peer_id for r in self.book.query(now=self.clock())]
                        await g.publish(TRUST_TOPIC, _slanderous_report(me, seq, cluster, known))
                    except (P2PHierError, OSError) as exc:
                        logger.debug("sybil %d: %s", k, exc)
                await trio.sleep(10.0)


def _sybil_record(
    me: Identity,
    addrs: list[str],
    *,
    layer: Layer,
    domain: str,
    seq: int,
    base_model_id: str,
) -> bytes:
    now = now_ms(time.time())
    record = NodeRecord(
        peer_id=me.peer_id,
        addrs=tuple(addrs)[:16],
        layer=layer,
        domain=domain,
        base_model_id=base_model_id,
        capabilities=Capabilities(1 << 30, 0, HardwareClass.CPU),
        head=None,
        seq=seq,
        issued_ms=now,
        expires_ms=now + 120_000,
        started_ms=now,
    )
    return sign_record(record, me)


#: network attacks by name (``ATTACK[:N]``: ``flood``'s rate, ``sybil``'s count)
NETWORK: dict[str, type[NodeDaemon]] = {
    "wrong-blocks": WrongBlocksDaemon,
    "withhold": WithholdDaemon,
    "flood": FloodDaemon,
    "equivocate": EquivocateDaemon,
    "slander": SlanderDaemon,
    "fake-master": FakeMasterDaemon,
    "sybil": SybilDaemon,
}


def network_daemon(name: str, amount: float | None) -> type[NodeDaemon]:
    """The daemon class of network attack ``name`` (``amount``: a flood's rate per
    second, a Sybil cluster's size; None: the default)."""
    cls = NETWORK[name]
    if amount is None:
        return cls
    if name == "flood":
        return type("Flood", (FloodDaemon,), {"rate": float(amount)})
    if name == "sybil":
        return type("Sybil", (SybilDaemon,), {"count": int(amount)})
    return cls


__all__ = ["NETWORK", "network_daemon"]
