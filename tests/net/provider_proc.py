"""Child process of the network tests and benchmark: a Bitswap provider node.

Usage (from the repository root)::

    python -m tests.net.provider_proc --home DIR [--port P] --serve FILE... \
        [--corrupt] [--upload-rate BYTES_PER_S] [--upload-burst BYTES]

Adds every FILE to a DiskStore in ``DIR/store`` (identity in ``DIR/node.key``),
starts a libp2p host on 127.0.0.1:P (0: any port) with Bitswap, prints ONE
JSON line on stdout -- ``{"peer_id", "addrs", "roots": {FILE: CID}, "pid"}`` --
and serves until it is killed.  ``--corrupt`` makes it a dishonest provider:
every block it sends has one byte flipped (it still answers HAVE truthfully).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import trio

from p2phier.bitswap import EngineConfig
from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.net import BitswapConfig, open_bitswap, open_host
from p2phier.store import ContentStore, DiskStore


class CorruptingSource:
    """Serves the store's blocks with their first byte flipped (a lying provider)."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def block_size(self, cid: CID) -> int:
        return self.store.block_size(cid)

    def get_block(self, cid: CID) -> bytes:
        data = bytearray(self.store.get_block(cid))
        if data:
            data[0] ^= 0xFF
        return bytes(data)


async def serve(args: argparse.Namespace) -> None:
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    identity = Identity.load_or_create(home / "node.key")
    store = DiskStore(home / "store")
    roots = {path: str(store.add_file(path)) for path in args.serve}
    engine = EngineConfig(verify_before_serving=not args.corrupt)
    config = BitswapConfig(engine=engine)
    source = CorruptingSource(store) if args.corrupt else None
    async with (
        open_host(identity, [f"/ip4/127.0.0.1/tcp/{args.port}"]) as host,
        open_bitswap(host, store, config, source=source) as bitswap,
    ):
        if args.upload_rate:
            bitswap.set_upload_rate(args.upload_rate, args.upload_burst)
        line = {"peer_id": host.peer_id, "addrs": host.addrs, "roots": roots, "pid": os.getpid()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await trio.sleep_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--serve", nargs="+", default=[])
    p.add_argument("--corrupt", action="store_true")
    p.add_argument("--upload-rate", type=float, default=None)
    p.add_argument("--upload-burst", type=int, default=None)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="provider %(levelname)s %(name)s: %(message)s"
    )
    trio.run(serve, args)


if __name__ == "__main__":
    main()
