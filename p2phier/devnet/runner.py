"""The devnet launcher: a whole scenario as real node processes, driven round by round.

Owns :func:`prepare` (every node's private data, plan and config on disk, the
root tier built once), :class:`Devnet` (start every node as its own process
on 127.0.0.1, wait for the hierarchy, run rounds, apply faults, stop and reap)
and :func:`run_devnet` (all of it, then the baselines and the report), plus
:func:`down` for ``devnet down`` after a launcher crash (it reads the pids
that ``devnet.json`` records).

The launcher is the devnet's clock and referee, nothing more: it tells every
node "round R" over its control socket and watches their status.  The nodes
do the rest among themselves over libp2p: train on newly arrived data,
publish updates by hash, fetch and verify, aggregate under the timing rule,
publish versions downstream, rebase (:mod:`p2phier.node.learner`).  The
referee's only privileged act is scoring: after each round it evaluates every
parent's model on its children's held-out data, which no node could do.

Blocking code (subprocesses, polling, torch for the root tier, the referee's
scoring and the baselines): run it in a plain thread or process, not an event loop.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2phier.announce import topic_purpose
from p2phier.config import STORE_NAME
from p2phier.devnet.baseline_job import BaselineJob, is_baseline_job
from p2phier.devnet.baselines import NodeData, answer_labels, build_node_data
from p2phier.devnet.procs import FAST_ENV, NodeProc, reap_detached, stop_all
from p2phier.devnet.report import NodeInfo, NodeRound, RoundInfo, RunRecord
from p2phier.devnet.scenario import NodeSpec, Scenario
from p2phier.errors import P2PHierError
from p2phier.fsutil import load_json, write_atomic
from p2phier.learnplan import dump_data, settings_json
from p2phier.node.controlwire import ControlError

log = logging.getLogger(__name__)

RUN_STATE = "devnet.json"
MAX_RUN_STATE_BYTES = 4 << 20  # a few hundred nodes' pids, homes, sockets and logs
#: Twelve processes on two cores, torch busy in each: deadlines and hierarchy timers that
#: tolerate a slow event loop (FAST_ENV suits the idle node tests).  A killed child is noticed
#: by its closed connection, not by its registration expiring.
DEVNET_ENV = {
    "P2PHIER_TIMEOUTS_STREAM_S": "30",
    "P2PHIER_TIMEOUTS_DIAL_S": "15",
    "P2PHIER_GOSSIP_HEARTBEAT_S": "1.0",
    "P2PHIER_HIERARCHY_REGISTER_INTERVAL_S": "10",
    "P2PHIER_HIERARCHY_CHILD_TTL_S": "120",
    "P2PHIER_HIERARCHY_PARENT_TIMEOUT_S": "60",
    "P2PHIER_HIERARCHY_LOST_BACKOFF_S": "5",
}
ROUND_TIMEOUT_S = 1800.0
FORM_TIMEOUT_S = 600.0
BASELINE_TIMEOUT_S = 3600.0  # after the last round


class DevnetError(P2PHierError):
    """The devnet could not start, form its hierarchy or finish a round."""


@dataclass
class Prepared:
    scenario: Scenario
    run_dir: Path
    data: dict[str, NodeData]
    root_tier: Path
    model_bytes: dict[str, int]  # tier name -> full model bytes (estimate for derived tiers)
    homes: dict[str, Path] = field(default_factory=dict)


def _tier_plan(scenario: Scenario, node: NodeSpec, root: Path, root_cid: str) -> dict[str, Any]:
    spec = scenario.tiers[node.tier]
    if spec.teacher is None:
        return {"source": "dir", "tier_id": f"devnet/{spec.name}", "dir": str(root),
                "weights_cid": root_cid}  # fmt: skip
    plan: dict[str, Any] = {"tier_id": f"devnet/{spec.name}/{node.name}"}
    if spec.kind == "student":
        plan.update(source="distil", layers=list(spec.layers), max_vocab=spec.max_vocab,
                    distill_steps=spec.distill_steps)  # fmt: skip
        if scenario.tiers[spec.teacher].teacher is None:  # the teacher is the root tier on disk
            plan.update(teacher_dir=str(root), teacher_weights_cid=root_cid)
    else:
        plan["source"] = "int8"
    return plan


def node_plan(scenario: Scenario, node: NodeSpec, root: Path, root_cid: str) -> dict[str, Any]:
    """The learning plan (``learn/plan.json``) of ``node``: its tier, data and role from the
    topology, and every learning setting of the scenario as it is (:func:`settings_json`), its
    tier's ``[tiers.NAME.training]`` over them."""
    return {
        **settings_json(scenario.learning_for(node.tier)),
        "tier": _tier_plan(scenario, node, root, root_cid),
        "data": "data.json" if node.shard is not None else None,
        "train": node.trains,
        "parent": bool(scenario.children(node.name)),
        "seed": scenario.seed + (node.shard.seed if node.shard else 0),
    }


def prepare(scenario: Scenario, run_dir: Path) -> Prepared:
    """Write every node's home (data, plan, config) and build the root tier (blocking, torch)."""
    from p2phier.devnet.baselines import root_tier
    from p2phier.learn.models import configure_torch, read_tier_info

    configure_torch(scenario.learning.threads, seed=scenario.seed)

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_node_data(scenario)
    root = root_tier(scenario, data, run_dir / "tiers" / "root")
    info = read_tier_info(root)
    prepared = Prepared(scenario, run_dir, data, root, {})
    for name, spec in scenario.tiers.items():
        prepared.model_bytes[name] = info.weights_bytes if spec.teacher is None else 0
    for i, node in enumerate(scenario.nodes):
        home = run_dir / "n" / f"{i:02d}"
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        prepared.homes[node.name] = home
        learn = home / "learn"
        learn.mkdir(exist_ok=True)
        nd = data.get(node.name)
        if nd is not None:
            write_atomic(learn / "data.json", dump_data([list(a) for a in nd.arrivals],
                                                        list(nd.test)))  # fmt: skip
        plan = node_plan(scenario, node, root, info.weights_cid)
        if labels := answer_labels(scenario, data, node.name):
            plan["labels"] = list(labels)
        write_atomic(learn / "plan.json", json.dumps(plan, indent=1, sort_keys=True).encode())
        write_atomic(home / "node.toml", node_toml(scenario))
    # Derived tiers' sizes: the student keeps its blocks and vocabulary share (measured later).
    return prepared


def node_toml(scenario: Scenario) -> bytes:
    """Each devnet node's config file.  Rounds come from the launcher (the devnet's clock:
    no timer, nobody follows its parent on its own); a devnet lasts minutes, so its nodes
    collect their garbage every ``scenario.gc_interval_s`` (20 s) rather than every 10
    minutes."""
    return (
        "[learn]\nenabled = true\nround_interval_s = 0.0\nfollow_parent = false\n\n"
        f"[retention]\ngc_interval_s = {scenario.gc_interval_s!r}\n"
    ).encode()


# --- the running devnet ---------------------------------------------------------------------


class Devnet:
    """Every node of a prepared scenario as a child process; always reaped by :meth:`close`."""

    def __init__(self, prepared: Prepared, *, env: Mapping[str, str] | None = None) -> None:
        self.p = prepared
        self.s = prepared.scenario
        # Twelve processes share two cores here, with torch busy in their worker threads:
        # slower event loops need longer stream deadlines than the node tests use.
        self.env = {**FAST_ENV, **DEVNET_ENV, **(env or {})}
        self.nodes: dict[str, NodeProc] = {}
        self.frozen: set[str] = set()
        self.peer_names: dict[str, str] = {}
        self.rss_max: dict[str, int] = {}  # bytes, sampled at every status poll
        self.helpers: dict[str, int] = {}  # other children to stop on `devnet down` (pids)

    # processes ---------------------------------------------------------------------------------
    def _proc(self, node: NodeSpec, bootstrap: list[str]) -> NodeProc:
        home = self.p.homes[node.name]
        return NodeProc(
            node.name, home, node.layer.label, node.domain, bootstrap, env=self.env,
            config=home / "node.toml", attack=self._attack(node.name),
        )  # fmt: skip

    def _attack(self, name: str) -> str | None:
        """The scenario's attacker behaviour for node ``name`` as the attacker module takes
        it (``sign-flip:STRENGTH@FROM_ROUND``), or None for an honest node."""
        for a in self.s.attackers:
            if a.node == name:
                return a.spec
        return None

    def _record(self) -> None:
        nodes = {
            name: {
                "pid": proc.proc.pid if proc.proc else None,
                "home": str(proc.home),
                "socket": str(proc.socket),
                "log": str(proc.log),
                "peer_id": proc.ready.get("peer_id"),
            }
            for name, proc in self.nodes.items()
        }
        state = {"launcher_pid": os.getpid(), "scenario": self.s.name, "nodes": nodes,
                 "helpers": self.helpers}  # fmt: skip
        write_atomic(self.p.run_dir / RUN_STATE, json.dumps(state, indent=1).encode())

    def start(self) -> None:
        master = self.s.master
        first = self._proc(master, [])
        self.nodes[master.name] = first
        try:
            first.start(120.0)
            self._record()
            rest = [n for n in self.s.nodes if n.name != master.name]
            for node in rest:
                self.nodes[node.name] = self._proc(node, [first.addr])
            # A fake master must be in the network before the nodes it tries to capture.
            fakes = {a.node for a in self.s.attackers if a.behaviour == "fake_master"}
            for name in sorted(fakes):
                self.nodes[name].start(180.0)
            rest = [n for n in rest if n.name not in fakes]
            with ThreadPoolExecutor(max_workers=4) as pool:
                for fut in [pool.submit(self.nodes[n.name].start, 180.0) for n in rest]:
                    fut.result()
        finally:
            self._record()
        self.peer_names = {p.peer_id: name for name, p in self.nodes.items()}

    def close(self) -> None:
        for name in list(self.frozen):
            self._signal(name, signal.SIGCONT)
        try:
            stop_all(list(self.nodes.values()), grace=15.0)  # reaps every child, all at once
        finally:
            self._record()

    def detach(self) -> None:
        """Leave every node running (the run state keeps their pids for ``devnet down``)."""
        self._record()
        for proc in self.nodes.values():
            proc.detach()

    def _signal(self, name: str, sig: signal.Signals) -> None:
        proc = self.nodes[name].proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def alive(self, name: str) -> bool:
        proc = self.nodes[name].proc
        return proc is not None and proc.poll() is None and name not in self.frozen

    def apply_faults(self, round_: int, at: str) -> list[str]:
        done = []
        for f in self.s.faults:
            if f.round != round_ or f.at != at:
                continue
            if f.action == "kill":
                self.nodes[f.node].kill()
            elif f.action == "freeze":
                self._signal(f.node, signal.SIGSTOP)
                self.frozen.add(f.node)
            elif f.action == "restart":
                if f.node in self.frozen:
                    self._signal(f.node, signal.SIGCONT)
                    self.frozen.discard(f.node)
                else:
                    self.nodes[f.node].kill()
                    boot = [self.nodes[self.s.master.name].addr]
                    proc = self._proc(self.s.node(f.node), boot)
                    self.nodes[f.node] = proc
                    proc.start(180.0)
            done.append(f"{f.action} {f.node}")
            log.info("round %d (%s): %s %s", round_, at, f.action, f.node)
        self._record()
        return done

    # observation ------------------------------------------------------------------------------
    def statuses(self) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        for name in self.nodes:
            if not self.alive(name):
                out[name] = None
                continue
            self._sample_rss(name)
            try:
                out[name] = self.nodes[name].call("status", timeout=20.0)
            except (ControlError, OSError, P2PHierError) as exc:
                log.debug("status of %s: %s", name, exc)
                out[name] = None
        return out

    def rss_now(self, name: str) -> int:
        """The node process's resident memory now, in bytes (0: not running or unknown)."""
        proc = self.nodes[name].proc
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text() if proc else ""
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample_rss(self, name: str) -> None:
        self.rss_max[name] = max(self.rss_max.get(name, 0), self.rss_now(name))

    def formed(self, st: Mapping[str, dict[str, Any] | None]) -> list[str]:
        """Nodes still waiting: for their parent, their tier, or their first version
        (attackers that never take their place, an equivocator or a fake master, and those
        their parent has isolated already, are not waited for)."""
        waiting = []
        outside = {a.node for a in self.s.attackers if not a.joins}
        for a in self.s.attackers:
            parent = self.s.node(a.node).parent
            ps = st.get(parent) if parent is not None else None
            if ps is not None and self.nodes[a.node].peer_id in ps.get("isolated", []):
                outside.add(a.node)
        for node in self.s.nodes:
            if node.name in outside:
                continue
            s = st.get(node.name)
            if s is None:
                if self.alive(node.name):
                    waiting.append(f"{node.name}: no status")
                continue
            learn = s.get("learn") or {}
            if node.parent is not None:
                want = self.nodes[node.parent].peer_id
                if s.get("parent") != want:
                    waiting.append(f"{node.name}: parent {s.get('parent')} != {node.parent}")
                    continue
                # Both ends: a restarted node restores its parent from its saved state before
                # it has registered again, and a round its parent starts without it would
                # close without its update.  Connected too: the parent still lists a killed
                # child until its registration expires, and counts one it has no connection
                # to as gone (p2phier/node/collect.py).
                ps = st.get(node.parent)
                me = self.nodes[node.name].peer_id
                if ps is not None and me not in ps.get("children", []):
                    waiting.append(f"{node.name}: not yet registered with {node.parent}")
                    continue
                if ps is not None and me not in ps.get("peers", []):
                    waiting.append(f"{node.name}: not connected to {node.parent}")
                    continue
                if not (learn.get("base") or {}).get("cid"):
                    waiting.append(f"{node.name}: no parent version yet")
                    continue
            if not learn.get("tier"):
                waiting.append(f"{node.name}: no tier yet")
        return waiting

    def settled(self, st: Mapping[str, dict[str, Any] | None], round_: int) -> list[str]:
        """Why round ``round_`` is not over yet (empty: it is).  Attackers are not waited
        for: once isolated, one has no parent whose version it could be on."""
        waiting = []
        attackers = {a.node for a in self.s.attackers}
        for node in self.s.nodes:
            s = st.get(node.name)
            if s is None or node.name in attackers:
                continue
            learn = s.get("learn") or {}
            if learn.get("round", 0) < round_:
                waiting.append(f"{node.name}: round {learn.get('round')} < {round_}")
            elif learn.get("busy"):
                waiting.append(f"{node.name}: {learn['busy']}")
            elif node.parent is not None and (ps := st.get(node.parent)) is not None:
                pflat = ((ps.get("learn") or {}).get("flat") or {}).get("cid")
                if pflat and (learn.get("base") or {}).get("cid") != pflat:
                    waiting.append(f"{node.name}: not on {node.parent}'s latest version")
        return waiting

    def wait(
        self,
        what: str,
        check: Callable[[Mapping[str, dict[str, Any] | None]], list[str]],
        timeout: float,
        on_poll: Callable[[Mapping[str, dict[str, Any] | None]], None] | None = None,
        stable: int = 2,
    ) -> dict[str, dict[str, Any] | None]:
        deadline = time.monotonic() + timeout
        ok = 0
        while True:
            st = self.statuses()
            if on_poll is not None:
                on_poll(st)
            waiting = check(st)
            ok = ok + 1 if not waiting else 0
            if ok >= stable:
                return st
            if time.monotonic() > deadline:
                tails = "\n".join(self.nodes[w.split(":")[0]].log_tail(25) for w in waiting[:2])
                raise DevnetError(f"timed out waiting for {what}: {waiting[:6]}\n{tails}")
            time.sleep(1.0)

    def request_round(self, round_: int) -> None:
        for name in self.nodes:
            if self.alive(name):
                try:
                    self.nodes[name].call("learn.round", {"round": round_}, timeout=20.0)
                except (ControlError, OSError, P2PHierError) as exc:
                    log.warning("round %d request to %s failed: %s", round_, name, exc)


# --- one round's record -------------------------------------------------------------------


def _ledger_growth(now: Mapping[str, Any] | None, then: Mapping[str, Any] | None) -> dict[str, int]:
    """How much a node's Bitswap counters grew between two of its statuses (a node that
    restarted in between counts from zero)."""

    def counters(s: Mapping[str, Any] | None) -> dict[str, int]:
        bs = (s or {}).get("bitswap") or {}
        out = {k: int(bs.get(k, 0)) for k in ("bytes_received", "bytes_sent")}
        for k in ("updates", "versions", "tiers"):
            out[k] = int((bs.get("received_for") or {}).get(k, 0))
        return out

    a, b = counters(now), counters(then)
    restarted = any(a[k] < b[k] for k in a)
    return {k: a[k] - (0 if restarted else b[k]) for k in a}


def round_info(
    devnet: Devnet,
    st: Mapping[str, dict[str, Any] | None],
    round_: int,
    *,
    window: tuple[float, float],
    wall_s: float,
    children_acc: Mapping[str, float],
    before: Mapping[str, dict[str, Any] | None] | None = None,
) -> RoundInfo:
    """Per-node numbers of one round from the nodes' status (and the referee's scores).

    Bytes are the growth of each node's Bitswap ledger counters since ``before`` (the
    statuses at the end of the previous round; None: since the node started)."""
    lo_ms, hi_ms = window[0] * 1000.0, window[1] * 1000.0
    update_out: dict[str, int] = {}
    sent_n: dict[str, int] = {}
    for s in st.values():
        for entry in (s or {}).get("accepted", []):
            if lo_ms <= entry.get("accepted_ms", 0) <= hi_ms:
                author = devnet.peer_names.get(entry["author"], entry["author"])
                sent_n[author] = sent_n.get(author, 0) + 1
                if topic_purpose(str(entry.get("topic", ""))) == "updates":
                    wire = int(entry.get("wire_bytes", 0))
                    update_out[author] = update_out.get(author, 0) + wire
    nodes = []
    for node in devnet.s.nodes:
        s = st.get(node.name)
        grew = _ledger_growth(s, (before or {}).get(node.name))
        home = devnet.p.homes.get(node.name)
        store_bytes = dir_usage(home / STORE_NAME)[0] if home is not None else 0
        files = dir_usage(home)[1] if home is not None else 0
        learn = (s or {}).get("learn") or {}
        rec = (learn.get("rounds") or {}).get(str(round_), {})
        props = [
            a["propagation_s"]
            for a in learn.get("applied", [])
            if lo_ms <= a.get("applied_ms", 0) <= hi_ms and a.get("propagation_s") is not None
        ]
        nodes.append(
            NodeRound(
                node=node.name,
                round=round_,
                accuracy_own=learn.get("accuracy_own"),
                accuracy_children=children_acc.get(node.name),
                bytes_in=grew["bytes_received"],
                bytes_out=grew["bytes_sent"],
                update_bytes_in=grew["updates"],
                version_bytes_in=grew["versions"],
                tier_bytes_in=grew["tiers"],
                update_bytes_out=update_out.get(node.name, 0),
                store_bytes=store_bytes,
                disk_files=files,
                rss_bytes=devnet.rss_now(node.name) if s is not None else 0,
                updates_sent=sent_n.get(node.name, 0),
                head_cid=(learn.get("flat") or learn.get("local") or {}).get("cid"),
                decision=rec.get("decision"),
                decision_reason=rec.get("reason"),
                train_s=rec.get("train_s"),
                aggregate_s=rec.get("aggregate_s"),
                propagation_s=max(props) if props else None,
                up=s is not None,
                isolated=len((s or {}).get("isolated", [])),
                isolated_peers=tuple(
                    devnet.peer_names.get(p, p) for p in (s or {}).get("isolated", [])
                ),
                distrusted=tuple(
                    devnet.peer_names.get(p, p) for p in (s or {}).get("distrusted", [])
                ),
            )
        )
    return RoundInfo(round_, round(wall_s, 3), tuple(nodes))


def hop_delays(
    devnet: Devnet, st: Mapping[str, dict[str, Any] | None], window: tuple[float, float]
) -> tuple[list[float], float | None]:
    """Per hop: parent's announcement -> the child fetched and verified it (s); and the
    whole chain: first announcement from the master -> last version applied anywhere."""
    lo_ms, hi_ms = window[0] * 1000.0, window[1] * 1000.0
    delays: list[float] = []
    first: float | None = None
    last: float | None = None
    master = devnet.nodes[devnet.s.master.name].ready.get("peer_id")
    for node in devnet.s.nodes:
        s = st.get(node.name)
        if s is None or node.parent is None:
            continue
        parent = devnet.nodes[node.parent].ready.get("peer_id")
        for entry in s.get("accepted", []):
            at, created = entry.get("accepted_ms", 0), entry.get("created_ms")
            if entry.get("author") == parent and created and lo_ms <= at <= hi_ms:
                delays.append(max(0.0, (at - created) / 1000.0))
                if entry.get("author") == master:
                    first = created if first is None else min(first, created)
        for a in (s.get("learn") or {}).get("applied", []):
            if lo_ms <= a.get("applied_ms", 0) <= hi_ms:
                last = a["applied_ms"] if last is None else max(last, a["applied_ms"])
    chain = (last - first) / 1000.0 if first is not None and last is not None else None
    return delays, chain


def referee_scores(prepared: Prepared, st: Mapping[str, dict[str, Any] | None]) -> dict[str, float]:
    """Each parent's current model scored on its children's pooled held-out data (blocking)."""
    from p2phier.learn import api

    scores: dict[str, float] = {}
    s = prepared.scenario
    for node in s.nodes:
        learn = ((st.get(node.name) or {}).get("learn")) or {}
        flat, tier = learn.get("flat"), learn.get("tier")
        pooled = [
            e for c in s.descendants(node.name) if c.name in prepared.data
            for e in prepared.data[c.name].test
        ]  # fmt: skip
        if not flat or not tier or not pooled:
            continue
        protos = learn.get("prototypes")
        result = api.evaluate(
            Path(tier["dir"]), {"children": pooled}, adapter=Path(flat["dir"]),
            max_length=s.learning.max_length,
            answers=answer_labels(s, prepared.data, node.name),
            # the node's model as it answers: routed by its class prototypes where its
            # answers span several tasks (learn/prototypes.py)
            prototypes=Path(protos) if protos else None,
            ncm_tasks=learn.get("ncm_tasks") or (),
        )  # fmt: skip
        scores[node.name] = result["accuracy.children"]
    return scores


# --- the whole run ------------------------------------------------------------------------------


def node_infos(devnet: Devnet, st: Mapping[str, dict[str, Any] | None]) -> tuple[NodeInfo, ...]:
    out = []
    for node in devnet.s.nodes:
        learn = ((st.get(node.name) or {}).get("learn")) or {}
        tier = learn.get("tier") or {}
        out.append(
            NodeInfo(
                name=node.name,
                layer=node.layer.label,
                domain=node.domain,
                parent=node.parent,
                tier=node.tier,
                model_bytes=int(
                    tier.get("weights_bytes") or devnet.p.model_bytes.get(node.tier, 0)
                ),
                trains=node.trains,
                peer_id=devnet.nodes[node.name].ready.get("peer_id"),
                test_examples=len(data.test) if (data := devnet.p.data.get(node.name)) else 0,
            )
        )
    return tuple(out)


def _with_children_acc(info: RoundInfo, scores: Mapping[str, float]) -> RoundInfo:
    nodes = tuple(replace(n, accuracy_children=scores.get(n.node)) for n in info.nodes)
    return replace(info, nodes=nodes)


def _settled(devnet: Devnet, round_: int, st: Mapping[str, dict[str, Any] | None]) -> list[str]:
    return devnet.settled(st, round_)


OnPoll = Callable[[str, Mapping[str, dict[str, Any] | None]], None]


def run_devnet(
    scenario: Scenario,
    run_dir: Path,
    *,
    on_poll: OnPoll | None = None,
    baselines: bool = True,
    env: Mapping[str, str] | None = None,
    keep_running: bool = False,
) -> RunRecord:
    """Prepare, start, form, run every round, stop; then baselines and ``run.json``."""
    began = time.time()
    prepared = prepare(scenario, run_dir)
    devnet = Devnet(prepared, env=env)
    job: BaselineJob | None = None
    if baselines:  # in the idle CPU the rounds leave (see p2phier.devnet.baseline_job)
        job = BaselineJob(scenario, prepared.run_dir / "baselines", prepared.data,
                          prepared.root_tier, log_dir=prepared.run_dir)  # fmt: skip
        devnet.helpers.update(job.pids)
    rounds: list[RoundInfo] = []
    delays: dict[str, list[float]] = {}
    chains: dict[str, float | None] = {}

    def poll(phase: str) -> Callable[[Mapping[str, dict[str, Any] | None]], None]:
        def call(st: Mapping[str, dict[str, Any] | None]) -> None:
            if on_poll is not None:
                on_poll(phase, st)

        return call

    try:
        devnet.start()
        st = devnet.wait("the hierarchy to form", devnet.formed, FORM_TIMEOUT_S, poll("forming"))
        setup_s = time.time() - began
        rounds.append(round_info(devnet, st, 0, window=(began, time.time()), wall_s=setup_s,
                                 children_acc=referee_scores(prepared, st)))  # fmt: skip
        for r in range(1, scenario.rounds + 1):
            t0 = time.time()
            if any(f.startswith("restart ") for f in devnet.apply_faults(r, "start")):
                devnet.wait(f"restarted nodes to rejoin for round {r}", devnet.formed,
                            FORM_TIMEOUT_S, poll(f"round {r}"))  # fmt: skip
            devnet.request_round(r)
            prev = st
            st = devnet.wait(
                f"round {r}", functools.partial(_settled, devnet, r), ROUND_TIMEOUT_S,
                poll(f"round {r}"),
            )  # fmt: skip
            t1 = time.time()
            delays[str(r)], chains[str(r)] = hop_delays(devnet, st, (t0, t1))
            # The referee's scores cost a model load per parent: rounds 0, 1 and the last show
            # the change (what the CI test and bench/devnet.py's parents figure use); rounds
            # in between are skipped.  The last round's are taken after the nodes stop (below).
            scores = referee_scores(prepared, st) if r == 1 < scenario.rounds else {}
            rounds.append(
                round_info(
                    devnet,
                    st,
                    r,
                    window=(t0, t1),
                    wall_s=t1 - t0,
                    children_acc=scores,
                    before=prev,
                )
            )
            devnet.apply_faults(r, "end")
        infos = node_infos(devnet, st)
    except BaseException:
        if job is not None:
            job.stop()
        raise
    finally:
        if keep_running:  # the nodes stay up for whoever called (devnet down stops them)
            devnet.detach()
        else:
            devnet.close()
    if scenario.rounds >= 1:
        # The last round's models as the nodes held them when it settled (``st``), scored
        # once the nodes stopped: after a round settles they go on (children rebase on the
        # parents' last versions, retention lets older versions go), which only competed
        # with the referee for the CPU and could remove a directory it was reading.
        rounds[-1] = _with_children_acc(rounds[-1], referee_scores(prepared, st))
    base = None
    if job is not None:
        if on_poll is not None and job.running():
            on_poll("baselines", {})
        base = job.result(BASELINE_TIMEOUT_S)  # reaps every child, also on failure
    record = RunRecord(
        scenario=scenario.name,
        started=began,
        nodes=infos,
        rounds=tuple(rounds),
        baselines=base,
        setup_s=round(setup_s, 3),
        scenario_detail=scenario.to_dict(),
        resources={
            "rss_max_mib": {k: round(v / 2**20, 1) for k, v in sorted(devnet.rss_max.items())},
            "hop_delays_s": delays,
            "chain_s": chains,
            # what each node keeps on disk after the run: its store (pinned and cached blocks,
            # after its own garbage collection) and its learning directory (tiers, adapters)
            "store_mib": {n: _dir_mib(h / STORE_NAME) for n, h in sorted(prepared.homes.items())},
            "learn_mib": {n: _dir_mib(h / "learn") for n, h in sorted(prepared.homes.items())},
        },
    )
    record.save(prepared.run_dir)
    return record


def dir_usage(path: Path) -> tuple[int, int]:
    """(bytes, count) of the regular files under ``path`` ((0, 0) for none)."""
    total = files = 0
    for p in path.rglob("*") if path.is_dir() else ():
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
                files += 1
        except OSError:  # removed meanwhile
            continue
    return total, files


def _dir_mib(path: Path) -> float:
    return round(dir_usage(path)[0] / 2**20, 2)


def load_state(run_dir: Path) -> dict[str, Any]:
    """``devnet.json`` of ``run_dir`` (size-capped; DevnetError naming the file)."""
    path = Path(run_dir) / RUN_STATE
    state = load_json(path, MAX_RUN_STATE_BYTES, "devnet state", DevnetError)
    if not isinstance(state, dict):
        raise DevnetError(f"devnet state {path}: not a JSON object")
    return state


def down(run_dir: Path, grace: float = 10.0) -> list[str]:
    """Stop every node a (possibly crashed) launcher left in ``run_dir``; returns what it did."""
    try:
        state = load_state(run_dir)
    except DevnetError as exc:
        raise DevnetError(f"no devnet state to stop: {exc}") from None
    done = []
    pids = {name: n.get("pid") for name, n in state.get("nodes", {}).items()}
    helpers = state.get("helpers", {})
    if isinstance(helpers, dict):
        pids.update({f"{name} (helper)": pid for name, pid in helpers.items()})
    for name, pid in pids.items():
        if isinstance(pid, int) and _is_ours(pid):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
            done.append(f"SIGTERM {name} ({pid})")
    deadline = time.monotonic() + grace
    for name, pid in pids.items():
        while isinstance(pid, int) and _is_ours(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if isinstance(pid, int) and _is_ours(pid):
            os.kill(pid, signal.SIGKILL)
            done.append(f"SIGKILL {name} ({pid})")
    # nodes this very process left running (run_devnet(keep_running=True)) are its children
    reap_detached({p for p in pids.values() if isinstance(p, int)}, timeout=grace)
    return done


def _is_ours(pid: int) -> bool:
    """True if ``pid`` is alive and is a p2phier node or the baselines child (not a recycled
    pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return (b"p2phier" in cmdline and b"node\x00run" in cmdline) or is_baseline_job(cmdline)
