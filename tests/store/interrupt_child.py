"""Child process of test_batch.py: an add killed (SIGKILL) at a chosen point of its commit.

Usage: ``python -m tests.store.interrupt_child MODE STORE_DIR`` (repository root).
It adds :data:`DATA` to the store and kills itself with SIGKILL:

* ``before-sync``: when the commit starts, every block staged in a temp file, nothing
  synced or renamed;
* ``mid-rename``: after the data sync, once :data:`RENAMED` blocks were renamed into place;
* ``before-pin``: after the renames were made durable, before the pin (its journal entry,
  then its index row) and the index rows.

It never returns normally: an exit status other than -SIGKILL means the hook was not reached.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from p2phier import fsutil
from p2phier.store import DiskStore, MetaSpec
from p2phier.unixfs import CHUNK_SIZE
from tests.store.helpers import data_of

DATA = data_of(6 * CHUNK_SIZE + 5, seed=7)
RENAMED = 3


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    mode, store_dir = sys.argv[1], sys.argv[2]
    if mode == "before-sync":

        def syncfs(path: Any) -> bool:
            _die()
            return False

        setattr(fsutil, "syncfs", syncfs)  # noqa: B010 - instrumentation of a throwaway child
    elif mode == "mid-rename":
        real_rename = fsutil.WriteBatch._rename
        count = [0]

        def rename(tmp: str, dest: str, dirs: set[str]) -> None:
            if count[0] == RENAMED:
                _die()
            count[0] += 1
            real_rename(tmp, dest, dirs)

        setattr(fsutil.WriteBatch, "_rename", staticmethod(rename))  # noqa: B010
    elif mode == "before-pin":

        def journal_pin(self: DiskStore, cid: Any, pin_mode: str) -> None:
            _die()

        setattr(DiskStore, "_journal_pin", journal_pin)  # noqa: B010
    else:
        raise SystemExit(f"unknown mode {mode}")
    store = DiskStore(store_dir)
    store.add_bytes(DATA, MetaSpec(kind="interrupted"))
    raise SystemExit("the add finished: the kill hook was never reached")


if __name__ == "__main__":
    main()
