"""The guard's bookkeeping without a network: evidence kinds, provider order, reports."""

from __future__ import annotations

from typing import Any

from p2phier.hierarchy import AcceptChild, HierarchyState, RejectChild
from p2phier.node.guard import Guard
from p2phier.node.intake import Evidence
from p2phier.records import Layer
from p2phier.trust.report import TrustReport, open_report, sign_report
from p2phier.trust.standing import Standing
from tests.node_logic.helpers import T0, ident, peer, record


class _Intake:
    def __init__(self) -> None:
        self.gone: list[Any] = []

    def author_gone(self, author: Any) -> None:
        self.gone.append(author)


def _guard(now: list[float]) -> tuple[Guard, list[Any], _Intake]:
    queued: list[Any] = []
    intake = _Intake()
    spawned: list[Any] = []
    g = Guard(
        identity=ident(1),
        anchors=frozenset({peer(2)}),
        clock=lambda: now[0],
        hierarchy=HierarchyState(peer(1), Layer.LANGUAGE, "en"),
        intake=intake,  # type: ignore[arg-type]
        queue=queued.extend,
        spawn=lambda fn, *args: spawned.append((fn, args)),
        gossip=lambda: None,
        disconnect=lambda peer: None,
        on_change=lambda: None,
        global_interval_s=5.0,
    )
    return g, queued, intake


def _report(g: Guard, i: int, seq: int, opinions: dict[int, float]) -> bool:
    """Peer ``i``'s signed report, as gossip delivers it to ``g``."""
    ops = tuple((peer(j), v) for j, v in opinions.items())
    data = sign_report(TrustReport(peer(i), seq, 0, ops), ident(i))
    return g.receive_report(str(peer(i)), data)


def test_providers_that_stalled_are_asked_last_and_isolated_ones_not_at_all() -> None:
    now = [1000.0]
    g, _, intake = _guard(now)
    a, b, c = (str(peer(i)) for i in (3, 4, 5))
    g.evidence(Evidence(a, "stall", "slow", 0))
    g.evidence(Evidence(c, "provenance", "lied", 0, (b"x",)))
    g.useful_update(b)
    assert g.rank_providers([a, b, c]) == [b, a]
    assert intake.gone == [peer(5)]  # the proven liar's fetches were dropped
    assert g.is_isolated(c)


def test_a_report_carries_opinions_and_proofs() -> None:
    now = [1000.0]
    g, _, _ = _guard(now)
    assert g.make_report() is None  # nothing to say yet
    g.evidence(Evidence(str(peer(3)), "provenance", "lied", 0, (b"ann", b"env")))
    assert g.new_proof
    report = open_report(g.make_report() or b"")
    assert report.reporter == peer(1) and not g.new_proof
    assert report.proofs == (("provenance", (b"ann", b"env")),)
    assert dict(report.opinions)[peer(3)] < -10
    # evidence kinds an honest relay or clock can cause count for nothing
    g.evidence(Evidence(str(peer(6)), "no-record", "", 0))
    assert str(peer(6)) not in g.trust.status(now[0])["peers"]


def test_a_trusted_peers_report_makes_a_peer_distrusted_but_isolated_only_with_evidence() -> None:
    """Issue 14: the gossip must matter, yet a report alone isolates nobody."""
    now = [T0]
    g, _, _ = _guard(now)
    bad, vouched = str(peer(7)), str(peer(3))
    assert g.standing(bad) is Standing.UNKNOWN  # nobody reported it: a newcomer
    assert _report(g, 2, 1, {3: 1.0})  # the anchor vouches for 3
    assert _report(g, 3, 1, {7: -15.0, 4: 1.0})  # 3 caught 7 misbehaving
    g.tick()
    assert g.standing(bad) is Standing.DISTRUSTED and g.distrusted() == [bad]
    assert g.standing(vouched) is Standing.TRUSTED
    assert not g.is_isolated(bad)  # no evidence of this node's own
    (no,) = g.hierarchy.child_registered(record(7, Layer.DOMAIN, "en/x", issued=T0), T0)
    assert isinstance(no, RejectChild) and no.reason.startswith("distrusted: peers this node")
    assert g.rank_providers([bad, vouched, str(peer(5))]) == [vouched, str(peer(5)), bad]
    assert g.served_last(bad) and not g.served_last(vouched)  # Bitswap serves it last
    entry = g.standing_view([])[bad]
    assert entry["standing"] == "distrusted" and entry["against"] == 1
    assert entry["distrust"] > entry["trust"] == 0.0
    # one stall here is negative evidence of its own: with the verdict, it isolates
    now[0] += 6.0
    g.evidence(Evidence(bad, "stall", "slow", 0))
    assert not g.is_isolated(bad)  # (a stall alone never would: -1, far above -10)
    g.tick()
    assert g.is_isolated(bad) and g.new_proof  # reported at once, like a proof
    assert "distrusted (" in g.trust.status(now[0])["peers"][bad]["reason"]


def test_slander_by_keys_nobody_trusts_and_own_mild_evidence_make_nobody_distrusted() -> None:
    now = [T0]
    g, _, _ = _guard(now)
    honest = str(peer(3))
    _report(g, 2, 1, {3: 1.0})
    for i in range(10, 20):  # ten fresh keys slander the honest node
        assert _report(g, i, 1, {3: -1000.0, 11 if i != 11 else 12: 1000.0})
    g.evidence(Evidence(str(peer(4)), "stall", "slow", 0))  # this node's own mild opinion
    g.tick()
    assert g.standing(honest) is Standing.TRUSTED
    assert g.standing(str(peer(4))) is not Standing.DISTRUSTED and g.distrusted() == []
    assert g.standing_view([honest])[honest]["against"] == 10  # heard, weighed at nothing
    (ok,) = g.hierarchy.child_registered(record(3, Layer.DOMAIN, "en/x", issued=T0), T0)
    assert isinstance(ok, AcceptChild)


def test_the_view_is_recomputed_at_most_every_interval_and_only_on_change() -> None:
    now = [T0]
    g, _, _ = _guard(now)
    first = g.refresh()
    assert g.refresh() is first  # nothing changed
    _report(g, 2, 1, {3: 1.0})
    now[0] += 1.0
    assert g.refresh() is first  # changed, but within the interval
    now[0] += 4.0
    second = g.refresh()
    assert second is not first and second.standing(str(peer(3))) is Standing.TRUSTED
    _report(g, 2, 2, {3: 1.0, 5: 1.0})
    assert g.refresh(force=True) is not second  # trust --json asks for the newest


def test_prune_forgets_decayed_peers_and_refilled_report_budgets_never_isolated_ones() -> None:
    now = [1000.0]
    g, _, _ = _guard(now)
    stalled, liar = str(peer(3)), str(peer(4))
    g.evidence(Evidence(stalled, "stall", "slow", 0))
    g.evidence(Evidence(liar, "provenance", "lied", 0, (b"x",)))
    assert _report(g, 5, 1, {6: 1.0})
    assert len(g.report_budget) == 1 and g.prune() == 0
    now[0] += 86_400.0  # a day: the stall has decayed to nothing, the report budget refilled
    assert g.prune() == 1
    assert len(g.report_budget) == 0
    assert set(g.trust.status(now[0])["peers"]) == {liar}  # isolated once: remembered
