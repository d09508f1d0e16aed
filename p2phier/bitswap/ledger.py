"""Per-peer exchange accounting and the token buckets that rate-limit Bitswap.

Owns :class:`Ledger` (what one peer and this node have exchanged: bytes and
blocks each way, wants dropped, misbehaviour), :class:`LedgerBook` (the ledgers
of all peers, shared by the server :mod:`engine` and the client
:mod:`session`; idle peers' ledgers are forgotten into one aggregate, so the
totals survive), :class:`Misbehaviour` (the event recorded when a peer breaks
the protocol) and :class:`TokenBucket` (a clock-free rate limiter).

This is Bitswap's ledger in the sense of the original IPFS paper: the debt
ratio ``bytes_sent / (bytes_received + 1)`` is what a server can use to favour
peers that give back.  Nothing here reads a clock: every time-dependent call
takes ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container
from dataclasses import dataclass, field, fields

from p2phier.errors import UsageError

logger = logging.getLogger(__name__)

#: Misbehaviour reasons (stable strings: tests and trust scoring match on them).
WRONG_BLOCK = "wrong-block"  # bytes that hash to nothing we asked this peer for
MALFORMED = "malformed-message"  # a message that did not decode
OVER_LIMIT = "over-limit"  # more wants than allowed, or far over the request rate


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """A peer broke the protocol; ``detail`` says how, for logs and evidence."""

    peer: str
    reason: str
    detail: str
    at: float


@dataclass(slots=True)
class Ledger:
    """What this node and one peer have exchanged (mutable, owned by a LedgerBook)."""

    peer: str
    bytes_sent: int = 0
    #: blocks (and their bytes) received that we had asked this peer for, each once,
    #: duplicates included; a block nobody asked for earns the sender no credit
    bytes_received: int = 0
    blocks_sent: int = 0
    blocks_received: int = 0
    #: of those, blocks we already had or no longer wanted (waste, not misbehaviour)
    duplicate_blocks: int = 0
    #: want entries refused because the peer already had max_wants_per_peer held
    wants_dropped: int = 0
    #: want-blocks this peer failed to answer before their deadline
    timeouts: int = 0
    misbehaviour: int = 0
    last_seen: float = 0.0

    @property
    def debt_ratio(self) -> float:
        """Bitswap's debt ratio: how much more we gave than we got."""
        return self.bytes_sent / (self.bytes_received + 1)


#: the counters a forgotten peer's ledger adds to :attr:`LedgerBook.forgotten`
_COUNTERS = tuple(f.name for f in fields(Ledger) if f.name not in ("peer", "last_seen"))


@dataclass(slots=True)
class LedgerBook:
    """The ledgers of the peers this node has exchanged with.

    ``on_misbehaviour`` (optional) is called for every recorded
    :class:`Misbehaviour`; the node wires it to peer scoring.  A peer's ledger
    can be forgotten (:meth:`forget`, :meth:`prune`); its counters go into
    :attr:`forgotten`, so :meth:`totals` still counts every byte ever exchanged.
    """

    on_misbehaviour: Callable[[Misbehaviour], None] | None = None
    _ledgers: dict[str, Ledger] = field(default_factory=dict)
    #: the summed counters of every forgotten peer
    forgotten: Ledger = field(default_factory=lambda: Ledger("(forgotten peers)"))
    #: bytes of the blocks received for this node's own fetches, by the purpose each
    #: fetch named (``updates``, ``versions``, ``tiers``, ...); each block counted once,
    #: for the first fetch that took it.  Never pruned: one counter per purpose.
    received_for: dict[str, int] = field(default_factory=dict)

    def count_received_for(self, purpose: str, nbytes: int) -> None:
        self.received_for[purpose] = self.received_for.get(purpose, 0) + nbytes

    def get(self, peer: str) -> Ledger:
        ledger = self._ledgers.get(peer)
        if ledger is None:
            ledger = self._ledgers[peer] = Ledger(peer)
        return ledger

    def __contains__(self, peer: object) -> bool:
        return peer in self._ledgers

    def peers(self) -> list[str]:
        return list(self._ledgers)

    def forget(self, peer: str) -> None:
        """Drop ``peer``'s ledger; its counters stay in :attr:`forgotten`."""
        ledger = self._ledgers.pop(peer, None)
        if ledger is not None:
            for name in _COUNTERS:
                setattr(self.forgotten, name, getattr(self.forgotten, name) + getattr(ledger, name))

    def prune(self, now: float, idle_s: float, keep: Container[str] = ()) -> list[str]:
        """Forget the peers not in ``keep`` whose ledger saw nothing for ``idle_s`` seconds
        (at ``now``); return them."""
        idle = [
            p for p, x in self._ledgers.items() if p not in keep and now - x.last_seen >= idle_s
        ]
        for peer in idle:
            self.forget(peer)
        return idle

    def totals(self) -> Ledger:
        """Every counter summed over all peers, forgotten ones included."""
        out = Ledger("(all peers)")
        for ledger in (self.forgotten, *self._ledgers.values()):
            for name in _COUNTERS:
                setattr(out, name, getattr(out, name) + getattr(ledger, name))
        return out

    def record_misbehaviour(self, peer: str, reason: str, detail: str, now: float) -> Misbehaviour:
        event = Misbehaviour(peer, reason, detail, now)
        self.get(peer).misbehaviour += 1
        logger.info("bitswap peer %s misbehaved (%s): %s", peer, reason, detail)
        if self.on_misbehaviour is not None:
            self.on_misbehaviour(event)
        return event


class TokenBucket:
    """A token bucket: ``rate`` tokens per second up to ``burst``, clock passed in.

    Starts full.  ``now`` must not go backwards (a smaller value is treated as
    no time passing, so a clock hiccup can never mint tokens).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise UsageError(f"a rate limit needs a positive rate and burst (got {rate}, {burst})")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def try_take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if the bucket holds that many (amounts above
        ``burst`` are admitted when the bucket is full, so they are slow, never stuck)."""
        self._refill(now)
        need = min(amount, self.burst)
        if self._tokens + 1e-9 < need:
            return False
        self._tokens -= amount
        return True

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` tokens unconditionally; the bucket may go into debt, which
        :meth:`ready_at` (``amount=0``) says when it is paid off."""
        self._refill(now)
        self._tokens -= amount

    def take_up_to(self, amount: int, now: float) -> int:
        """Take as many whole tokens as available, at most ``amount``; return how many."""
        self._refill(now)
        granted = max(0, min(amount, int(self._tokens + 1e-9)))
        self._tokens -= granted
        return granted

    def ready_at(self, amount: float, now: float) -> float:
        """The earliest time at which ``try_take(amount)`` can succeed."""
        self._refill(now)
        need = min(amount, self.burst)
        if self._tokens + 1e-9 >= need:
            return now
        return now + (need - self._tokens) / self.rate
