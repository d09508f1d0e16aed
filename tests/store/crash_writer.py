"""Child process of test_crash.py: adds objects to a DiskStore until it is killed.

Usage: ``python -m tests.store.crash_writer STORE_DIR RUN`` (from the repository
root).  Prints ``ready`` once the store is open, then ``begin I SIZE`` / ``done I CID``
around each add and ``gc`` / ``gc-done`` around each GC, flushed, so the parent
knows where each SIGKILL landed.  Every object's content is reproducible from
its metadata name ``RUN:I:SIZE`` (see :func:`content`).
"""

from __future__ import annotations

import random
import sys

from p2phier.store import DiskStore, MetaSpec
from p2phier.unixfs import CHUNK_SIZE
from tests.store.helpers import data_of


def content(run: int, i: int, size: int) -> bytes:
    return data_of(size, seed=run * 100_000 + i)


def main() -> None:
    store_dir, run = sys.argv[1], int(sys.argv[2])
    rng = random.Random(run)
    store = DiskStore(store_dir)
    print("ready", flush=True)
    i = 0
    while True:
        size = rng.choice([0, 1, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, rng.randrange(6 * CHUNK_SIZE)])
        print(f"begin {i} {size}", flush=True)
        cid = store.add_bytes(
            content(run, i, size), MetaSpec(kind="crash", name=f"{run}:{i}:{size}")
        )
        print(f"done {i} {cid}", flush=True)
        if i % 4 == 3:
            # Drop a random earlier object so that kills also land inside GC.
            pinned = sorted(store.pins(), key=str)
            if pinned:
                store.unpin(rng.choice(pinned))
            print("gc", flush=True)
            store.gc()
            print("gc-done", flush=True)
        i += 1


if __name__ == "__main__":
    main()
