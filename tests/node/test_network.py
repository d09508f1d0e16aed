"""A 3-layer, 5-node network of real node processes on 127.0.0.1.

master ``""`` <- languages ``en``, ``de`` <- domains ``en/news``, ``en/sport``.  One
network per module (starting five processes is the expensive part); the tests run
in order and each builds on the state the previous ones left (publishes, restart).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2phier.artifact import pack_adapter
from p2phier.artifact.synthetic import write_synthetic_adapter as write_adapter
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.devnet.procs import FAST_ENV, REPO, NodeProc, open_cluster, wait_for
from p2phier.identity import Identity
from p2phier.store import DiskStore

# The tests share one network and build on each other's state: under
# ``pytest -n N --dist loadgroup`` they must all run, in order, in one worker
# (without the group each worker would start its own network and run a random
# subset of the tests against it).
pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("node-network")]

SPECS = [
    ("master", "master", ""),
    ("en", "language", "en"),
    ("de", "language", "de"),
    ("news", "domain", "en/news"),
    ("sport", "domain", "en/sport"),
]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    root = tmp_path_factory.mktemp("net")
    with open_cluster(root, SPECS) as nodes:
        yield nodes


def pack_into(node: NodeProc, seed: int, round_: int = 1) -> str:
    """Pack a tiny real LoRA adapter, signed by ``node``, into its (running) store."""
    adapter = write_adapter(node.home.parent / f"adapter-{node.name}-{seed}", seed=seed)
    store = DiskStore(node.home / "store")
    try:
        art = pack_adapter(
            store,
            adapter,
            Identity.load(node.home / "identity.key"),
            layer=node.layer,
            domain=node.domain,
            base_model_id=DEFAULT_BASE_MODEL,
            round=round_,
            metrics={"loss": 0.5},
            now=time.time(),
        )
    finally:
        store.close()
    return str(art.cid)


def accepted(node: NodeProc) -> set[str]:
    return {a["cid"] for a in node.status()["accepted"]}


def has_accepted(node: NodeProc, cid: str) -> Callable[[], bool]:
    return lambda: cid in accepted(node)


def parent_is(node: NodeProc, parent: str) -> Callable[[], bool]:
    return lambda: bool(node.status()["parent"] == parent)


def pinned(node: NodeProc, cid: str) -> bool:
    store = DiskStore(node.home / "store")
    try:
        return cid in {str(c) for c in store.pins()}
    finally:
        store.close()


def test_hierarchy_forms(net: dict[str, NodeProc]) -> None:
    m, en, de, news, sport = (net[n] for n in ("master", "en", "de", "news", "sport"))
    wait_for(
        "news and sport under en",
        lambda: net["en"].status()["children"] == sorted([news.peer_id, sport.peer_id]),
    )
    wait_for(
        "en and de under master", lambda: m.status()["children"] == sorted([en.peer_id, de.peer_id])
    )
    assert news.status()["parent"] == en.peer_id
    assert sport.status()["parent"] == en.peer_id
    assert en.status()["parent"] == m.peer_id
    assert de.status()["parent"] == m.peer_id
    assert de.status()["children"] == []
    assert m.status()["parent"] is None


def test_discovery_by_layer_and_domain(net: dict[str, NodeProc]) -> None:
    de = net["de"]

    def domains_under_en() -> Any:
        out = de.cli("peers", "--layer", "domain", "--domain", "en", "--json")
        assert out.returncode == 0, out.stderr
        peers = json.loads(out.stdout)["peers"]
        return {p["peer_id"] for p in peers} == {net["news"].peer_id, net["sport"].peer_id}

    wait_for("de to know the domain nodes under en", domains_under_en)
    out = de.cli("peers", "--layer", "language", "--json")
    langs = {(p["peer_id"], p["domain"]) for p in json.loads(out.stdout)["peers"]}
    assert langs == {(net["en"].peer_id, "en")}  # itself is not listed
    st = json.loads(net["news"].cli("node", "status", "--json").stdout)
    assert st["layer"] == "domain" and st["domain"] == "en/news"
    assert st["parent"] == net["en"].peer_id
    assert st["addresses"] and all("/p2p/" + st["peer_id"] in a for a in st["addresses"])


def test_publish_upstream(net: dict[str, NodeProc]) -> None:
    news, en = net["news"], net["en"]
    cid = pack_into(news, seed=1)
    out = news.cli("publish", cid, "--to", "parent", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["cid"] == cid and result["topic"].endswith("/up/" + en.peer_id)
    wait_for("en to accept the child's update", lambda: cid in accepted(en))
    assert pinned(en, cid)
    assert news.status()["head"] == cid
    # Announced to the parent only: the master and the sibling never fetch it.  An absence has
    # no condition to wait on: give gossip (0.5 s heartbeat here) a few rounds to misdeliver.
    time.sleep(2)
    assert cid not in accepted(net["master"]) and cid not in accepted(net["sport"])


def test_publish_downstream_and_two_provider_fetch(net: dict[str, NodeProc]) -> None:
    en, news, sport = net["en"], net["news"], net["sport"]
    cid = pack_into(en, seed=2)
    out = en.cli("publish", cid, "--to", "children", "--json")
    assert out.returncode == 0, out.stderr
    for child in (news, sport):
        wait_for(f"{child.name} to accept the parent's update", has_accepted(child, cid))
        assert pinned(child, cid)
    assert cid not in accepted(net["de"])


def test_fetch_from_two_providers(net: dict[str, NodeProc]) -> None:
    news, sport, m = net["news"], net["sport"], net["master"]
    # 64 blocks of 256 KiB: more than one peer may have in flight (32), so both must serve
    data = random.Random(7).randbytes(16 << 20)
    for node in (news, sport):
        store = DiskStore(node.home / "store")
        try:
            cid = str(store.add_bytes(data))
        finally:
            store.close()
    # The master has none of it: it fetches from both providers in parallel.
    out = m.cli("fetch", cid, "--json")
    assert out.returncode == 0, out.stderr
    fetched = json.loads(out.stdout)
    delivered = {p for p, n in fetched["received"].items() if n > 0}
    assert {news.peer_id, sport.peer_id} <= delivered, fetched
    assert sum(fetched["received"].values()) >= len(data)
    assert pinned(m, cid)


def test_bad_announcements_are_dropped(net: dict[str, NodeProc], tmp_path: Path) -> None:
    en, news = net["en"], net["news"]
    assert news.status()["head"], "news has published nothing upstream (test_publish_upstream)"
    bad_reasons = ("replay", "bad-signature", "stranger")

    def by_peer(status: dict[str, Any], peer: str) -> dict[str, int]:
        reasons: dict[str, int] = status["announcements_dropped_by_peer"].get(peer, {})
        return reasons

    # Honest children re-announce their latest every few seconds: the parent must see
    # those copies (as duplicates) and count not a single replay, from anyone.
    start = en.status()
    assert start["announcements_dropped"].get("replay", 0) == 0, start
    wait_for(
        "en to see news's periodic re-announcements",
        lambda: (
            by_peer(en.status(), news.peer_id).get("duplicate", 0)
            >= by_peer(start, news.peer_id).get("duplicate", 0) + 2
        ),
    )
    quiet = en.status()
    assert quiet["announcements_dropped"].get("replay", 0) == 0, quiet["announcements_dropped"]
    stderr = tmp_path / "hostile.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.node.hostile_proc", en.addr, news.addr],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
            env={**FAST_ENV, "PATH": ""},
        )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        # One line once it holds the child's current announcement and sees the parent's
        # subscription; it then waits for our go-ahead.
        line = proc.stdout.readline()
        assert line, f"hostile peer exited {proc.wait(30)}: {stderr.read_text()}"
        sent = json.loads(line)
        hostile = sent["peer_id"]
        assert hostile not in (en.peer_id, news.peer_id)
        # news publishes something newer: the copy the hostile peer holds is now old.
        cid = pack_into(news, seed=4)
        assert news.cli("publish", cid, "--to", "parent", "--json").returncode == 0
        wait_for("en to accept news's newer update", lambda: cid in accepted(en))
        before = en.status()
        assert before["announcements_dropped"].get("replay", 0) == 0, before
        proc.stdin.write("go\n")
        proc.stdin.flush()

        def dropped() -> Any:
            mine = by_peer(en.status(), hostile)
            return all(mine.get(r, 0) > 0 for r in bad_reasons) and mine

        wait_for(
            "en to drop the hostile peer's replay, forgery and stranger's announcement",
            dropped,
            timeout=120,
        )
        proc.stdin.close()
        assert proc.wait(60) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    after = en.status()
    # Every bad drop is the hostile peer's: none is charged to an honest peer.
    for reason in bad_reasons:
        assert after["announcements_dropped"][reason] == by_peer(after, hostile)[reason], reason
    for peer, reasons in after["announcements_dropped_by_peer"].items():
        if peer != hostile:
            assert not set(reasons) & set(bad_reasons), (peer, reasons)
    assert len(after["accepted"]) == len(before["accepted"])
    assert sent["stranger_cid"] not in {f["cid"] for f in after["fetch_failures"]}
    assert sent["stranger_cid"] not in after["fetching"]


def test_parent_restart_keeps_children(net: dict[str, NodeProc]) -> None:
    en, news, sport = net["en"], net["news"], net["sport"]
    old_id = en.peer_id
    rc = en.stop()
    assert rc == 0, f"unclean shutdown on SIGTERM (70: internal error)\n{en.log_tail()}"
    assert not (en.home / "control.sock").exists()
    en.start()
    assert en.peer_id == old_id
    # The saved snapshot brings the children back at once...
    assert sorted(en.status()["children"]) == sorted([news.peer_id, sport.peer_id])
    # ...and they re-register with the restarted parent at its new address.
    for child in (news, sport):
        wait_for(f"{child.name} to keep en as parent", parent_is(child, old_id))
    cid = pack_into(en, seed=3, round_=2)
    assert en.cli("publish", cid, "--to", "children", "--json").returncode == 0
    for child in (news, sport):
        wait_for(f"{child.name} to accept after the restart", has_accepted(child, cid))


def test_cli_without_node_fails_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "p2phier", "--home", str(tmp_path), "node", "status", "--json"],
        capture_output=True, text=True, check=False, timeout=60, cwd=REPO,
        env={**FAST_ENV, "PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 7
    assert "no node is running" in json.loads(proc.stdout)["error"]
