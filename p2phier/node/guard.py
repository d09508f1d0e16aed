"""The node's guard: evidence about peers in, trust's decisions carried out.

Owns :class:`Guard`.  Every place that sees a peer misbehave (the update
intake, Bitswap, the record book) or do something useful (an accepted update)
reports it here; the guard feeds :class:`~p2phier.trust.local.LocalTrust` and
enforces what it decides.  An isolated peer is no child (dropped, its
registrations refused), no parent (left, not chosen), gets nothing through
gossip (gossipsub blacklist) and is disconnected, until its isolation ends.
Kept apart from :mod:`p2phier.node.daemon`, which wires the node together: the
guard reaches the rest of the node only through the callables it is given.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from p2phier.bitswap import Misbehaviour
from p2phier.errors import InvalidPeerIdError
from p2phier.hierarchy import Action, HierarchyState
from p2phier.identity import PeerId
from p2phier.node.intake import Evidence, UpdateIntake
from p2phier.trust.local import Isolate, Kind, LocalTrust, TrustAction

logger = logging.getLogger(__name__)

#: the intake's drop reasons (and evidence kinds) that count against the sender; the
#: others (no record yet, clock skew, a duplicate) an honest relay or clock can cause
EVIDENCE_KINDS: dict[str, Kind] = {
    "provenance": Kind.PROVENANCE,
    "bad-signature": Kind.BAD_SIGNATURE,
    "replay": Kind.REPLAY,
    "rate": Kind.RATE,
}


class Guard:
    """Evidence in, isolations enforced; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        hierarchy: HierarchyState,
        intake: UpdateIntake,
        queue: Callable[[list[Action]], None],
        spawn: Callable[..., None],
        gossip: Callable[[], Any],
        disconnect: Callable[[str], Any],
        on_change: Callable[[], None],
    ) -> None:
        self.trust = LocalTrust()
        self.clock = clock
        self.hierarchy = hierarchy
        self.intake = intake
        self.queue = queue
        self.spawn = spawn
        self.gossip = gossip
        self.disconnect = disconnect
        self.on_change = on_change
        #: the latest misbehaviour reports, for status (trust keeps the decayed evidence)
        self.misbehaviour: deque[dict[str, Any]] = deque(maxlen=64)

    # --- evidence ------------------------------------------------------------------------
    def evidence(self, ev: Evidence) -> None:
        """From the intake: a drop that counts against its sender, or a provenance proof."""
        kind = EVIDENCE_KINDS.get(ev.kind)
        if kind is None:
            return
        if kind in (Kind.PROVENANCE, Kind.BAD_SIGNATURE):
            self.misbehaviour.append({"peer": ev.peer, "reason": ev.kind, "detail": ev.detail})
        self.enforce(self.trust.observe(ev.peer, kind, self.clock(), detail=ev.detail))

    def bitswap(self, event: Misbehaviour) -> None:
        """From Bitswap: a peer that broke the protocol (wrong or unasked blocks, junk)."""
        self.misbehaviour.append(
            {"peer": event.peer, "reason": event.reason, "detail": event.detail}
        )
        self.enforce(
            self.trust.observe(event.peer, Kind.WRONG_BLOCK, self.clock(), detail=event.detail)
        )

    def equivocation(self, peer: str, detail: str) -> None:
        """Two different records signed with one seq: a proof anyone can check."""
        self.enforce(self.trust.observe(peer, Kind.EQUIVOCATION, self.clock(), detail=detail))

    def useful_update(self, author: str) -> None:
        self.enforce(self.trust.observe(author, Kind.USEFUL_UPDATE, self.clock()))

    def tick(self) -> None:
        self.enforce(self.trust.tick(self.clock()))

    def is_isolated(self, peer: str) -> bool:
        return self.trust.is_isolated(peer, self.clock())

    # --- enforcement -----------------------------------------------------------------------
    def enforce(self, actions: list[TrustAction]) -> None:
        """Carry out trust's decisions (see the module docstring)."""
        now = self.clock()
        for action in actions:
            try:
                peer: PeerId | None = PeerId.parse(action.peer)
            except InvalidPeerIdError:
                peer = None  # a transport peer of another key type: only the wire ties
            gossip = self.gossip()
            if isinstance(action, Isolate):
                logger.warning("isolating %s until %s: %s", action.peer,
                               time.strftime("%H:%M:%S", time.localtime(action.until)),
                               action.reason)  # fmt: skip
                if peer is not None:
                    self.queue(self.hierarchy.isolate(peer, action.until, now, action.reason))
                    self.intake.author_gone(peer)
                if gossip is not None:
                    gossip.blacklist(action.peer)
                self.spawn(self.disconnect, action.peer)
            else:
                logger.info("isolation of %s ended", action.peer)
                if gossip is not None:
                    gossip.unblacklist(action.peer)
                if peer is not None:
                    self.queue(self.hierarchy.release(peer, now))
            self.on_change()
