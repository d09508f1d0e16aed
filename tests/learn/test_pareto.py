"""Tier choice by accuracy versus size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.learn.pareto import NoFeasibleTierError, TierCandidate, pareto_front, select_tier

TIERS = [
    TierCandidate("master", 0.95, 90_000_000, 92_000_000),
    TierCandidate("l3", 0.93, 40_000_000, 41_000_000),
    TierCandidate("l2-pruned", 0.90, 20_000_000, 21_000_000),
    TierCandidate("l2-int8", 0.89, 6_000_000, 21_000_000),
    TierCandidate("bad", 0.80, 50_000_000, 50_000_000),  # dominated by l3
]


def test_front_drops_dominated_tiers_and_sorts_by_size() -> None:
    front = pareto_front(TIERS)
    assert [t.tier_id for t in front] == ["l2-int8", "l2-pruned", "l3", "master"]


def test_selects_most_accurate_tier_that_fits() -> None:
    assert select_tier(TIERS).tier_id == "master"
    assert select_tier(TIERS, max_size_bytes=45_000_000).tier_id == "l3"
    assert select_tier(TIERS, max_size_bytes=10_000_000).tier_id == "l2-int8"
    assert select_tier(TIERS, max_memory_bytes=30_000_000).tier_id == "l2-pruned"


def test_nothing_fits_is_an_actionable_error() -> None:
    with pytest.raises(NoFeasibleTierError, match="smallest tier l2-int8"):
        select_tier(TIERS, max_size_bytes=1000)
    with pytest.raises(NoFeasibleTierError, match="no tiers"):
        select_tier([])


candidates = st.lists(
    st.builds(
        TierCandidate,
        tier_id=st.text("abc", min_size=1, max_size=3),
        accuracy=st.floats(0, 1),
        size_bytes=st.integers(0, 100),
        memory_bytes=st.integers(0, 100),
    ),
    min_size=1,
    max_size=8,
)


@given(cands=candidates, limit=st.integers(0, 100))
def test_choice_is_on_the_front_and_optimal(cands: list[TierCandidate], limit: int) -> None:
    front = pareto_front(cands)
    for c in cands:  # every tier is on the front or dominated by one on it
        assert c in front or any(
            f.accuracy >= c.accuracy and f.size_bytes <= c.size_bytes for f in front
        )
    feasible = [c for c in cands if c.size_bytes <= limit]
    if not feasible:
        with pytest.raises(NoFeasibleTierError):
            select_tier(cands, max_size_bytes=limit)
        return
    chosen = select_tier(cands, max_size_bytes=limit)
    assert chosen.size_bytes <= limit
    assert chosen.accuracy == max(c.accuracy for c in feasible)
    assert chosen in pareto_front(feasible)


def test_candidates_are_validated() -> None:
    with pytest.raises(ValueError, match="accuracy"):
        TierCandidate("x", 1.5, 1, 1)
    with pytest.raises(ValueError, match="sizes"):
        TierCandidate("x", 0.5, -1, 1)
