"""Bounded resources: the node's own pins, periodic garbage collection, per-peer state pruned.

Owns :class:`PinLedger` (which pins this node made itself, and which artifacts it
holds), :class:`Housekeeping` (the periodic pass the daemon's maintenance loop
drives) and :func:`prune_peer_state` (what grows with every peer ever seen).

**Whose pin is it.**  The daemon's store tells every pin made through it
(:attr:`~p2phier.store.ContentStore.pin_observer`) and whether the CID had a pin
of its own before.  A CID pinned first by this node is *owned*; one pinned
before (by the operator's ``p2phier store pin``, another process, or earlier by
anyone) never is, and a pin made on the operator's behalf (the control socket's
``publish`` and ``fetch``: :func:`operator_pins`) disowns it.  Only owned pins
are ever unpinned.  The ledger is saved with the node's state.

**The pass**, every ``retention.gc_interval_s`` (0: never; deferred while a
fetch runs, whose blocks are unpinned until it completes; at most one interval):
:func:`~p2phier.node.retention.retain` decides over what the node holds, what it
owns and what is needed (the head, the learner's ``retained()``); the owned files
it names are unpinned (:meth:`~p2phier.store.ContentStore.release_pins`: never
one pinned in the last :data:`PIN_GRACE_S`, which an artifact being accepted or
published may be before it is listed), then ``store.gc()`` runs, both in a worker
thread.  A failure is logged and retried at the next pass; it never stops the node.

**Per-peer state**, every :data:`PRUNE_EVERY_S`: Bitswap ledgers of peers idle for
:data:`IDLE_S` (their byte totals kept in an aggregate), request buckets and rate
budgets that have refilled (a full bucket is what a new one would be), trust
records whose evidence has decayed to nothing (never one isolated, or ever
isolated), ping bookkeeping of peers that are no parent candidates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from p2phier.announce import Announcement
from p2phier.cid import CID
from p2phier.errors import P2PHierError
from p2phier.node.retention import DEFAULT_KEEP, Held, Verdict, retain
from p2phier.records import now_ms
from p2phier.store import ContentStore, block_key

if TYPE_CHECKING:
    from p2phier.node.daemon import NodeDaemon

logger = logging.getLogger(__name__)

#: a peer's per-peer state (Bitswap ledger, request bucket) and an author's stream of
#: artifacts outlive the peer's last activity this long
IDLE_S = 3600.0
#: a CID pinned this recently is never unpinned: an artifact being accepted or published is
#: pinned a moment (milliseconds) before it is listed as held; what takes longer, a tier bundle
#: fetched and imported, the learner names in ``retained()`` from the start
PIN_GRACE_S = 10.0
#: seconds between prunes of per-peer state
PRUNE_EVERY_S = 60.0
#: artifacts the ledger lists (beyond: the oldest is forgotten, its files stay pinned)
MAX_HELD = 4096
#: CIDs the ledger lists as owned (beyond: the oldest is disowned, so stays pinned)
MAX_OWNED = 16 * MAX_HELD

_OPERATOR: ContextVar[bool] = ContextVar("p2phier_operator_pins", default=False)


@contextmanager
def operator_pins() -> Iterator[None]:
    """Pins made inside (by this task, tasks it starts, threads it runs) are the operator's:
    never owned by the node, and disowned if the node had owned them."""
    token = _OPERATOR.set(True)
    try:
        yield
    finally:
        _OPERATOR.reset(token)


class PinLedger:
    """The CIDs this node pinned first, and the artifacts it holds (thread-safe: the store's
    pin observer runs in worker threads)."""

    def __init__(
        self,
        *,
        on_change: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._owned: OrderedDict[str, None] = OrderedDict()
        self._held: OrderedDict[str, Held] = OrderedDict()
        self._touched: dict[str, float] = {}  # CID -> when last pinned (memory only)
        self._on_change = on_change
        self._monotonic = monotonic

    # --- input ---------------------------------------------------------------------------
    def observe(self, cid: CID, new: bool) -> None:
        """The store's pin observer: a pin made through the node's store."""
        key = str(block_key(cid))
        now = self._monotonic()
        with self._lock:
            self._touched[key] = now
            if len(self._touched) > 4 * 1024:
                self._touched = {k: t for k, t in self._touched.items() if now - t < PIN_GRACE_S}
            if _OPERATOR.get():
                self._owned.pop(key, None)
            elif new:
                self._owned[key] = None
                while len(self._owned) > MAX_OWNED:
                    self._owned.popitem(last=False)
        self._on_change()

    def hold(self, held: Held) -> None:
        """An artifact the node accepted or published (its files pinned already)."""
        with self._lock:
            self._held.pop(held.cid, None)
            self._held[held.cid] = held
            while len(self._held) > MAX_HELD:
                self._held.popitem(last=False)
        self._on_change()

    # --- views ---------------------------------------------------------------------------
    def held(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())

    def owned(self) -> set[str]:
        with self._lock:
            return set(self._owned)

    def recently_pinned(self, cid: CID) -> bool:
        """Whether ``cid`` was pinned within :data:`PIN_GRACE_S`."""
        with self._lock:
            at = self._touched.get(str(block_key(cid)))
        return at is not None and self._monotonic() - at < PIN_GRACE_S

    # --- after a pass ----------------------------------------------------------------------
    def settle(self, verdict: Verdict, unpinned: Iterable[str], pinned: set[str]) -> int:
        """Forget what a pass let go: the ``unpinned`` CIDs, owned ones no longer ``pinned``
        (and not pinned lately: the operator unpinned them), and each artifact the verdict
        dropped once none of the files it was to unpin is still owned (one skipped as
        pinned lately is tried again next pass); return how many artifacts were forgotten."""
        now = self._monotonic()
        with self._lock:
            for key in unpinned:
                self._owned.pop(key, None)
            for key in [k for k in self._owned if k not in pinned]:
                if now - self._touched.get(key, -math.inf) >= PIN_GRACE_S:
                    del self._owned[key]
            left = verdict.unpin & self._owned.keys()
            forgotten = 0
            for cid in verdict.dropped:
                h = self._held.get(cid)
                if h is not None and not (h.files | {cid}) & left:
                    del self._held[cid]
                    forgotten += 1
        self._on_change()
        return forgotten

    # --- persistence -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able, for the node's saved state."""
        with self._lock:
            return {
                "owned": list(self._owned),
                "held": [
                    [h.cid, h.author, h.topic, h.round, h.at_ms, sorted(h.files)]
                    for h in self._held.values()
                ],
            }

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Adopt a :meth:`snapshot` (ValueError, TypeError or a P2PHierError if malformed)."""
        owned = [str(block_key(_text(c))) for c in doc.get("owned", [])]
        held = []
        for cid, author, topic, round_, at_ms, files in doc.get("held", []):
            held.append(
                Held(
                    str(block_key(_text(cid))),
                    _text(author),
                    _text(topic),
                    _int(round_),
                    _int(at_ms),
                    frozenset(str(block_key(_text(f))) for f in files),
                )
            )
        with self._lock:
            for key in owned[-MAX_OWNED:]:
                self._owned[key] = None
            for h in held[-MAX_HELD:]:
                self._held[h.cid] = h


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, not {type(value).__name__}")
    return value


class Housekeeping:
    """The periodic pass (see the module docstring); :meth:`tick` from the maintenance loop."""

    def __init__(
        self,
        store: ContentStore,
        *,
        local: str,
        interval_s: float,
        keep: int = DEFAULT_KEEP,
        needed: Callable[[], Iterable[str]],
        live_authors: Callable[[], Iterable[str]],
        busy: Callable[[], bool] = lambda: False,
        prune: Callable[[], dict[str, int]] = dict,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.local = local
        self.interval_s = interval_s
        self.keep = keep
        self.needed = needed
        self.live_authors = live_authors
        self.busy = busy
        self.prune = prune
        self.clock = clock
        self.monotonic = monotonic
        self.ledger = PinLedger(on_change=on_change, monotonic=monotonic)
        store.pin_observer = self.ledger.observe
        start = monotonic()
        self._next_gc = start + interval_s
        self._next_prune = start + PRUNE_EVERY_S
        #: the last pass's figures (or its error), for status
        self.last: dict[str, Any] | None = None
        self.pruned: dict[str, int] = {}  # per-peer state forgotten so far, by kind
        self.blocks_removed = 0

    # --- what the node holds -------------------------------------------------------------
    def accepted(self, ann: Announcement, files: Iterable[CID]) -> None:
        """The intake pinned an accepted artifact's ``files``."""
        self._hold(str(ann.cid), str(ann.author), ann.topic, ann.round, files)

    def published(self, cid: CID, topic: str, round_: int, files: Iterable[CID]) -> None:
        """The node pinned the ``files`` of an artifact it publishes on ``topic``."""
        self._hold(str(cid), self.local, topic, round_, files)

    def _hold(self, cid: str, author: str, topic: str, round_: int, files: Iterable[CID]) -> None:
        key = str(block_key(cid))
        names = frozenset(str(block_key(f)) for f in files) | {key}
        self.ledger.hold(Held(key, author, topic, round_, now_ms(self.clock()), names))

    # --- the loop ---------------------------------------------------------------------------
    async def tick(self) -> None:
        """Prune per-peer state and collect garbage when each is due."""
        now = self.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            for kind, n in self.prune().items():
                if n:
                    self.pruned[kind] = self.pruned.get(kind, 0) + n
        if self.interval_s <= 0 or now < self._next_gc:
            return
        if self.busy() and now < self._next_gc + self.interval_s:
            return  # fetches in flight: their unpinned blocks would go; a little later
        self._next_gc = now + self.interval_s
        await self.collect()

    async def collect(self) -> dict[str, Any]:
        """One pass: the retention policy, its unpins, then GC; the figures (also ``last``)."""
        began = self.monotonic()
        try:
            needed = list(self.needed())
        except Exception as exc:  # the learner's view failed: collect nothing, never stop
            logger.warning("garbage collection skipped: what is needed is unknown (%s)", exc,
                           exc_info=True)  # fmt: skip
            self.last = {
                "error": f"what is needed is unknown: {exc}",
                "at_ms": now_ms(self.clock()),
            }
            return self.last
        try:
            verdict = retain(
                self.ledger.held(),
                owned=self.ledger.owned(),
                needed={str(block_key(c)) for c in needed},
                live_authors={self.local, *self.live_authors()},
                keep=self.keep,
                now_ms=now_ms(self.clock()),
                idle_ms=int(IDLE_S * 1000),
            )
            unpinned = await trio.to_thread.run_sync(self._unpin, sorted(verdict.unpin))
            pinned = await trio.to_thread.run_sync(self.store.pins)
            forgotten = self.ledger.settle(verdict, unpinned, {str(c) for c in pinned})
            removed = await trio.to_thread.run_sync(self.store.gc)
        except (P2PHierError, OSError, ValueError) as exc:
            logger.warning("garbage collection failed (tried again in %.0f s): %s",
                           self.interval_s, exc)  # fmt: skip
            self.last = {"error": str(exc), "at_ms": now_ms(self.clock())}
            return self.last
        self.blocks_removed += len(removed)
        self.last = {
            "at_ms": now_ms(self.clock()),
            "kept": len(verdict.kept),
            "dropped": forgotten,
            "unpinned": len(unpinned),
            "blocks_removed": len(removed),
            "pins": len(pinned),
            "took_s": round(self.monotonic() - began, 3),
        }
        if unpinned or removed:
            logger.info("gc: %d artifact(s) kept, %d let go, %d pin(s) released, "
                        "%d block(s) removed", len(verdict.kept), forgotten, len(unpinned),
                        len(removed))  # fmt: skip
        return self.last

    def _unpin(self, cids: list[str]) -> list[str]:
        released = self.store.release_pins(cids, keep=self.ledger.recently_pinned)
        return [str(c) for c in released]

    def status(self) -> dict[str, Any]:
        return {
            "gc_interval_s": self.interval_s,
            "keep_versions": self.keep,
            "held": len(self.ledger.held()),
            "owned_pins": len(self.ledger.owned()),
            "blocks_removed": self.blocks_removed,
            "last_gc": self.last,
            "pruned": dict(self.pruned),
        }


# --- the daemon's wiring ------------------------------------------------------------------------
def housekeeping_for(node: NodeDaemon, on_change: Callable[[], None]) -> Housekeeping:
    """The node's housekeeping, wired to its parts (built once the learner exists);
    ``on_change``: its ledger changed (the node's state is to be saved)."""
    cfg = node.config
    return Housekeeping(
        node.store,
        local=str(node.peer),
        interval_s=cfg.retention_gc_interval_s,
        keep=cfg.retention_keep_versions,
        needed=lambda: needed_by(node),
        live_authors=lambda: _members(node),
        # any running fetch (an update, a version, a tier bundle): its blocks are unpinned
        busy=lambda: bool(node.intake.fetching or node.intake.queued or node.bitswap.fetching),
        prune=lambda: prune_peer_state(node),
        clock=node.clock,
        on_change=on_change,
    )


def _members(node: NodeDaemon) -> list[str]:
    """The node's parent and children: their streams stay live."""
    parent = node.hierarchy.parent
    return [str(p) for p in (*node.hierarchy.children, *([parent] if parent else []))]


def needed_by(node: NodeDaemon) -> set[str]:
    """CIDs the node still needs whatever the policy says: its head and what the learner
    declares (``Learner.retained()``)."""
    out = {str(node.head)} if node.head is not None else set()
    retained = getattr(node.learner, "retained", None)  # a learner without it keeps nothing
    if retained is not None:
        out.update(str(c) for c in retained())
    return out


def prune_peer_state(node: NodeDaemon) -> dict[str, int]:
    """Forget per-peer state that lost its use (see the module docstring); counts by kind."""
    now = node.clock()
    return {
        "bitswap_peers": node.bitswap.prune_peers(IDLE_S),
        "trust_peers": node.guard.prune(),
        "budgets": node.intake.budget.prune(now)
        + node.records.record_budget.prune(now)
        + node.records.registration_budget.prune(now),
        "measured": node.meter.prune(now),
    }


__all__ = [
    "IDLE_S",
    "PIN_GRACE_S",
    "PRUNE_EVERY_S",
    "Housekeeping",
    "PinLedger",
    "housekeeping_for",
    "needed_by",
    "operator_pins",
    "prune_peer_state",
]
