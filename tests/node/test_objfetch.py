"""fetch_any: known peers at once, the DHT lookup beside the fetch (real hosts, 127.0.0.1)."""

from __future__ import annotations

import pytest
import trio

from p2phier.cid import CID
from p2phier.errors import NetworkError
from p2phier.net.testing import open_nodes
from p2phier.node.objfetch import fetch_any

from ..net.helpers import FAST, data_of


async def test_a_fetch_from_connected_peers_does_not_wait_for_the_lookup() -> None:
    # The lookup never answers: fetching must not depend on it (it cost every fetch
    # 0.75-1.5 s when providers were already connected).
    data = data_of(1 << 20, seed=50)
    never = trio.Event()
    asked: list[CID] = []

    async def lookup(cid: CID) -> list[str]:
        asked.append(cid)
        await never.wait()
        return []

    async with open_nodes(2, config=FAST) as (fetcher, provider):
        root = provider.store.add_bytes(data)
        await fetcher.host.connect(provider.addr)
        with trio.fail_after(30):
            got = await fetch_any(fetcher.bitswap, root, [provider.peer_id], lookup, timeout=60)
        assert asked == [root]  # the lookup did run, beside the fetch
        assert fetcher.store.get_bytes(root) == data
        assert got["received"] == {
            provider.peer_id: fetcher.bitswap.ledger(provider.peer_id).bytes_received
        }
        assert got["received"][provider.peer_id] >= len(data)


async def test_what_the_lookup_finds_serves_when_connected_peers_lack_the_object() -> None:
    data = data_of(1 << 20, seed=51)
    async with open_nodes(3, config=FAST) as (fetcher, empty, provider):
        root = provider.store.add_bytes(data)

        async def lookup(cid: CID) -> list[str]:
            assert cid == root
            await trio.sleep(0.5)  # a lookup takes a while; the fetch starts without it
            return [provider.peer_id]  # (the DHT put its address in the peerstore)

        fetcher.host.add_addrs(provider.peer_id, provider.host.listen_addrs)
        got = await fetch_any(fetcher.bitswap, root, [empty.addr], lookup, timeout=60)
        assert fetcher.store.get_bytes(root) == data
        assert got["received"][provider.peer_id] >= len(data)
        assert got["received"][empty.peer_id] == 0


async def test_no_known_peer_and_nothing_found_is_a_clear_error() -> None:
    async def lookup(cid: CID) -> list[str]:
        return []

    async with open_nodes(1, config=FAST) as (fetcher,):
        with pytest.raises(NetworkError, match="no provider"):
            await fetch_any(fetcher.bitswap, CID.raw(b"x"), [], lookup, timeout=10)
