"""The candidate meter's bookkeeping: pings rate-limited per candidate, old entries pruned."""

from __future__ import annotations

from typing import Any

from p2phier.hierarchy import HierarchyState
from p2phier.node.measure import CandidateMeter
from p2phier.records import Layer
from tests.node_logic.helpers import T0, peer, record


def test_prune_keeps_the_round_trips_of_candidates_and_forgets_the_rest() -> None:
    hierarchy = HierarchyState(peer(1), Layer.DOMAIN, "en/news")
    spawned: list[Any] = []
    meter = CandidateMeter(
        peer(1),
        hierarchy,
        ping=lambda p: None,  # type: ignore[arg-type, return-value]
        spawn=lambda fn, *args: spawned.append(args),
        queue=lambda actions: None,
        clock=lambda: T0,
        every_s=10.0,
    )
    candidate = record(2, Layer.LANGUAGE, "en", issued=T0)
    hierarchy.record_seen(candidate, T0)
    meter.consider(candidate, T0)
    assert spawned == [(peer(2),)]
    meter.latencies.update({peer(2): 0.01, peer(3): 0.02, peer(4): 0.03})  # 3, 4: gone
    assert meter.prune(T0 + 5) == 2
    assert meter.latencies == {peer(2): 0.01}
    meter.consider(candidate, T0 + 5)
    assert len(spawned) == 1  # pinged 5 s ago: the prune kept that
    meter.prune(T0 + 10)  # now the ping is old enough to repeat: forgotten, nothing lost
    meter.consider(candidate, T0 + 10)
    assert len(spawned) == 2
