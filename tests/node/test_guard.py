"""The guard's bookkeeping without a network: evidence kinds, provider order, reports."""

from __future__ import annotations

from typing import Any

from p2phier.hierarchy import HierarchyState
from p2phier.node.guard import Guard
from p2phier.node.intake import Evidence
from p2phier.records import Layer
from p2phier.trust.report import open_report
from tests.node_logic.helpers import ident, peer


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
    )
    return g, queued, intake


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
