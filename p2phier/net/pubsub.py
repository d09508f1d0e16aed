"""Gossipsub for p2phier, and the stream protocols that make up for what gossip drops.

Owns :func:`open_gossip` (py-libp2p's Pubsub + GossipSub with p2phier's
parameters), :class:`Gossip` (bounded publish, validated subscriptions) and
two small pull protocols:

* ``/p2phier/head/1.0.0``: ask a peer for the latest signed announcement it
  published on a topic (request: the topic; answer: the announcement bytes,
  or an empty frame when it has none);
* ``/p2phier/records/1.0.0``: ask a peer for the signed node records it
  knows (request: an empty frame; answer: one frame per record, then EOF).

Why the pull protocols: py-libp2p's gossipsub drops silently (a spam limiter
of 10 msg/s/topic/peer that also hits our own publishes, 32-deep queues, RPCs
over 1 MiB dropped; ``shared/notes/libp2p.md``).  So gossip carries only small
signed messages (records <= 8 KiB, announcements <= 4 KiB), the daemon
re-publishes its current record and head periodically, and it pulls heads and
records over streams when it (re)connects to a parent or a bootstrap peer: a
dropped gossip message only delays an update, it never loses it.  Whatever is
pulled goes through the same checks as what arrives by gossip (the caller's
validators), so the pull paths add no trust.

Parameters: heartbeat ~1 s (py-libp2p's default is 120 s), explicit mesh
degrees, strict signing (every message signed by its origin's libp2p key), a
validator on every subscribed topic (a topic without one is refused).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream, ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from p2phier.errors import ConfigError, NetworkError, PeerTimeoutError, ProtocolViolationError

from .host import Host
from .keys import libp2p_peer_id
from .streams import (
    StreamClosedError,
    close_quietly,
    read_frame,
    reset_quietly,
    stream_peer,
    write_frame,
)

logger = logging.getLogger(__name__)

HEAD_PROTOCOL = "/p2phier/head/1.0.0"
RECORDS_PROTOCOL = "/p2phier/records/1.0.0"

#: the largest gossip payload we publish or accept (a signed record is <= 8192)
MAX_GOSSIP_MESSAGE = 8192
#: topic names in pull requests (``/p2phier/1/down/<peer id>`` is ~70 bytes)
MAX_TOPIC_BYTES = 256
#: at most this many records answer one records pull
MAX_PULLED_RECORDS = 1024

#: ``validator(origin peer id, data) -> accept``; runs before delivery and relay
Validator = Callable[[str, bytes], bool]
#: ``handler(origin peer id, data)``: called for every validated message, in order
Handler = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Gossipsub parameters (mesh degrees as in the gossipsub spec's defaults)."""

    heartbeat_s: float = 1.0
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    max_message: int = MAX_GOSSIP_MESSAGE
    #: the deadline of each pull request and each frame of its answer
    pull_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (0 < self.heartbeat_s < 3600 and math.isfinite(self.heartbeat_s)):
            raise ConfigError("gossip heartbeat must be a positive number of seconds")
        if not 1 <= self.degree_low <= self.degree <= self.degree_high:
            raise ConfigError("gossip degrees must satisfy 1 <= low <= degree <= high")
        if not 0 < self.max_message <= 64 * 1024:
            raise ConfigError("gossip max_message must be in (0, 64 KiB]")


class Gossip:
    """A running gossipsub router; create it with :func:`open_gossip`."""

    def __init__(self, host: Host, pubsub: Pubsub, nursery: trio.Nursery, config: GossipConfig):
        self.host = host
        self.pubsub = pubsub
        self.config = config
        self._nursery = nursery
        self._subs: dict[str, tuple[ISubscriptionAPI, trio.CancelScope]] = {}
        self.published = 0
        self.publish_failures = 0

    @property
    def topics(self) -> list[str]:
        return sorted(self._subs)

    def blacklist(self, peer: str) -> None:
        """Drop every message from or through ``peer`` and refuse its pubsub streams
        (py-libp2p's only hard isolation; the daemon lifts it when trust does).

        The peer goes into the set py-libp2p checks on every new pubsub peer and message;
        ``Pubsub.add_to_blacklist`` is not used: it also starts a teardown task that
        deletes ``peers[peer]`` after an await, racing the dead-peer handler, and the
        KeyError stopped the whole pubsub service (a node exited with status 70 in CI
        when it isolated a peer it was disconnecting).  The caller disconnects the peer,
        and the dead-peer handler removes it cleanly.
        """
        self.pubsub.blacklisted_peers.add(libp2p_peer_id(peer))

    def unblacklist(self, peer: str) -> None:
        self.pubsub.remove_from_blacklist(libp2p_peer_id(peer))

    def peers_on(self, topic: str) -> list[str]:
        """Peers known to be subscribed to ``topic`` (from their subscription messages)."""
        return sorted(str(p) for p in self.pubsub.peer_topics.get(topic, set()))

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` (size-checked) on ``topic``.

        Gossipsub reports no loss, so a True here only means it was handed to the
        router; callers re-publish periodically and pull as a fallback.
        """
        if len(data) > self.config.max_message:
            raise ProtocolViolationError(
                f"gossip message of {len(data)} bytes is over the {self.config.max_message} "
                "byte limit; data goes over streams, gossip carries only signed pointers"
            )
        try:
            await self.pubsub.publish(topic, data)
            self.published += 1
        except Exception as exc:  # py-libp2p raises assorted types; a publish must not crash us
            self.publish_failures += 1
            raise NetworkError(f"cannot publish on {topic}: {type(exc).__name__}: {exc}") from None

    async def subscribe(self, topic: str, validator: Validator, handler: Handler) -> None:
        """Subscribe with a validator (mandatory) and a handler run for each valid message."""
        if topic in self._subs:
            return
        max_message = self.config.max_message

        def check(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            if len(msg.data) > max_message:
                return False
            try:
                origin = str(ID(msg.from_id))
                return bool(validator(origin, bytes(msg.data)))
            except Exception:  # a validator bug must drop the message, not the router
                logger.exception("gossip validator for %s failed", topic)
                return False

        self.pubsub.set_topic_validator(topic, check, False)
        sub = await self.pubsub.subscribe(topic)
        scope = trio.CancelScope()
        self._subs[topic] = (sub, scope)
        self._nursery.start_soon(self._reader, topic, sub, scope, handler)

    async def unsubscribe(self, topic: str) -> None:
        entry = self._subs.pop(topic, None)
        if entry is None:
            return
        sub, scope = entry
        scope.cancel()
        self.pubsub.remove_topic_validator(topic)
        with trio.move_on_after(self.config.pull_timeout):
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the router may already be gone at shutdown
                logger.debug("unsubscribe from %s: %s", topic, exc)

    async def _reader(
        self, topic: str, sub: ISubscriptionAPI, scope: trio.CancelScope, handler: Handler
    ) -> None:
        # Read every message at once: an unread subscription drops after 32 messages.
        with scope:
            while True:
                try:
                    msg = await sub.get()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                try:
                    await handler(str(ID(msg.from_id)), bytes(msg.data))
                except NetworkError as exc:
                    logger.warning("handling a message on %s: %s", topic, exc)


@asynccontextmanager
async def open_gossip(host: Host, config: GossipConfig | None = None) -> AsyncIterator[Gossip]:
    """Run gossipsub on ``host`` until the block exits.

    Start it before dialling anyone: Pubsub learns of peers through connection
    notifications.
    """
    cfg = config or GossipConfig()
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=cfg.degree,
        degree_low=cfg.degree_low,
        degree_high=cfg.degree_high,
        heartbeat_interval=cfg.heartbeat_s,  # type: ignore[arg-type]  # a float works
        heartbeat_initial_delay=min(0.1, cfg.heartbeat_s),
        time_to_live=60,
    )
    pubsub = Pubsub(
        host.libp2p,
        router,
        strict_signing=True,
        max_inbound_rpc_size=4 * cfg.max_message + 64 * 1024,
    )
    async with (
        background_trio_service(pubsub),
        background_trio_service(router),
        trio.open_nursery() as nursery,
    ):
        gossip = Gossip(host, pubsub, nursery, cfg)
        try:
            yield gossip
        finally:
            nursery.cancel_scope.cancel()


# --- pull protocols ------------------------------------------------------------------------------

HeadLookup = Callable[[str], bytes | None]
RecordsLookup = Callable[[], Iterable[bytes]]


def serve_pulls(
    host: Host, head: HeadLookup, records: RecordsLookup, *, timeout: float = 10.0
) -> None:
    """Answer head and records pulls from ``head(topic)`` and ``records()``."""

    async def on_head(stream: INetStream) -> None:
        try:
            raw = await read_frame(stream, max_frame_size=MAX_TOPIC_BYTES, timeout=timeout)
            topic = raw.decode("ascii")
            await write_frame(
                stream, head(topic) or b"", timeout=timeout, max_size=MAX_GOSSIP_MESSAGE
            )
            await close_quietly(stream)
        except (NetworkError, UnicodeDecodeError) as exc:
            logger.debug("head pull from %s failed: %s", stream_peer(stream), exc)
            await reset_quietly(stream)

    async def on_records(stream: INetStream) -> None:
        try:
            await read_frame(stream, max_frame_size=0, timeout=timeout)
            for i, signed in enumerate(records()):
                if i >= MAX_PULLED_RECORDS:
                    break
                await write_frame(stream, signed, timeout=timeout, max_size=MAX_GOSSIP_MESSAGE)
            await close_quietly(stream)
        except NetworkError as exc:
            logger.debug("records pull from %s failed: %s", stream_peer(stream), exc)
            await reset_quietly(stream)

    host.set_stream_handler(HEAD_PROTOCOL, on_head)
    host.set_stream_handler(RECORDS_PROTOCOL, on_records)


async def pull_head(host: Host, peer: str, topic: str, *, timeout: float = 10.0) -> bytes | None:
    """The latest announcement ``peer`` published on ``topic`` (None: it has none).

    The bytes are unverified: pass them to the same filter as gossip.
    """
    raw = topic.encode("ascii")
    if len(raw) > MAX_TOPIC_BYTES:
        raise ProtocolViolationError(f"topic {topic!r:.60} is over {MAX_TOPIC_BYTES} bytes")
    stream = await host.open_stream(peer, HEAD_PROTOCOL, timeout=timeout)
    try:
        await write_frame(stream, raw, timeout=timeout, max_size=MAX_TOPIC_BYTES)
        data = await read_frame(stream, max_frame_size=MAX_GOSSIP_MESSAGE, timeout=timeout)
    except BaseException:
        await reset_quietly(stream)
        raise
    await close_quietly(stream)
    return data or None


async def pull_records(host: Host, peer: str, *, timeout: float = 10.0) -> list[bytes]:
    """The signed node records ``peer`` knows (unverified: offer them to a RecordBook)."""
    from .streams import FrameReader

    stream = await host.open_stream(peer, RECORDS_PROTOCOL, timeout=timeout)
    out: list[bytes] = []
    try:
        await write_frame(stream, b"", timeout=timeout, max_size=0)
        reader = FrameReader(
            stream,
            max_frame_size=MAX_GOSSIP_MESSAGE,
            frame_timeout=timeout,
            idle_timeout=timeout,
        )
        with trio.fail_after(timeout * 3):
            while (frame := await reader.next_frame()) is not None:
                out.append(frame)
                if len(out) > MAX_PULLED_RECORDS:
                    raise ProtocolViolationError(
                        f"{peer} sent more than {MAX_PULLED_RECORDS} records"
                    )
    except trio.TooSlowError:
        await reset_quietly(stream)
        raise PeerTimeoutError(f"records pull from {peer} took more than {timeout * 3}s") from None
    except BaseException:
        await reset_quietly(stream)
        raise
    await close_quietly(stream)
    return out


__all__ = [
    "HEAD_PROTOCOL",
    "MAX_GOSSIP_MESSAGE",
    "RECORDS_PROTOCOL",
    "Gossip",
    "GossipConfig",
    "StreamClosedError",
    "open_gossip",
    "pull_head",
    "pull_records",
    "serve_pulls",
]
