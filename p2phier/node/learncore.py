"""The learning worker's decisions and saved state, without I/O: what a node does next.

Owns :class:`LearnerState` (the typed, format-versioned ``learn/state.json``) and
:class:`LearnerCore`, the clock-free policy that the trio driver
(:mod:`p2phier.node.learner`) asks what to do: rebase on a new parent version, run
a requested round, or wait, and why.  Failed steps are retried with exponential
backoff (per kind of step, reset by a success) instead of being recorded as done.
No trio, no torch, no files: the driver reads and writes; every decision is
unit-tested with stand-ins (``tests/node/test_learncore.py``).  Who a parent
waits for inside a round is :mod:`p2phier.node.collect`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from p2phier.errors import P2PHierError

#: the format of ``learn/state.json`` this code writes (files without one are format 0:
#: the same fields, written before the format was versioned; format 1 lacks ``sent``,
#: format 2 ``local.since``, format 3 ``domain_on``)
STATE_FORMAT = 4
#: a round's record and the applied-versions list are kept for this many entries
MAX_ROUNDS_KEPT = 256
MAX_APPLIED_KEPT = 32
#: first wait after a failed step, doubling per failure up to the cap
BACKOFF_MIN_S = 5.0
BACKOFF_MAX_S = 300.0


class StateError(P2PHierError, ValueError):
    """A saved learner state that cannot be used (its reason names the field)."""


@dataclass
class VersionRef:
    """A published or applied version: its CID, the adapter dir, and its round."""

    cid: str
    dir: str
    round: int


@dataclass
class LocalRef:
    """The node's own adapter (``dir``), trained on top of the model at ``on``; ``since``:
    the adapter as it was at the last rebase that kept it (what the node has learned since
    is ``dir - since``; empty: everything in ``dir`` is new)."""

    dir: str
    on: str
    since: str = ""


@dataclass
class SentRef:
    """The last artifact of one outgoing stream (``up``: updates to the parent; ``down``:
    versions to the children): its CID, who it went to, and how many deltas lie between it
    and its keyframe (0: it is a full adapter)."""

    cid: str
    to: str
    chain: int


#: the receiver of the ``down`` stream: whoever is this node's child (a newcomer lacking the
#: previous version fetches the lineage)
CHILDREN = "children"


@dataclass
class LearnerState:
    """Everything the learner keeps across restarts (see :mod:`p2phier.node.learner`)."""

    tier: dict[str, Any] | None = None  # this node's tier facts (cycle.check_tier/build_tier)
    tiers: dict[str, str] = field(default_factory=dict)  # bundle CID -> tier dir on disk
    base: VersionRef | None = None  # the parent's latest version, applied
    flat: VersionRef | None = None  # this node's complete model (nodes with children)
    published: dict[str, str] = field(default_factory=dict)  # CID -> dir of own versions
    local: LocalRef | None = None  # the node's own adapter (nodes that train)
    consumed: int = 0  # data arrivals trained on, up to this round
    round: int = 0  # the last round done
    rounds: dict[str, dict[str, Any]] = field(default_factory=dict)  # round -> its record
    seq: int = 0  # step directories numbered so far
    applied: list[dict[str, Any]] = field(default_factory=list)  # parent versions applied
    accuracy_own: float | None = None
    sent: dict[str, SentRef] = field(default_factory=dict)  # stream -> its last artifact
    #: the parent's version (in this tier) that a parent's kept domain part lies on: its
    #: flat minus this is its own domain's part (``keep_domain``); "": none kept
    domain_on: str = ""

    def record_round(self, r: int, rec: dict[str, Any]) -> None:
        self.rounds[str(r)] = rec
        for old in sorted(self.rounds, key=int)[:-MAX_ROUNDS_KEPT]:
            del self.rounds[old]

    def record_applied(self, entry: dict[str, Any]) -> None:
        self.applied = [*self.applied[-(MAX_APPLIED_KEPT - 1) :], entry]

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: object) -> LearnerState:
        """Parse a saved state; :class:`StateError` names what is wrong."""
        if not isinstance(data, Mapping):
            raise StateError("the learner state is not a JSON object")
        fmt = data.get("format", 0)
        if fmt not in range(STATE_FORMAT + 1) or isinstance(fmt, bool):
            raise StateError(f"learner state format {fmt!r}: this node reads 0..{STATE_FORMAT}")
        return cls(
            tier=_opt_obj(data, "tier"),
            tiers=_str_map(data, "tiers"),
            base=_ref(data, "base"),
            flat=_ref(data, "flat"),
            published=_str_map(data, "published"),
            local=_local(data),
            consumed=_count(data, "consumed"),
            round=_count(data, "round"),
            rounds={str(k): dict(v) for k, v in _obj_map(data, "rounds").items()},
            seq=_count(data, "seq"),
            applied=_obj_list(data, "applied"),
            accuracy_own=_opt_float(data, "accuracy_own"),
            sent=_sent(data),
            domain_on=_str(data, "domain_on"),
        )


def _opt_obj(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise StateError(f"learner state field {key!r} must be an object or null")
    return dict(value)


def _str_map(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StateError(f"learner state field {key!r} must map strings to strings")
    return dict(value)


def _obj_map(data: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise StateError(f"learner state field {key!r} must map keys to objects")
    return value


def _obj_list(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise StateError(f"learner state field {key!r} must be a list of objects")
    return [dict(v) for v in value]


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"learner state field {key!r} must be a whole number >= 0")
    return value


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"learner state field {key!r} must be a finite number or null")
    return float(value)


def _ref(data: Mapping[str, Any], key: str) -> VersionRef | None:
    value = _opt_obj(data, key)
    if value is None:
        return None
    cid, dir_, round_ = value.get("cid"), value.get("dir"), value.get("round", 0)
    if not isinstance(cid, str) or not isinstance(dir_, str):
        raise StateError(f"learner state field {key!r} needs string 'cid' and 'dir'")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise StateError(f"learner state field {key!r}.round must be a whole number >= 0")
    return VersionRef(cid, dir_, round_)


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise StateError(f"learner state field {key!r} must be a string")
    return value


def _local(data: Mapping[str, Any]) -> LocalRef | None:
    value = _opt_obj(data, "local")
    if value is None:
        return None
    dir_, on, since = value.get("dir"), value.get("on"), value.get("since", "")
    if not isinstance(dir_, str) or not isinstance(on, str) or not isinstance(since, str):
        raise StateError("learner state field 'local' needs string 'dir', 'on' and 'since'")
    return LocalRef(dir_, on, since)


def _sent(data: Mapping[str, Any]) -> dict[str, SentRef]:
    out: dict[str, SentRef] = {}
    for stream, value in _obj_map(data, "sent").items():
        cid, to, chain = value.get("cid"), value.get("to"), value.get("chain")
        if stream not in STREAMS or not isinstance(cid, str) or not isinstance(to, str):
            raise StateError(f"learner state field 'sent'.{stream} needs a stream of {STREAMS} "
                             "and string 'cid' and 'to'")  # fmt: skip
        if isinstance(chain, bool) or not isinstance(chain, int) or chain < 0:
            raise StateError(f"learner state field 'sent'.{stream}.chain must be a whole number")
        out[stream] = SentRef(cid, to, chain)
    return out


#: the outgoing streams: updates to the parent, versions to the children
STREAMS = ("up", "down")


@dataclass(frozen=True)
class WireChoice:
    """How the next artifact of a stream is packed: as a delta on ``parent`` (a CID), or
    full (``parent`` None), and why."""

    parent: str | None
    reason: str


def keyframe_encoding(wire_encoding: str) -> str:
    """How a stream's full adapters (keyframes) are encoded under the plan's
    ``wire_encoding``: ``int8`` beside int8 deltas (the deltas' own precision, at half an
    fp16 keyframe's bytes; round 1 is every stream's keyframe), ``fp16`` when
    the plan sends full fp16 adapters every time (the comparison run)."""
    return "fp16" if wire_encoding == "fp16" else "int8"


def wire_choice(
    previous: SentRef | None, to: str, *, encoding: str, keyframe_every: int
) -> WireChoice:
    """Delta or keyframe for the next artifact of a stream going to ``to``.

    A delta is on the stream's previous artifact, which its receiver holds (it received
    it; a receiver that lacks it fetches the lineage, a full adapter and at most
    ``keyframe_every - 1`` deltas).  A keyframe when the plan says ``fp16``, when there is
    no previous artifact, when the receiver changed (a new parent never received ours),
    or when the chain is ``keyframe_every`` long.  The driver falls back to a keyframe
    when packing the delta fails (the shapes changed, the previous artifact is gone).
    """
    if encoding == "fp16":
        return WireChoice(None, "full: the plan's wire_encoding is fp16")
    if previous is None:
        return WireChoice(None, "keyframe: nothing sent on this stream yet")
    if previous.to != to:
        return WireChoice(None, f"keyframe: the receiver changed ({previous.to} -> {to})")
    if previous.chain + 1 >= keyframe_every:
        return WireChoice(None, f"keyframe: every {keyframe_every} artifacts")
    return WireChoice(previous.cid, f"int8 delta on {previous.cid}")


def sends_held(before: float | None, after: float | None, *, tolerance: float) -> bool:
    """Whether a parent sends up a round's aggregate its timing rule held back.

    What goes up is what the node learned, published or not: the rule decides what its
    children get, and the grandparent screens and decides for itself (the default devnet's
    healthcare students held every round, and the MiniLM tiers never saw their data).  But
    not an aggregate that made the node's own validation set worse by more than the rule's
    ``tolerance``: the grandparent may have no validation set of its own (a language
    node), and would take it (default devnet, seed 1: healthcare's round-2 aggregate fell
    from 0.65 to 0.20, went up, and came back down as its parent's version).  No
    validation set: sent.
    """
    if before is None or after is None:
        return True
    return after >= before - tolerance


def probe_rounds(*, trains: bool, consumed: int, round_: int) -> int:
    """How many rounds of the node's arrivals make its probe set in round ``round_``.

    The probe set is the parent's own trusted training data (FLTrust's root set): the
    screen's trusted direction, and the probe-scored rule's reference.  A node that
    trains uses what it has trained on (``consumed``, so the probe matches its own
    update); one that does not train never advances ``consumed`` and uses everything
    that has arrived by this round (with ``consumed``, 0, its probe set was empty and
    every probe-scored round failed).
    """
    return consumed if trains else max(0, round_)


# --- decisions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionSeen:
    """A parent's version (or a child's update) the daemon accepted."""

    author: str
    cid: str
    round: int
    base_version: str | None
    base_model_cid: str | None
    created_ms: int


def pending_after_publish(
    updates: Mapping[str, VersionSeen],
    aggregated: Mapping[str, VersionSeen],
    flats: set[str],
) -> dict[str, VersionSeen]:
    """The children's updates a parent still holds once it published a round: not the ones
    the round aggregated, nor ones on a flat it neither trains on nor screens late updates
    against (``flats``).  Publishing takes time (announce, then the peer record), and a
    child's update may come meanwhile: a late one of the round just closed is kept for the
    late screen, one on the new version for the next round."""
    return {
        a: u
        for a, u in updates.items()
        if aggregated.get(a) != u and u.base_version is not None and u.base_version in flats
    }


@dataclass(frozen=True)
class Rebase:
    version: VersionSeen


@dataclass(frozen=True)
class RunRound:
    round: int


@dataclass(frozen=True)
class Wait:
    reason: str


Action = Rebase | RunRound | Wait


class LearnerCore:
    """What the learning worker does next (see the module docstring).

    ``is_root``: the node has no layer above (the master), so it needs no parent version
    before its rounds.  ``follow_parent``: a new parent version, once applied, starts a
    round (:meth:`rebased`): the rounds of a network follow its master's clock."""

    def __init__(
        self, *, is_root: bool, requested_round: int = 0, follow_parent: bool = False
    ) -> None:
        self.is_root = is_root
        self.follow_parent = follow_parent
        self.requested_round = requested_round
        self.versions: dict[str, VersionSeen] = {}  # parent peer id -> its latest version
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}

    def request_round(self, r: int) -> int:
        if r < 1:
            raise ValueError("rounds start at 1")
        self.requested_round = max(self.requested_round, r)
        return self.requested_round

    def rebased(self, v: VersionSeen, state: LearnerState) -> int | None:
        """The node applied its parent's version ``v``: a follower asks itself for one more
        round than both ``v``'s and its own last, so that it trains on the new model and
        sends its parent an update on it (the parent aggregates only updates on its current
        version; an update the node sent on the previous one no longer counts).  Returns the
        round requested, or None (not following)."""
        if not self.follow_parent or self.is_root:
            return None
        return self.request_round(max(v.round, state.round) + 1)

    def timer_drives_rounds(self) -> bool:
        """Whether ``learn.round_interval_s`` starts this node's rounds: the root's, and a
        node's that does not follow its parent."""
        return self.is_root or not self.follow_parent

    def version_seen(self, v: VersionSeen) -> None:
        # Kept per author: the parent may be re-selected after its version was accepted.
        self.versions[v.author] = v

    def failed(self, kind: str, now: float) -> float:
        """A step of ``kind`` ("rebase", "round") failed at ``now``: when to retry it."""
        n = self._failures.get(kind, 0) + 1
        self._failures[kind] = n
        at = now + min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** (n - 1))
        self._retry_at[kind] = at
        return at

    def succeeded(self, kind: str) -> None:
        self._failures.pop(kind, None)
        self._retry_at.pop(kind, None)

    def failures(self, kind: str) -> int:
        return self._failures.get(kind, 0)

    def next(self, state: LearnerState, parent: str | None, now: float) -> Action:
        """The next step, given the saved state, the current parent and ``now``."""
        version = self.versions.get(parent) if parent is not None else None
        base_cid = state.base.cid if state.base else None
        if version is not None and version.cid != base_cid:
            if now < self._retry_at.get("rebase", 0.0):
                return Wait(f"rebase on {version.cid} failed; retrying in "
                            f"{self._retry_at['rebase'] - now:.0f} s")  # fmt: skip
            return Rebase(version)
        if self.requested_round <= state.round:
            return Wait("idle: no round requested")
        if not self.is_root:
            if parent is None:
                return Wait(f"round {self.requested_round} waits for a parent")
            if state.base is None:
                r = self.requested_round
                return Wait(f"round {r} waits for a first version from parent {parent}")
        if state.tier is None:
            return Wait(f"round {self.requested_round} waits for this node's tier")
        if now < self._retry_at.get("round", 0.0):
            return Wait(f"round {self.requested_round} failed "
                        f"{self._failures.get('round', 0)} time(s); retrying in "
                        f"{self._retry_at['round'] - now:.0f} s")  # fmt: skip
        return RunRound(self.requested_round)
