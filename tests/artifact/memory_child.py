"""Run one artifact operation in a fresh process and print its peak memory as JSON.

Usage: ``python memory_child.py OP STORE TARGET LIMITS_JSON [OUT]`` where OP is
``verify`` (TARGET: a CID in the DiskStore at STORE), ``unpack`` (the same,
written to OUT) or ``import`` (TARGET: a CAR file imported into STORE).

The peak is the resident set's high-water mark (``VmHWM``) after it was reset
(``/proc/self/clear_refs``) just before the operation, less the resident set
at that moment: the memory the operation itself took.  The last stdout line is
``{"extra": BYTES, "error": TYPE or null, "message": ...}``.
"""

from __future__ import annotations

import gc
import json
import re
import sys
from pathlib import Path


def _status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert found is not None, field
    return int(found.group(1)) * 1024


def main() -> None:
    op, store_dir, target, limits_json = sys.argv[1:5]
    from p2phier.artifact import Limits, import_car, materialise, verify_artifact
    from p2phier.errors import P2PHierError
    from p2phier.store import DiskStore

    limits = Limits(**json.loads(limits_json))
    with DiskStore(Path(store_dir)) as store:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        before = _status("VmRSS")
        error: str | None = None
        message = ""
        try:
            if op == "verify":
                verify_artifact(store, target, limits=limits)
            elif op == "unpack":
                materialise(store, target, Path(sys.argv[5]), limits=limits)
            elif op == "import":
                import_car(store, Path(target), limits)
            else:
                raise SystemExit(f"unknown op {op}")
        except P2PHierError as exc:
            error, message = type(exc).__name__, str(exc)
        peak = _status("VmHWM")
    print(json.dumps({"extra": peak - before, "error": error, "message": message}))


if __name__ == "__main__":
    main()
