"""Several real p2phier network nodes in one process, for fast tests.

Owns :func:`open_nodes`, an async context manager that starts N libp2p hosts on
127.0.0.1 (real TCP, Noise and Yamux; nothing is mocked), each with its own
store and Bitswap, and stops them all on exit.  A host costs ~1 MiB in a
process that already imported libp2p, so a test can run several; fault tests
that need a peer to be killed or frozen use separate processes instead
(``tests/net/procs.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from p2phier.bitswap import Misbehaviour
from p2phier.identity import Identity
from p2phier.store import ContentStore, MemoryStore

from .bitswap import Bitswap, BitswapConfig, open_bitswap
from .host import Host, HostConfig, open_host


@dataclass(frozen=True, slots=True)
class Node:
    """One in-process node: its identity, host, store and Bitswap."""

    identity: Identity
    host: Host
    store: ContentStore
    bitswap: Bitswap
    misbehaviour: list[Misbehaviour]

    @property
    def peer_id(self) -> str:
        return self.host.peer_id

    @property
    def addr(self) -> str:
        """A dialable ``/ip4/.../tcp/.../p2p/<id>`` address of this node."""
        return self.host.addrs[0]


@asynccontextmanager
async def open_nodes(
    count: int,
    *,
    config: BitswapConfig | None = None,
    host_config: HostConfig | None = None,
    stores: Sequence[ContentStore] | None = None,
    identities: Sequence[Identity] | None = None,
    store_factory: Callable[[], ContentStore] = MemoryStore,
) -> AsyncIterator[list[Node]]:
    """Start ``count`` nodes on 127.0.0.1 (random ports); stop them all on exit.

    Stores default to fresh :class:`MemoryStore` objects (closed on exit);
    given ``stores`` are used as they are and left open.
    """
    if stores is not None and len(stores) != count:
        raise ValueError("give one store per node")
    if identities is not None and len(identities) != count:
        raise ValueError("give one identity per node")
    async with AsyncExitStack() as stack:
        nodes: list[Node] = []
        for i in range(count):
            identity = identities[i] if identities is not None else Identity.generate()
            if stores is not None:
                store = stores[i]
            else:
                store = store_factory()
                stack.callback(store.close)
            host = await stack.enter_async_context(
                open_host(identity, ["/ip4/127.0.0.1/tcp/0"], config=host_config)
            )
            seen: list[Misbehaviour] = []
            bitswap = await stack.enter_async_context(
                open_bitswap(host, store, config, on_misbehaviour=seen.append)
            )
            nodes.append(Node(identity, host, store, bitswap, seen))
        yield nodes
