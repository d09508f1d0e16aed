"""The announce -> fetched-and-verified part of bench/net.py: a chain of real node processes.

One node per layer on 127.0.0.1 (master ``""`` -> language ``en`` -> domain ``en/news`` ->
subdomain ``en/news/tech`` -> device ``en/news/tech``): the layer rules in p2phier/records.py
allow five layers, so the longest chain is five nodes, four hops.  The daemon does not relay an
accepted update downstream by itself, so every hop is measured on its own: the parent packs a
fresh ~1 MiB synthetic LoRA (signed by itself) into its store, then the clock starts, the
``publish --to children`` control command is sent on its socket (what ``p2phier publish`` sends),
and the child's ``status`` is polled every 20 ms until the artifact is listed as accepted (it is
listed only after the whole artifact was fetched, hash-checked and verified).  A chain total per
round is the sum of its hops (what a relay that re-announces at once would at best cost).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from pathlib import Path
from typing import Any

from _common import log

from p2phier.artifact.synthetic import write_synthetic_adapter

CHAIN = [
    ("master", "master", ""),
    ("language", "language", "en"),
    ("domain", "domain", "en/news"),
    ("subdomain", "subdomain", "en/news/tech"),
    ("device", "device", "en/news/tech"),
]
POLL_S = 0.02
HIDDEN = 512
RANK = 32
LAYERS = 4
# 4 layers x 2 targets x (A [32, 512] + B [512, 32]) float32 = exactly 1 MiB of tensors.


def write_adapter(directory: Path, seed: int) -> Path:
    """A synthetic PEFT LoRA adapter directory with 1 MiB of random float32 tensors."""
    return write_synthetic_adapter(
        directory, seed=seed, r=RANK, hidden=HIDDEN, layers=LAYERS, base_model="bench/synthetic"
    )


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples the p99 is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure_chain(workdir: Path, repeat: int) -> dict[str, Any]:
    """Per-hop and per-round announce -> verified seconds down the chain."""
    from p2phier.artifact import pack_adapter
    from p2phier.config import DEFAULT_BASE_MODEL
    from p2phier.devnet.procs import NodeProc, open_cluster, wait_for
    from p2phier.identity import Identity
    from p2phier.store import DiskStore

    def pack(node: NodeProc, seed: int, round_: int) -> tuple[str, int]:
        adapter = write_adapter(workdir / f"adapter-{node.name}-{seed}", seed)
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
        return str(art.cid), int(art.stored_bytes)

    def has_parent(node: NodeProc, parent: str) -> bool:
        return bool(node.status()["parent"] == parent)

    def accepted(node: NodeProc) -> set[str]:
        return {a["cid"] for a in node.status()["accepted"]}

    names = [n for n, _, _ in CHAIN]
    hops: list[list[float]] = [[] for _ in range(len(CHAIN) - 1)]
    stored: list[int] = []
    with open_cluster(workdir / "chain", CHAIN) as nodes:
        chain = [nodes[n] for n in names]
        for parent, child in itertools.pairwise(chain):
            wait_for(
                f"{child.name} to register under {parent.name}",
                functools.partial(has_parent, child, parent.peer_id),
                timeout=120,
            )
        log(f"announce chain: {len(chain)} nodes up, {len(hops)} hops")
        for rep in range(repeat):
            for hop, (parent, child) in enumerate(itertools.pairwise(chain)):
                cid, nbytes = pack(parent, seed=1000 * rep + hop, round_=rep + 1)
                stored.append(nbytes)
                t0 = time.perf_counter()
                parent.call("publish", {"cid": cid, "to": "children"})
                deadline = t0 + 120
                while cid not in accepted(child):
                    if time.perf_counter() > deadline:
                        raise RuntimeError(
                            f"{child.name} did not accept {cid} within 120 s\n{child.log_tail()}"
                        )
                    time.sleep(POLL_S)
                hops[hop].append(time.perf_counter() - t0)
            log(
                f"  round {rep + 1}: "
                + ", ".join(f"{names[i]}->{names[i + 1]} {h[-1]:.3f}s" for i, h in enumerate(hops))
            )
    per_hop = [s for h in hops for s in h]
    totals = [sum(h[r] for h in hops) for r in range(repeat)]
    return {
        "announce_chain_hops": len(hops),
        "announce_relay": "none: each node publishes to its children in turn; total = sum of hops",
        "announce_to_verified_p50_s": percentile(per_hop, 50),
        "announce_to_verified_p99_s": percentile(per_hop, 99),
        "announce_chain_total_p50_s": percentile(totals, 50),
        "announce_chain_total_p99_s": percentile(totals, 99),
        "announce_artifact_stored_bytes": max(stored),
        "announce_samples": {f"{names[i]}->{names[i + 1]}": h for i, h in enumerate(hops)},
    }
