"""A registered child that takes blocks and serves none of what it announces (real processes).

The attacker is a ``p2phier node run`` whose Bitswap engine holds nothing
(:class:`p2phier.devnet.netattack.WithholdDaemon`): it fetches like any node, announces
its updates as usual (each a valid artifact, pinned in its store), and answers every want
DONT_HAVE.  Its parent must fail each fetch with the reason, never crash, and count it
against the child: a stall while the child took nothing from it, free-riding once its
ledger shows blocks it served the child (-4 each, half-life a day: two within a day are
tolerated, three isolate), once per announcement however often the fetch is retried.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from p2phier.devnet.procs import NodeProc, open_cluster, wait_for
from p2phier.store import DiskStore
from tests.node.peer_kit import fetch_failure, pack_own_update


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    specs = [("master", "master", ""), ("zz", "language", "zz", "withhold")]
    with open_cluster(tmp_path_factory.mktemp("withhold"), specs) as nodes:
        yield nodes


def _update(node: NodeProc, seed: int, round_: int) -> str:
    return pack_own_update(node, seed, round_, layer="language", domain="zz")


def _evidence(master: NodeProc, peer: str) -> dict[str, Any]:
    entry = master.call("trust")["peers"].get(peer) or {}
    return dict(entry.get("evidence") or {})


def test_a_child_that_takes_and_withholds_what_it_announces_is_isolated(
    net: dict[str, NodeProc],
) -> None:
    master, zz = net["master"], net["zz"]
    wait_for("zz registered with the master", lambda: zz.peer_id in master.status()["children"])

    # It announces an update and says DONT_HAVE for it, having taken nothing: a stall
    first = _update(zz, 1, round_=1)
    zz.call("publish", {"cid": first, "to": "parent"})
    error = wait_for(
        "the master's fetch of zz's update to fail", lambda: fetch_failure(master, first)
    )
    assert "DONT_HAVE" in error, error
    wait_for("a stall counted against zz", lambda: _evidence(master, zz.peer_id).get("stall"))
    assert "free-ride" not in _evidence(master, zz.peer_id)

    # It takes a MiB from the master (what a child does with its parent's versions)...
    with DiskStore(master.home / "store") as store:
        blob = str(store.add_bytes(os.urandom(1 << 20)))
    got = zz.call("fetch", {"cid": blob, "timeout": 60.0})
    assert got["cid"] == blob
    # ...and withholds its next update: free-riding, with what it took in the detail
    second = _update(zz, 2, round_=2)
    zz.call("publish", {"cid": second, "to": "parent"})
    wait_for("a free-ride counted against zz",
             lambda: _evidence(master, zz.peer_id).get("free-ride"))  # fmt: skip
    status = master.status()
    detail = [m["detail"] for m in status["misbehaviour"] if m["reason"] == "free-ride"]
    assert len(detail) == 1 and second in detail[0] and "bytes of blocks" in detail[0], detail
    # the first announcement's retries (5 s, 15 s...) are not counted again (evidence is
    # counted in events, decayed; its weight makes the score)
    assert _evidence(master, zz.peer_id)["stall"] == pytest.approx(1.0, abs=0.01)
    assert zz.peer_id not in status["isolated"] and zz.peer_id in status["children"]

    third = _update(zz, 3, round_=3)
    zz.call("publish", {"cid": third, "to": "parent"})
    wait_for("a second free-ride counted against zz",
             lambda: _evidence(master, zz.peer_id).get("free-ride", 0) > 1.9)  # fmt: skip
    assert zz.peer_id not in master.status()["isolated"]  # -1 - 4 - 4: above -10
    assert master.call("trust")["peers"][zz.peer_id]["score"] == pytest.approx(-9.0, abs=0.1)
    fourth = _update(zz, 4, round_=4)
    zz.call("publish", {"cid": fourth, "to": "parent"})
    wait_for("the master to isolate zz", lambda: zz.peer_id in master.status()["isolated"])
    status = master.status()
    assert zz.peer_id not in status["children"]
    assert not {first, second, third, fourth} & {a["cid"] for a in status["accepted"]}
    assert master.proc.poll() is None and zz.proc.poll() is None
