"""Per-peer rate budgets (pure): bursts, refill, refusal counts, bounded keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.errors import UsageError
from p2phier.trust import Budget, RateBudget


def test_a_burst_then_the_rate() -> None:
    b = RateBudget(Budget(rate=2.0, burst=5))
    assert all(b.allow("p", 0.0) for _ in range(5))
    assert not b.allow("p", 0.0)
    assert b.allow("q", 0.0)  # another peer has its own bucket
    assert not b.allow("p", 0.4)  # 0.8 of a token back: not enough
    assert b.allow("p", 0.5)  # one token after 0.5 s at 2/s
    assert b.status() == {"p": 2}


def test_keys_are_bounded() -> None:
    b = RateBudget(Budget(rate=1.0, burst=1), max_keys=3)
    for k in "abcd":
        b.allow(k, 0.0)
    assert len(b._buckets) == 3 and "a" not in b._buckets


def test_prune_forgets_only_refilled_buckets_so_no_one_gains_a_token() -> None:
    b = RateBudget(Budget(rate=1.0, burst=3))
    for _ in range(3):
        assert b.allow("spent", 0.0)
    assert b.allow("fresh", 0.0)  # one of three taken
    assert b.prune(0.5) == 0  # neither is full again
    assert b.prune(1.0) == 1 and len(b) == 1  # "fresh" refilled: forgotten
    assert b.allow("spent", 1.0) and not b.allow("spent", 1.0)  # its debt still holds
    assert b.prune(1.0) == 0
    assert b.prune(4.0) == 1 and len(b) == 0


def test_refusal_counts_are_bounded() -> None:
    b = RateBudget(Budget(rate=1.0, burst=1), max_keys=2)
    for k in range(10):
        b.allow(str(k), 0.0)
        for _ in range(k + 1):
            b.allow(str(k), 0.0)  # key k refused k + 1 times
    assert len(b.refused) <= 4
    assert b.status(2) == {"9": 10, "8": 9}  # the most refused are kept


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_time(times: list[float]) -> None:
    b = RateBudget(Budget(rate=3.0, burst=4))
    times.sort()
    allowed = sum(b.allow("p", t) for t in times)
    assert allowed <= 4 + 3.0 * (times[-1] - times[0]) + 1e-9


def test_parameters_are_checked() -> None:
    with pytest.raises(UsageError):
        Budget(rate=0, burst=1)
    with pytest.raises(UsageError):
        Budget(rate=1, burst=0.5)
