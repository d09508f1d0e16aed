"""The Bitswap driver's settings and its internal per-peer and per-fetch state.

Owns :class:`BitswapConfig` (what an operator or a test may tune) and the
small mutable records :class:`~p2phier.net.bitswap.Bitswap` keeps between
events: the outbound queue of one peer, one running fetch, the work done for a
received message in a worker thread (and :func:`work_ahead`, which does it),
one block waiting for the store writer.
Split from :mod:`p2phier.net.bitswap` so that the driver module holds only
behaviour.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from libp2p.abc import INetStream

from p2phier.bitswap import BlockPayload, EngineConfig, Session, SessionConfig, block_key
from p2phier.cid import CID, DAG_PB, IDENTITY
from p2phier.errors import (
    BlockNotFoundError,
    NetworkError,
    P2PHierError,
    StoreError,
    UsageError,
)
from p2phier.store import ContentStore
from p2phier.unixfs import child_links


@dataclass(frozen=True, slots=True)
class BitswapConfig:
    """Settings of the Bitswap driver; protocol limits live in ``engine`` and ``session``."""

    #: server settings; None: defaults, with ``verify_before_serving`` off when the
    #: blocks come from a ContentStore (it re-hashes every block it returns)
    engine: EngineConfig | None = None
    session: SessionConfig = field(default_factory=SessionConfig)
    #: one write (a batch of frames) must complete within this
    write_timeout: float = 10.0
    #: a frame that has begun must be received completely within this
    frame_timeout: float = 30.0
    #: an inbound stream silent this long is closed; an idle outbound one too
    idle_timeout: float = 600.0
    #: dial + open + negotiate an outbound stream
    open_timeout: float = 10.0
    #: bytes queued for one peer beyond which it is cut off (it cannot keep up)
    max_queued_bytes: int = 64 << 20
    #: small frames are coalesced into writes of up to this many bytes
    coalesce_bytes: int = 256 << 10
    #: received blocks waiting to be written to the store (backpressure beyond)
    store_queue: int = 64
    #: a batch written to the store with one durability step grows to this many bytes
    #: while blocks keep arriving, waiting at most ``store_batch_wait`` for the next
    store_batch_bytes: int = 4 << 20
    store_batch_wait: float = 0.02
    #: a fetch that ends (even by timeout) waits up to this for the blocks it received
    #: to be written, so that a later fetch resumes from them
    drain_timeout: float = 30.0
    #: a block asked of a peer is still welcome this long after its fetch ended
    late_block_grace: float = 120.0
    #: misbehaviour events kept in ``Bitswap.misbehaviour``
    keep_misbehaviour: int = 1000
    #: messages of blocks the engine builds ahead for one peer (beyond the one being
    #: written); blocks are read from the store only as this queue drains
    serve_ahead: int = 2
    #: a received message with at least this many bytes of blocks is hashed in a
    #: worker thread (below it, the thread hand-off costs more than it saves)
    hash_in_thread_bytes: int = 128 << 10

    def __post_init__(self) -> None:
        for name in (
            "write_timeout",
            "frame_timeout",
            "idle_timeout",
            "open_timeout",
            "late_block_grace",
            "store_batch_wait",
            "drain_timeout",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise UsageError(f"bitswap {name} must be a positive number of seconds")
        if (
            self.max_queued_bytes < (4 << 20)
            or self.coalesce_bytes < 1
            or self.store_queue < 1
            or self.store_batch_bytes < 1
            or self.serve_ahead < 1
        ):
            raise UsageError("bitswap queue limits are too small (max_queued_bytes >= 4 MiB)")


# --- internal state --------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Outbound:
    """Our one stream to a peer and the frames waiting for it."""

    peer: str
    frames: deque[tuple[list[bytes], int]] = field(default_factory=deque)  # (pieces, size)
    queued: int = 0
    wake: trio.Event = field(default_factory=trio.Event)
    stream: INetStream | None = None
    broken: bool = False  # reset the stream before the next write


@dataclass(eq=False, slots=True)
class Fetch:
    """One running :meth:`Bitswap.fetch`."""

    session: Session
    deadline: float  # trio clock; asks made for it are honoured until deadline + grace
    sleep_until: float = math.inf  # when the fetch loop wakes on its own next
    wake: trio.Event = field(default_factory=trio.Event)
    pending_puts: int = 0
    flushed: trio.Event = field(default_factory=trio.Event)
    error: NetworkError | StoreError | None = None
    #: what the fetch is for (the ledger book counts its bytes under it)
    purpose: str = "other"
    #: bytes of the blocks received from the network for this fetch (each block once)
    bytes_received: int = 0


@dataclass(slots=True)
class FetchStats:
    """What a caller of :meth:`Bitswap.fetch` learns about its fetch (filled in by it)."""

    #: bytes of the blocks received from the network for it (blocks held already: 0)
    bytes_received: int = 0


#: a store lookup done ahead: the block, None (absent), or the store's error
Local = bytes | None | StoreError
NOT_LOOKED_UP = object()


@dataclass(frozen=True, slots=True)
class Ahead:
    """Work done for a received message in a worker thread (see ``Bitswap._prepare``)."""

    claimed: list[CID]  # what each block hashes to
    links: dict[CID, list[CID]] = field(default_factory=dict)  # each DAG node's children
    local: dict[CID, Local] = field(default_factory=dict)  # the store's answer per child


NOTHING_AHEAD = Ahead([])


def work_ahead(store: ContentStore, blocks: Sequence[BlockPayload], nodes: bool) -> Ahead:
    """In a worker thread: what each block hashes to and, when ``nodes``, each DAG
    node's children and the store's answer for each (see ``Bitswap._prepare``)."""
    ahead = Ahead([b.claimed_key() for b in blocks])
    local = ahead.local
    for payload, key in zip(blocks, ahead.claimed, strict=True) if nodes else ():
        if key.codec != DAG_PB:
            continue
        try:
            children = ahead.links[key] = child_links(key, payload.data)
        except P2PHierError:
            continue  # not a valid node: the session says so when it gets there
        for child in children:
            ckey = block_key(child)
            if ckey in local or ckey.multihash.code == IDENTITY:
                continue
            try:
                local[ckey] = store.get_block(ckey)
            except BlockNotFoundError:
                local[ckey] = None
            except StoreError as exc:
                local[ckey] = exc
    return ahead


@dataclass(frozen=True, slots=True)
class Put:
    cid: CID
    data: bytes = field(repr=False)
    fetch: Fetch
