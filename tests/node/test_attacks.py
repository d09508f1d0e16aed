"""Holes of issue 14, each closed against a real attacker process on 127.0.0.1.

The attackers are ``p2phier node run`` processes with one behaviour changed
(:mod:`p2phier.devnet.attacker`): they speak every protocol correctly and lie
where it matters.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2phier.artifact import pack_adapter
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.cid import CID
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.devnet.procs import FAST_ENV, REPO, NodeProc, open_cluster, wait_for
from p2phier.identity import Identity
from p2phier.store import DiskStore
from tests.node.peer_kit import stop_helper

pytestmark = [pytest.mark.timeout(300)]


@dataclass
class _Hostile:
    """A running hostile helper: the JSON line it printed when ready, and a way to ask more."""

    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    def ask(self, line: str) -> dict[str, Any]:
        """Send one line; the JSON line it answers (the helper's own deadlines bound it)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the helper exited {self.proc.wait(30)} instead of answering {line!r}"
        return dict(json.loads(answer))


@contextmanager
def _attacker(module: str, *args: str) -> Iterator[_Hostile]:
    """A hostile helper process (``python -m MODULE ARGS``): yields it once it printed its
    ready line; on exit closes its stdin (its signal to stop) and reaps it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line, f"{module} exited {proc.wait(30)} before it was ready"
        yield _Hostile(proc, dict(json.loads(line)))
    finally:
        stop_helper(proc)


def _pack(node: NodeProc, signer: Identity, layer: str, domain: str, seed: int) -> str:
    adapter = write_synthetic_adapter(node.home.parent / f"adapter-{node.name}-{seed}", seed=seed)
    store = DiskStore(node.home / "store")
    try:
        art = pack_adapter(
            store,
            adapter,
            signer,
            layer=layer,
            domain=domain,
            base_model_id=DEFAULT_BASE_MODEL,
            round=1,
            now=time.time(),
        )
    finally:
        store.close()
    return str(art.cid)


@pytest.fixture(scope="module")
def provenance_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    specs = [
        ("master", "master", ""),
        ("zz", "language", "zz", "foreign-artifact"),  # a fresh key in a domain nobody serves
        ("en", "language", "en"),
    ]
    with open_cluster(tmp_path_factory.mktemp("prov"), specs) as nodes:
        yield nodes


def test_an_artifact_signed_by_another_key_is_not_the_announcers_update(
    provenance_net: dict[str, NodeProc],
) -> None:
    """Issue 14: an artifact signed by another key, naming domain/en/healthcare, announced
    under a language/zz registration, was fetched and accepted as the announcer's update."""
    master, zz = provenance_net["master"], provenance_net["zz"]
    wait_for("zz registered with the master", lambda: zz.peer_id in master.status()["children"])
    stranger = Identity.generate()
    foreign = _pack(zz, stranger, "domain", "en/healthcare", seed=1)
    out = zz.call("publish", {"cid": foreign, "to": "parent"})
    assert out["cid"] == foreign  # the attacker announced it
    drops = wait_for(
        "the master to drop the foreign artifact on provenance",
        lambda: (
            master.status()["announcements_dropped_by_peer"].get(zz.peer_id, {}).get("provenance")
        ),
    )
    assert drops == 1
    status = master.status()
    assert foreign not in {a["cid"] for a in status["accepted"]}
    (evidence,) = [m for m in status["misbehaviour"] if m["peer"] == zz.peer_id]
    assert evidence["reason"] == "provenance"
    assert "not by the announcer" in evidence["detail"]
    # a provenance mismatch is a proof (two signed messages that disagree): the author is
    # isolated at once, dropped as a child, and its registrations are refused
    wait_for("the master to isolate zz", lambda: zz.peer_id in master.status()["isolated"])
    wait_for(
        "zz's next registration to be refused",
        lambda: master.status()["peers_refused"].get("registration", 0) >= 1,
    )
    status = master.status()
    assert zz.peer_id not in status["children"]
    en = provenance_net["en"]
    # the honest child stays (waited for: a loaded machine may let its registration lapse
    # for a moment; a child dropped along with the attacker would never come back)
    wait_for("en to be the master's child", lambda: en.peer_id in master.status()["children"])
    assert en.peer_id not in master.status()["isolated"]
    r = master.cli("trust", "--json")
    assert r.returncode == 0, r.stderr
    view = json.loads(r.stdout)
    mine = view["peers"][zz.peer_id]
    assert mine["isolated_until"] and mine["reason"].startswith("proof: provenance")
    assert mine["proofs"][0]["kind"] == "provenance"


def test_an_honest_node_refuses_to_publish_what_is_not_its_own(
    provenance_net: dict[str, NodeProc],
) -> None:
    en = provenance_net["en"]
    wait_for("en has a parent", lambda: en.status()["parent"])
    foreign = _pack(en, Identity.generate(), "language", "en", seed=3)
    r = en.cli("publish", foreign, "--to", "parent", "--json")
    assert r.returncode != 0
    assert "not by this node" in r.stdout + r.stderr
    other_place = _pack(en, Identity.load(en.home / "identity.key"), "domain", "en/x", seed=4)
    r = en.cli("publish", other_place, "--to", "parent", "--json")
    assert r.returncode != 0
    assert "not for this node's language/en" in r.stdout + r.stderr


def test_a_fake_master_claiming_uptime_does_not_capture_a_new_node(tmp_path: Path) -> None:
    """Issue 14: a fresh key's record claimed layer master and 23 h of uptime; a new
    language/en node joining through the real master picked the fake within a second."""
    specs = [("master", "master", ""), ("fake", "master", "", "claims-uptime")]
    with open_cluster(tmp_path, specs) as nodes:
        master, fake = nodes["master"], nodes["fake"]
        claimed = fake.status()["started_ms"]
        assert claimed < time.time() * 1000 - 22 * 3600 * 1000  # the lie is in its record
        # the newcomer bootstraps from the real master, as the operator told it to
        home = tmp_path / "en"
        home.mkdir(mode=0o700)
        en = NodeProc("en", home, "language", "en", [master.addr], env=master.env)
        try:
            en.start()
            wait_for(
                "en to know and measure both masters",
                lambda: {master.peer_id, fake.peer_id} <= set(en.status()["measured_ms"]),
            )
            wait_for("en to choose a parent", lambda: en.status()["parent"])
            assert en.status()["parent"] == master.peer_id
            wait_for(
                "the real master to list en as its child",
                lambda: en.peer_id in master.status()["children"],
            )
            assert en.peer_id not in fake.status()["children"]
        finally:
            en.stop()


def test_silent_connections_do_not_lock_out_an_honest_peer(tmp_path: Path) -> None:
    """Issue 14: 500 TCP connections that never handshake left a fresh honest peer unable to
    connect for seconds (~35 s).  The flood comes from 127.0.0.2 (Linux routes all of
    127/8 to loopback), the honest peer from 127.0.0.1."""
    with open_cluster(tmp_path, [("victim", "master", "")]) as nodes:
        victim = nodes["victim"]
        port = victim.addr.split("/tcp/")[1].split("/")[0]
        args = ("127.0.0.1", port, "500", "127.0.0.2")
        with _attacker("tests.net.silent_conns_proc", *args) as flood:
            opened = flood.ready["open"]
            assert opened >= 400  # the kernel accepted them; the node decides what to keep
            home = tmp_path / "honest"
            home.mkdir(mode=0o700)
            honest = NodeProc("honest", home, "language", "en", [victim.addr], env=victim.env)
            try:
                honest.start()
                began = time.monotonic()
                wait_for(
                    "the honest peer to connect during the flood",
                    lambda: honest.peer_id in victim.status()["peers"],
                    timeout=5.0,  # a locked-out peer got in only after the 10 s handshake timeout
                    every=0.05,
                )
                print(f"honest peer connected {time.monotonic() - began:.2f} s after its start")
                inbound = wait_for(
                    "the victim to have refused the flood beyond its per-IP handshake cap",
                    lambda: (
                        (st := victim.status()["inbound"])["refused"].get("handshakes-per-ip", 0)
                        >= opened - 16
                        and st
                    ),
                )
                assert inbound["handshaking"] <= 16
            finally:
                honest.stop()


def test_a_flooding_child_does_not_starve_an_honest_one(tmp_path: Path) -> None:
    """Issue 14: 200 re-registrations, each with a new head the attacker answers and never
    serves, queued 253 fetches behind 4 slots; an honest child's update sent after the
    flood was not accepted within 151 s.  Now registrations beyond a peer's budget are
    refused before their signature is checked, and a child holds at most one running and
    one queued fetch."""
    with open_cluster(tmp_path, [("master", "master", ""), ("en", "language", "en")]) as nodes:
        master, en = nodes["master"], nodes["en"]
        wait_for("en registered", lambda: en.peer_id in master.status()["children"])
        with _attacker("tests.node.flood_proc", master.addr, "200") as flood:
            sent = flood.ready
            attacker = sent["peer_id"]
            print(f"flood: {sent}")
            heads = {str(CID.raw(b"flood %d %s" % (i, attacker.encode()))) for i in range(200)}
            assert sent["refused"] >= 150  # over its registration budget (5 at once, 1 per 2 s)
            status = master.status()
            assert status["over_budget"]["registrations"].get(attacker, 0) >= 150
            # the honest child's update, sent after the flood, is accepted promptly
            own = _pack(en, Identity.load(en.home / "identity.key"), "language", "en", seed=9)
            en.call("publish", {"cid": own, "to": "parent"})
            began = time.monotonic()
            wait_for(
                "the master to accept en's update during the flood",
                lambda: own in {a["cid"] for a in master.status()["accepted"]},
                timeout=30.0,
            )
            print(f"honest update accepted {time.monotonic() - began:.2f} s after its publish")
            status = master.status()
            assert len(heads & set(status["fetching"])) <= 1  # one stalled fetch at most
            assert status["fetches_queued"] <= 1  # and at most its newest waiting


def test_two_records_with_one_sequence_number_isolate_their_signer(tmp_path: Path) -> None:
    """Equivocation: two different signed records with the same seq are a proof."""
    with open_cluster(tmp_path, [("victim", "master", "")]) as nodes:
        victim = nodes["victim"]
        with _attacker("tests.node.equivocate_proc", victim.addr) as equivocator:
            liar = equivocator.ready["peer_id"]
            wait_for("the victim to isolate the liar", lambda: liar in victim.status()["isolated"])
            view = json.loads(victim.cli("trust", "--json").stdout)
            assert view["peers"][liar]["proofs"][0]["kind"] == "equivocation"
            assert "two different records with seq" in view["peers"][liar]["proofs"][0]["detail"]


def test_a_peer_isolated_by_one_parent_is_refused_by_its_sibling(tmp_path: Path) -> None:
    """Issue 14: the gossip must matter.  The attacker passes off a foreign artifact at its
    parent, which isolates it on the provenance proof and gossips the proof in its trust
    report; the sibling parent, which never dealt with the attacker, re-checks the proof,
    isolates it too, and refuses it when it comes to register."""
    specs = [
        ("master", "master", ""),
        ("en1", "language", "en"),
        ("en2", "language", "en"),
        ("bad", "domain", "en/x", "foreign-artifact"),
    ]
    with open_cluster(tmp_path, specs) as nodes:
        en1, en2, bad = nodes["en1"], nodes["en2"], nodes["bad"]
        parent_id = wait_for("the attacker's parent", lambda: bad.status()["parent"])
        parent, sibling = (en1, en2) if parent_id == en1.peer_id else (en2, en1)
        wait_for("registered", lambda: bad.peer_id in parent.status()["children"])
        assert bad.peer_id not in sibling.status()["children"]  # the sibling never dealt with it
        foreign = _pack(bad, Identity.generate(), "domain", "en/healthcare", seed=11)
        bad.call("publish", {"cid": foreign, "to": "parent"})
        wait_for("the parent to isolate it", lambda: bad.peer_id in parent.status()["isolated"])
        wait_for(
            "the sibling to isolate it on the forwarded proof",
            lambda: bad.peer_id in sibling.status()["isolated"],
        )
        view = json.loads(sibling.cli("trust", "--json").stdout)
        proof = view["peers"][bad.peer_id]["proofs"][0]
        assert proof["kind"] == "provenance"
        assert proof["detail"].startswith(f"forwarded by {parent.peer_id}")
        wait_for(
            "the attacker, refused by its parent, to be refused by the sibling too",
            lambda: sibling.status()["peers_refused"].get("registration", 0) >= 1,
        )
        assert bad.peer_id not in sibling.status()["children"]


#: trust reports every 2 s (an isolation goes out at once anyway) and the global view
#: recomputed within 1 s of a change, so that a run sees them within seconds
TRUST_ENV = {
    **FAST_ENV,
    "P2PHIER_TRUST_REPORT_INTERVAL_S": "2",
    "P2PHIER_TRUST_GLOBAL_INTERVAL_S": "1",
}


def _standing(node: NodeProc, peer: str) -> dict[str, Any]:
    """``peer``'s entry in ``node``'s global view (trust, distrust, standing, against)."""
    view = json.loads(node.cli("trust", "--json").stdout)
    entry: dict[str, Any] = view["standing"].get(peer, {})
    return entry


def test_a_peer_isolated_on_evidence_alone_is_refused_by_its_sibling_on_the_report(
    tmp_path: Path,
) -> None:
    """Issue 14: the gossip must matter, also without a proof.  The rogue child sends its
    parent forged announcements: first-hand evidence the parent alone holds (a bad
    signature is no proof a sibling could re-check).  The parent isolates it and gossips
    its opinion; the sibling parent, which never dealt with the rogue, weighs that report
    by the parent's standing (the master accepted an update of the parent's and vouches for
    it), finds the rogue distrusted and refuses it when it comes to register, without
    isolating it (a report alone isolates nobody)."""
    specs = [("master", "master", ""), ("en1", "language", "en"), ("en2", "language", "en")]
    with open_cluster(tmp_path, specs, env=TRUST_ENV) as nodes:
        master, parent, sibling = nodes["master"], nodes["en1"], nodes["en2"]
        wait_for(
            "both language nodes registered",
            lambda: {parent.peer_id, sibling.peer_id} <= set(master.status()["children"]),
        )
        own = _pack(parent, Identity.load(parent.home / "identity.key"), "language", "en", 21)
        parent.call("publish", {"cid": own, "to": "parent"})
        wait_for(
            "the sibling to hold the parent as trusted (the master vouches for it)",
            lambda: _standing(sibling, parent.peer_id).get("standing") == "trusted",
        )
        with _attacker("tests.node.rogue_child_proc", parent.addr) as rogue_proc:
            rogue = rogue_proc.ready["peer_id"]
            wait_for(
                "the parent to isolate the rogue", lambda: rogue in parent.status()["isolated"]
            )
            mine = json.loads(parent.cli("trust", "--json").stdout)["peers"][rogue]
            assert mine["reason"].startswith("trust ") and mine["proofs"] == []  # no proof
            wait_for(
                "the sibling to distrust the rogue on the parent's report",
                lambda: rogue in sibling.status()["distrusted"],
            )
            entry = _standing(sibling, rogue)
            assert entry["standing"] == "distrusted" and entry["against"] == 1
            verdict = rogue_proc.ask(f"register {sibling.addr}")
            assert not verdict["accepted"], verdict
            assert verdict["reason"].startswith("distrusted: peers this node trusts"), verdict
            status = sibling.status()
            assert rogue not in status["children"]
            assert rogue not in status["isolated"]  # a report alone isolates nobody
            (refusal,) = [r for r in status["children_refused"] if r["peer"] == rogue]
            assert refusal["reason"] == verdict["reason"]


def test_slander_alone_does_not_make_a_parent_refuse_an_honest_node(tmp_path: Path) -> None:
    """A fresh key gossips signed reports that rate an honest node -1000: the parent hears
    them, weighs them by their reporter's standing (none), and admits the honest node."""
    specs = [("master", "master", ""), ("en", "language", "en")]
    with open_cluster(tmp_path, specs, env=TRUST_ENV) as nodes:
        master, en = nodes["master"], nodes["en"]
        home = tmp_path / "honest"
        home.mkdir(mode=0o700)
        key = Identity.generate()  # made here, so that the slander can name it in advance
        key.save(home / "identity.key")
        victim = str(key.peer_id)
        with _attacker("tests.node.slander_proc", en.addr, victim):
            entry = wait_for(
                "the parent to hear the slander",
                lambda: (e := _standing(en, victim)).get("against", 0) >= 1 and e,
            )
            assert entry["standing"] != "distrusted" and entry["distrust"] == 0.0
            honest = NodeProc("honest", home, "domain", "en/y", [master.addr], env=TRUST_ENV)
            try:
                honest.start()
                wait_for(
                    "the parent to admit the slandered node",
                    lambda: victim in en.status()["children"],
                )
                status = en.status()
                assert victim not in status["distrusted"] and victim not in status["isolated"]
                assert not [r for r in status["children_refused"] if r["peer"] == victim]
            finally:
                honest.stop()
