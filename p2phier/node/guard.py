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
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from p2phier.bitswap import Misbehaviour
from p2phier.errors import InvalidPeerIdError
from p2phier.hierarchy import Action, HierarchyState
from p2phier.identity import Identity, PeerId
from p2phier.node.intake import Evidence, UpdateIntake
from p2phier.records import next_seq, now_ms
from p2phier.trust import Budget, RateBudget
from p2phier.trust.global_trust import global_trust
from p2phier.trust.local import Isolate, Kind, LocalTrust, TrustAction
from p2phier.trust.proofs import BadProofError, check_proof
from p2phier.trust.report import (
    MAX_OPINIONS,
    MAX_PROOFS,
    ReportBook,
    TrustReport,
    TrustReportError,
    open_report,
    sign_report,
)

logger = logging.getLogger(__name__)

#: the intake's drop reasons (and evidence kinds) that count against the sender; the
#: others (no record yet, clock skew, a duplicate) an honest relay or clock can cause
EVIDENCE_KINDS: dict[str, Kind] = {
    "provenance": Kind.PROVENANCE,
    "bad-signature": Kind.BAD_SIGNATURE,
    "replay": Kind.REPLAY,
    "rate": Kind.RATE,
    "stall": Kind.STALL,
}


def _is_peer_id(text: str) -> bool:
    try:
        PeerId.parse(text)
    except InvalidPeerIdError:
        return False
    return True


class Guard:
    """Evidence in, isolations enforced; see the module docstring."""

    def __init__(
        self,
        *,
        identity: Identity,
        anchors: frozenset[PeerId],
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
        self.identity = identity
        self.anchors = anchors
        self.clock = clock
        #: other nodes' newest reports, and what each may make this node check
        self.reports = ReportBook()
        self.report_budget = RateBudget(Budget(rate=0.5, burst=5))
        self.report_seq: int | None = None
        self.reports_refused = 0
        #: the signed messages behind each proof held, newest last (forwarded in reports)
        self.proofs: OrderedDict[str, tuple[str, tuple[bytes, ...]]] = OrderedDict()
        self.new_proof = False  # a proof arrived since the last report: report at once
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
        if ev.proof:
            self._keep_proof(ev.peer, kind.value, ev.proof)
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

    def equivocation(self, peer: str, detail: str, proof: tuple[bytes, bytes]) -> None:
        """Two different records signed with one seq: a proof anyone can check."""
        self._keep_proof(peer, Kind.EQUIVOCATION.value, proof)
        self.enforce(self.trust.observe(peer, Kind.EQUIVOCATION, self.clock(), detail=detail))

    def _keep_proof(self, peer: str, kind: str, signed: tuple[bytes, ...]) -> None:
        if peer in self.proofs:
            return
        self.proofs[peer] = (kind, signed)
        self.new_proof = True
        while len(self.proofs) > 64:
            self.proofs.popitem(last=False)

    # --- trust reports ------------------------------------------------------------------------
    def make_report(self) -> bytes | None:
        """This node's signed report: its strongest opinions and newest proofs (None: nothing
        to say)."""
        now = self.clock()
        view = self.trust.status(now)["peers"]
        opinions = []
        for peer, p in sorted(view.items(), key=lambda kv: -abs(kv[1]["score"])):
            if p["score"] == 0:
                continue
            try:
                opinions.append((PeerId.parse(peer), float(p["score"])))
            except InvalidPeerIdError:
                continue
            if len(opinions) >= MAX_OPINIONS:
                break
        proofs = [(k, s) for k, s in reversed(self.proofs.values())][:MAX_PROOFS]
        if not opinions and not proofs:
            return None
        self.report_seq = next_seq(self.report_seq, now)
        self.new_proof = False
        while True:
            report = TrustReport(
                self.identity.peer_id, self.report_seq, now_ms(now), tuple(opinions), tuple(proofs)
            )
            try:
                return sign_report(report, self.identity)
            except TrustReportError:
                if proofs:
                    proofs.pop()  # too big for one gossip message: fewer proofs, then opinions
                elif opinions:
                    opinions = opinions[: len(opinions) // 2]
                else:
                    return None

    def receive_report(self, origin: str, data: bytes) -> bool:
        """A gossiped report: checked, kept if its reporter's newest; its proofs re-checked,
        each one that holds counting as evidence here.  Opinions alone isolate nobody."""
        now = self.clock()
        if not self.report_budget.allow(origin, now):
            self.reports_refused += 1
            return False
        try:
            report = open_report(data)
        except TrustReportError as exc:
            self.reports_refused += 1
            logger.info("trust report from %s refused: %s", origin, exc)
            return False
        if str(report.reporter) != origin:
            self.reports_refused += 1
            return False  # a report is published by its reporter, never relayed as one's own
        if report.reporter == self.identity.peer_id:
            return True
        if not self.reports.offer(report):
            return False  # a replay or an older report
        for kind, signed in report.proofs:
            try:
                subject, what = check_proof(kind, signed)
            except BadProofError as exc:
                # a forged proof is its sender's misbehaviour, not its subject's
                logger.warning("trust report from %s carries a bad proof: %s", origin, exc)
                self.enforce(self.trust.observe(origin, Kind.BAD_SIGNATURE, now, detail=str(exc)))
                continue
            if subject == self.identity.peer_id:
                continue
            self._keep_proof(str(subject), kind, signed)
            detail = f"forwarded by {origin}: {what}"
            self.enforce(self.trust.observe(str(subject), Kind(kind), now, detail=detail))
        return True

    def global_view(self) -> dict[str, float]:
        """Global (EigenTrust) trust over the reports held and this node's own opinions,
        anchored on the anchors and this node; the 16 highest and every isolated peer."""
        now = self.clock()
        me = self.identity.peer_id
        index: dict[PeerId, int] = {me: 0}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []

        def idx(p: PeerId) -> int:
            return index.setdefault(p, len(index))

        own = [(PeerId.parse(p), v["score"]) for p, v in self.trust.status(now)["peers"].items()
               if _is_peer_id(p)]  # fmt: skip
        for reporter, opinions in [(me, own)] + [
            (r.reporter, r.opinions) for r in self.reports.reports()
        ]:
            for subject, opinion in opinions:
                rows.append(idx(reporter))
                cols.append(idx(subject))
                vals.append(opinion)
        anchors = [idx(a) for a in self.anchors] + [0]
        result = global_trust(
            len(index),
            np.array(rows, np.int64),
            np.array(cols, np.int64),
            np.array(vals, np.float64),
            np.array(anchors, np.int64),
        )
        by_name = {str(p): i for p, i in index.items()}
        names = {i: name for name, i in by_name.items()}
        order = np.argsort(-result.trust)
        top = {names[int(i)]: round(float(result.trust[i]), 6) for i in order[:16]}
        for peer in self.trust.isolated(now):
            i = by_name.get(peer)
            top[peer] = round(float(result.trust[i]), 6) if i is not None else 0.0
        return top

    def useful_update(self, author: str) -> None:
        self.enforce(self.trust.observe(author, Kind.USEFUL_UPDATE, self.clock()))

    def tick(self) -> None:
        self.enforce(self.trust.tick(self.clock()))

    def rank_providers(self, providers: list[str]) -> list[str]:
        """Providers in trust order: a peer that stalled or misbehaved before is asked last
        (an isolated one not at all); ties keep their order."""
        now = self.clock()
        keep = [p for p in providers if not self.trust.is_isolated(p, now)]
        return sorted(keep, key=lambda p: -self.trust.score(p, now))

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
