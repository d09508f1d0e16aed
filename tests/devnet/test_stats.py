"""Intervals for the devnet's accuracy figures (p2phier/devnet/stats.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.devnet.stats import Z95, mean_gap_interval, wilson


def test_wilson_matches_the_textbook_values() -> None:
    # 8 of 10 right: the usual worked example, (0.490, 0.943)
    lo, hi = wilson(0.8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    # all right on 20 examples is not certainty
    lo, hi = wilson(1.0, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)


@given(st.integers(1, 10_000), st.data())
def test_wilson_contains_the_estimate_and_narrows_with_n(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson(k / n, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo4, hi4 = wilson(k / n, 4 * n)
    assert hi4 - lo4 < hi - lo


def test_wilson_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        wilson(0.5, 0)
    with pytest.raises(ValueError):
        wilson(1.5, 10)


def test_the_gap_interval_is_the_independent_binomial_one() -> None:
    rows = [(0.75, 0.85, 40), (0.5, 0.5, 8)]
    var = 0.0
    for a, b, n in rows:
        for p in (a, b):
            q = (p * n + 1) / (n + 2)
            var += q * (1 - q) / (n + 2)
    assert mean_gap_interval(rows) == pytest.approx(100 * Z95 * math.sqrt(var) / 2)
    # the default devnet's sizes: a few points either way are within the noise
    sizes = [40, 40, 30, 15, 20, 20, 20, 8]
    assert 5.0 < mean_gap_interval([(0.7, 0.7, n) for n in sizes]) < 10.0
    # 100 examples a node make it narrower
    assert mean_gap_interval([(0.7, 0.7, 100)] * 8) < 5.0


def test_a_perfect_score_on_few_examples_still_has_a_width() -> None:
    assert mean_gap_interval([(1.0, 1.0, 8)]) > 10.0
    with pytest.raises(ValueError):
        mean_gap_interval([])
    with pytest.raises(ValueError):
        mean_gap_interval([(0.5, 0.5, 0)])
