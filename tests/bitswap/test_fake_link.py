"""Engines and sessions joined by in-memory fake links (real frames, virtual time)."""

from __future__ import annotations

import random

from p2phier.bitswap import (
    MAX_BLOCK_SIZE,
    WRONG_BLOCK,
    EngineConfig,
    FetchComplete,
    Misbehaviour,
    PeerTimedOut,
    SessionConfig,
    WantType,
    block_key,
)
from p2phier.cid import CID
from p2phier.store import MAX_BLOCK_SIZE as STORE_MAX_BLOCK_SIZE
from p2phier.store import MemoryStore
from p2phier.unixfs import build_file, child_links, read_file

from .helpers import SimNet, build_dag, events_of

CFG = SessionConfig(block_timeout=2.0, have_timeout=1.0, max_inflight_per_peer=8)


def assert_has_dag(blocks: dict[CID, bytes], store: dict[CID, bytes]) -> None:
    assert {block_key(c): d for c, d in blocks.items()} == store


def test_one_provider_serves_a_multi_block_dag_end_to_end() -> None:
    root, blocks = build_dag(40, 3000, fanout=6)
    net = SimNet(latency=0.02)
    server = net.add("server", blocks)
    client = net.add("client")
    s = net.fetch("client", root, ["server"], CFG)
    net.run(lambda: s.done)
    assert s.complete and s.fetched == len(blocks)
    assert_has_dag(blocks, client.store.blocks)
    total = sum(len(d) for d in blocks.values())
    assert server.ledgers.get("client").bytes_sent == total
    assert client.ledgers.get("server").bytes_received == total
    assert events_of(client.events, FetchComplete) == [FetchComplete(root, len(blocks), 0, total)]
    # the server holds no leftover wants for the client
    assert server.engine.wantlist("client") == []


def test_two_providers_are_both_used() -> None:
    root, blocks = build_dag(60, 2000, fanout=20)
    net = SimNet(latency=0.02, seed=3)
    net.add("A", blocks)
    net.add("B", blocks)
    client = net.add("client")
    s = net.fetch("client", root, ["A", "B"], SessionConfig(max_inflight_per_peer=4))
    net.run(lambda: s.done)
    assert s.complete
    got_a = client.ledgers.get("A").blocks_received
    got_b = client.ledgers.get("B").blocks_received
    assert got_a + got_b == len(blocks)
    assert got_a >= 10 and got_b >= 10


def test_a_provider_that_never_sends_blocks_is_routed_around() -> None:
    root, blocks = build_dag(20, 1000, fanout=5)
    net = SimNet()
    net.add("liar", blocks, behaviour="blackhole-blocks")  # says HAVE, never delivers
    net.add("honest", blocks)
    client = net.add("client")
    s = net.fetch("client", root, ["liar", "honest"], CFG)
    net.run(lambda: s.done, max_time=120)
    assert s.complete
    assert_has_dag(blocks, client.store.blocks)
    timeouts = [e for e in events_of(client.events, PeerTimedOut) if e.want_type is WantType.BLOCK]
    assert timeouts and all(e.peer == "liar" for e in timeouts)
    assert client.ledgers.get("liar").blocks_received == 0


def test_a_provider_serving_corrupt_bytes_is_rejected_recorded_and_routed_around() -> None:
    root, blocks = build_dag(20, 1000, fanout=5)
    corrupt = {c: (b"X" + d[1:] if c != root else d) for c, d in blocks.items()}
    net = SimNet()
    net.add("bad", corrupt, engine_config=EngineConfig(verify_before_serving=False))
    net.add("good", blocks)
    client = net.add("client")
    # bad is listed first so it is picked first
    s = net.fetch("client", root, ["bad", "good"], CFG)
    net.run(lambda: s.done, max_time=120)
    assert s.complete
    assert_has_dag(blocks, client.store.blocks)  # no corrupt byte reached the store
    bad = [e for e in events_of(client.events, Misbehaviour) if e.peer == "bad"]
    assert bad and bad[0].reason == WRONG_BLOCK
    assert client.ledgers.get("bad").misbehaviour >= 1
    assert client.ledgers.get("good").misbehaviour == 0


def test_an_honest_server_refuses_to_serve_its_own_corrupt_blocks() -> None:
    root, blocks = build_dag(6, 500, fanout=6)
    leaf = next(c for c in blocks if c != root)
    rotten = dict(blocks)
    rotten[leaf] = b"rotten"
    net = SimNet()
    net.add("server", rotten)  # verify_before_serving is on by default
    client = net.add("client")
    s = net.fetch("client", root, ["server"], CFG)
    net.run(lambda: s.done)
    assert not s.complete and "said DONT_HAVE" in str(s.error)
    assert client.ledgers.get("server").misbehaviour == 0  # nothing wrong was sent
    assert block_key(leaf) not in client.store.blocks


def test_resume_transfers_only_the_missing_blocks() -> None:
    root, blocks = build_dag(30, 800, fanout=6)
    have = dict(list(blocks.items())[:20])
    net = SimNet()
    server = net.add("server", blocks)
    client = net.add("client", have)
    s = net.fetch("client", root, ["server"], CFG)
    net.run(lambda: s.done)
    assert s.complete
    missing = [c for c in blocks if c not in have]
    assert server.ledgers.get("client").blocks_sent == len(missing)
    assert s.skipped == len(have) and s.fetched == len(missing)
    assert_has_dag(blocks, client.store.blocks)


def test_an_upload_limit_shapes_the_transfer() -> None:
    root, blocks = build_dag(20, 5000, fanout=20)
    total = sum(len(d) for d in blocks.values())
    net = SimNet(latency=0.001)
    net.add("server", blocks, engine_config=EngineConfig(upload_rate=20_000.0, upload_burst=10_000))
    net.add("client")
    s = net.fetch("client", root, ["server"], SessionConfig(block_timeout=60, have_timeout=5))
    net.run(lambda: s.done, max_time=60)
    assert s.complete
    # the bucket admits its burst at once, then 20 kB/s
    assert (total - 10_000) / 20_000 <= net.now <= total / 20_000 + 1.0


def test_a_fetched_dag_is_served_onwards() -> None:
    root, blocks = build_dag(12, 700, fanout=4, v0_interior=True)
    net = SimNet()
    net.add("origin", blocks)
    net.add("relay")
    last = net.add("last")
    s1 = net.fetch("relay", root, ["origin"], CFG)
    net.run(lambda: s1.done)
    s2 = net.fetch("last", root, ["relay"], CFG)
    net.run(lambda: s2.done)
    assert s1.complete and s2.complete
    assert_has_dag(blocks, last.store.blocks)
    assert root.version == 0  # a CIDv0 root, fetched and served with v0 prefixes


def test_a_real_unixfs_file_moves_between_real_memory_stores() -> None:
    data = random.Random(7).randbytes(3 * (256 << 10) + 12345)  # four chunks and a root
    root, dag = build_file(data)
    net = SimNet()
    net.add("server", dict(dag), store=MemoryStore())
    client = net.add("client", store=MemoryStore())
    s = net.fetch("client", root, ["server"], CFG, dag_links=child_links)
    net.run(lambda: s.done)
    assert s.complete and s.fetched == len(dag)
    assert b"".join(read_file(root, client.store.get_block)) == data


def test_the_received_block_limit_is_the_stores_limit() -> None:
    assert MAX_BLOCK_SIZE == STORE_MAX_BLOCK_SIZE == 1 << 20
