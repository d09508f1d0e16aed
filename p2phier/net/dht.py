"""Kademlia DHT (py-libp2p's kad-dht, server mode) with deadlines and de-duplication.

Owns :func:`open_dht` and :class:`Dht`: provider records only, keyed by CIDs
(artifact CIDs and the discovery keys of :func:`p2phier.hierarchy.discovery_key`,
which name no content).  py-libp2p has no timeouts and its ``find_providers``
returns the same provider several times (``shared/notes/libp2p.md``), so every
call here runs under a deadline and answers are de-duplicated and capped.
Values (``put_value``/``get_value``) are not used: app keys there have no
validator and log warnings.

Protocol ids: a node serves and asks the DHT both as ``/ipfs/kad/1.0.0`` and
as ``/ipfs/lan/kad/1.0.0``.  kubo runs two DHTs: the WAN one admits only peers
with public addresses (and kubo runs it as a client until it is publicly
reachable), so on a LAN or one machine kubo nodes find and are found only
through the LAN one.  A p2phier network is one keyspace, so both ids reach the
same routing table and provider store; a dial offers ``/ipfs/kad/1.0.0`` first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import StreamHandlerFn, TProtocol
from libp2p.kad_dht.common import PROTOCOL_ID as WAN_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.tools.anyio_service import background_trio_service

from p2phier.cid import CID
from p2phier.errors import PeerTimeoutError

from .host import Host, PeerAddr
from .keys import libp2p_peer_id
from .streams import STREAM_ERRORS

logger = logging.getLogger(__name__)

#: providers asked for per lookup, and the most returned
MAX_PROVIDERS = 20
#: kubo's LAN DHT (see the module docstring)
LAN_PROTOCOL_ID = TProtocol("/ipfs/lan/kad/1.0.0")
DHT_PROTOCOLS = (WAN_PROTOCOL_ID, LAN_PROTOCOL_ID)


class _BothKadIds:
    """The libp2p host as py-libp2p's KadDHT sees it: its handler is registered
    under both DHT protocol ids and its dials offer both (WAN id first)."""

    def __init__(self, host: IHost) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def set_stream_handler(self, protocol: TProtocol, handler: StreamHandlerFn) -> None:
        for pid in DHT_PROTOCOLS if protocol == WAN_PROTOCOL_ID else (protocol,):
            self._host.set_stream_handler(pid, handler)

    def remove_stream_handler(self, protocol: TProtocol) -> None:
        for pid in DHT_PROTOCOLS if protocol == WAN_PROTOCOL_ID else (protocol,):
            self._host.remove_stream_handler(pid)

    async def new_stream(self, peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        wanted = list(protocol_ids)
        if wanted == [WAN_PROTOCOL_ID]:
            wanted = list(DHT_PROTOCOLS)
        return await self._host.new_stream(peer_id, wanted)


class Dht:
    """A running kad-dht node; create it with :func:`open_dht`."""

    def __init__(self, host: Host, kad: KadDHT, timeout: float) -> None:
        self.host = host
        self.kad = kad
        self.timeout = timeout

    @property
    def routing_table_size(self) -> int:
        return self.kad.get_routing_table_size()

    async def add_peer(self, peer: str) -> bool:
        """Put a connected peer in the routing table (kad-dht does not do it on connect)."""
        if peer == self.host.peer_id:
            return False
        with trio.move_on_after(self.timeout):
            try:
                return await self.kad.add_peer(libp2p_peer_id(peer), skip_server_mode_check=True)
            except STREAM_ERRORS as exc:
                logger.debug("dht: cannot add %s: %s", peer, exc)
        return False

    async def provide(self, key: CID, *, timeout: float | None = None) -> bool:
        """Announce that we provide ``key``; False when no peer took the record in time."""
        limit = timeout or self.timeout
        with trio.move_on_after(limit) as scope:
            try:
                return bool(await self.kad.provide(str(key)))
            except STREAM_ERRORS as exc:
                logger.debug("dht: provide %s failed: %s", key, exc)
                return False
        if scope.cancelled_caught:
            logger.debug("dht: provide %s took more than %ss", key, limit)
        return False

    async def find_providers(
        self, key: CID, *, count: int = MAX_PROVIDERS, timeout: float | None = None
    ) -> list[PeerAddr]:
        """Providers of ``key`` (never ourselves), de-duplicated, at most ``count``.

        Raises PeerTimeoutError when the lookup does not finish in time.
        """
        limit = timeout or self.timeout
        count = max(1, min(count, MAX_PROVIDERS))
        try:
            with trio.fail_after(limit):
                infos = await self.kad.find_providers(str(key), count)
        except trio.TooSlowError:
            raise PeerTimeoutError(
                f"DHT provider lookup of {key} took more than {limit}s"
            ) from None
        except STREAM_ERRORS as exc:
            logger.debug("dht: find_providers %s failed: %s", key, exc)
            return []
        seen: dict[str, PeerAddr] = {}
        for info in infos:
            peer = str(info.peer_id)
            if peer == self.host.peer_id or peer in seen:
                continue
            addrs = tuple(dict.fromkeys(str(a) for a in info.addrs if "/p2p/" not in str(a)))
            seen[peer] = PeerAddr(peer, addrs[:16])
            if len(seen) >= count:
                break
        for found in seen.values():
            self.host.add_addrs(found.peer, found.addrs)
        return list(seen.values())


@asynccontextmanager
async def open_dht(host: Host, *, timeout: float = 10.0) -> AsyncIterator[Dht]:
    """Run kad-dht in server mode on ``host`` until the block exits."""
    both: Any = _BothKadIds(host.libp2p)  # duck-typed IHost
    kad = KadDHT(both, DHTMode.SERVER, enable_random_walk=False)
    async with background_trio_service(kad):
        yield Dht(host, kad, timeout)
