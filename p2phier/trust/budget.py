"""Per-peer rate budgets: how many messages of a kind a peer may make this node handle.

Owns :class:`RateBudget`, a token bucket per key (a peer id) with a bounded
number of keys, and :class:`Budget`, its parameters.  A node checks a peer's
budget *before* the expensive part of handling its message (a signature
check, a record book update, a fetch), so a peer that floods costs the node a
dictionary lookup per message beyond its budget.  py-libp2p's gossip rate
limit runs in the sender's router (an attacker turns it off) and, on the
receiver, after the validators: it protects nothing here.

Clock-free: ``now`` (seconds, any monotonic origin) comes with each call.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

from p2phier.errors import UsageError


@dataclass(frozen=True, slots=True)
class Budget:
    """``rate`` messages per second on average, ``burst`` at once."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (0 < self.rate < math.inf and 1 <= self.burst < math.inf):
            raise UsageError("a budget needs a positive rate and a burst of at least 1")


class RateBudget:
    """A token bucket per key; the least recently seen keys are forgotten beyond ``max_keys``.

    A forgotten key starts again with a full bucket: ``max_keys`` must exceed the
    number of peers a node deals with at once (a Sybil crowd past it gains a
    burst each, which the gate's connection limits bound).  :meth:`prune` forgets
    the buckets that have refilled, which costs nothing: a full bucket is what a
    forgotten key gets.  Refusals are counted for at most ``2 * max_keys`` keys (beyond,
    those refused most and the one just refused are kept).
    """

    def __init__(self, budget: Budget, *, max_keys: int = 4096) -> None:
        self.budget = budget
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.refused: Counter[str] = Counter()

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket at ``now``; False (and counted) if short."""
        tokens, at = self._buckets.pop(key, (self.budget.burst, now))
        tokens = min(self.budget.burst, tokens + max(0.0, now - at) * self.budget.rate)
        ok = tokens >= cost
        if ok:
            tokens -= cost
        else:
            self.refused[key] += 1
            if len(self.refused) > 2 * self.max_keys:  # the most refused, and this one
                top = dict(self.refused.most_common(self.max_keys))
                top[key] = self.refused[key]
                self.refused = Counter(top)
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return ok

    def prune(self, now: float) -> int:
        """Forget the buckets that are full again at ``now``; return how many."""
        rate, burst = self.budget.rate, self.budget.burst
        full = [
            k
            for k, (tokens, at) in self._buckets.items()
            if tokens + max(0.0, now - at) * rate >= burst
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        """Keys with a bucket."""
        return len(self._buckets)

    def status(self, top: int = 16) -> dict[str, int]:
        """The peers refused most (at most ``top``), with their refusal counts."""
        return dict(self.refused.most_common(top))


#: Default budgets of what a node handles per peer, before any signature check.
#: An honest peer re-announces its newest update on each topic every few seconds
#: and re-registers every ``hierarchy.register_interval_s`` (30 s; 3 s in devnets):
#: each budget is several times that, with a burst for a (re)start.
ANNOUNCEMENTS = Budget(rate=2.0, burst=20)
RECORDS = Budget(rate=1.0, burst=10)
REGISTRATIONS = Budget(rate=0.5, burst=5)
