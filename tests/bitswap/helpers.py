"""Test helpers for the Bitswap core: a dict block source, a tiny DAG format, and
a simulated network that joins engines and sessions with fake links.

The fake links carry real bytes: every message is encoded, framed, cut into
arbitrary chunks, fed through a FrameDecoder and decoded again on the far side,
in virtual time (h11's style of testing a sans-IO core).  Nothing is mocked.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2phier.bitswap import (
    BlockFetched,
    Engine,
    EngineConfig,
    FrameDecoder,
    LedgerBook,
    Message,
    SendMessage,
    Session,
    SessionConfig,
    SessionEvent,
    block_key,
)
from p2phier.bitswap.session import LinksFn
from p2phier.cid import CID, DAG_PB, RAW, decode_varint, encode_varint
from p2phier.errors import BlockNotFoundError, UnixFSError


class DictSource:
    """An in-memory block source keyed by version-independent CID."""

    def __init__(self, blocks: dict[CID, bytes] | None = None) -> None:
        self.blocks: dict[CID, bytes] = {}
        self.reads = 0
        for cid, data in (blocks or {}).items():
            self.put(cid, data)

    def put(self, cid: CID, data: bytes) -> None:
        self.blocks[block_key(cid)] = data

    def put_block(self, cid: CID, data: bytes) -> bool:
        """As ContentStore.put_block: refuses bytes that do not hash to ``cid``."""
        assert cid.verify(data), f"bytes for {cid} do not match it"
        new = block_key(cid) not in self.blocks
        self.put(cid, data)
        return new

    # the ContentStore contract: absent blocks raise BlockNotFoundError
    def block_size(self, cid: CID) -> int:
        try:
            return len(self.blocks[block_key(cid)])
        except KeyError:
            raise BlockNotFoundError(f"block {cid} is not here") from None

    def get_block(self, cid: CID) -> bytes:
        self.reads += 1
        try:
            return self.blocks[block_key(cid)]
        except KeyError:
            raise BlockNotFoundError(f"block {cid} is not here") from None

    def local(self, cid: CID) -> bytes | None:
        """The session's other accepted form: None when absent."""
        return self.blocks.get(block_key(cid))


# --- a minimal DAG format (stands in for dag-pb until p2phier.unixfs lands) ---------

NODE_MAGIC = b"testnode"


def make_node(children: Sequence[CID], salt: bytes = b"", v0: bool = False) -> tuple[CID, bytes]:
    body = bytearray(NODE_MAGIC + encode_varint(len(salt)) + salt)
    for c in children:
        raw = c.to_bytes()
        body += encode_varint(len(raw)) + raw
    data = bytes(body)
    cid = CID.dag_pb(data)
    return (CID(0, DAG_PB, cid.multihash) if v0 else cid), data


def links(cid: CID, data: bytes) -> list[CID]:
    if cid.codec == RAW:
        return []
    if not data.startswith(NODE_MAGIC):
        raise UnixFSError(f"{cid} is not a test DAG node")
    n, off = decode_varint(data, len(NODE_MAGIC))
    off += n
    out = []
    while off < len(data):
        n, off = decode_varint(data, off)
        out.append(CID.from_bytes(data[off : off + n]))
        off += n
    return out


def build_dag(
    n_leaves: int, leaf_size: int, fanout: int = 4, seed: int = 0, v0_interior: bool = False
) -> tuple[CID, dict[CID, bytes]]:
    """A balanced tree of raw leaves; returns the root and every block."""
    rng = random.Random(seed)
    blocks: dict[CID, bytes] = {}
    level: list[CID] = []
    for _ in range(n_leaves):
        data = rng.randbytes(leaf_size)
        cid = CID.raw(data)
        blocks[cid] = data
        level.append(cid)
    depth = 0
    while len(level) > 1 or depth == 0:
        nxt = []
        for i in range(0, len(level), fanout):
            cid, data = make_node(
                level[i : i + fanout], salt=f"{depth}/{i}".encode(), v0=v0_interior
            )
            blocks[cid] = data
            nxt.append(cid)
        level = nxt
        depth += 1
    return level[0], blocks


# --- the simulated network -------------------------------------------------------------


class Store(Protocol):
    """What a simulated node needs of its store (DictSource or a real ContentStore)."""

    def block_size(self, cid: CID) -> int: ...
    def get_block(self, cid: CID) -> bytes: ...
    def put_block(self, cid: CID, data: bytes) -> bool: ...


@dataclass
class SimNode:
    name: str
    store: Any
    engine: Engine
    ledgers: LedgerBook
    #: "honest"; "silent" (reads everything, answers nothing); "blackhole-blocks"
    #: (answers presences but never sends blocks)
    behaviour: str = "honest"
    sessions: list[Session] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    decoders: dict[str, FrameDecoder] = field(default_factory=dict)


class SimNet:
    """Nodes joined by fake links with a fixed latency, run in virtual time."""

    def __init__(self, latency: float = 0.01, seed: int = 0) -> None:
        self.latency = latency
        self.nodes: dict[str, SimNode] = {}
        self.now = 0.0
        self._queue: list[tuple[float, int, str, str, bytes]] = []
        self._tie = itertools.count()
        self._rng = random.Random(seed)
        self.bytes_on_wire = 0
        self.messages = 0

    def add(
        self,
        name: str,
        blocks: dict[CID, bytes] | None = None,
        behaviour: str = "honest",
        engine_config: EngineConfig | None = None,
        store: Store | None = None,
    ) -> SimNode:
        ledgers = LedgerBook()
        if store is None:
            store = DictSource(blocks)
        else:
            for cid, data in (blocks or {}).items():
                store.put_block(cid, data)
        engine = Engine(store, engine_config, ledgers, now=self.now)
        node = SimNode(name, store, engine, ledgers, behaviour)
        self.nodes[name] = node
        return node

    def fetch(
        self,
        name: str,
        root: CID,
        providers: Sequence[str],
        config: SessionConfig | None = None,
        dag_links: LinksFn = links,
    ) -> Session:
        node = self.nodes[name]
        session = Session(
            root,
            providers,
            links=dag_links,
            local=node.store.get_block,  # the ContentStore form: raises when absent
            config=config,
            ledgers=node.ledgers,
            now=self.now,
        )
        node.sessions.append(session)
        return session

    # --- moving bytes ---------------------------------------------------------------------
    def _send(self, src: str, action: SendMessage) -> None:
        frame = action.frame()
        self.bytes_on_wire += len(frame)
        self.messages += 1
        # cut the frame into random chunks: the receiver must reassemble it
        pos = 0
        while pos < len(frame):
            step = self._rng.randint(1, max(1, len(frame) // 3 + 1))
            chunk = frame[pos : pos + step]
            pos += step
            heapq.heappush(
                self._queue, (self.now + self.latency, next(self._tie), src, action.peer, chunk)
            )

    def _handle(self, node: SimNode, actions: Sequence[object]) -> None:
        for action in actions:
            node.events.append(action)
            if isinstance(action, SendMessage):
                if node.behaviour == "silent":
                    continue
                msg = action.message
                if node.behaviour == "blackhole-blocks" and msg.blocks:
                    continue
                self._send(node.name, action)
            elif isinstance(action, BlockFetched):
                node.store.put_block(action.cid, action.data)
                node.engine.blocks_added([action.cid])

    def _deliver(self, src: str, dst: str, chunk: bytes) -> None:
        node = self.nodes[dst]
        decoder = node.decoders.setdefault(src, FrameDecoder())
        for frame in decoder.feed(chunk):
            msg = Message.decode(frame)
            self._handle(node, node.engine.receive_message(src, msg, self.now))
            for s in node.sessions:
                self._handle(node, s.receive_message(src, msg, self.now))

    def step(self) -> None:
        for node in self.nodes.values():
            self._handle(node, node.engine.poll(self.now))
            for s in node.sessions:
                self._handle(node, s.poll(self.now))

    def _next_time(self) -> float | None:
        times: list[float] = []
        if self._queue:
            times.append(self._queue[0][0])
        for node in self.nodes.values():
            w = node.engine.next_wakeup(self.now)
            if w is not None:
                times.append(w)
            for s in node.sessions:
                d = s.next_deadline()
                if d is not None:
                    times.append(d)
        return min(times) if times else None

    def run(self, until: Callable[[], bool], max_time: float = 600.0) -> None:
        """Advance virtual time until ``until()`` holds; fail on a stall or timeout."""
        self.step()
        for _ in range(200_000):
            if until():
                return
            nxt = self._next_time()
            if nxt is None:
                raise AssertionError(f"simulation stalled at t={self.now}")
            if nxt > max_time:
                raise AssertionError(f"simulation did not finish by t={max_time}")
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, src, dst, chunk = heapq.heappop(self._queue)
                self._deliver(src, dst, chunk)
            self.step()
        raise AssertionError("simulation made no progress in 200000 steps")


def events_of(events: Sequence[SessionEvent | object], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]
