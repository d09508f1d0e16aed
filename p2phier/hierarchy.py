"""Parent selection, children bookkeeping and discovery keys of the hierarchy (pure, no I/O).

Owns the rules of ``protocol/node.md`` §4-5:

* :func:`discovery_key`: the DHT provider key of a ``(layer, domain path)`` pair,
  and :func:`parent_search_keys`, the keys a node looks up to find parents;
* :func:`select_parent`: a node's parent is a node exactly one layer up whose
  domain path is the longest segment-wise prefix of its own; ties go to an
  *anchor* (a peer the operator named: ``trust.anchors``, or the bootstrap
  peers), then to the highest score of a pluggable score function (now
  :class:`MeasuredScore`, the round trip this node measured), then to the
  smallest peer id, so the choice is deterministic.  Nothing a candidate says
  about itself beyond its layer and domain (uptime, capabilities) decides, and a
  candidate is eligible only once this node has measured it (reachable, RTT):
  a fresh key claiming 23 h of uptime cannot capture new nodes;
* :class:`HierarchyState`: the state machine the daemon feeds with events
  (records seen or expired, heartbeats from the parent, registrations from
  children, clock ticks) and that answers with actions (select a parent,
  register with it, accept, reject or drop a child...).  It performs no I/O and
  reads no clock: ``now`` (Unix seconds) comes with every event.

A parent is kept until it is lost (record expired or changed, no heartbeat for
``parent_timeout_s``), or until a candidate with a strictly longer domain prefix
appears, or an anchor on an equally long one while the parent is not an anchor;
a better score alone never causes a switch (no flapping).  A registering child
is admitted only under ``admit_domains`` (when the operator set it) and up to
``max_children``.  Trust weighs in through two events: a peer *isolated*
(:meth:`HierarchyState.isolate`, this node's evidence) or *distrusted*
(:meth:`HierarchyState.standing_changed`, the global view: peers this node
trusts report it) is dropped as a child, refused when it registers, never
chosen as parent, and left when it is the parent (``ParentLost``).  A lost
parent is not chosen again until it restarts (new ``started_ms``) or
``lost_backoff_s`` passes.  Children are registrations with a time to live,
refreshed by the child every ``register_interval_s``; a parent's restart
loses none of them: the parent restores them from :meth:`HierarchyState.snapshot`,
and each child re-registers as soon as it sees the parent's new ``started_ms``.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from p2phier.cid import CID
from p2phier.errors import InvalidPeerIdError, NetworkError
from p2phier.identity import PeerId
from p2phier.records import (
    Layer,
    NodeRecord,
    RecordError,
    check_layer_domain,
    domain_ancestors,
    domain_depth,
    is_domain_prefix,
)

log = logging.getLogger(__name__)

DISCOVERY_DOMAIN = b"p2phier/discovery/v1"


class HierarchyError(NetworkError, ValueError):
    """A hierarchy request or saved hierarchy state is invalid."""


# --- discovery keys ------------------------------------------------------------------------


def discovery_preimage(layer: Layer, domain: str) -> bytes:
    """``b"p2phier/discovery/v1\\0" + layer + b"\\0" + domain`` (UTF-8, here all ASCII)."""
    check_layer_domain(layer, domain)
    return DISCOVERY_DOMAIN + b"\0" + layer.label.encode() + b"\0" + domain.encode()


def discovery_key(layer: Layer, domain: str) -> CID:
    """The DHT provider key under which nodes of ``(layer, domain)`` provide themselves.

    A CIDv1 (raw, sha2-256) of :func:`discovery_preimage`, so any kad-dht that
    takes CIDs as provider keys accepts it; it names no content.
    """
    return CID.raw(discovery_preimage(layer, domain))


def parent_search_keys(layer: Layer, domain: str) -> list[tuple[Layer, str, CID]]:
    """The ``(layer, domain, key)`` a node of ``(layer, domain)`` looks up to find parents.

    Longest domain first; only domains whose depth the upper layer allows.  Empty
    for the master.
    """
    check_layer_domain(layer, domain)
    above = layer.above
    if above is None:
        return []
    lo, hi = above.depth_range
    return [
        (above, d, discovery_key(above, d))
        for d in domain_ancestors(domain)
        if lo <= domain_depth(d) <= hi
    ]


# --- parent selection ----------------------------------------------------------------------

#: A score of a parent candidate at time ``now`` (higher is better).
ScoreFn = Callable[[NodeRecord, float], float]


def no_score(record: NodeRecord, now: float) -> float:
    """Every candidate equal: ties go to the smallest peer id."""
    return 0.0


@dataclass(frozen=True, slots=True)
class MeasuredScore:
    """A candidate's round-trip time as this node measured it: lower is better.

    ``score = -rtt / latency_scale_s``; a peer not measured yet scores
    ``-inf`` and :meth:`measured` is False (the state machine does not choose it).
    Self-reported figures (uptime, capabilities) play no part: a record is
    signed by its subject, which proves who says it, not that it is true.
    """

    latencies: Mapping[PeerId, float]
    latency_scale_s: float = 0.1

    def measured(self, peer: PeerId) -> bool:
        rtt = self.latencies.get(peer)
        return rtt is not None and math.isfinite(rtt) and rtt >= 0

    def __call__(self, record: NodeRecord, now: float) -> float:
        if not self.measured(record.peer_id):
            return -math.inf
        return -self.latencies[record.peer_id] / self.latency_scale_s


def is_parent_candidate(layer: Layer, domain: str, record: NodeRecord) -> bool:
    """True when ``record`` may be the parent of a ``(layer, domain)`` node."""
    return record.layer is layer.above and is_domain_prefix(record.domain, domain)


def is_child_candidate(layer: Layer, domain: str, record: NodeRecord) -> bool:
    """True when ``record`` may be a child of a ``(layer, domain)`` node."""
    return record.layer is layer.below and is_domain_prefix(domain, record.domain)


def _safe_score(score: ScoreFn, record: NodeRecord, now: float) -> float:
    value = float(score(record, now))
    return value if math.isfinite(value) else -math.inf


def select_parent(
    layer: Layer,
    domain: str,
    candidates: Iterable[NodeRecord],
    now: float,
    *,
    score: ScoreFn = no_score,
    exclude: Iterable[PeerId] = (),
    anchors: Collection[PeerId] = frozenset(),
    measured: Callable[[PeerId], bool] | None = None,
) -> NodeRecord | None:
    """The best parent for a ``(layer, domain)`` node among ``candidates``, or None.

    Eligible: exactly one layer up, domain a prefix of ``domain``, not expired at
    ``now``, not in ``exclude``, and measured (when ``measured`` is given).  Best:
    longest domain, then an anchor, then highest score, then smallest peer id.
    """
    excluded = set(exclude)
    eligible = [
        r
        for r in candidates
        if is_parent_candidate(layer, domain, r)
        and not r.is_expired(now)
        and r.peer_id not in excluded
        and (measured is None or measured(r.peer_id))
    ]
    if not eligible:
        return None
    return min(
        eligible,
        key=lambda r: (
            -domain_depth(r.domain),
            r.peer_id not in anchors,
            -_safe_score(score, r, now),
            str(r.peer_id),
        ),
    )


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SelectParent:
    """Use ``peer`` as parent: listen on its down topic, publish on its up topic."""

    peer: PeerId
    previous: PeerId | None
    reason: str


@dataclass(frozen=True, slots=True)
class RegisterWith:
    """Send our signed node record to ``peer`` as a child registration (or refresh)."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class ParentLost:
    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class WaitForParent:
    """No eligible parent is known; keep discovering (never emitted for the master)."""

    reason: str


@dataclass(frozen=True, slots=True)
class AcceptChild:
    """Answer a registration: ``peer`` is our child until ``expires`` unless it refreshes."""

    peer: PeerId
    expires: float
    new: bool


@dataclass(frozen=True, slots=True)
class RejectChild:
    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class DropChild:
    peer: PeerId
    reason: str


Action = (
    SelectParent | RegisterWith | ParentLost | WaitForParent | AcceptChild | RejectChild | DropChild
)


@dataclass(frozen=True, slots=True)
class HierarchyConfig:
    child_ttl_s: float = 90.0  # a child that does not re-register within this is dropped
    register_interval_s: float = 30.0  # how often a child re-registers
    parent_timeout_s: float = 30.0  # no heartbeat from the parent for this long: lost
    lost_backoff_s: float = 60.0  # a lost parent is not re-chosen before this (unless restarted)
    max_children: int = 1024
    #: domain subtrees children may come from (empty: any under this node's own domain)
    admit_domains: tuple[str, ...] = ()
    #: non-empty: this node takes no children at all, and tells registering nodes why
    #: (its learning plan is a leaf: it would never publish a version for them)
    closed: str = ""

    def __post_init__(self) -> None:
        for name in ("child_ttl_s", "register_interval_s", "parent_timeout_s", "lost_backoff_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e9:
                raise HierarchyError(f"{name} must be a positive number of seconds")
        if self.register_interval_s >= self.child_ttl_s:
            raise HierarchyError(
                "register_interval_s must be below child_ttl_s, or children expire between "
                "two refreshes"
            )
        if not isinstance(self.max_children, int) or self.max_children < 1:
            raise HierarchyError("max_children must be a positive integer")


# --- the state machine ---------------------------------------------------------------------


class HierarchyState:
    """One node's view of its place in the hierarchy; events in, actions out."""

    def __init__(
        self,
        local: PeerId,
        layer: Layer,
        domain: str,
        *,
        config: HierarchyConfig | None = None,
        score: ScoreFn = no_score,
        anchors: Collection[PeerId] = frozenset(),
        measured: Callable[[PeerId], bool] | None = None,
    ) -> None:
        try:
            check_layer_domain(layer, domain)
        except RecordError as exc:
            raise HierarchyError(str(exc)) from None
        self.local = local
        self.layer = layer
        self.domain = domain
        self.config = config or HierarchyConfig()
        self.score = score
        self.anchors = frozenset(anchors)
        self.measured = measured
        self._candidates: dict[PeerId, NodeRecord] = {}
        self._parent: PeerId | None = None
        self._parent_heard = 0.0
        self._next_register = 0.0
        self._waiting = False  # a WaitForParent was emitted and no parent since
        self._lost: dict[PeerId, tuple[float, int]] = {}  # peer -> (until, started_ms at loss)
        self._children: dict[PeerId, float] = {}  # peer -> registration expiry
        self._child_records: dict[PeerId, NodeRecord] = {}
        self._isolated: dict[PeerId, float] = {}  # peer -> until (trust's decision)
        self._distrusted: dict[PeerId, str] = {}  # peer -> why (the global view's verdict)
        #: the latest refused registrations, newest last (for status)
        self.refused: deque[dict[str, str]] = deque(maxlen=32)

    # views -----------------------------------------------------------------------------------
    @property
    def parent(self) -> PeerId | None:
        return self._parent

    @property
    def parent_record(self) -> NodeRecord | None:
        return self._candidates.get(self._parent) if self._parent else None

    @property
    def children(self) -> frozenset[PeerId]:
        return frozenset(self._children)

    def child_expiry(self, peer: PeerId) -> float | None:
        return self._children.get(peer)

    def candidates(self) -> list[NodeRecord]:
        """Known parent candidates (valid or not yet expired), sorted by peer id."""
        return sorted(self._candidates.values(), key=lambda r: str(r.peer_id))

    def status(self) -> dict[str, Any]:
        """JSON-able view for ``p2phier node status --json``."""
        return {
            "layer": self.layer.label,
            "domain": self.domain,
            "parent": str(self._parent) if self._parent else None,
            "children": sorted(str(p) for p in self._children),
            "parent_candidates": len(self._candidates),
        }

    # events ------------------------------------------------------------------------------------
    def record_seen(self, record: NodeRecord, now: float) -> list[Action]:
        """A record the :class:`~p2phier.records.RecordBook` accepted (new or replacing)."""
        peer = record.peer_id
        if peer == self.local:
            return []
        actions: list[Action] = []
        if peer in self._child_records:
            self._child_records[peer] = record
            if peer in self._children and not is_child_candidate(self.layer, self.domain, record):
                actions.append(self._drop_child(peer, "its record moved it out of our subtree"))
        previous = self._candidates.get(peer)
        if not is_parent_candidate(self.layer, self.domain, record) or record.is_expired(now):
            if previous is not None:
                del self._candidates[peer]
                if peer == self._parent:
                    actions += self._lose_parent(
                        now, "its new record is no longer one layer up on our domain path"
                    )
            return actions + self._maybe_select(now)
        self._candidates[peer] = record
        lost = self._lost.get(peer)
        if lost is not None and record.started_ms != lost[1]:
            del self._lost[peer]  # it restarted: worth another try
        if peer == self._parent:
            if previous is not None and previous.started_ms != record.started_ms:
                # The parent restarted: refresh our registration now, do not wait.
                self._parent_heard = now
                self._next_register = now + self.config.register_interval_s
                actions.append(RegisterWith(peer))
            return actions
        return actions + self._maybe_select(now)

    def record_expired(self, peer: PeerId, now: float) -> list[Action]:
        """A record left the book (expired or removed)."""
        self._child_records.pop(peer, None)
        if self._candidates.pop(peer, None) is None:
            return []
        if peer == self._parent:
            return self._lose_parent(now, "its node record expired") + self._maybe_select(now)
        return []

    def isolate(self, peer: PeerId, until: float, now: float, reason: str) -> list[Action]:
        """``peer`` is isolated until ``until`` (trust): drop it as a child, leave it as a
        parent, and do not choose it or accept its registration before then."""
        self._isolated[peer] = until
        actions: list[Action] = []
        if peer in self._children:
            actions.append(self._drop_child(peer, f"isolated: {reason}"))
        if peer == self._parent:
            actions += self._lose_parent(now, f"isolated: {reason}")
            actions += self._maybe_select(now)
        return actions

    def standing_changed(self, distrusted: Mapping[PeerId, str], now: float) -> list[Action]:
        """The global view's distrusted peers now (peer -> why), replacing the last set:
        each is dropped as a child and refused as one, never chosen as parent, and left
        when it is the parent; a peer no longer distrusted may be chosen again."""
        self._distrusted = dict(distrusted)
        actions: list[Action] = []
        for peer in sorted(self._children.keys() & self._distrusted.keys(), key=str):
            actions.append(self._drop_child(peer, f"distrusted: {self._distrusted[peer]}"))
        if self._parent is not None and self._parent in self._distrusted:
            why = self._distrusted[self._parent]
            actions += self._lose_parent(now, f"parent distrusted: {why}")
        return actions + self._maybe_select(now)

    def release(self, peer: PeerId, now: float) -> list[Action]:
        """``peer``'s isolation ended: it may be chosen or register again."""
        if self._isolated.pop(peer, None) is None:
            return []
        return self._maybe_select(now)

    def candidate_measured(self, peer: PeerId, now: float) -> list[Action]:
        """This node measured ``peer`` (it answered; its RTT is known): it may be chosen."""
        if peer not in self._candidates:
            return []
        return self._maybe_select(now)

    def parent_heard(self, peer: PeerId, now: float) -> list[Action]:
        """Any sign of life from ``peer`` (ping reply, registration ack, gossip heartbeat)."""
        if peer == self._parent:
            self._parent_heard = max(self._parent_heard, now)
        return []

    def registration_failed(self, peer: PeerId, now: float, reason: str) -> list[Action]:
        """Our parent refused or did not answer a registration: choose another."""
        if peer != self._parent:
            return []
        return self._lose_parent(now, f"registration failed: {reason}") + self._maybe_select(now)

    def child_registered(self, record: NodeRecord, now: float) -> list[Action]:
        """A registration (or refresh) carrying the child's verified record.

        The daemon checks that the stream's remote peer is ``record.peer_id``.
        """
        actions = self._admit(record, now)
        for action in actions:
            if isinstance(action, RejectChild):
                self.refused.append({"peer": str(action.peer), "reason": action.reason})
        return actions

    def _admit(self, record: NodeRecord, now: float) -> list[Action]:
        peer = record.peer_id
        if peer == self.local:
            return [RejectChild(peer, "a node cannot be its own child")]
        if self._isolated.get(peer, -math.inf) > now:
            return [RejectChild(peer, "this node has isolated you (misbehaviour)")]
        if peer in self._distrusted:
            return [
                RejectChild(
                    peer,
                    "distrusted: peers this node trusts report your misbehaviour "
                    f"({self._distrusted[peer]})",
                )
            ]
        if self.config.closed:
            return [RejectChild(peer, self.config.closed)]
        if record.is_expired(now):
            return [RejectChild(peer, "the registration carries an expired record")]
        if not is_child_candidate(self.layer, self.domain, record):
            below = self.layer.below
            want = (
                f"a {below.label} node under {self.domain or 'the root'!r}"
                if below
                else "nothing: devices have no children"
            )
            return [
                RejectChild(
                    peer,
                    f"a {record.layer.label} node on {record.domain!r} cannot be our child "
                    f"(we take {want})",
                )
            ]
        admit = self.config.admit_domains
        if admit and not any(is_domain_prefix(d, record.domain) for d in admit):
            return [
                RejectChild(
                    peer,
                    f"this node admits children from {', '.join(repr(d) for d in admit)} only, "
                    f"not {record.domain!r}",
                )
            ]
        new = peer not in self._children
        if new and len(self._children) >= self.config.max_children:
            return [RejectChild(peer, f"this node has {self.config.max_children} children")]
        expires = now + self.config.child_ttl_s
        self._children[peer] = expires
        self._child_records[peer] = record
        return [AcceptChild(peer, expires, new)]

    def child_left(self, peer: PeerId, now: float) -> list[Action]:
        """A child said goodbye (or the daemon decided to drop it)."""
        if peer not in self._children:
            return []
        return [self._drop_child(peer, "left")]

    def tick(self, now: float) -> list[Action]:
        """Timers: parent heartbeat, re-registration, child expiry, candidate expiry."""
        actions: list[Action] = []
        for peer, until in sorted(self._children.items(), key=lambda kv: str(kv[0])):
            if until <= now:
                actions.append(self._drop_child(peer, "registration expired"))
        for peer in [p for p, r in self._candidates.items() if r.is_expired(now)]:
            actions += self.record_expired(peer, now)
        for peer in [p for p, (until, _) in self._lost.items() if until <= now]:
            del self._lost[peer]
        if self._parent is not None:
            silent = now - self._parent_heard
            if silent > self.config.parent_timeout_s:
                actions += self._lose_parent(now, f"no sign of life for {silent:.0f} s")
            elif now >= self._next_register:
                self._next_register = now + self.config.register_interval_s
                actions.append(RegisterWith(self._parent))
        return actions + self._maybe_select(now)

    # persistence ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state that must survive a restart: the children and their expiry."""
        return {
            "version": 1,
            "children": {
                str(p): until
                for p, until in sorted(self._children.items(), key=lambda kv: str(kv[0]))
            },
        }

    def restore(self, snapshot: Mapping[str, Any], now: float) -> None:
        """Re-adopt the children of :meth:`snapshot` that have not expired at ``now``."""
        if not isinstance(snapshot, Mapping) or snapshot.get("version") != 1:
            raise HierarchyError("saved hierarchy state has an unknown version")
        children = snapshot.get("children")
        if not isinstance(children, Mapping) or len(children) > self.config.max_children:
            raise HierarchyError("saved hierarchy state has no valid children table")
        restored: dict[PeerId, float] = {}
        for text, until in children.items():
            try:
                peer = PeerId.parse(text)
            except InvalidPeerIdError as exc:
                raise HierarchyError(f"saved hierarchy state names a bad peer: {exc}") from None
            if isinstance(until, bool) or not isinstance(until, int | float):
                raise HierarchyError(f"saved expiry of child {text} is not a number")
            if not math.isfinite(until):
                raise HierarchyError(f"saved expiry of child {text} is not finite")
            # Never trust a saved expiry beyond one TTL from now (a clock may have jumped).
            until = min(float(until), now + self.config.child_ttl_s)
            if until > now:
                restored[peer] = until
        self._children.update(restored)

    # internals -------------------------------------------------------------------------------
    def _drop_child(self, peer: PeerId, reason: str) -> DropChild:
        self._children.pop(peer, None)
        self._child_records.pop(peer, None)
        return DropChild(peer, reason)

    def _lose_parent(self, now: float, reason: str) -> list[Action]:
        peer = self._parent
        if peer is None:
            return []
        record = self._candidates.get(peer)
        self._lost[peer] = (now + self.config.lost_backoff_s, record.started_ms if record else -1)
        self._parent = None
        self._waiting = False
        log.info("parent %s lost: %s", peer, reason)
        return [ParentLost(peer, reason)]

    def _maybe_select(self, now: float) -> list[Action]:
        if self.layer.above is None:
            return []
        best = select_parent(
            self.layer,
            self.domain,
            self._candidates.values(),
            now,
            score=self.score,
            exclude=(
                set(self._lost)
                | {p for p, until in self._isolated.items() if until > now}
                | set(self._distrusted)
            ),
            anchors=self.anchors,
            measured=self.measured,
        )
        current = self._parent
        if best is None:
            if current is None and not self._waiting:
                self._waiting = True
                what = f"no {self.layer.above.label} node on our domain path"
                if self._candidates and self.measured is not None:
                    what += " measured"  # candidates are known, not reached yet
                return [WaitForParent(f"{what} yet")]
            return []
        if current is not None:
            cur = self._candidates.get(current)
            if cur is not None and domain_depth(best.domain) < domain_depth(cur.domain):
                return []
            if cur is not None and domain_depth(best.domain) == domain_depth(cur.domain):
                if current in self.anchors or best.peer_id not in self.anchors:
                    return []  # keep the parent we have: a better score alone is no reason
                reason = "an anchor on an equally long domain prefix became reachable"
            else:
                reason = "a parent with a longer domain prefix appeared"
        else:
            reason = "best eligible parent"
        self._parent = best.peer_id
        self._parent_heard = now  # grace: the first heartbeat has parent_timeout_s to arrive
        self._next_register = now + self.config.register_interval_s
        self._waiting = False
        log.info("parent %s selected (%s)", best.peer_id, reason)
        return [SelectParent(best.peer_id, current, reason), RegisterWith(best.peer_id)]
