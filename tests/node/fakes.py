"""In-process stand-ins for the intake's unit tests (multi-node behaviour is tested with real
node processes elsewhere: tests/node/test_network.py, tests/devnet)."""

from __future__ import annotations

from typing import Any

import trio

from p2phier.cid import CID
from p2phier.store import DiskStore, MemoryStore
from p2phier.unixfs import iter_dag


class FakeFetcher:
    """Bitswap as far as the intake sees it: blocks copied from ``source``; a CID in
    ``hold`` is not served until its event is set (a stalling provider)."""

    def __init__(self, source: MemoryStore, dest: DiskStore) -> None:
        self.source = source
        self.dest = dest
        self.hold: dict[str, trio.Event] = {}
        self.started: list[str] = []

    async def fetch(
        self, cid: CID, providers: list[str], *, timeout: float, pin: bool, **_: Any
    ) -> Any:
        self.started.append(str(cid))
        gate = self.hold.get(str(cid))
        if gate is not None:
            await gate.wait()
        for block_cid, block in iter_dag(cid, self.source.get_block):
            self.dest.put_block(block_cid, block)
        return None

    async def providers(self, cid: CID) -> list[str]:
        return []
