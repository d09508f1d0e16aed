"""Which children's updates a parent waits for in a round, and when it stops waiting.

Owns :class:`Collection`, a clock-free policy (the learner's driver feeds it what it
sees and a ``now``; it answers whether the round's collecting is over and why).  No
trio, no torch: every decision is unit-tested with stand-ins.

The rules, in order:

* every registered child has sent its update for the round: done ("every child"; with
  no registered child at all, "no children": nobody is waited for);
* ``collect_s`` since the round began: done, whatever is missing ("collect_s");
* a registered child whose connection has been gone for ``gone_s`` without a break
  (killed, crashed, unplugged) is not waited for.  A connection dropped for a moment
  (a busy CPU missing keep-alives) is not enough: a child re-dials its parent at its
  next registration refresh at the latest, so ``gone_s`` is that interval plus a dial;
* children whose updates were useful here before ("known") are waited for; once all
  of theirs are in, newcomers get as long again as the known ones needed, and at
  least ``newcomer_min_s``.  A cluster of fresh identities that register and never
  send (Sybils) cannot hold every round to ``collect_s``; in a network's first round
  everyone is a newcomer and the round waits for all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from p2phier.learnplan import LearnSettings

#: the least a round waits for its newcomers' updates once every known child's is in (the
#: learning plan's ``newcomer_min_s``, declared there)
NEWCOMER_MIN_S: float = LearnSettings.newcomer_min_s


@dataclass(frozen=True)
class ChildSeen:
    """One registered child as the driver sees it at ``now``."""

    peer: str
    connected: bool
    known: bool  # its updates were useful here before (trust history)
    done: bool  # its update for this round (on the current version) is in


@dataclass
class Collection:
    """One round's collecting (see the module docstring)."""

    began: float
    collect_s: float
    gone_s: float
    newcomer_min_s: float = NEWCOMER_MIN_S
    #: peer -> when it was first seen without a connection (the driver may keep one map
    #: across rounds, so a child that died during the last round is not waited for anew)
    gone_since: dict[str, float] = field(default_factory=dict)
    _known_done_at: float | None = None

    def __post_init__(self) -> None:
        if self.collect_s <= 0 or self.gone_s < 0 or self.newcomer_min_s < 0:
            raise ValueError("collect_s must be positive; gone_s and newcomer_min_s not negative")

    def waited_for(self, children: Iterable[ChildSeen], now: float) -> set[str]:
        """The children this round still counts on (updates tracked per call)."""
        waited = set()
        for c in children:
            if c.connected:
                self.gone_since.pop(c.peer, None)
            else:
                since = self.gone_since.setdefault(c.peer, now)
                if now - since >= self.gone_s:
                    continue
            waited.add(c.peer)
        return waited

    def observe(self, children: Iterable[ChildSeen], now: float) -> str | None:
        """Why collecting is over at ``now``, or None to keep waiting."""
        seen = list(children)
        waited = self.waited_for(seen, now)
        done = {c.peer for c in seen if c.done}
        gone = {c.peer for c in seen} - waited
        if waited <= done:
            if not seen:
                return "no children"
            return f"every live child; {len(gone)} gone" if gone else "every child"
        if now >= self.began + self.collect_s:
            return "collect_s"
        known = {c.peer for c in seen if c.known and c.peer in waited}
        if known and known <= done:
            if self._known_done_at is None:
                self._known_done_at = now
            grace = max(self.newcomer_min_s, 2 * (self._known_done_at - self.began))
            if now >= self.began + grace:
                late = len(waited - done)
                return f"known children; {late} newcomer(s) not waited for"
        return None
