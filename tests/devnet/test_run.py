"""The devnet end to end: real node processes on 127.0.0.1 driven through `p2phier devnet`.

These run the CLI exactly as a user does (``devnet up``, ``devnet down``) and then
check what the nodes left on disk: every node's learner state, its daemon's
accepted artifacts, the run record.  They are the slowest tests of the suite
(a minute or two each on 2 cores) and each is its own xdist group.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from p2phier.devnet.procs import FAST_ENV, REPO
from p2phier.devnet.runner import RUN_STATE, _is_ours

pytestmark = [pytest.mark.slow, pytest.mark.ml]

SCENARIOS = REPO / "devnet" / "scenarios"


def _cli(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2phier", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **FAST_ENV},
        cwd=REPO,
        check=False,
    )


def _state(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / RUN_STATE).read_text()))


def _learner(run_dir: Path, node: str) -> dict[str, Any]:
    home = Path(_state(run_dir)["nodes"][node]["home"])
    return dict(json.loads((home / "learn" / "state.json").read_text()))


def _accepted(run_dir: Path, node: str) -> list[dict[str, Any]]:
    """What the node's daemon accepted (fetched and verified), from its saved state."""
    from p2phier.identity import PeerId
    from p2phier.node.state import load_node_state, state_path

    info = _state(run_dir)["nodes"][node]
    out: list[dict[str, Any]] = []
    load_node_state(
        state_path(Path(info["home"])),
        PeerId.parse(info["peer_id"]),
        lambda s: out.extend(s.accepted),
        max_accepted=256,
    )
    return out


def _no_node_left(run_dir: Path) -> list[int]:
    """Node processes and the baselines child of the run that are still alive."""
    state = _state(run_dir)
    pids = [n["pid"] for n in state["nodes"].values() if isinstance(n["pid"], int)]
    pids += [p for p in state.get("helpers", {}).values() if isinstance(p, int)]
    return [p for p in pids if _is_ours(p)]


def _check_versions_applied(run_dir: Path, parents: dict[str, str]) -> None:
    """Every node runs its parent's final version, which its daemon fetched and verified by CID."""
    peers = {name: n["peer_id"] for name, n in _state(run_dir)["nodes"].items()}
    for child, parent in parents.items():
        mine, theirs = _learner(run_dir, child), _learner(run_dir, parent)
        final = theirs["flat"]["cid"]
        assert mine["base"]["cid"] == final, f"{child} is not on {parent}'s final version"
        assert final in theirs["published"]
        got = [a for a in _accepted(run_dir, child) if a["cid"] == final]
        assert got and got[0]["author"] == peers[parent], f"{child} never accepted {final}"


@pytest.mark.xdist_group("devnet-ci")
def test_the_ci_devnet_forms_learns_and_leaves_no_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "ci"
    result = _cli("devnet", "up", "--scenario", str(SCENARIOS / "ci.toml"), "--dir", str(run_dir),
                  "--no-live", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["verdict"].startswith("Verdict: ")
    assert (run_dir / "report.md").is_file() and (run_dir / "accuracy.png").is_file()
    run = json.loads((run_dir / "run.json").read_text())
    assert [r["round"] for r in run["rounds"]] == [0, 1, 2]
    # The baselines ran in their own child process, scored every training node.
    assert set(run["baselines"]["isolated"]) == set(run["baselines"]["central"]) == {
        "news-a", "news-b", "health"}  # fmt: skip
    assert set(_state(run_dir)["helpers"]) == {
        "baselines-isolated", "baselines-central-0.005", "baselines-central-0.00125"}  # fmt: skip
    log = (run_dir / "baselines-isolated.log").read_text()
    assert "baselines part isolated starts at niceness 19" in log
    # The hierarchy formed as the scenario says, with real peer ids.
    nodes = {n["name"]: n for n in run["nodes"]}
    assert all(n["peer_id"] for n in nodes.values())
    parents = {n["name"]: n["parent"] for n in run["nodes"] if n["parent"]}
    assert parents == {"en": "master", "news-a": "en", "news-b": "en", "health": "en"}
    # Every training node trained on all its data and sent updates upstream each round.
    for name in ("news-a", "news-b", "health"):
        learner = _learner(run_dir, name)
        assert learner["round"] == 2 and learner["consumed"] == 2
        for r in ("1", "2"):
            assert learner["rounds"][r]["trained"] > 0
            assert learner["rounds"][r]["sent"]["topic"].startswith("/p2phier/1/up/")
    _check_versions_applied(run_dir, parents)
    # The language node aggregated its three children's updates and published.
    en = _learner(run_dir, "en")
    assert en["rounds"]["1"]["n_updates"] == 3 and en["rounds"]["1"]["decision"] == "published"
    # Newcomers' updates counted a quarter in their first round, more as their history grew.
    w1 = {p: v["weight"] for p, v in en["rounds"]["1"]["trust_weights"].items()}
    w2 = {p: v["weight"] for p, v in en["rounds"]["2"]["trust_weights"].items()}
    assert len(w1) == 3 and all(0 < w <= 0.25 for w in w1.values()), w1
    assert all(w2[p] > w1[p] for p in w1), (w1, w2)
    # The parent's accuracy on its children's held-out data improved over the run.
    by_round = {r["round"]: {n["node"]: n for n in r["nodes"]} for r in run["rounds"]}
    before, after = by_round[0]["en"]["accuracy_children"], by_round[2]["en"]["accuracy_children"]
    assert after > before, (before, after)
    # A clean run isolates nobody (issue 14: no false isolations among honest nodes).
    assert all(n["isolated"] == 0 for r in run["rounds"] for n in r["nodes"])
    # Bytes from the nodes' Bitswap ledgers: every leaf's update reached its parent in each
    # round, smaller than its full model; every leaf fetched a version; no node downloaded a
    # tier (each has the root tier on disk); updates and versions cost less than full models.
    model = {n["name"]: n["model_bytes"] for n in run["nodes"]}
    report = json.loads((run_dir / "report.json").read_text())["summary"]
    for n in (1, 2):
        assert by_round[n]["en"]["update_bytes_in"] > 0, by_round[n]["en"]
        for name in ("news-a", "news-b", "health"):
            leaf = by_round[n][name]
            assert 0 < leaf["update_bytes_out"] < model[name], leaf
            assert leaf["bytes_out"] >= leaf["update_bytes_out"], leaf
        assert 0 < report["rounds"][n]["pct_of_full"] < 100, report["rounds"][n]
    assert all(by_round[1][name]["version_bytes_in"] > 0 for name in ("news-a", "news-b", "health"))
    assert all(n["tier_bytes_in"] == 0 for rnd in run["rounds"] for n in rnd["nodes"])
    # Issue 15: a leaf's updates travel at the plan's coarse int8 step (update_rms_steps), each
    # an int8 delta on its previous one (which the parent holds) or whole where that is smaller
    # (these leaves' LoRA restarts after each rebase, so whole it is): under 0.075% of the
    # leaf's model each (0.058-0.063% measured; at the finest step 0.082-0.088%).  Versions go
    # down at the finest step as int8 deltas on the previous version, which the child holds.
    ids = {n["name"]: n["peer_id"] for n in run["nodes"]}
    got = _accepted(run_dir, "en")
    for name in ("news-a", "news-b", "health"):
        ups = sorted((a for a in got if a["author"] == ids[name]), key=lambda a: a["seq"])
        assert len(ups) >= 2 and ups[0]["parent"] is None, ups
        for prev, cur in itertools.pairwise(ups):
            assert cur["parent"] in (None, prev["cid"]), ups
        assert all(0 < u["wire_bytes"] < 0.00075 * model[name] for u in ups), (model[name], ups)
        held = _accepted(run_dir, name)
        versions = sorted((a for a in held if a["author"] == ids["en"]), key=lambda a: a["seq"])
        assert versions[0]["parent"] is None, versions
        deltas = [(p, c) for p, c in itertools.pairwise(versions) if c["parent"] is not None]
        assert deltas and all(c["parent"] == p["cid"] for p, c in deltas), versions
    # bench/routing.py on this run: its `answered` score is the referee's figure for the
    # language node (same model, data, answers and prototypes); the prototypes the node holds
    # came up from its children with their updates and span both tasks (news topics and
    # drug-review sentiments); and class prototypes of its children's training data name the
    # task of nearly every held-out example.
    routing = subprocess.run(
        [sys.executable, str(REPO / "bench" / "routing.py"), str(run_dir), "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, **FAST_ENV},
        check=False,
    )  # fmt: skip
    assert routing.returncode == 0, routing.stderr[-4000:]
    scores = json.loads(routing.stdout.strip().splitlines()[-1])["parents"]
    assert set(scores) == {"master", "en"}, scores
    assert scores["en"]["answered"] == pytest.approx(by_round[2]["en"]["accuracy_children"])
    assert scores["en"]["prototype_tasks"] == 2, scores["en"]
    assert scores["en"]["route_ok"] >= 0.9, scores["en"]
    # Nothing is left running, and `devnet down` agrees.
    assert _no_node_left(run_dir) == []
    down = _cli("devnet", "down", "--dir", str(run_dir), "--json", timeout=60)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] == []


def _topic_leaves_run(tmp_path: Path, scenario: str) -> tuple[Path, str, set[str], dict[str, Any]]:
    """Run a scenario of ci-attack's network (en with one leaf per BBC topic and the
    attacker ``mixed``): its run dir, the attacker's and the honest leaves' peer ids, and
    en's learner state."""
    run_dir = tmp_path / "run"  # short: the control sockets' paths are limited to 100 bytes
    result = _cli("devnet", "up", "--scenario", str(SCENARIOS / f"{scenario}.toml"), "--dir",
                  str(run_dir), "--no-live", "--no-baselines", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    peers = {name: n["peer_id"] for name, n in _state(run_dir)["nodes"].items()}
    honest = {peers[n] for n in ("business", "tech", "sports", "politics", "entertainment")}
    return run_dir, peers["mixed"], honest, _learner(run_dir, "en")


@pytest.mark.xdist_group("devnet-attack")
def test_a_scaling_attacker_is_left_out_and_isolated_and_nobody_else(tmp_path: Path) -> None:
    """A real attacker node (model replacement: its update times 10) among 5 honest leaves:
    the parent's screen leaves its updates out from the first round, trust isolates it, the
    parent waits for every honest child's update and aggregates them, and no honest node is
    isolated.

    Single-topic leaves pull the shared head towards their own topics, so one honest update
    may point against, or across, the median of the others: the screen's direction checks
    (``opposes``, ``unaligned``) then leave it out of that round, as FLTrust's zero weight for
    a negative cosine does.  Seen in 3 of about 9 runs (2 ``opposes``, 1 ``unaligned``); the
    screen's documented price (``p2phier/trust/quality.py``), and a known weakness with leaves
    of one topic each.  Not allowed: an honest update left out by a size or copy check, a
    zero trust weight, more than one honest update left out a round, an honest isolation."""
    run_dir, attacker, honest, en = _topic_leaves_run(tmp_path, "ci-attack")
    first = en["rounds"]["1"]
    assert attacker in first["children_updates"]  # it did send an update...
    assert first["excluded_updates"][attacker].startswith("screen: outsized"), first
    assert set(first["excluded_updates"]) == {attacker}  # ...and only it was left out
    assert first["n_updates"] == 5 and first["decision"] == "published", first
    for r in ("2", "3"):
        rec = en["rounds"][r]
        assert honest <= set(rec["children_updates"]), rec  # every honest one waited for
        excluded = rec.get("excluded_updates", {})
        aggregated = set(rec["trust_weights"]) - set(excluded)
        assert attacker not in aggregated, rec  # never the attacker's
        left_out = honest - aggregated
        assert len(left_out) <= 1, rec
        direction = ("screen: opposes", "screen: unaligned")
        assert all(excluded[p].startswith(direction) for p in left_out), rec
        assert all(rec["trust_weights"][p]["weight"] > 0 for p in honest), rec
    # Trust isolated the attacker at the parent, and nobody isolated anyone else.
    run = json.loads((run_dir / "run.json").read_text())
    last = {n["node"]: n for n in run["rounds"][-1]["nodes"]}
    assert last["en"]["isolated"] == 1, last["en"]
    assert all(n["isolated"] == 0 for name, n in last.items() if name != "en"), last
    assert _no_node_left(run_dir) == []


@pytest.mark.xdist_group("devnet-attack")
def test_a_child_lying_in_its_class_prototypes_counts_as_a_median_child(
    tmp_path: Path,
) -> None:
    """A real attacker leaf sends honest updates with class prototypes that lie as far as
    the format lets them (every mean negated, every count a million).  The parent verifies
    and keeps them as the leaf's latest, and its merge counts the liar as no more than the
    lower-median child's whole data (``learn/prototypes.merge_senders``): the million never
    reaches its merge, nor its parent's.  Nobody is isolated (counts cannot be
    proven; the bound is the defence), and no node fails."""
    from p2phier.artifact.protofile import MAX_COUNT
    from p2phier.learn.prototypes import load

    run_dir, liar, honest, en = _topic_leaves_run(tmp_path, "ci-protolie")
    for r in ("1", "2", "3"):  # the lie is in the prototypes only: its updates count
        rec = en["rounds"][r]
        assert liar in set(rec["trust_weights"]) - set(rec.get("excluded_updates", {})), rec
    homes = {name: Path(n["home"]) for name, n in _state(run_dir)["nodes"].items()}
    book = homes["en"] / "learn" / "prototypes"
    sent = {f.name.removesuffix(".safetensors"): load(f) for f in (book / "from").iterdir()}
    assert set(sent) == honest | {liar}, sorted(sent)
    lie = sent[liar]
    assert lie is not None and set(lie.counts) == {float(MAX_COUNT)}
    assert lie.ncm_tasks == set(lie.tasks)  # it claims to answer news by its prototypes
    merged = load(book / "merged.safetensors")
    assert merged is not None
    # en has no training data of its own: its merge is its children's, each scaled to at
    # most the lower-median child's total count (then weighed by trust: at most 1)
    totals = sorted(sum(p.counts) for p in sent.values() if p is not None)
    median = totals[(len(totals) - 1) // 2]
    assert median < 1000, totals  # an honest child's data, not the liar's million
    for label, count in zip(merged.labels, merged.counts, strict=True):
        bound = sum(
            p.counts[p.labels.index(label)] * min(1.0, median / sum(p.counts))
            for p in sent.values()
            if p is not None and label in p.labels
        )
        assert count <= bound + 1, (label, count, bound)  # + 1: counts are rounded
    assert sum(merged.counts) <= sum(totals[:-1]) + median + len(merged.labels), merged.counts
    # its claim is a vote weighed as its counts are: one median child's data of six leaves'
    # (the honest leaves claim nothing: a leaf answers by its head) does not carry it
    assert merged.ncm_tasks == frozenset(), merged.ncm_tasks
    # en answers by prototype where its validation set says so (answer_by = "validated"):
    # its choice, made with the merged prototypes, is on disk for the referee
    answering = json.loads((book / "answering.json").read_text())
    assert set(answering["tasks"]) == {"news"}, answering
    assert answering["ncm_tasks"] in ([], ["news"]) and 0 <= answering["accuracy"] <= 1
    master = load(homes["master"] / "learn" / "prototypes" / "merged.safetensors")
    assert master is not None and max(master.counts) < MAX_COUNT / 100, master.counts
    # The master has no data to choose by: it answers a task by prototype where en (its
    # only child) said, in the file it sent, that it does so (en's validated choice)
    en_peer = _state(run_dir)["nodes"]["en"]["peer_id"]
    from_en = load(homes["master"] / "learn" / "prototypes" / "from" / f"{en_peer}.safetensors")
    assert from_en is not None and from_en.ncm_tasks <= {"news"}, from_en
    assert master.ncm_tasks == from_en.ncm_tasks, (master.ncm_tasks, from_en.ncm_tasks)
    run = json.loads((run_dir / "run.json").read_text())
    last = {n["node"]: n for n in run["rounds"][-1]["nodes"]}
    assert all(n["isolated"] == 0 for n in last.values()), last
    assert _no_node_left(run_dir) == []


def _kept_out_and_isolated(
    run_dir: Path, en: dict[str, Any], colluder: str, honest: set[str]
) -> None:
    """The colluder's updates never aggregated, at most one honest one left out a round, no
    honest update screened late; by the end en isolated the colluder, and nobody else."""
    for r in ("1", "2", "3"):
        rec = en["rounds"][r]
        aggregated = set(rec["trust_weights"]) - set(rec.get("excluded_updates", {}))
        assert colluder not in aggregated, rec
        assert len(honest - aggregated) <= 1, rec  # see the scaling attacker's test
        assert set(rec.get("late_screen", {})) <= {colluder}, rec
    run = json.loads((run_dir / "run.json").read_text())
    last = {n["node"]: n for n in run["rounds"][-1]["nodes"]}
    assert last["en"]["isolated_peers"] == ["mixed"], last["en"]
    assert all(n["isolated"] == 0 for name, n in last.items() if name != "en"), last
    assert _no_node_left(run_dir) == []


@pytest.mark.xdist_group("devnet-attack")
def test_a_colluder_whose_update_comes_after_the_round_is_still_screened_and_isolated(
    tmp_path: Path,
) -> None:
    """A real IPM colluder (it fetches its siblings' updates, sends -0.5 x their mean) that
    sends only once the parent has published the round's version.  Round 1: every child is
    a newcomer, the parent waits for it, and the screen leaves its update out.  Round 2:
    the parent waits for its known children only; the colluder's update comes after the
    round and is screened late (the verdict is evidence though the update no longer
    counts).  By the end the parent has isolated the colluder, and nobody else."""
    run_dir, colluder, honest, en = _topic_leaves_run(tmp_path, "ci-collude")
    first = en["rounds"]["1"]
    assert colluder in first["children_updates"], first  # waited for: a newcomer in round 1
    assert first["excluded_updates"][colluder].startswith("screen: opposes"), first
    second = en["rounds"]["2"]
    assert colluder not in second["children_updates"], second  # it came after the round...
    assert honest <= set(second["children_updates"]), second
    assert second["late_screen"][colluder].startswith("opposes"), second  # ...and was screened
    _kept_out_and_isolated(run_dir, en, colluder, honest)


@pytest.mark.xdist_group("devnet-attack")
def test_a_little_is_enough_colluder_is_flagged_shifted_and_isolated(tmp_path: Path) -> None:
    """A real ALIE colluder (it fetches its siblings' updates of the round and sends their
    mean minus one standard deviation, coordinate by coordinate): its update sits in the
    middle of the round by every distance, but moves every coordinate the same way.  The
    parent flags it ``shifted`` in round 1 (every child a newcomer, waited for), screens each
    later update in its round or late, isolates it, and nobody else.  The colluder waits for
    its siblings' updates of a round before it sends: a newcomer the round did not wait for,
    it may still be waiting when the parent's next version arrives, and follow that version
    into the next round without an update for this one (seen once in CI: rounds 1 and 3)."""
    run_dir, colluder, honest, en = _topic_leaves_run(tmp_path, "ci-alie")
    first = en["rounds"]["1"]
    assert colluder in first["children_updates"], first
    assert first["excluded_updates"][colluder].startswith("screen: shifted"), first
    later = sorted({a["round"] for a in _accepted(run_dir, "en") if a["author"] == colluder} - {1})
    assert later, "the colluder sent nothing after round 1"
    for r in later:
        rec = en["rounds"][str(r)]
        verdict = rec.get("excluded_updates", {}).get(colluder) or rec["late_screen"][colluder]
        assert "shifted" in verdict.split(" (")[0], rec
    for r in ("1", "2", "3"):
        rec = en["rounds"][r]
        assert all("shifted" not in rec["screen"][h] for h in honest & set(rec["screen"])), rec
    _kept_out_and_isolated(run_dir, en, colluder, honest)


@pytest.mark.xdist_group("devnet-fault")
def test_a_killed_subdomain_node_restarts_and_catches_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "fault"
    result = _cli("devnet", "up", "--scenario", str(SCENARIOS / "ci-fault.toml"), "--dir",
                  str(run_dir), "--no-live", "--no-baselines", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((run_dir / "run.json").read_text())
    by_round = {r["round"]: {n["node"]: n for n in r["nodes"]} for r in run["rounds"]}
    assert by_round[1]["news-tech"]["up"] is False  # killed for round 1
    assert by_round[2]["news-tech"]["up"] is True  # restarted for round 2
    # In round 1 the domain node aggregated without the dead child (gone for gone_s: 40 s).
    news = _learner(run_dir, "news")
    assert news["rounds"]["1"]["collected"] == "every live child; 1 gone"
    assert news["rounds"]["1"]["children_updates"] != []
    tech_peer = _state(run_dir)["nodes"]["news-tech"]["peer_id"]
    assert tech_peer not in news["rounds"]["1"]["children_updates"]
    # The restarted node kept its identity and tier from its store, caught up with its parent's
    # latest version, and trained on everything that arrived while it was down.
    tech = _learner(run_dir, "news-tech")
    assert tech["round"] == 2 and tech["consumed"] == 2
    assert tech["tier"]["tier_id"] == "devnet/student/news-tech"
    assert tech_peer in news["rounds"]["2"]["children_updates"]
    parents = {"news-business": "news", "news-tech": "news", "news": "en", "en": "master"}
    _check_versions_applied(run_dir, parents)
    assert _no_node_left(run_dir) == []


@pytest.mark.xdist_group("devnet-crash")
def test_devnet_down_stops_every_node_after_the_launcher_dies(tmp_path: Path) -> None:
    run_dir = tmp_path / "crash"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "p2phier", "devnet", "up", "--scenario", str(SCENARIOS / "ci.toml"),
         "--dir", str(run_dir), "--no-live"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **FAST_ENV},
        cwd=REPO, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                nodes = _state(run_dir)["nodes"]
            except (OSError, ValueError, KeyError):
                nodes = {}
            if len(nodes) == 5 and all(n["pid"] and _is_ours(n["pid"]) for n in nodes.values()):
                break
            time.sleep(1.0)
        else:
            pytest.fail("the devnet did not start 5 nodes within 300 s")
        status = _cli("devnet", "status", "--dir", str(run_dir), "--json", timeout=120)
        assert status.returncode == 0, status.stderr
        rows = {r["node"]: r for r in json.loads(status.stdout)["nodes"]}
        assert set(rows) == {"master", "en", "news-a", "news-b", "health"}
        assert rows["master"]["up"] and rows["master"]["layer"] == "master"
        logs = _cli("devnet", "logs", "en", "--dir", str(run_dir), "-n", "50", timeout=60)
        assert logs.returncode == 0 and "p2phier" in logs.stdout
        launcher.send_signal(signal.SIGKILL)  # a crash: no finally-block runs
        launcher.wait(30)
        assert len(_no_node_left(run_dir)) == 8  # orphans: 5 nodes and 3 baselines children
        down = _cli("devnet", "down", "--dir", str(run_dir), "--json", timeout=120)
        assert down.returncode == 0, down.stderr
        assert len(json.loads(down.stdout)["stopped"]) >= 8
        assert _no_node_left(run_dir) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in _no_node_left(run_dir) if (run_dir / RUN_STATE).exists() else []:
            os.kill(pid, signal.SIGKILL)


# never beside ci-attack: together 20 node processes on 2 cores drop connections
@pytest.mark.xdist_group("devnet-attack")
def test_network_attackers_are_isolated_and_no_honest_node_is(tmp_path: Path) -> None:
    """ci-netattack.toml: real node processes serving wrong blocks, flooding announcements,
    equivocating, claiming to be a master, running a 10-identity Sybil cluster, and 4 of
    12 slandering every other node."""
    run_dir = tmp_path / "netattack"
    result = _cli("devnet", "up", "--scenario", str(SCENARIOS / "ci-netattack.toml"), "--dir",
                  str(run_dir), "--no-live", "--no-baselines", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((run_dir / "run.json").read_text())
    last = {n["node"]: n for n in run["rounds"][-1]["nodes"]}
    proven = {"blocks", "flooder", "twofaced"}
    # The parent isolated the three that misbehaved towards it; an equivocation is a
    # proof anyone can check, so the master (which saw both records) isolated it too.
    assert proven <= set(last["en"]["isolated_peers"]), last["en"]
    assert "twofaced" in last["master"]["isolated_peers"], last["master"]
    names = set(last)
    for name, n in last.items():
        # nobody isolated or distrusted an honest node, a slanderer or the Sybils' node:
        # slander alone, and the Sybils' praise of each other, move nobody (the fake
        # master, whom nobody vouches for, may well be distrusted: it is slandered too)
        assert set(n["isolated_peers"]) & names <= proven, (name, n)
        assert set(n["distrusted"]) & names <= proven | {"fake"}, (name, n)
    # Nobody took the fake master as parent: the launcher saw every node under its
    # scenario parent (it waits for that), and the fake stayed outside.
    peers = {name: n["peer_id"] for name, n in _state(run_dir)["nodes"].items()}
    en = _learner(run_dir, "en")
    assert peers["fake"] not in en["rounds"]["1"]["children_updates"]
    # The Sybils joined the running network (after en's first aggregate) under en and
    # never sent an update: en did not wait for them past its known children's time.
    second = en["rounds"]["2"]
    assert second["collected"].startswith("known children; "), second
    honest = {peers[n] for n in ("business", "tech", "sports", "politics", "entertainment")}
    assert honest <= set(second["children_updates"]), second
    assert _no_node_left(run_dir) == []


@pytest.mark.xdist_group("devnet-longrun")
def test_fifty_rounds_leave_store_files_and_memory_flat(tmp_path: Path) -> None:
    """Issue 15, bounded resources: a parent-child pair on the tiny tier through 50 rounds.
    After warm-up nothing grows with the rounds: each node's store bytes (retention and garbage
    collection every second), its files (step directories removed) and its RSS (histories and
    per-peer state bounded).  Growth is judged between the rounds 21-35 and 36-50: a node that
    kept one more artifact, directory or buffer per round would add 15 of each in between.
    Store bytes and files rise as a stream's int8-delta chain grows (a delta needs its lineage
    back to the last keyframe) and fall once a keyframe lets the old chain go, every 8 rounds:
    each window's lows (collected every round, so at the same point of the chain in both) are
    compared, memory's highs."""
    run_dir = tmp_path / "longrun"
    result = _cli("devnet", "up", "--scenario", str(SCENARIOS / "ci-longrun.toml"), "--dir",
                  str(run_dir), "--no-live", "--no-baselines", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert [r["round"] for r in run["rounds"]] == list(range(51))
    leaf = _learner(run_dir, "en")
    assert leaf["round"] == 50 and leaf["rounds"]["50"]["sent"]["topic"].startswith("/p2phier/")
    # its data ran out in round 2: it trained on its latest arrival again, and still sent
    assert leaf["rounds"]["3"]["trained_on"] == "latest arrival again (no new data)"
    master = _learner(run_dir, "master")
    assert all(master["rounds"][str(r)]["n_updates"] == 1 for r in (3, 25, 50)), master["rounds"]
    for name in ("master", "en"):
        series = [{n["node"]: n for n in r["nodes"]}[name] for r in run["rounds"]]
        first, second = series[21:36], series[36:51]
        checks = (("store_bytes", min, 512 << 10), ("disk_files", min, 24),
                  ("rss_bytes", max, 24 << 20))  # fmt: skip
        for key, pick, slack in checks:
            early = pick(x[key] for x in first)
            late = pick(x[key] for x in second)
            assert early > 0, (name, key)
            assert late <= early + slack, (name, key, early, late)
    assert _no_node_left(run_dir) == []
