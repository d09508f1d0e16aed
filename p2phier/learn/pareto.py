"""Choosing a backbone tier by accuracy versus size (pure).

A device picks the base-model tier it runs (master, distilled students, int8)
from measured candidates: the Pareto front keeps every tier that no other tier
beats on both accuracy and size, and the selector returns the most accurate
tier that fits the device's size and memory limits (ties go to the smaller).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2phier.errors import LearnError


class TierError(LearnError, ValueError):
    """A tier candidate is malformed."""


class NoFeasibleTierError(TierError):
    """No tier fits the device's limits."""


@dataclass(frozen=True)
class TierCandidate:
    """A tier with what it costs and how well it did on the device's own data."""

    tier_id: str
    accuracy: float
    size_bytes: int  # bytes to fetch and store (the base model's files)
    memory_bytes: int  # resident parameter memory when loaded

    def __post_init__(self) -> None:
        if not (math.isfinite(self.accuracy) and 0.0 <= self.accuracy <= 1.0):
            raise TierError(f"tier {self.tier_id}: accuracy must be in [0, 1]")
        if self.size_bytes < 0 or self.memory_bytes < 0:
            raise TierError(f"tier {self.tier_id}: sizes must be >= 0")


def _dominates(a: TierCandidate, b: TierCandidate) -> bool:
    """``a`` is at least as good on both axes and strictly better on one."""
    no_worse = a.accuracy >= b.accuracy and a.size_bytes <= b.size_bytes
    better = a.accuracy > b.accuracy or a.size_bytes < b.size_bytes
    return no_worse and better


def pareto_front(candidates: Iterable[TierCandidate]) -> list[TierCandidate]:
    """Non-dominated tiers (accuracy up, size down), sorted by size then tier id."""
    items = list(candidates)
    front = [c for c in items if not any(_dominates(o, c) for o in items)]
    return sorted(front, key=lambda c: (c.size_bytes, -c.accuracy, c.tier_id))


def select_tier(
    candidates: Sequence[TierCandidate],
    *,
    max_size_bytes: int | None = None,
    max_memory_bytes: int | None = None,
) -> TierCandidate:
    """The most accurate tier within the limits; ties go to the smaller, then by id.

    The choice always lies on the Pareto front of the feasible tiers.
    """
    feasible = [
        c
        for c in candidates
        if (max_size_bytes is None or c.size_bytes <= max_size_bytes)
        and (max_memory_bytes is None or c.memory_bytes <= max_memory_bytes)
    ]
    if not feasible:
        smallest = min(candidates, key=lambda c: c.size_bytes, default=None)
        hint = (
            f"; the smallest tier {smallest.tier_id} needs {smallest.size_bytes} bytes "
            f"and {smallest.memory_bytes} bytes of memory"
            if smallest is not None
            else "; no tiers were offered"
        )
        raise NoFeasibleTierError(
            f"no tier fits size <= {max_size_bytes} and memory <= {max_memory_bytes}{hint}"
        )
    return min(feasible, key=lambda c: (-c.accuracy, c.size_bytes, c.memory_bytes, c.tier_id))
