"""p2phier and a real helia node (JavaScript), both directions, on 127.0.0.1.

The helia peer is ``tests/interop/helia_peer.py``: helia 7.1.15 on js-libp2p 3.3.11
(TCP, noise, yamux, identify, Bitswap 1.2.0), installed by ``npm ci`` from the
pinned lock file in ``tests/interop/helia`` on first use; see that module for
exactly what runs.  It opens a new Bitswap stream for every message and closes
it, which p2phier once took for the peer leaving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier.devnet.procs import NodeProc

from .common import (
    SIZES,
    artifact_round_trip,
    data_for,
    foreign_fetches_from_node,
    node_bytes,
    node_fetches_from_foreign,
    p2phier_cid,
)
from .helia_peer import HeliaPeer, ensure_helia_installed

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("interop-helia")]


@pytest.fixture(scope="module")
def helia(root: Path) -> Iterator[HeliaPeer]:
    ensure_helia_installed()  # npm ci from the lock file, once; fails (never skips) if it cannot
    work = root / "helia"
    work.mkdir()
    with HeliaPeer(work) as peer:
        yield peer


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_helia_computes_the_cid_p2phier_computes(helia: HeliaPeer, root: Path, size: int) -> None:
    data = data_for(size, seed=size)
    path = root / f"cid-{size}"
    path.write_bytes(data)
    assert helia.add(path) == p2phier_cid(data)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_helia_fetches_from_a_p2phier_node(
    helia: HeliaPeer, node: NodeProc, root: Path, size: int
) -> None:
    data = data_for(size, seed=1000 + size)
    cid, _ = foreign_fetches_from_node(helia, node, data, root / f"from-node-{size}")
    ledger_peers = node.status()["peers"]
    assert helia.peer_id in ledger_peers
    assert cid == p2phier_cid(data)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_p2phier_node_fetches_from_helia(
    helia: HeliaPeer, node: NodeProc, root: Path, size: int
) -> None:
    data = data_for(size, seed=2000 + size)
    path = root / f"to-node-{size}"
    path.write_bytes(data)
    cid = helia.add(path)
    reply = node_fetches_from_foreign(helia, node, cid)
    assert reply["received"].get(helia.peer_id, 0) >= size, reply
    assert node_bytes(node, cid) == data
    assert node.status()["misbehaviour"] == []


def test_an_artifact_goes_through_helia_and_verifies(helia: HeliaPeer, root: Path) -> None:
    artifact_round_trip(helia, root, seed=31)
