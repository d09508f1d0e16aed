"""Smoke test of ``bench/learn.py``: it runs end to end and its JSON line has the agreed shape.

Only the wiring is checked (keys, types, internal consistency); the benchmark's speed and
quality goals live in the benchmark itself, never in tests.  ``--smoke`` trains for a couple
of steps on a handful of examples, so its numbers mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2phier.learnplan import CONTINUAL, LearnSettings

pytestmark = [pytest.mark.ml, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RULES = {"fedavg", "median", "trimmed_mean", "norm_clip", "probe_scored"}


def _number(value: object) -> float:
    assert isinstance(value, int | float) and not isinstance(value, bool), value
    assert math.isfinite(value), value
    return float(value)


def _fraction(value: object) -> float:
    x = _number(value)
    assert 0.0 <= x <= 1.0, x
    return x


def test_smoke_run_prints_tables_and_ends_with_the_json_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable,
            "bench/learn.py",
            "--smoke",
            "--json",
            "--threads",
            "1",
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    for title in ("Tiers", "Forgetting", "Hierarchy", "Robust aggregation"):
        assert title in table

    # Tiers: the best student is under a third of the teacher, retention is its ratio.
    assert _number(result["distill_params_ratio"]) <= 1 / 3
    _number(result["distill_retention"])
    assert set(result["distill_retention_by_domain"]) == {"news", "health"}
    tiers = result["tiers"]
    assert tiers[0]["params_ratio"] == 1.0 and len(tiers) == 4  # teacher, 2 students, int8
    for row in tiers:
        assert set(row["accuracy"]) == {"news", "health"}
        for acc in row["accuracy"].values():
            _fraction(acc)
        assert _number(row["params"]) > 0 and _number(row["bytes"]) > 0
        assert _number(row["latency_ms"]) > 0
    assert tiers[-1]["tier"].endswith("-int8") and tiers[-1]["bytes"] < min(
        t["bytes"] for t in tiers[:-1]
    )

    # Forgetting: the figure is the plan's default method's; every method's is information,
    # and the best is their minimum.
    pts = result["forgetting_by_method"]
    assert set(pts) == set(CONTINUAL)
    for value in pts.values():
        assert 0.0 <= _number(value) <= 100.0
    assert result["forgetting_method"] == LearnSettings().continual
    assert result["forgetting_pts"] == pts[LearnSettings().continual]
    assert result["forgetting_best_pts"] == min(pts.values())

    # Hierarchy: accuracy differences in points, byte shares in percent.
    for key in ("hier_vs_central_acc_pts", "hier_vs_isolated_acc_pts"):
        assert -100.0 <= _number(result[key]) <= 100.0
    assert _number(result["hier_bytes_pct_of_central"]) > 0
    assert _number(result["hier_bytes_pct_of_raw_data"]) > 0
    hier = result["hierarchy"]
    assert hier["bytes_hier"] == hier["bytes_up"] + hier["bytes_down"] > 0
    # the one central baseline: the better of two learning rates on a validation split
    tried = hier["central"]["valid"]
    assert len(tried) == 2 and f"{hier['central']['lr']:g}" in tried
    assert tried[f"{hier['central']['lr']:g}"] == max(tried.values())
    assert math.isclose(
        result["hier_bytes_pct_of_central"],
        100 * hier["bytes_hier"] / hier["bytes_full_model_exchange"],
    )

    # Robust aggregation: points lost per rule; clean FedAvg loses nothing against itself.
    loss = result["robust_acc_loss_pts"]
    assert set(loss) == RULES
    for value in loss.values():
        assert -100.0 <= _number(value) <= 100.0
    acc = result["robust_accuracy"]
    assert set(acc) == {"clean", "sign-flip", "scale-10x", "sign-flip-10x"}
    assert all(set(v) == RULES for v in acc.values())
    assert result["scale"] == "smoke" and _number(result["seconds"]["total"]) > 0
