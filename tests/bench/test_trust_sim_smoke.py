"""Smoke test of ``bench/trust_sim.py``: it runs and its JSON line has the agreed shape.

Only the wiring is checked; the goals (iterations, seconds, malicious trust share) live
in the benchmark, never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_trust_sim_quick_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trust_sim.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 1000 and result["sybils"] == 100 and result["converged"] is True
    assert 1 <= result["warm_iterations"] <= result["iterations"]
    assert 0.0 <= result["malicious_trust_share"] <= 1.0
    # the weighting by the reporters' own trust is what the naive average lacks
    assert result["malicious_trust_share"] < result["naive_average_share"]
    # the standing figures: counts and a yes/no, never a goal asserted here
    assert result["false_distrusted"] >= 0 and isinstance(result["reported_distrusted"], bool)
    assert 0.0 <= result["colluders_distrusted"] <= 1.0
    assert "malicious_trust_share" in proc.stdout.split("{")[0]  # the table came first
