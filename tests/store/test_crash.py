"""Crash safety (reliability row 9): SIGKILL a writer process at random points.

A child (tests/store/crash_writer.py) adds objects to a DiskStore in a loop and
now and then unpins one and runs GC.  It is killed 50 times after random
delays, restarting each time on the same store.  Afterwards: no temp file
survives an open, no stored block is torn (``verify()`` is empty), and every
pinned or recorded object is complete and reads back its exact content.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2phier.store import DiskStore
from p2phier.unixfs import build_file
from tests.store.crash_writer import content
from tests.store.helpers import temp_files

REPO = Path(__file__).resolve().parents[2]
KILLS = 50


def _run_and_kill(store_dir: Path, run: int, delay: float) -> list[str]:
    """Start the writer, let it work for ``delay`` seconds, SIGKILL it; its output lines."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(store_dir), str(run)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"ready\n", f"writer did not start: {first!r}"
        time.sleep(delay)
    finally:
        proc.kill()  # always reaped, whatever happened above
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"writer died on its own:\n{err.decode()}"
    return out.decode().splitlines()


@pytest.mark.slow
def test_sigkilled_writer_never_leaves_a_torn_object(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    rng = random.Random(20240609)
    killed_mid_add = killed_mid_gc = completed = 0
    for run in range(KILLS):
        lines = _run_and_kill(store_dir, run, rng.uniform(0.0, 0.35))
        last = lines[-1] if lines else ""
        killed_mid_gc += last == "gc"
        completed += sum(line.startswith("done") for line in lines)
        with DiskStore(store_dir) as store:  # opening cleans up after the dead writer
            assert temp_files(store_dir) == []
            if last.startswith("begin"):
                # Killed inside an add: each block of that object is absent or whole.
                killed_mid_add += 1
                _, i, size = last.split()
                _, blocks = build_file(content(run, int(i), int(size)))
                for cid, block in blocks:
                    if store.has_block(cid):
                        assert store.get_block(cid) == block  # CorruptBlockError if torn

    # The kills really landed inside writes (most of a writer's time is spent there).
    assert killed_mid_add >= 5, (killed_mid_add, killed_mid_gc)
    assert completed > 0

    with DiskStore(store_dir) as store:
        assert store.verify() == []  # no torn block anywhere
        pins = store.pins()
        assert pins
        for root in pins:
            assert store.missing_blocks(root) == []
            b"".join(store.cat(root))  # cat-able to the end
        recorded = store.query(kind="crash")
        assert recorded
        for meta in recorded:
            assert meta.name is not None
            run_s, i_s, size_s = meta.name.split(":")
            assert meta.size == int(size_s)
            assert store.get_bytes(meta.cid) == content(int(run_s), int(i_s), int(size_s))
        # What GC leaves is exactly what the pins need; it all still reads back.
        store.gc()
        assert store.verify() == []
        for root in pins:
            assert store.has_object(root)
        assert temp_files(store_dir) == []
