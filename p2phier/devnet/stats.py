"""How sure a devnet's accuracy figures are: intervals from the held-out set sizes.

Owns :func:`wilson` (a 95% interval for one node's accuracy on ``n`` examples) and
:func:`mean_gap_interval` (the half-width of a 95% interval for a difference of two mean
accuracies over the same nodes, e.g. the hierarchy's vs training alone).  Pure: numbers
in, numbers out.

The default devnet's held-out sets are small (8 to 40 examples: one example is 2.5 to 12.5
points of a node's accuracy), so a figure that moves by a few points between runs may be
noise; these say how much.  The gap's interval treats the two accuracies of a node as
independent binomial estimates.  They are measured on the same examples and positively
correlated, so the interval is conservative (wider than a paired one, which would need
every example's outcome).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for an accuracy measured on ``n`` examples."""
    if n <= 0:
        raise ValueError("an interval needs at least one example")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy {accuracy} is not in [0, 1]")
    denom = 1.0 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    # the bounds contain the estimate exactly (rounding would nudge them past 0 or 1)
    return min(accuracy, max(0.0, centre - half)), max(accuracy, min(1.0, centre + half))


def mean_gap_interval(rows: Sequence[tuple[float, float, int]], z: float = Z95) -> float:
    """Half-width, in points, of the interval for ``mean(a) - mean(b)`` over ``rows`` of
    ``(a, b, n)`` (two accuracies of one node on its ``n`` held-out examples).

    Each accuracy's variance is ``p(1-p)/n``, with ``p`` shrunk towards 1/2 by one example
    either way (Agresti-Caffo: an accuracy of 0 or 1 on a few examples is no certainty)."""
    if not rows:
        raise ValueError("an interval needs at least one node")
    var = 0.0
    for a, b, n in rows:
        if n <= 0:
            raise ValueError("every node needs at least one held-out example")
        for p in (a, b):
            q = (p * n + 1) / (n + 2)
            var += q * (1 - q) / (n + 2)
    return 100.0 * z * math.sqrt(var) / len(rows)
