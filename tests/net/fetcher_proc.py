"""Child process of the network tests: fetches one object into a DiskStore.

Usage: ``python -m tests.net.fetcher_proc --home DIR --root CID --provider ADDR...``.
Prints ``{"peer_id": ...}`` once its host runs, then ``{"done": CID}`` when the
object is complete (pinned).  The resume test SIGKILLs it half way.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import trio

from p2phier.identity import Identity
from p2phier.net import open_bitswap, open_host
from p2phier.store import DiskStore


def _say(obj: dict[str, str]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def fetch(args: argparse.Namespace) -> None:
    home = Path(args.home)
    identity = Identity.load_or_create(home / "node.key")
    store = DiskStore(home / "store")
    async with open_host(identity) as host, open_bitswap(host, store) as bitswap:
        _say({"peer_id": host.peer_id})
        root = await bitswap.fetch(args.root, args.provider, timeout=args.timeout)
        _say({"done": str(root)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--provider", nargs="+", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="fetcher %(levelname)s %(name)s: %(message)s")
    trio.run(fetch, args)


if __name__ == "__main__":
    main()
