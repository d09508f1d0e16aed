"""The node's guard: evidence about peers in, trust's decisions carried out.

Owns :class:`Guard`.  Every place that sees a peer misbehave (the update
intake, Bitswap, the record book) or do something useful (an accepted update)
reports it here; the guard feeds :class:`~p2phier.trust.local.LocalTrust` and
enforces what it decides.  An isolated peer is no child (dropped, its
registrations refused), no parent (left, not chosen), gets nothing through
gossip (gossipsub blacklist) and is disconnected, until its isolation ends.

The guard also holds the *global view*: the other nodes' trust reports and this
node's own opinions, as global trust (EigenTrust, anchored on the anchors and
this node), distrust and one :class:`~p2phier.trust.standing.Standing` per peer
(:mod:`p2phier.trust.standing`), recomputed at most every
``trust.global_interval_s`` when something changed.  A *distrusted* peer is
refused as child, never chosen or kept as parent (the hierarchy's
``standing_changed``) and asked for blocks last; this node's own negative
opinions do not count in its distrust (a stall or two here must not turn into a
verdict), and reports by peers this node isolated count for nothing.  A report
alone never isolates: a distrusted peer is isolated only if this node also holds
negative first-hand evidence of its own against it.

Kept apart from :mod:`p2phier.node.daemon`, which wires the node together: the
guard reaches the rest of the node only through the callables it is given.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2phier.bitswap import Misbehaviour
from p2phier.errors import InvalidPeerIdError, NetworkError
from p2phier.hierarchy import Action, HierarchyState
from p2phier.identity import Identity, PeerId
from p2phier.node.intake import Evidence, UpdateIntake
from p2phier.records import next_seq, now_ms
from p2phier.trust import Budget, RateBudget
from p2phier.trust.global_trust import GlobalTrustConfig, global_trust
from p2phier.trust.local import Isolate, Kind, LocalTrust, TrustAction
from p2phier.trust.proofs import BadProofError, check_proof
from p2phier.trust.report import (
    MAX_OPINIONS,
    MAX_PROOFS,
    TRUST_TOPIC,
    ReportBook,
    TrustReport,
    TrustReportError,
    open_report,
    sign_report,
)
from p2phier.trust.standing import Standing, StandingConfig, distrust, standings

logger = logging.getLogger(__name__)

#: the intake's drop reasons (and evidence kinds) that count against the sender; the
#: others (no record yet, clock skew, a duplicate) an honest relay or clock can cause
EVIDENCE_KINDS: dict[str, Kind] = {
    "provenance": Kind.PROVENANCE,
    "bad-signature": Kind.BAD_SIGNATURE,
    "replay": Kind.REPLAY,
    "rate": Kind.RATE,
    "stall": Kind.STALL,
    "bad-artifact": Kind.BAD_ARTIFACT,
    "free-ride": Kind.FREE_RIDE,
}


def _is_peer_id(text: str) -> bool:
    try:
        PeerId.parse(text)
    except InvalidPeerIdError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class GlobalView:
    """One computation of the global view (see the module docstring); index 0 is this node."""

    at: float
    index: dict[str, int]  # peer id text -> position
    names: list[str]
    trust: npt.NDArray[np.float64]
    distrust: npt.NDArray[np.float64]
    codes: npt.NDArray[np.int8]  # 1 trusted, 0 unknown, -1 distrusted
    against: npt.NDArray[np.int64]  # reporters (others) whose opinion speaks against it
    iterations: int

    def standing(self, peer: str) -> Standing:
        i = self.index.get(peer)
        return Standing.UNKNOWN if i is None else Standing.from_code(int(self.codes[i]))

    def entry(self, peer: str) -> dict[str, Any]:
        i = self.index.get(peer)
        if i is None:
            return {"trust": 0.0, "distrust": 0.0, "standing": "unknown", "against": 0}
        return {
            "trust": round(float(self.trust[i]), 6),
            "distrust": round(float(self.distrust[i]), 6),
            "standing": Standing.from_code(int(self.codes[i])).value,
            "against": int(self.against[i]),
        }

    def distrusted(self) -> list[str]:
        return sorted(self.names[int(i)] for i in np.flatnonzero(self.codes == -1))


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
        global_interval_s: float = 5.0,
    ) -> None:
        self.trust = LocalTrust()
        self.identity = identity
        self.anchors = anchors
        self.clock = clock
        #: the global view, recomputed at most every ``global_interval_s`` when ``_stale``
        self.view: GlobalView | None = None
        self.global_interval_s = global_interval_s
        self._stale = True
        self._distrusted: dict[PeerId, str] = {}  # what the hierarchy was last told
        #: other nodes' newest reports, and what each may make this node check
        self.reports = ReportBook()
        self.report_budget = RateBudget(Budget(rate=0.5, burst=5))
        self.report_seq: int | None = None
        self.reports_refused = 0
        #: the signed messages behind each proof held, newest last (forwarded in reports)
        self.proofs: OrderedDict[str, tuple[str, tuple[bytes, ...]]] = OrderedDict()
        #: a proof arrived or a peer was isolated since the last report: report at once
        self.new_proof = False
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
        if kind in (Kind.PROVENANCE, Kind.BAD_SIGNATURE, Kind.BAD_ARTIFACT, Kind.FREE_RIDE):
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

    async def publish_report(self) -> None:
        """Gossip this node's report (if it has anything to say)."""
        signed = self.make_report()
        gossip = self.gossip()
        if signed is None or gossip is None:
            return
        try:
            await gossip.publish(TRUST_TOPIC, signed)
        except NetworkError as exc:
            logger.debug("trust report publish: %s", exc)

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
        self._stale = True
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

    # --- the global view ----------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> GlobalView:
        """The global view, recomputed if something changed and ``global_interval_s`` passed
        (``force``: whatever the interval); a new verdict is carried out at once."""
        now = self.clock()
        view = self.view
        if view is not None and not (
            self._stale and (force or now - view.at >= self.global_interval_s)
        ):
            return view
        self._stale = False
        self.view = view = self._compute(now)
        self._apply(view, now)
        return view

    def _compute(self, now: float) -> GlobalView:
        me = self.identity.peer_id
        index: dict[str, int] = {str(me): 0}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []

        def idx(p: PeerId | str) -> int:
            return index.setdefault(str(p), len(index))

        own = [(PeerId.parse(p), v["score"]) for p, v in self.trust.status(now)["peers"].items()
               if _is_peer_id(p)]  # fmt: skip
        for reporter, opinions in [(me, own)] + [
            (r.reporter, r.opinions)
            for r in self.reports.reports()
            if not self.trust.is_isolated(str(r.reporter), now)  # its word counts for nothing
        ]:
            for subject, opinion in opinions:
                rows.append(idx(reporter))
                cols.append(idx(subject))
                vals.append(opinion)
        anchors = {idx(a) for a in self.anchors} | {0}
        n = len(index)
        r = np.array(rows, np.int64)
        c = np.array(cols, np.int64)
        v = np.array(vals, np.float64)
        alpha = GlobalTrustConfig().alpha
        last = self.view
        warm = None
        if last is not None:  # the last result, peer by peer: converges in fewer steps
            warm = np.array([last.trust[last.index[p]] if p in last.index else 0.0
                             for p in index])  # fmt: skip
            warm = warm if warm.sum() > 0 else None
        result = global_trust(n, r, c, v, np.array(sorted(anchors), np.int64), warm=warm)
        # this node's own negative opinions are evidence, not testimony: they isolate through
        # LocalTrust's threshold, never through a verdict they made themselves
        others = r != 0
        against = distrust(n, r[others], c[others], v[others], result.trust)
        codes = standings(result.trust, against, alpha=alpha, anchors=len(anchors))
        negative = others & (v <= -StandingConfig().severe)  # those that spoke against it
        return GlobalView(
            at=now,
            index=index,
            names=list(index),
            trust=result.trust,
            distrust=against,
            codes=codes,
            against=np.bincount(c[negative], minlength=n).astype(np.int64),
            iterations=result.iterations,
        )

    def _apply(self, view: GlobalView, now: float) -> None:
        """Tell the hierarchy who is distrusted (when that changed), and isolate a distrusted
        peer this node holds negative first-hand evidence against."""
        distrusted: dict[PeerId, str] = {}
        for name in view.distrusted():
            e = view.entry(name)
            distrusted[PeerId.parse(name)] = (
                f"distrust {e['distrust']:.3g} against trust {e['trust']:.3g}, "
                f"{e['against']} reporter(s)"
            )
        if distrusted.keys() != self._distrusted.keys():
            if distrusted:
                logger.warning("distrusted by the global view: %s", ", ".join(
                    f"{p} ({why})" for p, why in distrusted.items()))  # fmt: skip
            self.queue(self.hierarchy.standing_changed(distrusted, now))
            self.on_change()
        self._distrusted = distrusted
        if not distrusted:
            return
        mine = self.trust.status(now)["peers"]
        params = self.trust.config.params
        for peer, why in distrusted.items():
            name = str(peer)
            evidence = mine.get(name, {}).get("evidence", {})
            bad = sorted(k for k, x in evidence.items() if x > 0 and params[Kind(k)].weight < 0)
            if bad and not self.trust.is_isolated(name, now):
                reason = f"distrusted ({why}) and evidence here: {', '.join(bad)}"
                self.enforce(self.trust.isolate(name, now, reason))

    def standing(self, peer: str) -> Standing:
        """``peer``'s standing in the last global view: ``distrusted`` (peers this node
        trusts report it, more than they vouch for it), ``trusted`` (it holds real global
        trust) or ``unknown`` (e.g. a newcomer nobody reported, or one only untrusted keys
        vouch for).  The learner leaves distrusted children's updates out."""
        view = self.view
        return Standing.UNKNOWN if view is None else view.standing(peer)

    def distrusted(self) -> list[str]:
        return [] if self.view is None else self.view.distrusted()

    def global_view(self) -> dict[str, float]:
        """Global (EigenTrust) trust over the reports held and this node's own opinions,
        anchored on the anchors and this node; the 16 highest and every isolated peer."""
        view = self.refresh(force=True)
        order = np.argsort(-view.trust)
        top = {view.names[int(i)]: round(float(view.trust[i]), 6) for i in order[:16]}
        for peer in self.trust.isolated(self.clock()):
            top[peer] = view.entry(peer)["trust"]
        return top

    def standing_view(self, peers: list[str]) -> dict[str, dict[str, Any]]:
        """Trust, distrust, standing and the number of reporters against, for ``peers``,
        every distrusted peer and the 16 with the most distrust (for ``trust --json``)."""
        view = self.refresh(force=True)
        most = [view.names[int(i)] for i in np.argsort(-view.distrust)[:16] if view.distrust[i]]
        return {p: view.entry(p) for p in dict.fromkeys([*peers, *view.distrusted(), *most])}

    def useful_update(self, author: str) -> None:
        self.enforce(self.trust.observe(author, Kind.USEFUL_UPDATE, self.clock()))

    def bad_update(self, author: str, penalty: float, detail: str) -> None:
        """From the learner: the quality screen's verdict on an update of ``author``
        (``penalty`` 0..1, :mod:`p2phier.trust.quality`)."""
        self.misbehaviour.append({"peer": author, "reason": "bad-update", "detail": detail})
        self.enforce(
            self.trust.observe(author, Kind.BAD_UPDATE, self.clock(), penalty, detail=detail)
        )

    def tick(self) -> None:
        self.enforce(self.trust.tick(self.clock()))
        self.refresh()

    def prune(self) -> int:
        """Forget per-peer state that lost its use: trust records whose evidence decayed to
        nothing (never an isolated peer's: :meth:`LocalTrust.prune`) and report budgets that
        have refilled; return how many peers' trust records went."""
        now = self.clock()
        self.report_budget.prune(now)
        return self.trust.prune(now)

    def rank_providers(self, providers: list[str]) -> list[str]:
        """Providers in trust order: distrusted peers last, and among the others a peer
        that stalled or misbehaved before after the rest (an isolated one not at all); ties
        keep their order."""
        now = self.clock()
        keep = [p for p in providers if not self.trust.is_isolated(p, now)]
        return sorted(
            keep,
            key=lambda p: (self.standing(p) is Standing.DISTRUSTED, -self.trust.score(p, now)),
        )

    def is_isolated(self, peer: str) -> bool:
        return self.trust.is_isolated(peer, self.clock())

    def served_last(self, peer: str) -> bool:
        """Whether Bitswap serves ``peer`` only what other peers leave of the upload: it
        is isolated (its connection is being closed) or the network distrusts it."""
        return self.is_isolated(peer) or self.standing(peer) is Standing.DISTRUSTED

    # --- enforcement -----------------------------------------------------------------------
    def enforce(self, actions: list[TrustAction]) -> None:
        """Carry out trust's decisions (see the module docstring)."""
        self._stale = True  # every piece of evidence comes through here
        now = self.clock()
        for action in actions:
            try:
                peer: PeerId | None = PeerId.parse(action.peer)
            except InvalidPeerIdError:
                peer = None  # a transport peer of another key type: only the wire ties
            gossip = self.gossip()
            if isinstance(action, Isolate):
                self.new_proof = True  # siblings must hear of it before it knocks there
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
