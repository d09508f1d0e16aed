"""Pieces the hostile helper processes share: a signed node record of their own, and
running an attack until the test closes their stdin (or their lifetime ends); and, on
the test's side, stopping such a helper (:func:`stop_helper`), and for a test driving a
real attacker node (``p2phier.devnet.attacker``): an update of its own packed in its
store (:func:`pack_own_update`) and a fetch failure its parent lists
(:func:`fetch_failure`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2phier.artifact import pack_adapter
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.cid import CID
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.devnet.procs import NodeProc
from p2phier.identity import Identity
from p2phier.net.host import Host
from p2phier.records import Capabilities, HardwareClass, Layer, NodeRecord, sign_record
from p2phier.store import DiskStore


def signed_record(
    me: Identity,
    host: Host,
    *,
    layer: Layer,
    domain: str,
    seq: int,
    head: CID | None,
    started_ms: int,
    issued_ms: int | None = None,
) -> bytes:
    """A valid record of ``me`` (5 minutes to live) at ``host``'s addresses."""
    now = int(time.time() * 1000) if issued_ms is None else issued_ms
    return sign_record(
        NodeRecord(
            peer_id=me.peer_id,
            addrs=tuple(host.listen_addrs),
            layer=layer,
            domain=domain,
            base_model_id=DEFAULT_BASE_MODEL,
            capabilities=Capabilities(1 << 30, 0, HardwareClass.CPU),
            head=head,
            seq=seq,
            issued_ms=now,
            expires_ms=now + 300_000,
            started_ms=started_ms,
        ),
        me,
    )


async def run_until_eof(attack: Callable[[], Awaitable[None]], max_lifetime_s: float) -> None:
    """Run ``attack`` until stdin reaches EOF (the test is done) or ``max_lifetime_s``."""
    with trio.move_on_after(max_lifetime_s):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack)
            async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                while await stdin.receive_some(4096):  # until EOF
                    pass
            nursery.cancel_scope.cancel()


def stop_helper(proc: subprocess.Popen[str]) -> None:
    """Close a helper's stdin (its signal to stop), wait for it, kill it if it lingers."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def pack_own_update(
    node: NodeProc, seed: int, round_: int, *, layer: str, domain: str, **pack: Any
) -> str:
    """A valid update of the running ``node``'s own (a synthetic adapter signed with its
    key), packed and pinned in its store as a node packs one; its CID."""
    adapter = write_synthetic_adapter(node.home.parent / f"adapter-{seed}", seed=seed)
    with DiskStore(node.home / "store") as store:
        art = pack_adapter(
            store, adapter, Identity.load(node.home / "identity.key"), layer=layer,
            domain=domain, base_model_id=DEFAULT_BASE_MODEL, round=round_,
            now=1_767_225_600.0 + seed, **pack,
        )  # fmt: skip
    return str(art.cid)


def fetch_failure(node: NodeProc, cid: str) -> str | None:
    """The error ``node`` lists for its failed fetch of ``cid`` (None: none listed)."""
    for f in node.status()["fetch_failures"]:
        if f["cid"] == cid:
            return str(f["error"])
    return None
