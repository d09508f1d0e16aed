"""Shared helpers of the benchmarks in bench/: arguments, timing, the table and the JSON line.

Every benchmark prints a human table and, with ``--json``, ends its stdout with ONE line holding a
JSON object (the machine-readable result the lead's reports read; nothing may follow it).  Goals
are printed next to the measured value with PASS/MISS: a missed goal is reported, never hidden.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python bench/x.py` puts bench/ first on sys.path; without an installed package the
    # repository root is needed to import p2phier.
    sys.path.insert(0, str(ROOT))

T = TypeVar("T")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="end stdout with one JSON line")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    return p


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def median_seconds(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    """Median wall time of ``repeat`` runs of ``fn`` (and every sample)."""
    samples = [timed(fn)[0] for _ in range(repeat)]
    return statistics.median(samples), samples


def log(message: str) -> None:
    """Progress for a person; stderr, so stdout stays the table and the JSON line."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    sys.stdout.write(f"\n{title}\n")
    for n, row in enumerate(cells):
        sys.stdout.write(
            "  ".join(
                c.rjust(w) if n and _numeric(c) else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            ).rstrip()
            + "\n"
        )
        if n == 0:
            sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _numeric(text: str) -> bool:
    try:
        float(text.rstrip("%").replace(",", ""))
    except ValueError:
        return False
    return True


def emit_json(result: dict[str, Any]) -> None:
    """The last stdout line: one JSON object."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def load_kept_run(run: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """A kept devnet run directory's report and each node's home (the analyses of a run:
    bench/routing.py, bench/wire.py)."""
    report = json.loads((run / "report.json").read_text())
    homes = {
        name: Path(n["home"])
        for name, n in json.loads((run / "devnet.json").read_text())["nodes"].items()
    }
    return report, homes
