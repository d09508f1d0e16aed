"""Network namespaces joined by tbf-shaped veth links, and what runs on them is measured by.

Owns :class:`ShapedNet` (a fetcher namespace and one namespace per provider, each joined to
the fetcher's by a veth pair whose provider end shapes its egress with ``tbf``), the link
and CPU counters the ``shaped`` part of bench/net.py samples, and the split of a fetch into
phases.  See bench/_net_shaped.py for what is measured and why these link settings.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

MiB = 1 << 20
MB = 1e6
RATE = 8 * MB  # bytes/s, provider -> fetcher, per link
TBF_RATE = "64mbit"  # tc's SI units: 64e6 bit/s = 8e6 bytes/s
TBF_BURST = 64 << 10  # >= rate/HZ (32 000 bytes at HZ=250) and one whole 64 KiB GSO packet
TBF_LIMIT = int(RATE * 0.05) + TBF_BURST  # 50 ms of queue at the rate, plus the burst
NS_PREFIX = "p2phs"
SAMPLE_S = 0.1
DEV_P, DEV_F = "vp", "vf"  # the veth ends: in a provider's namespace, in the fetcher's


# --- namespaces and links -------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def netns_problem() -> str | None:
    """None when namespaces and tbf can be used here; otherwise why not."""
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        tbf = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
             "rate", TBF_RATE, "burst", str(TBF_BURST), "limit", str(TBF_LIMIT)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        if tbf.returncode != 0:
            return f"tbf qdisc unavailable: {tbf.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale_namespaces() -> list[str]:
    """Delete ``p2phs<pid>-*`` namespaces whose creating process is gone."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)-\w+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


class ShapedNet:
    """The fetcher's namespace plus one namespace per provider, each on its own tbf link."""

    def __init__(self, providers: Sequence[str]) -> None:
        tag = f"{NS_PREFIX}{os.getpid()}"
        self.fetcher_ns = f"{tag}-f"
        self.ns = {name: f"{tag}-{name}" for name in providers}
        self.index = {name: i for i, name in enumerate(providers)}
        self.made: list[str] = []

    def provider_ip(self, name: str) -> str:
        return f"10.77.{self.index[name]}.2"

    def fetcher_ip(self, name: str) -> str:
        return f"10.77.{self.index[name]}.1"

    def prefix(self, name: str | None = None) -> list[str]:
        """``ip netns exec`` for a provider (or, with no name, the fetcher)."""
        return ["ip", "netns", "exec", self.ns[name] if name else self.fetcher_ns]

    def __enter__(self) -> ShapedNet:
        try:
            for ns in (self.fetcher_ns, *self.ns.values()):
                _ip("netns", "add", ns)
                self.made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            f = self.fetcher_ns
            for name, ns in self.ns.items():
                i = self.index[name]
                dev_f = f"{DEV_F}{i}"
                _ip("-n", f, "link", "add", dev_f, "type", "veth", "peer", "name", DEV_P,
                    "netns", ns)  # fmt: skip
                _ip("-n", f, "addr", "add", f"{self.fetcher_ip(name)}/24", "dev", dev_f)
                _ip("-n", ns, "addr", "add", f"{self.provider_ip(name)}/24", "dev", DEV_P)
                _ip("-n", f, "link", "set", dev_f, "up")
                _ip("-n", ns, "link", "set", DEV_P, "up")
                tc = subprocess.run(
                    [*self.prefix(name), "tc", "qdisc", "add", "dev", DEV_P, "root", "tbf",
                     "rate", TBF_RATE, "burst", str(TBF_BURST), "limit", str(TBF_LIMIT)],
                    capture_output=True, text=True, check=False, timeout=30,
                )  # fmt: skip
                if tc.returncode != 0:
                    raise RuntimeError(f"tc qdisc add on {ns}: {tc.stderr.strip()}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # deleting a namespace destroys its end of each veth pair, and with it the other end
        while self.made:
            _ip("netns", "del", self.made.pop(), check=False)


def tc_sent_bytes(prefix: Sequence[str]) -> int:
    """Bytes the provider link's tbf has let through: whole frames, every segment's headers."""
    out = subprocess.run(
        [*prefix, "tc", "-s", "qdisc", "show", "dev", DEV_P],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    m = re.search(r"Sent (\d+) bytes", out)
    if m is None:
        raise RuntimeError(f"no byte count in tc's output: {out!r}")
    return int(m.group(1))


def tx_bytes(pid: int, dev: str = DEV_P) -> int:
    """Bytes sent on ``dev`` in the network namespace of process ``pid`` (the device counter:
    a GSO packet counts its headers once, so this is close to the TCP payload)."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            return int(rest.split()[8])
    raise RuntimeError(f"no device {dev} in the namespace of pid {pid}")


class LinkSampler:
    """Samples each provider link's sent bytes every ``SAMPLE_S`` in a thread (cheap: /proc)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t: list[float] = []
        self.sent: dict[str, list[int]] = {k: [] for k in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0
        self._base: dict[str, int] = {}

    def _sample(self) -> None:
        self.t.append(round(time.perf_counter() - self._t0, 3))
        for k, pid in self.pids.items():
            self.sent[k].append(tx_bytes(pid) - self._base[k])

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def __enter__(self) -> LinkSampler:
        self._base = {k: tx_bytes(pid) for k, pid in self.pids.items()}
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per link: bytes by the device counter (:func:`tx_bytes`), the window in which it
        sent 1%..99% of them (seconds since the control call was sent, so the DHT lookup
        before the fetch is in it) and its rate in that window."""
        out = {}
        for k, sent in self.sent.items():
            total = sent[-1] if sent else 0
            pairs = list(zip(self.t, sent, strict=True))
            start = next((t for t, b in pairs if b > 0.01 * total), 0.0)
            until = next((t for t, b in pairs if b >= 0.99 * total), 0.0)
            span = until - start
            out[k] = {
                "dev_bytes": total,
                "busy_from_s": start,
                "busy_until_s": until,
                "dev_mb_s_while_busy": round(0.98 * total / span / MB, 3) if span > 0 else 0.0,
            }
        return out


def phases(timeline: dict[str, list[float]], wall: float, seconds: float) -> dict[str, float]:
    """Where a fetch's seconds went, from the links' summed byte counts (``timeline``).

    The steady rate R is taken between 10% and 90% of the bytes; the transfer is extrapolated
    at R to its start and end.  The fetch began ``wall - seconds`` after the control call was
    sent (before that: the node's DHT provider lookup).  ``startup_s``: from the fetch's
    start to the first bytes at R (the root and inner DAG blocks, want-have rounds);
    ``transfer_s``: the object's bytes at R; ``finish_s``: from the last byte to the reply
    (last store batch, pin).  The three add up to ``seconds``.
    """
    t = timeline["t"]
    total = [sum(v[i] for k, v in timeline.items() if k != "t") for i in range(len(t))]
    if len(t) < 3 or not total[-1]:
        return {}

    def cross(frac: float) -> float:
        goal = frac * total[-1]
        for i in range(1, len(t)):
            if total[i] >= goal:
                step = (goal - total[i - 1]) / (total[i] - total[i - 1])
                return t[i - 1] + step * (t[i] - t[i - 1])
        return t[-1]

    t10, t90 = cross(0.1), cross(0.9)
    if t90 <= t10:
        return {}
    rate = 0.8 * total[-1] / (t90 - t10)
    begin, end = t10 - 0.1 * total[-1] / rate, t90 + 0.1 * total[-1] / rate
    started = wall - seconds
    return {
        "lookup_s": round(started, 3),
        "startup_s": round(begin - started, 3),
        "transfer_s": round(end - begin, 3),
        "finish_s": round(wall - end, 3),
        "dev_mb_s_per_link": round(rate / (len(timeline) - 1) / MB, 3),
    }


# --- CPU accounting -------------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.result: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._cpu0 = {k: proc_cpu_s(p) for k, p in self.pids.items()}
        self._m0 = machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.perf_counter() - self._t0
        m1 = machine_busy()
        for k, p in self.pids.items():
            with contextlib.suppress(OSError):
                self.result[f"{k}_cpu"] = round((proc_cpu_s(p) - self._cpu0[k]) / dt, 3)
        busy, total = m1[0] - self._m0[0], m1[1] - self._m0[1]
        self.result["machine_busy"] = round(busy / total, 3) if total else 0.0
