"""A newcomer joins a running network the way node/NODE.md says, and learns on its own.

Issue 15, section 1: a node outside the devnet launcher has its own home, config, plan and
data (NODE.md, "Joining a network with your own data"), follows its parent's versions
(``learn.follow_parent``, on by default) and must train, send its parent an update that
counts, receive its parent's next version and keep its accuracy on its own held-out data.
The network is the CI devnet after one launcher round, kept running; its operator (this
test) then asks its nodes for round 2 over their control sockets, as ``p2phier node round``
does.  The newcomer is never driven: everything it does starts from its parent's versions.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2phier.devnet.procs import FAST_ENV, REPO, reap_detached
from p2phier.devnet.runner import down, run_devnet
from p2phier.devnet.scenario import load_scenario
from p2phier.learn.data import load_bbc
from p2phier.learnplan import dump_data, load_data
from p2phier.node.controlwire import call

pytestmark = [pytest.mark.slow, pytest.mark.ml]

SCENARIOS = REPO / "devnet" / "scenarios"


def _wait(what: str, cond: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _newcomer_home(tmp: Path, bootstrap: str, taken: set[str]) -> Path:
    """NODE.md's steps 2-4: config, plan (a leaf, its parent's model in int8), data."""
    home = tmp / "p2p"
    (home / "learn").mkdir(parents=True)
    (home / "config.toml").write_text(
        '[node]\nlayer = "domain"\ndomain = "en/news"\n'
        f'[network]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nbootstrap = ["{bootstrap}"]\n'
        "[learn]\nenabled = true\n"
    )
    plan = {"tier": {"source": "int8", "tier_id": "my/minilm-int8"}, "data": "data.json",
            "train": True, "parent": False}  # fmt: skip
    (home / "learn" / "plan.json").write_text(json.dumps(plan))
    # its own 60 labelled articles, none of which any node of the network holds
    rng = random.Random(7)
    train, test = [], []
    for label in ("business", "tech"):
        pool = [e for e in load_bbc(topics=(label,)) if e.uid not in taken]
        picked = rng.sample(pool, 30)
        train += picked[:20]
        test += picked[20:]
    rng.shuffle(train)
    (home / "learn" / "data.json").write_bytes(dump_data([train], test))
    return home


def _start(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """NODE.md's step 5, ``p2phier --home H node run``: the process and its ready line."""
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2phier", "--home", str(home), "node", "run"],
            stdout=subprocess.PIPE, stderr=err, env={**os.environ, **FAST_ENV}, cwd=REPO,
        )  # fmt: skip
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + 120
    while b"\n" not in buf and time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=1.0):
            buf += os.read(proc.stdout.fileno(), 4096)
    sel.close()
    assert b"\n" in buf, f"newcomer not ready (exit {proc.poll()})\n{log.read_text()[-4000:]}"
    return proc, json.loads(buf.split(b"\n", 1)[0])


@pytest.mark.xdist_group("devnet-join")
def test_a_newcomer_joins_as_node_md_says_and_learns_on_its_own(tmp_path: Path) -> None:
    run_dir = tmp_path / "net"
    log = tmp_path / "newcomer.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        run_devnet(load_scenario(SCENARIOS / "ci.toml").with_rounds(1), run_dir,
                   baselines=False, keep_running=True)  # fmt: skip
        nodes = json.loads((run_dir / "devnet.json").read_text())["nodes"]
        sockets = {name: Path(n["socket"]) for name, n in nodes.items()}
        en = call(sockets["en"], "status")
        taken = {
            e.uid
            for n in nodes.values()
            if (Path(n["home"]) / "learn" / "data.json").exists()
            for d in [load_data(Path(n["home"]) / "learn" / "data.json")]
            for e in [*(x for a in d.arrivals for x in a), *d.test]
        }
        home = _newcomer_home(tmp_path, en["addresses"][0], taken)
        proc, ready = _start(home, log)
        me = ready["peer_id"]
        sock = home / "control.sock"

        def learner() -> dict[str, Any]:
            return dict(call(sock, "status")["learn"])

        # It found its parent, fetched its model and version 1, and followed it: it trained
        # and sent an update on that version, nobody asking.
        first = _wait("the newcomer's first update",
                      lambda: next((r for r in learner()["rounds"].values() if r.get("sent")),
                                   None), 300, log)  # fmt: skip
        assert first["trained"] == 40 and isinstance(first["sent"], dict), first
        assert call(sockets["en"], "status")["children"].count(me) == 1
        v1 = learner()["applied"][0]
        # The network's next round: its operator asks its nodes (the newcomer is not asked).
        for name in ("master", "en", "news-a", "news-b", "health"):
            call(sockets[name], "learn.round", {"round": 2}, timeout=20.0)
        _wait("en's round 2", lambda: call(sockets["en"], "status")["learn"]["round"] >= 2,
              300, log)  # fmt: skip
        en2 = call(sockets["en"], "status")["learn"]
        rec = en2["rounds"]["2"]
        # en waited for the newcomer and weighed its update (a newcomer counts a quarter)
        assert me in rec["children_updates"] and me in rec["trust_weights"], rec
        assert 0 < rec["trust_weights"][me]["weight"] <= 0.25, rec
        assert rec["decision"] == "published", rec
        v2 = en2["flat"]["cid"]
        # It received en's next version, rebased on it and followed it with a round of its own.
        applied = _wait("the newcomer applying en's round-2 version",
                        lambda: next((a for a in learner()["applied"] if a["cid"] == v2), None),
                        300, log)  # fmt: skip
        assert applied["round"] >= 2 and applied["cid"] != v1["cid"]
        after = _wait(
            "the newcomer's round on en's round-2 version",
            lambda: [r for r in learner()["rounds"].values()
                     if r.get("sent") and r["round"] > first["round"]],
            300, log,
        )  # fmt: skip
        # it ends on its parent's newest version (en relays master's round-2 version too)
        _wait("the newcomer on en's newest version",
              lambda: learner()["base"]["cid"]
              == call(sockets["en"], "status")["learn"]["flat"]["cid"], 300, log)  # fmt: skip
        # nothing went wrong; what it said is at most that a rebase served its data worse
        errors = learner()["errors"]
        assert all("own held-out accuracy fell" in e for e in errors), errors
        # Its own held-out accuracy: the rebase keeps its personal head (retrained on its own
        # data) and says so if the parent's new model served it worse; after its next round
        # it is at least what its first round reached.
        assert "accuracy_before" in applied and "accuracy_own" in applied, applied
        if applied["accuracy_own"] < applied["accuracy_before"]:
            assert applied["own_accuracy_fell"] > 0, applied
        assert after[-1]["accuracy_own"] >= first["accuracy_own"], (first, after)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if (run_dir / "devnet.json").exists():
            down(run_dir)
    # every node this process left running was waited for by down(), none left to exit with it
    assert reap_detached() == 0
