"""The libp2p host of a p2phier node: construction, dialing, streams, shutdown.

Owns :func:`open_host` (an async context manager that runs a py-libp2p host for
a p2phier :class:`~p2phier.identity.Identity`), :class:`HostConfig` (its
frozen settings), :class:`Host` (a thin wrapper that puts a deadline on every
dial and stream open, and speaks peer ids as strings) and :class:`PeerAddr`
(a ``/ip4/.../tcp/.../p2p/<id>`` address parsed into id and addresses).

The transport stack is fixed on purpose: TCP, Noise, Yamux and nothing else
(``shared/notes/libp2p.md``: TLS is slower, mplex 5x slower, QUIC ~1.5 MB/s;
offering them only widens the attack surface).  Protocol services
(Bitswap here; gossipsub and kad-dht later) attach to a running :class:`Host`
through ``host.libp2p`` and :meth:`Host.set_stream_handler`; they are started
by their own modules, not by this one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2phier.errors import ConfigError, NetworkError, PeerTimeoutError, ProtocolViolationError
from p2phier.identity import Identity

from .gate import InboundGate, install_gate
from .keys import keypair_from_identity, libp2p_peer_id, peer_id_str
from .streams import (
    STREAM_ERRORS,
    StreamClosedError,
    reset_quietly,
    select_protocol,
    stream_peer,
)

PING_PROTOCOL = "/ipfs/ping/1.0.0"
PING_LENGTH = 32

logger = logging.getLogger(__name__)

StreamHandler = Callable[[INetStream], Awaitable[None]]
#: ``callback(peer id)``: the last connection to that peer closed
DisconnectHandler = Callable[[str], None]

#: how long dialled addresses stay in the peerstore (seconds)
ADDR_TTL = 3600


class DialError(NetworkError, ConnectionError):
    """A peer could not be reached, or it is not the peer we meant to reach."""


@dataclass(frozen=True, slots=True)
class HostConfig:
    """How a host listens and how long its network operations may take."""

    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    #: a connection (TCP + Noise handshake + Yamux) must be up within this
    dial_timeout: float = 10.0
    #: opening a stream on a connection, protocol negotiation included
    stream_open_timeout: float = 10.0
    #: multistream-select negotiation inside py-libp2p (whole seconds)
    negotiate_timeout: int = 10
    #: the host is torn down within this, even with frozen peers
    shutdown_timeout: float = 5.0
    #: py-libp2p's auto-connector redials every peer in the peerstore whenever the
    #: node has fewer than ~100 connections (killed peers included, every few
    #: seconds); p2phier nodes dial whom they need, so it is off by default
    auto_connect: bool = False
    #: inbound connections in their handshake at once, in total and from one IP, and
    #: live inbound connections from one IP (:mod:`p2phier.net.gate`)
    max_handshakes: int = 128
    max_handshakes_per_ip: int = 16
    max_inbound_per_ip: int = 256

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("a host needs at least one listen address")
        for addr in self.listen:
            _multiaddr(addr)
        for name in ("dial_timeout", "stream_open_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigError(f"host {name} must be a positive number of seconds")
        if self.negotiate_timeout < 1:
            raise ConfigError("host negotiate_timeout must be at least 1 second")
        for name in ("max_handshakes", "max_handshakes_per_ip", "max_inbound_per_ip"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"host {name} must be a positive integer")


@dataclass(frozen=True, slots=True)
class PeerAddr:
    """A peer id and the transport addresses it may be dialled at (possibly none)."""

    peer: str
    addrs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PeerAddr:
        """``/ip4/1.2.3.4/tcp/4001/p2p/<id>`` or a bare peer id, of any key type
        (``12D3KooW...``, RSA ``Qm...``); the id is kept in canonical base58btc."""
        if not text.startswith("/"):
            return cls(peer_id_str(libp2p_peer_id(text)))  # validated, any key type
        addr = _multiaddr(text)
        peer = addr.get_peer_id()
        if peer is None:
            raise ConfigError(f"address {text!r} has no /p2p/<peer id> part; it names no peer")
        canonical = peer_id_str(libp2p_peer_id(peer))
        transport = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
        return cls(canonical, (str(transport),) if str(transport) else ())

    def __str__(self) -> str:
        return f"{self.addrs[0]}/p2p/{self.peer}" if self.addrs else self.peer


class Host:
    """A running libp2p host; use :func:`open_host` to get one."""

    def __init__(self, identity: Identity, libp2p_host: IHost, config: HostConfig) -> None:
        self.identity = identity
        self.libp2p = libp2p_host
        self.config = config
        self.peer_id = str(identity.peer_id)
        self._disconnect_handlers: list[DisconnectHandler] = []
        #: the inbound connection gate (set by :func:`open_host`; counts for status)
        self.gate = InboundGate()
        libp2p_host.get_network().register_notifee(_Notifee(self))

    def on_disconnected(self, handler: DisconnectHandler) -> Callable[[], None]:
        """Call ``handler(peer)`` whenever our last connection to ``peer`` closes.

        This, not the end of one stream, is a peer leaving: IPFS peers (boxo,
        helia) open a stream per message and close it.  Returns a function that
        unregisters the handler.  Handlers run on the event loop and must not block.
        """
        self._disconnect_handlers.append(handler)

        def remove() -> None:
            if handler in self._disconnect_handlers:
                self._disconnect_handlers.remove(handler)

        return remove

    def _disconnected(self, conn: INetConn) -> None:
        peer = peer_id_str(conn.muxed_conn.peer_id)
        if self.is_connected(peer):
            return  # another connection to it is still up
        for handler in list(self._disconnect_handlers):
            try:
                handler(peer)
            except Exception:  # a handler bug must not stop the others
                logger.exception("disconnect handler for %s failed", peer)

    @property
    def listen_addrs(self) -> list[str]:
        """Transport addresses we listen on (no /p2p/ part)."""
        return [str(a) for a in self.libp2p.get_transport_addrs()]

    @property
    def addrs(self) -> list[str]:
        """Dialable addresses of this host, each ending in ``/p2p/<our peer id>``."""
        return [str(PeerAddr(self.peer_id, (a,))) for a in self.listen_addrs]

    def add_addrs(self, peer: str, addrs: Sequence[str]) -> None:
        """Remember where ``peer`` can be dialled."""
        if addrs:
            self.libp2p.get_peerstore().add_addrs(
                libp2p_peer_id(peer), [_multiaddr(a) for a in addrs], ADDR_TTL
            )

    def _known_addrs(self, peer: str) -> list[multiaddr.Multiaddr]:
        try:
            return list(self.libp2p.get_peerstore().addrs(libp2p_peer_id(peer)))
        except PeerStoreError:
            return []

    def is_connected(self, peer: str) -> bool:
        conns = self.libp2p.get_network().connections.get(libp2p_peer_id(peer))
        return bool(conns)

    def connected_peers(self) -> list[str]:
        return [str(p) for p in self.libp2p.get_connected_peers()]

    async def connect(self, peer: str | PeerAddr, *, timeout: float | None = None) -> None:
        """Connect to ``peer`` (a peer id or a ``.../p2p/<id>`` address; a no-op when
        connected).  The handshake proves the id.

        Raises DialError when no address works or the remote key is not ``peer``'s
        (Noise checks the peer id: a wrong one is refused before any stream), and
        PeerTimeoutError when it takes longer than ``timeout`` (default: the
        config's ``dial_timeout``).
        """
        target = peer if isinstance(peer, PeerAddr) else PeerAddr.parse(peer)
        pid = libp2p_peer_id(target.peer)
        self.add_addrs(target.peer, target.addrs)
        known = [] if target.addrs else self._known_addrs(target.peer)
        if not target.addrs and not known and not self.is_connected(target.peer):
            raise DialError(f"no known address for peer {target.peer}; give /ip4/.../p2p/<id>")
        addrs = [_multiaddr(a) for a in target.addrs] or list(known)
        limit = timeout if timeout is not None else self.config.dial_timeout
        try:
            with trio.fail_after(limit):
                await self.libp2p.connect(PeerInfo(pid, addrs))
        except trio.TooSlowError:
            raise PeerTimeoutError(f"connecting to {target.peer} took more than {limit}s") from None
        except STREAM_ERRORS as exc:
            raise DialError(
                f"cannot connect to {target.peer} at {', '.join(map(str, addrs))}: "
                f"{_cause_chain(exc)}"
            ) from None

    async def open_stream(
        self, peer: str, protocol: str, *, timeout: float | None = None
    ) -> INetStream:
        """A new stream to ``peer`` speaking ``protocol`` (dials first when needed)."""
        pid = libp2p_peer_id(peer)
        limit = timeout if timeout is not None else self.config.stream_open_timeout
        if not self.is_connected(peer):
            await self.connect(peer, timeout=limit)
        try:
            with trio.fail_after(limit):
                try:
                    stream = await self.libp2p.get_network().new_stream(pid)
                except STREAM_ERRORS:
                    if not self._forget_closed_connections(pid):
                        raise
                    # Every connection listed was a closed one the swarm had not removed
                    # yet (the peer closed it; seen with kubo): dial afresh, once.
                    await self.connect(peer, timeout=limit)
                    stream = await self.libp2p.get_network().new_stream(pid)
                try:
                    await select_protocol(stream, protocol)  # one round trip, not two
                except (StreamClosedError, ProtocolViolationError) as exc:
                    with trio.CancelScope(shield=True):
                        await reset_quietly(stream)
                    raise DialError(f"cannot open a {protocol} stream to {peer}: {exc}") from None
                except BaseException:  # cancelled or timed out: the half-open stream goes too
                    with trio.CancelScope(shield=True):
                        await reset_quietly(stream)
                    raise
                stream.set_protocol(TProtocol(protocol))
                return stream
        except trio.TooSlowError:
            raise PeerTimeoutError(
                f"opening a {protocol} stream to {peer} took more than {limit}s"
            ) from None
        except DialError:
            raise  # (a ConnectionError, so an OSError: said once, not wrapped again)
        except STREAM_ERRORS as exc:
            raise DialError(
                f"cannot open a {protocol} stream to {peer}: {_cause_chain(exc)}"
            ) from None

    async def ping(self, peer: str, *, timeout: float) -> float:
        """Round-trip seconds of one libp2p ping (``/ipfs/ping/1.0.0``: 32 random bytes
        echoed), dialling first when needed; the measurement parent choice rests on."""
        payload = secrets.token_bytes(PING_LENGTH)
        stream = await self.open_stream(peer, PING_PROTOCOL, timeout=timeout)
        try:
            with trio.fail_after(timeout):
                began = trio.current_time()
                await stream.write(payload)
                echo = b""
                while len(echo) < PING_LENGTH:
                    chunk = await stream.read(PING_LENGTH - len(echo))
                    if not chunk:
                        break
                    echo += chunk
                rtt = trio.current_time() - began
        except trio.TooSlowError:
            await reset_quietly(stream)
            raise PeerTimeoutError(f"{peer} did not answer a ping within {timeout}s") from None
        except STREAM_ERRORS as exc:
            await reset_quietly(stream)
            raise NetworkError(f"ping to {peer} failed: {_cause_chain(exc)}") from None
        await reset_quietly(stream)  # the ping protocol has no close: the stream is done
        if echo != payload:
            raise NetworkError(f"{peer} answered a ping with other bytes")
        return rtt

    def _forget_closed_connections(self, pid: Any) -> bool:
        """Drop ``pid``'s listed connections if every one is closed; True if any was."""
        swarm: Any = self.libp2p.get_network()
        conns = list(swarm.connections.get(pid, ()))
        if not conns or not all(getattr(c, "is_closed", False) for c in conns):
            return False
        for conn in conns:
            swarm.remove_conn(conn)  # records only; the connection is closed already
        return True

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``handler(stream)`` runs in its own task per inbound stream.

        An exception escaping ``handler`` is logged and the stream reset: py-libp2p
        runs handlers inside the connection's nursery, so an escaping exception
        would tear down the whole swarm and crash the node (seen at shutdown).
        """

        async def contained(stream: INetStream) -> None:
            try:
                await handler(stream)
            except Exception:
                logger.exception(
                    "%s handler failed; stream from %s reset", protocol, stream_peer(stream)
                )
                await reset_quietly(stream)

        self.libp2p.set_stream_handler(TProtocol(protocol), contained)

    def remove_stream_handler(self, protocol: str) -> None:
        self.libp2p.remove_stream_handler(TProtocol(protocol))

    async def close_connections(self) -> None:
        """Close every connection (bounded by ``shutdown_timeout``)."""
        with trio.move_on_after(self.config.shutdown_timeout):
            for peer in self.connected_peers():
                await self.disconnect(peer)

    async def disconnect(self, peer: str) -> None:
        with trio.move_on_after(self.config.shutdown_timeout):
            try:
                await self.libp2p.disconnect(libp2p_peer_id(peer))
            except STREAM_ERRORS as exc:
                logger.debug("disconnect from %s: %s", peer, exc)


class _Notifee(INotifee):
    """Forwards py-libp2p's connection-closed events to :meth:`Host._disconnected`."""

    def __init__(self, host: Host) -> None:
        self._host = host

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._host._disconnected(conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        pass


def build_libp2p_host(identity: Identity, config: HostConfig) -> IHost:
    """A py-libp2p host (not yet running) with TCP + Noise + Yamux only."""
    pair = keypair_from_identity(identity)
    security = {
        NOISE_PROTOCOL_ID: NoiseTransport(pair, noise_privkey=create_x25519_key_pair().private_key)
    }
    return new_host(
        key_pair=pair,
        sec_opt=security,
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=[_multiaddr(a) for a in config.listen],
        negotiate_timeout=config.negotiate_timeout,
        enable_quic=False,
        enable_websocket=False,
    )


@asynccontextmanager
async def open_host(
    identity: Identity,
    listen: Sequence[str] | None = None,
    *,
    config: HostConfig | None = None,
) -> AsyncIterator[Host]:
    """Run a libp2p host for ``identity`` until the block exits.

    ``listen`` (multiaddrs, default ``/ip4/127.0.0.1/tcp/0``) overrides
    ``config.listen``.  Shutdown is bounded by ``config.shutdown_timeout``.
    """
    cfg = config or HostConfig()
    if listen is not None:
        cfg = dataclasses.replace(cfg, listen=tuple(listen))
    libp2p_host = build_libp2p_host(identity, cfg)
    gate = InboundGate(cfg.max_handshakes, cfg.max_handshakes_per_ip, cfg.max_inbound_per_ip)
    install_gate(libp2p_host.get_network(), gate)
    # The guard scope bounds the shutdown (a frozen peer must not hold it): its
    # deadline is set when the body ends, and it encloses the whole run context.
    with trio.CancelScope() as guard:
        async with libp2p_host.run([_multiaddr(a) for a in cfg.listen]):
            if not cfg.auto_connect:
                swarm: Any = libp2p_host.get_network()  # Swarm; the interface lacks it
                await swarm.auto_connector.stop()
            host = Host(identity, libp2p_host, cfg)
            host.gate = gate
            logger.info(
                "libp2p host %s listening on %s", host.peer_id, ", ".join(host.listen_addrs)
            )
            try:
                yield host
            finally:
                guard.deadline = trio.current_time() + cfg.shutdown_timeout
                # Close connections ourselves before the service is cancelled: a
                # connection torn down by cancellation leaves its socket unclosed.
                await host.close_connections()
    if guard.cancelled_caught:
        logger.warning(
            "libp2p host %s did not shut down within %ss", identity.peer_id, cfg.shutdown_timeout
        )


def _multiaddr(text: str) -> multiaddr.Multiaddr:
    try:
        return multiaddr.Multiaddr(text)
    except (ValueError, TypeError, multiaddr.exceptions.Error) as exc:
        raise ConfigError(f"{text!r} is not a valid multiaddr: {exc}") from None


def _cause_chain(exc: BaseException) -> str:
    """The messages of an exception and its causes (libp2p wraps the useful one deep)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        text = str(current).strip()
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)
