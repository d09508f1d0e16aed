"""Measuring parent candidates: the round trips parent choice rests on.

Owns :class:`CandidateMeter`.  Parent choice never trusts what a candidate says
about itself (:mod:`p2phier.hierarchy`): a candidate becomes eligible once this
node has pinged it (``/ipfs/ping/1.0.0``) and it answered.  The meter pings a
parent candidate when its record arrives, and again every ``every_s`` while the
node looks for a parent; each answer goes into ``latencies`` (which
:class:`~p2phier.hierarchy.MeasuredScore` reads) and is reported to the
hierarchy state machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from p2phier.errors import NetworkError
from p2phier.hierarchy import Action, HierarchyState, is_parent_candidate
from p2phier.identity import PeerId
from p2phier.records import NodeRecord

logger = logging.getLogger(__name__)

#: a parent candidate is pinged again after this long (or when it failed to answer)
MEASURE_EVERY_S = 10.0


class CandidateMeter:
    """Pings parent candidates; their round trips in :attr:`latencies`."""

    def __init__(
        self,
        local: PeerId,
        hierarchy: HierarchyState,
        *,
        ping: Callable[[str], Awaitable[float]],
        spawn: Callable[..., None],
        queue: Callable[[list[Action]], None],
        clock: Callable[[], float],
        latencies: dict[PeerId, float] | None = None,
        every_s: float = MEASURE_EVERY_S,
    ) -> None:
        self.local = local
        self.hierarchy = hierarchy
        self.ping = ping
        self.spawn = spawn
        self.queue = queue
        self.clock = clock
        self.every_s = every_s
        #: round trips this node measured (pings, and whatever else the caller records in
        #: the same table, e.g. registrations): what parent choice uses
        self.latencies: dict[PeerId, float] = {} if latencies is None else latencies
        self._tried: dict[PeerId, float] = {}  # last ping attempt per candidate

    def consider(self, record: NodeRecord, now: float) -> None:
        """Ping ``record``'s peer if it is a parent candidate not measured lately."""
        peer = record.peer_id
        h = self.hierarchy
        if peer == self.local or not is_parent_candidate(h.layer, h.domain, record):
            return
        if now - self._tried.get(peer, -math.inf) < self.every_s:
            return
        self._tried[peer] = now
        self.spawn(self._measure, peer)

    def consider_all(self, now: float) -> None:
        """While there is no parent: every known candidate not measured lately."""
        if self.hierarchy.parent is None:
            for record in self.hierarchy.candidates():
                self.consider(record, now)

    def prune(self, now: float) -> int:
        """Forget ping times older than ``every_s`` (they no longer hold a ping back) and
        the round trips of peers that are neither parent candidates nor the parent (one
        that comes back is pinged again); return how many round trips went."""
        self._tried = {p: at for p, at in self._tried.items() if now - at < self.every_s}
        h = self.hierarchy
        wanted = {r.peer_id for r in h.candidates()} | {h.parent}
        gone = [p for p in self.latencies if p not in wanted]
        for peer in gone:
            del self.latencies[peer]
        return len(gone)

    async def _measure(self, peer: PeerId) -> None:
        try:
            rtt = await self.ping(str(peer))
        except NetworkError as exc:
            logger.info("parent candidate %s not reachable: %s", peer, exc)
            return
        self.latencies[peer] = rtt
        logger.info("parent candidate %s measured: %.1f ms", peer, rtt * 1000)
        self.queue(self.hierarchy.candidate_measured(peer, self.clock()))
