"""Fetching any object by CID for the node's users: the control ``fetch`` and tier bundles.

Owns :func:`fetch_any`: the known peers (connected peers, a bundle's author) are asked
at once and the DHT provider lookup runs beside the fetch, what it finds joining the
fetch as it comes.  Awaiting the lookup first cost every fetch 0.75-1.5 s even when its
providers were already connected (measured on shaped links, bench/_net_shaped.py).  If
the fetch fails, it is tried once more with what the lookup found and the peers connected
by then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from p2phier.bitswap import FetchFailedError
from p2phier.cid import CID
from p2phier.errors import NetworkError, P2PHierError
from p2phier.net.bitswap import Bitswap
from p2phier.net.bitswap_state import FetchStats
from p2phier.net.host import PeerAddr

#: ``lookup(cid) -> provider peer ids`` (the DHT; bounded by its own timeout, never raises)
Lookup = Callable[[CID], Awaitable[list[str]]]


async def fetch_any(
    bitswap: Bitswap,
    cid: CID,
    known: Sequence[str],
    lookup: Lookup,
    *,
    timeout: float,
    purpose: str = "other",
) -> dict[str, Any]:
    """Fetch and pin the DAG under ``cid``; ``{"cid", "providers", "received", "seconds",
    "wire_bytes"}``.

    ``received`` is the bytes each provider delivered during this fetch (their ledgers;
    other fetches from the same providers meanwhile included); ``wire_bytes`` the bytes of
    the blocks this fetch took from the network, counted under ``purpose`` in the
    ledger book.
    Raises NetworkError when no provider is known at all, and what
    :meth:`Bitswap.fetch` raises otherwise.
    """
    began = trio.current_time()
    providers: list[str] = []
    for entry in known:  # peer ids or /ip4/.../p2p/<id> addresses
        addr = PeerAddr.parse(entry)
        bitswap.host.add_addrs(addr.peer, addr.addrs)
        if addr.peer not in providers:
            providers.append(addr.peer)
    found: list[str] = []
    stats = FetchStats()
    lookup_done = trio.Event()
    before: dict[str, int] = {}

    def track(peers: Sequence[str]) -> None:
        for p in peers:
            before.setdefault(p, bitswap.ledger(p).bytes_received)

    async def look() -> None:
        try:
            found.extend(p for p in await lookup(cid) if p not in providers and p not in found)
            track(found)
            bitswap.add_providers(cid, found)
        finally:
            lookup_done.set()

    async def run() -> None:
        nonlocal providers
        if not providers:
            await lookup_done.wait()
            providers = list(found)
            if not providers:
                raise NetworkError(f"no provider of {cid} is known and no peer is connected")
        try:
            await bitswap.fetch(
                cid, providers, timeout=timeout, pin=True, purpose=purpose, stats=stats
            )
        except FetchFailedError:
            # Once more, with every provider known now: what the lookup found, and the
            # peers connected now (a provider whose connection closed during the fetch
            # was dropped from it as gone, though it may be back; seen with kubo).
            await lookup_done.wait()
            left = timeout - (trio.current_time() - began)
            if left <= 0:
                raise
            providers = list(dict.fromkeys([*providers, *found, *bitswap.host.connected_peers()]))
            track(providers)
            await bitswap.fetch(
                cid, providers, timeout=left, pin=True, purpose=purpose, stats=stats
            )

    track(providers)
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        try:
            await run()
        except P2PHierError as exc:  # raised below, outside the nursery (no ExceptionGroup)
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    asked = providers + [p for p in found if p not in providers]
    return {
        "cid": str(cid),
        "providers": asked,
        "received": {p: bitswap.ledger(p).bytes_received - before[p] for p in asked},
        "seconds": round(trio.current_time() - began, 3),
        "wire_bytes": stats.bytes_received,
    }
