"""Child process of test_disk.py: provoke an OS write error inside a DiskStore.

Usage: ``python -m tests.store.io_fault_child MODE STORE_DIR`` (repository root).

* ``fsize``: lower RLIMIT_FSIZE (works for root too), so a block write fails
  with EFBIG as on a full disk.
* ``chmod-blocks`` / ``chmod-tmp``: make ``blocks/`` (and its shards) or
  ``tmp/`` read-only (mode 0500).  Root ignores permission bits, so when run
  as root the child first drops to the ``nobody`` user (the parent chowned
  the store to it).

Then it tries to add a new object and prints one JSON line describing the
error it got.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

from p2phier.store import DiskStore
from tests.store.helpers import data_of

NOBODY = 65534


def main() -> None:
    mode, store_dir = sys.argv[1], Path(sys.argv[2])
    if mode.startswith("chmod") and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    store = DiskStore(store_dir)
    if mode == "fsize":
        limit = 64 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    elif mode == "chmod-blocks":
        for d in [store_dir / "blocks", *(store_dir / "blocks").iterdir()]:
            d.chmod(0o500)
    elif mode == "chmod-tmp":
        (store_dir / "tmp").chmod(0o500)
    else:
        raise SystemExit(f"unknown mode {mode}")
    result: dict[str, object] = {"error": None}
    try:
        store.add_bytes(data_of(3 * 262144, seed=99))
    except OSError as exc:
        result = {"error": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
    finally:
        for d in [store_dir / "tmp", store_dir / "blocks", *(store_dir / "blocks").iterdir()]:
            d.chmod(0o755)
    print(json.dumps(result), flush=True)
    store.close()


if __name__ == "__main__":
    main()
