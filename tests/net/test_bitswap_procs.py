"""Bitswap between real processes on 127.0.0.1: several providers, and providers that die,
freeze or lie.

The fetcher runs in the test process; providers are ``tests.net.provider_proc``
children, started once for the module (in parallel) and always reaped.  Each
fault test has its own victim process.  Providers upload at most 4 MiB/s
("slow": 1 MiB/s) so that a transfer is still under way when a fault is injected.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2phier.bitswap import WRONG_BLOCK, FetchFailedError
from p2phier.cid import CID
from p2phier.net.testing import Node, open_nodes
from p2phier.store import DiskStore
from p2phier.unixfs import build_file

from .helpers import FAST, data_of, until
from .procs import Child, Children, children

# one xdist worker runs them all: they share the module's provider processes
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("net-procs")]

MiB = 1 << 20
FAST_RATE = 4 * MiB  # bytes/s
SLOW_RATE = 1 * MiB
BURST = 256 << 10  # one block: a capped provider sends one at once, then keeps to its rate


@dataclass
class Swarm:
    path: Path
    data: bytes
    root: CID
    blocks: set[CID]
    slow: Child  # honest, 1 MiB/s
    fast: Child  # honest, 4 MiB/s
    to_kill: Child  # 1 MiB/s, SIGKILLed mid-transfer
    to_freeze: Child  # 1 MiB/s, SIGSTOPped mid-transfer
    liar: Child  # flips a byte in every block it sends
    kids: Children


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    base = tmp_path_factory.mktemp("procs")
    data = data_of(4 * MiB, seed=42)
    path = base / "object.bin"
    path.write_bytes(data)
    root, blocks = build_file(data)
    with children(base) as kids:
        slow = kids.provider("slow", [path], upload_rate=SLOW_RATE, upload_burst=BURST)
        fast = kids.provider("fast", [path], upload_rate=FAST_RATE, upload_burst=BURST)
        to_kill = kids.provider("to-kill", [path], upload_rate=SLOW_RATE, upload_burst=BURST)
        to_freeze = kids.provider("to-freeze", [path], upload_rate=SLOW_RATE, upload_burst=BURST)
        liar = kids.provider("liar", [path], corrupt=True)
        for child in (slow, fast, to_kill, to_freeze, liar):
            child.wait_ready()  # they boot in parallel; this waits for each one's JSON line
            assert child.root(path) == str(root)
        keys = {cid.to_v1() for cid, _ in blocks}
        yield Swarm(path, data, root, keys, slow, fast, to_kill, to_freeze, liar, kids)


def _assert_nothing_visible(node: Node, root: CID) -> None:
    assert node.store.pins() == {}
    assert node.store.query() == []
    assert not node.store.has_object(root)


async def _fetch_in_background(
    nursery: trio.Nursery, node: Node, root: CID, providers: list[str]
) -> trio.Event:
    done = trio.Event()

    async def run() -> None:
        await node.bitswap.fetch(root, providers, timeout=60)
        done.set()

    nursery.start_soon(run)
    return done


async def test_fetch_from_two_provider_processes_at_once(swarm: Swarm) -> None:
    async with open_nodes(1, config=FAST) as (fetcher,):
        await fetcher.bitswap.fetch(swarm.root, [swarm.slow.addr, swarm.fast.addr], timeout=60)
        assert fetcher.store.get_bytes(swarm.root) == swarm.data
        assert fetcher.store.pins() == {swarm.root: "recursive"}
        got = {p.peer_id: fetcher.bitswap.ledger(p.peer_id) for p in (swarm.slow, swarm.fast)}
        assert all(ledger.blocks_received > 0 for ledger in got.values()), got
        assert sum(ledger.blocks_received for ledger in got.values()) == len(swarm.blocks)
        assert fetcher.misbehaviour == []


async def test_a_provider_killed_mid_transfer(swarm: Swarm, tmp_path: Path) -> None:
    victim = swarm.to_kill
    store = DiskStore(tmp_path / "store")
    try:
        async with open_nodes(1, config=FAST, stores=[store]) as (fetcher,):
            violations: list[str] = []

            async def watch() -> None:
                # "pinned or recorded" must imply "complete", at every moment
                while True:
                    if (store.pins() or store.query()) and not store.has_object(swarm.root):
                        violations.append("partial object visible")
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                done = await _fetch_in_background(
                    nursery, fetcher, swarm.root, [victim.addr, swarm.fast.addr]
                )
                ledger = fetcher.bitswap.ledger(victim.peer_id)
                await until(lambda: ledger.blocks_received > 0, "a block from the victim")
                _assert_nothing_visible(fetcher, swarm.root)
                victim.signal(signal.SIGKILL)
                with trio.fail_after(60):
                    await done.wait()
                nursery.cancel_scope.cancel()
            assert violations == []
            assert store.get_bytes(swarm.root) == swarm.data
            assert store.pins() == {swarm.root: "recursive"}
            assert ledger.blocks_received < len(swarm.blocks)
            assert fetcher.bitswap.ledger(swarm.fast.peer_id).blocks_received > 0
            assert fetcher.misbehaviour == []  # a dead peer is not a lying one
    finally:
        store.close()
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL


async def test_a_frozen_provider_times_out_and_the_fetch_moves_on(swarm: Swarm) -> None:
    victim = swarm.to_freeze
    try:
        async with open_nodes(1, config=FAST) as (fetcher,):
            async with trio.open_nursery() as nursery:
                done = await _fetch_in_background(
                    nursery, fetcher, swarm.root, [victim.addr, swarm.fast.addr]
                )
                ledger = fetcher.bitswap.ledger(victim.peer_id)
                # two blocks: past the root, it now holds leaves asked as want-block
                await until(lambda: ledger.blocks_received >= 2, "blocks from the victim")
                victim.signal(signal.SIGSTOP)
                with trio.fail_after(60):
                    await done.wait()
            # the want-block deadline (2 s in FAST) fired for what the victim held
            assert ledger.timeouts > 0
            assert ledger.blocks_received < len(swarm.blocks)
            assert fetcher.store.get_bytes(swarm.root) == swarm.data
            victim.signal(signal.SIGCONT)  # before the host closes its connection to it
    finally:
        victim.signal(signal.SIGCONT)


async def test_a_provider_serving_wrong_bytes_is_rejected_and_recorded(swarm: Swarm) -> None:
    async with open_nodes(1, config=FAST) as (fetcher,):
        await fetcher.bitswap.fetch(swarm.root, [swarm.liar.addr, swarm.fast.addr], timeout=60)
        assert fetcher.store.get_bytes(swarm.root) == swarm.data
        # nothing but the object's own blocks reached the store
        assert set(fetcher.store.iter_block_cids()) == swarm.blocks
        assert (swarm.liar.peer_id, WRONG_BLOCK) in {
            (m.peer, m.reason) for m in fetcher.misbehaviour
        }
        assert fetcher.bitswap.ledger(swarm.liar.peer_id).misbehaviour >= 1
        assert fetcher.bitswap.ledger(swarm.liar.peer_id).blocks_received == 0
        assert fetcher.bitswap.ledger(swarm.fast.peer_id).misbehaviour == 0
        assert fetcher.bitswap.ledger(swarm.fast.peer_id).blocks_received == len(swarm.blocks)


async def test_dialing_a_provider_process_with_the_wrong_peer_id(swarm: Swarm) -> None:
    wrong = swarm.slow.addr.replace(swarm.slow.peer_id, swarm.fast.peer_id)
    async with open_nodes(1, config=FAST) as (fetcher,):
        with pytest.raises(FetchFailedError, match="no provider"):
            await fetcher.bitswap.fetch(swarm.root, [wrong], timeout=30)
        assert not fetcher.host.is_connected(swarm.fast.peer_id)
        assert not fetcher.host.is_connected(swarm.slow.peer_id)
        assert fetcher.host.connected_peers() == []
        assert list(fetcher.store.iter_block_cids()) == []


async def test_a_fetcher_killed_half_way_resumes_after_restart(
    swarm: Swarm, tmp_path: Path
) -> None:
    home = tmp_path / "fetcher"
    blocks_dir = home / "store" / "blocks"

    def stored() -> int:
        return sum(1 for _ in blocks_dir.glob("*/*")) if blocks_dir.exists() else 0

    with children(tmp_path) as kids:
        fetcher_proc = kids.spawn(
            "fetcher_proc", "fetcher", "--root", str(swarm.root), "--provider", swarm.slow.addr
        )
        fetcher_proc.wait_ready()
        await until(lambda: stored() >= len(swarm.blocks) // 2, "half the blocks", timeout=60)
        fetcher_proc.signal(signal.SIGKILL)
        assert fetcher_proc.proc.wait(timeout=10) == -signal.SIGKILL
    held = stored()
    assert 0 < held < len(swarm.blocks)
    store = DiskStore(home / "store")
    try:
        assert store.pins() == {} and store.query() == []  # nothing partial became visible
        async with open_nodes(1, config=FAST, stores=[store]) as (restarted,):
            await restarted.bitswap.fetch(swarm.root, [swarm.fast.addr], timeout=60)
            ledger = restarted.bitswap.ledger(swarm.fast.peer_id)
            assert ledger.blocks_received == len(swarm.blocks) - held
        assert store.get_bytes(swarm.root) == swarm.data
        assert store.pins() == {swarm.root: "recursive"}
    finally:
        store.close()
