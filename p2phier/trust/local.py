"""Local trust: what this node saw each peer do, decayed over time, and who is isolated.

Owns :class:`LocalTrust`, a clock-free scorer in the shape of py-libp2p's
``pubsub/score.py``: :meth:`LocalTrust.observe` takes one piece of evidence and
``now``, :meth:`LocalTrust.score` answers for a peer at ``now``, and the
decisions come back as actions (:class:`Isolate`, :class:`Release`) that the
daemon enforces.  No I/O, no clock, no threads.

Evidence is of two sorts, kept apart:

* **proofs** (``Param.proof``): misbehaviour anyone can re-check from signed
  bytes, e.g. a signed announcement and the signed manifest it pointed at that
  disagree on signer, place or round (``provenance``), or two different
  signed records with one sequence number (``equivocation``).  One proof
  isolates its author at once;
* **first-hand observations**: a bad signature, a wrong block, a stall, a replay,
  a rate violation, and positive interactions (a useful update, blocks served).
  Each kind adds ``weight`` to a counter that halves every ``half_life_s``; the
  score is the sum.  A peer whose score falls below ``isolate_below`` is
  isolated too.

An isolation lasts ``isolation_s`` and then expires (:meth:`LocalTrust.tick`
returns :class:`Release`): a peer falsely accused, or one that mended its
ways, recovers; evidence keeps decaying.  A peer isolated again stays out
twice as long each time (up to ``max_isolation_s``).

Memory is bounded: beyond ``max_peers`` the least recently seen peer that is
not isolated is forgotten, and :meth:`LocalTrust.prune` forgets peers whose
evidence has decayed to nothing (:data:`NEGLIGIBLE`) and that were never
isolated (their isolations' doubling must hold).  A peer isolated now is never
forgotten.

Parameters and the reasoning for each default are in :data:`DEFAULT_PARAMS`.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from p2phier.errors import UsageError


class Kind(enum.StrEnum):
    """What a peer did."""

    # proofs: re-checkable by anyone from signed bytes
    PROVENANCE = "provenance"  # announced an artifact that is not its own update as announced
    EQUIVOCATION = "equivocation"  # two different signed messages with one seq/round
    # first-hand observations
    BAD_SIGNATURE = "bad-signature"
    WRONG_BLOCK = "wrong-block"  # bytes that do not hash to the CID asked for, or unasked
    #: announced an artifact that fails verification (a manifest, payload or lineage that
    #: breaks the format's rules; never one of a newer format this node cannot read)
    BAD_ARTIFACT = "bad-artifact"
    STALL = "stall"  # a fetch from it timed out
    #: announced an artifact, then said it does not have it (DONT_HAVE), while taking
    #: blocks from this node (its Bitswap ledger here): it takes and will not serve
    FREE_RIDE = "free-ride"
    #: an author's old announcement again: not fed by the node (any relay may hand one on
    #: late; the bytes are the author's honest signature), kept for other callers
    REPLAY = "replay"
    RATE = "rate"  # over one of its budgets
    BAD_UPDATE = "bad-update"  # an update the parent's screen left out (trust/quality.py)
    # positive
    USEFUL_UPDATE = "useful-update"  # an update of its was aggregated (or, with no learner
    # to judge it, verified and accepted)
    BLOCKS_SERVED = "blocks-served"  # per MiB served to this node


@dataclass(frozen=True, slots=True)
class Param:
    weight: float  # added to the counter per event (negative: misbehaviour)
    half_life_s: float  # the counter halves in this long
    proof: bool = False  # one such event isolates (third-party checkable)


#: Why these numbers.  ``isolate_below`` is -10: a peer must be caught repeatedly
#: by first-hand observations, which an honest peer can trigger now and then (a
#: relay's replay, a stall on a bad link), before it is isolated.  A stall (-1)
#: halves in an hour: more than ten within minutes isolate, one every two hours
#: never does.  A bad signature or a wrong block cannot happen by accident on a
#: hash-checked, signed channel (-5: three of them within a day); nor can an artifact
#: its author signed and announced that fails verification (-5 likewise; what a newer
#: release may write and this one cannot read is never counted).  Free-riding is -4
#: (three withheld announcements within a day isolate): an author that said DONT_HAVE
#: for its own newest announcement, whose blocks it pinned before announcing it and
#: keeps (node/retention.py), while its ledger here shows blocks it took; a peer that
#: only takes is no evidence (a leaf takes its parent's versions and serves little by
#: role), and one that withholds but took nothing counts as a stall.  A rate violation
#: is -0.1 per dropped message: a burst of a hundred over budget isolates, a few do
#: not.  An update the parent's quality screen left out (against its probe and the
#: round's consensus, outsized, idle, noise, an echo of the round or a colluder's
#: twin: trust/quality.py) is -6 at full severity, and a flagged update earns no
#: credit, so two such rounds isolate (weaker, graded evidence adds up over a third:
#: within 3 rounds, as bench/attacks.py measures), while an honest child flagged
#: once in a while earns it back at +1 per update aggregated.  Positive
#: evidence (+1 per useful update, +0.1 per MiB served) decays over a week and can
#: offset occasional accidents, but never a proof.  Proofs isolate at once.
DEFAULT_PARAMS: dict[Kind, Param] = {
    Kind.PROVENANCE: Param(-100.0, 7 * 86_400.0, proof=True),
    Kind.EQUIVOCATION: Param(-100.0, 7 * 86_400.0, proof=True),
    Kind.BAD_SIGNATURE: Param(-5.0, 86_400.0),
    Kind.WRONG_BLOCK: Param(-5.0, 86_400.0),
    Kind.BAD_ARTIFACT: Param(-5.0, 86_400.0),
    Kind.STALL: Param(-1.0, 3_600.0),
    Kind.FREE_RIDE: Param(-4.0, 86_400.0),
    Kind.REPLAY: Param(-0.5, 3_600.0),
    Kind.RATE: Param(-0.1, 600.0),
    Kind.BAD_UPDATE: Param(-6.0, 86_400.0),
    Kind.USEFUL_UPDATE: Param(1.0, 7 * 86_400.0),
    Kind.BLOCKS_SERVED: Param(0.1, 7 * 86_400.0),
}


@dataclass(frozen=True, slots=True)
class TrustConfig:
    params: dict[Kind, Param] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    isolate_below: float = -10.0
    isolation_s: float = 3_600.0
    max_isolation_s: float = 7 * 86_400.0
    max_peers: int = 8192  # peers remembered (least recently seen forgotten first)
    max_proofs: int = 8  # proofs kept per peer (for status and reports)
    #: an author's update counts this much in an aggregate while none was useful...
    newcomer_weight: float = 0.25
    #: ...and fully once this many were (decayed history)
    full_weight_after: float = 3.0

    def __post_init__(self) -> None:
        if not (self.isolate_below < 0 and 0 < self.isolation_s <= self.max_isolation_s):
            raise UsageError("isolate_below must be negative and 0 < isolation_s <= max")
        if not (0 < self.newcomer_weight <= 1 and self.full_weight_after >= 1):
            raise UsageError("newcomer_weight must lie in (0, 1], full_weight_after >= 1")
        for kind, p in self.params.items():
            if not (math.isfinite(p.weight) and p.half_life_s > 0):
                raise UsageError(f"trust parameter {kind}: finite weight, positive half-life")


@dataclass(frozen=True, slots=True)
class Isolate:
    peer: str
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Release:
    peer: str


TrustAction = Isolate | Release


@dataclass
class _Peer:
    counters: dict[Kind, tuple[float, float]] = field(default_factory=dict)  # value, at
    proofs: list[dict[str, Any]] = field(default_factory=list)
    isolated_until: float | None = None
    isolations: int = 0
    reason: str = ""


#: evidence whose decayed weight stays below this, kind by kind, counts for nothing:
#: :meth:`LocalTrust.prune` forgets a peer (never isolated) that holds no more
NEGLIGIBLE = 0.01


class LocalTrust:
    """Evidence in, scores and isolations out; see the module docstring."""

    def __init__(self, config: TrustConfig | None = None) -> None:
        self.config = config or TrustConfig()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    # --- events -------------------------------------------------------------------------
    def observe(
        self, peer: str, kind: Kind, now: float, amount: float = 1.0, detail: str = ""
    ) -> list[TrustAction]:
        """One piece of evidence about ``peer``; returns the isolation it causes, if any."""
        param = self.config.params[kind]
        p = self._peer(peer)
        value, at = p.counters.get(kind, (0.0, now))
        p.counters[kind] = (_decayed(value, now - at, param.half_life_s) + amount, now)
        if param.proof:
            p.proofs = [*p.proofs, {"kind": kind.value, "at": now, "detail": detail[:500]}][
                -self.config.max_proofs :
            ]
        if self.is_isolated(peer, now):
            return []
        if param.proof:
            return [self._isolate(peer, p, now, f"proof: {kind.value}: {detail[:200]}")]
        score = self.score(peer, now)
        if score < self.config.isolate_below:
            return [self._isolate(peer, p, now, f"trust {score:.1f} after {kind.value}")]
        return []

    def tick(self, now: float) -> list[TrustAction]:
        """Isolations that expired at ``now``."""
        out: list[TrustAction] = []
        for peer, p in self._peers.items():
            if p.isolated_until is not None and p.isolated_until <= now:
                p.isolated_until = None
                out.append(Release(peer))
        return out

    def prune(self, now: float) -> int:
        """Forget the peers never isolated whose every piece of evidence has decayed below
        :data:`NEGLIGIBLE` (their score and weight are what a stranger's are); return how
        many."""
        params = self.config.params
        gone = [
            peer
            for peer, p in self._peers.items()
            if p.isolations == 0
            and p.isolated_until is None
            and all(
                abs(params[k].weight) * _decayed(v, now - at, params[k].half_life_s) < NEGLIGIBLE
                for k, (v, at) in p.counters.items()
            )
        ]
        for peer in gone:
            del self._peers[peer]
        return len(gone)

    # --- views ----------------------------------------------------------------------------
    def score(self, peer: str, now: float) -> float:
        p = self._peers.get(peer)
        if p is None:
            return 0.0
        total = 0.0
        for kind, (value, at) in p.counters.items():
            param = self.config.params[kind]
            total += param.weight * _decayed(value, now - at, param.half_life_s)
        return total

    def weight(self, peer: str, now: float) -> tuple[float, str]:
        """How much ``peer``'s update counts in an aggregate (0..1), and why.

        A newcomer's update counts ``newcomer_weight``; each of its updates that was
        useful (aggregated after the screen) adds to its (decayed) history, and the
        weight grows in proportion to 1 at ``full_weight_after`` of them.  Negative
        evidence shrinks it (to 0 at ``isolate_below``).  An isolated peer counts 0.
        """
        cfg = self.config
        p = self._peers.get(peer)
        if p is not None and self.is_isolated(peer, now):
            return 0.0, f"isolated: {p.reason}"
        history = 0.0
        bad = 0.0
        if p is not None:
            for kind, (value, at) in p.counters.items():
                param = cfg.params[kind]
                v = _decayed(value, now - at, param.half_life_s)
                if kind is Kind.USEFUL_UPDATE:
                    history = v
                elif param.weight < 0:
                    bad += param.weight * v
        grow = min(1.0, max(0.0, history) / cfg.full_weight_after)
        w = cfg.newcomer_weight + (1.0 - cfg.newcomer_weight) * grow
        w *= max(0.0, 1.0 - bad / cfg.isolate_below)
        return round(w, 4), f"history {history:.2f} update(s), evidence {bad:.2f}"

    def history(self, peer: str, now: float) -> float:
        """How many of ``peer``'s updates were useful here (decayed; 0: a newcomer)."""
        p = self._peers.get(peer)
        if p is None or Kind.USEFUL_UPDATE not in p.counters:
            return 0.0
        value, at = p.counters[Kind.USEFUL_UPDATE]
        return _decayed(value, now - at, self.config.params[Kind.USEFUL_UPDATE].half_life_s)

    def is_isolated(self, peer: str, now: float) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.isolated_until is not None and p.isolated_until > now

    def isolated(self, now: float) -> list[str]:
        return sorted(peer for peer in self._peers if self.is_isolated(peer, now))

    def status(self, now: float) -> dict[str, Any]:
        """JSON-able view for ``p2phier trust --json``."""
        peers = {}
        for peer, p in self._peers.items():
            peers[peer] = {
                "score": round(self.score(peer, now), 3),
                "isolated_until": p.isolated_until if self.is_isolated(peer, now) else None,
                "isolations": p.isolations,
                "reason": p.reason,
                "evidence": {
                    kind.value: round(
                        _decayed(v, now - at, self.config.params[kind].half_life_s), 3
                    )
                    for kind, (v, at) in sorted(p.counters.items())
                },
                "proofs": list(p.proofs),
            }
        return {"isolated": self.isolated(now), "peers": peers}

    # --- internals ---------------------------------------------------------------------------
    def _peer(self, peer: str) -> _Peer:
        p = self._peers.pop(peer, None) or _Peer()
        self._peers[peer] = p
        while len(self._peers) > self.config.max_peers:
            # forget the least recently seen peer that is not isolated right now
            for old, q in self._peers.items():
                if q.isolated_until is None and old != peer:
                    del self._peers[old]
                    break
            else:
                break
        return p

    def _isolate(self, peer: str, p: _Peer, now: float, reason: str) -> Isolate:
        span = min(self.config.isolation_s * 2**p.isolations, self.config.max_isolation_s)
        p.isolations += 1
        p.isolated_until = now + span
        p.reason = reason
        return Isolate(peer, p.isolated_until, reason)

    def isolate(self, peer: str, now: float, reason: str) -> list[TrustAction]:
        """Isolate ``peer`` on a decision taken outside this scorer (the guard's: distrusted
        by the global view AND negative evidence here); nothing if it already is.  The
        isolation lasts, expires and grows on repetition like any other."""
        if self.is_isolated(peer, now):
            return []
        return [self._isolate(peer, self._peer(peer), now, reason)]


def _decayed(value: float, elapsed: float, half_life: float) -> float:
    return float(value * 0.5 ** (max(0.0, elapsed) / half_life))
