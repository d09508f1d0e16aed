"""The launcher's view of the network (``p2phier.devnet.runner.Devnet``) on stand-in
statuses: no process is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2phier.devnet.procs import REPO
from p2phier.devnet.runner import Devnet, Prepared
from p2phier.devnet.scenario import load_scenario


class _Running:
    def poll(self) -> None:
        return None


class _Proc:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.proc = _Running()


def _devnet(tmp_path: Path) -> Devnet:
    scenario = load_scenario(REPO / "devnet" / "scenarios" / "ci-fault.toml")
    devnet = Devnet(Prepared(scenario, tmp_path, {}, tmp_path, {}))
    devnet.nodes = {n.name: _Proc(f"peer-{n.name}") for n in scenario.nodes}  # type: ignore[misc]
    return devnet


def _statuses(devnet: Devnet) -> dict[str, dict[str, Any] | None]:
    """Every node formed: its parent lists it as a registered, connected child."""
    out: dict[str, dict[str, Any] | None] = {}
    for node in devnet.s.nodes:
        kids = [f"peer-{c.name}" for c in devnet.s.nodes if c.parent == node.name]
        parent = f"peer-{node.parent}" if node.parent else None
        out[node.name] = {
            "parent": parent,
            "children": kids,
            "peers": [*kids, *([parent] if parent else [])],
            "learn": {"base": {"cid": "bafy"} if parent else None, "tier": {"tier_id": "t"}},
        }
    return out


def test_a_formed_network_waits_for_nobody(tmp_path: Path) -> None:
    devnet = _devnet(tmp_path)
    assert devnet.formed(_statuses(devnet)) == []


def test_a_restarted_child_its_parent_still_lists_but_has_no_connection_to_is_waited_for(
    tmp_path: Path,
) -> None:
    """A killed child stays on its parent's list until its registration expires (90 s), and
    it restores its parent and version from its store when restarted: without the
    connection its parent would start the round counting it as gone (CI saw the restarted
    node's update miss round 2)."""
    devnet = _devnet(tmp_path)
    st = _statuses(devnet)
    news = st["news"]
    assert news is not None
    news["peers"] = [p for p in news["peers"] if p != "peer-news-tech"]
    assert devnet.formed(st) == ["news-tech: not connected to news"]
    news["children"] = [p for p in news["children"] if p != "peer-news-tech"]
    assert devnet.formed(st) == ["news-tech: not yet registered with news"]


def test_reaping_detached_nodes_waits_for_the_ones_just_signalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node left running (``keep_running``) stays this process's child: ``down`` signals it
    and must wait for it, not poll once (a SIGKILLed process has not exited when ``kill``
    returns; one poll left its Popen to warn "still running" at interpreter exit)."""
    import signal
    import subprocess
    import sys

    from p2phier.devnet import procs

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    a, b = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    try:
        monkeypatch.setattr(procs, "_DETACHED", [a, b])
        assert procs.reap_detached() == 2  # both run: a poll reaps nothing
        a.send_signal(signal.SIGKILL)
        assert procs.reap_detached({a.pid}, timeout=30.0) == 1  # a is waited for, b runs on
        assert a.returncode == -signal.SIGKILL and b.returncode is None
        assert [b] == procs._DETACHED
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


# A stand-in node: on SIGTERM it notes so in its own file, then exits only once every
# stand-in of its group has noted it (within 20 s; exit 3 otherwise).  One-at-a-time
# stopping therefore never lets the first exit by itself: it is killed after the grace.
_WAITS_FOR_ITS_GROUP = """
import os, signal, sys, time
mine, group = sys.argv[1], sys.argv[2:]
def stop(*_):
    open(mine, "w").close()
    deadline = time.monotonic() + 20
    while not all(os.path.exists(g) for g in group):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.05)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
"""


_IGNORES_SIGTERM = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True)\nwhile True: signal.pause()"
)


def _stand_ins(tmp_path: Path, n: int, ignore_term: int | None = None) -> list[Any]:
    """``n`` stand-in nodes waiting for each other (one ignoring SIGTERM, if asked)."""
    import subprocess
    import sys

    from p2phier.devnet.procs import NodeProc

    marks = [str(tmp_path / f"got-term-{i}") for i in range(n)]
    out = []
    for i in range(n):
        group = [m for j, m in enumerate(marks) if j not in (i, ignore_term)]
        code = _IGNORES_SIGTERM if i == ignore_term else _WAITS_FOR_ITS_GROUP
        node = NodeProc(f"n{i}", tmp_path / f"n{i}", "leaf", "d", [])
        node.proc = subprocess.Popen(
            [sys.executable, "-c", code, marks[i], *group], stdout=subprocess.PIPE
        )
        out.append(node)
        assert node.proc.stdout is not None
        assert node.proc.stdout.readline() == b"ready\n"  # its handler is installed
    return out


def test_stopping_nodes_together_signals_every_one_before_waiting_for_any(tmp_path: Path) -> None:
    """``stop_all`` (the devnet's and ``open_cluster``'s stop) sends SIGTERM to every node
    before it waits: stand-ins that exit only once all of them were signalled all exit 0,
    where one-at-a-time stopping would have had to kill the first."""
    from p2phier.devnet.procs import stop_all

    nodes = _stand_ins(tmp_path, 3)
    try:
        assert stop_all(nodes, grace=15.0) == [0, 0, 0]
        assert all(n.proc is None for n in nodes)  # reaped
    finally:
        stop_all(nodes, grace=0.0)


def test_stopping_nodes_together_kills_one_that_ignores_sigterm_and_reaps_all(
    tmp_path: Path,
) -> None:
    import signal

    from p2phier.devnet.procs import stop_all

    nodes = _stand_ins(tmp_path, 3, ignore_term=1)
    try:
        assert stop_all(nodes, grace=2.0) == [0, -signal.SIGKILL, 0]
        assert all(n.proc is None for n in nodes)
    finally:
        stop_all(nodes, grace=0.0)
