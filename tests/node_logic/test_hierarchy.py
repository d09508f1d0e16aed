"""Hierarchy: discovery keys, parent-selection tables and the HierarchyState machine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.cid import CID, RAW
from p2phier.errors import NetworkError
from p2phier.hierarchy import (
    AcceptChild,
    DropChild,
    HierarchyConfig,
    HierarchyError,
    HierarchyState,
    MeasuredScore,
    ParentLost,
    RegisterWith,
    RejectChild,
    SelectParent,
    WaitForParent,
    discovery_key,
    discovery_preimage,
    parent_search_keys,
    select_parent,
)
from p2phier.identity import PeerId
from p2phier.records import Layer, NodeRecord, RecordError
from tests.node_logic.helpers import T0, layer_and_domain, peer, record

DISCOVERY = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/discovery.json").read_text()
)

# --- discovery keys ------------------------------------------------------------------------


@pytest.mark.parametrize("v", DISCOVERY["vectors"], ids=lambda v: f"{v['layer']}:{v['domain']}")
def test_golden_discovery_keys(v: dict[str, Any]) -> None:
    layer = Layer.parse(v["layer"])
    assert discovery_preimage(layer, v["domain"]).hex() == v["preimage_hex"]
    key = discovery_key(layer, v["domain"])
    assert str(key) == v["key"]
    assert key.version == 1 and key.codec == RAW
    assert CID.parse(v["key"]) == key


@given(layer_and_domain(), layer_and_domain())
def test_discovery_keys_are_distinct_per_pair(a: tuple[Layer, str], b: tuple[Layer, str]) -> None:
    assert (discovery_key(*a) == discovery_key(*b)) is (a == b)


def test_discovery_key_refuses_pairs_no_node_can_have() -> None:
    with pytest.raises(RecordError):
        discovery_key(Layer.MASTER, "en")
    with pytest.raises(RecordError):
        discovery_key(Layer.LANGUAGE, "EN")


def test_parent_search_keys_longest_first() -> None:
    keys = parent_search_keys(Layer.DEVICE, "en/healthcare/cardiology/ecg")
    assert [(layer, d) for layer, d, _ in keys] == [
        (Layer.SUBDOMAIN, "en/healthcare/cardiology/ecg"),
        (Layer.SUBDOMAIN, "en/healthcare/cardiology"),
    ]
    assert keys[0][2] == discovery_key(Layer.SUBDOMAIN, "en/healthcare/cardiology/ecg")
    assert [d for _, d, _ in parent_search_keys(Layer.SUBDOMAIN, "en/a/b")] == ["en/a/b", "en/a"]
    assert [d for _, d, _ in parent_search_keys(Layer.DOMAIN, "en/a")] == ["en"]
    assert [d for _, d, _ in parent_search_keys(Layer.LANGUAGE, "en")] == [""]
    assert parent_search_keys(Layer.MASTER, "") == []


# --- parent selection ----------------------------------------------------------------------


def _pick(
    layer: Layer,
    domain: str,
    cands: list[NodeRecord],
    scores: dict[int, float] | None = None,
    **kw: Any,
) -> PeerId | None:
    by_peer = {peer(i): s for i, s in (scores or {}).items()}
    best = select_parent(
        layer, domain, cands, T0, score=lambda r, now: by_peer.get(r.peer_id, 0.0), **kw
    )
    return best.peer_id if best else None


def test_parent_must_be_exactly_one_layer_up_on_our_path() -> None:
    cands = [
        record(1, Layer.MASTER, ""),
        record(2, Layer.LANGUAGE, "en"),
        record(3, Layer.LANGUAGE, "fr"),
        record(4, Layer.DOMAIN, "en/law"),
        record(5, Layer.SUBDOMAIN, "en/healthcare/cardiology"),
    ]
    assert _pick(Layer.LANGUAGE, "en", cands) == peer(1)
    assert _pick(Layer.DOMAIN, "en/healthcare", cands) == peer(2)
    assert _pick(Layer.DOMAIN, "fr/droit", cands) == peer(3)
    assert _pick(Layer.DOMAIN, "de/recht", cands) is None  # no German language node
    assert _pick(Layer.SUBDOMAIN, "en/healthcare/cardiology", cands) is None  # 4 is en/law
    assert _pick(Layer.DEVICE, "en/healthcare/cardiology", cands) == peer(5)
    assert _pick(Layer.MASTER, "", cands) is None


def test_longest_prefix_wins_over_score() -> None:
    cands = [
        record(1, Layer.DOMAIN, "en/healthcare"),
        record(2, Layer.DOMAIN, "en/healthcare/cardiology"),
        record(3, Layer.DOMAIN, "en/healthcare/oncology"),
    ]
    assert _pick(Layer.SUBDOMAIN, "en/healthcare/cardiology", cands, {1: 100.0}) == peer(2)
    assert _pick(Layer.SUBDOMAIN, "en/healthcare/neurology", cands, {1: -5.0}) == peer(1)
    # a segment prefix, not a string prefix
    cands.append(record(4, Layer.DOMAIN, "en/health"))
    assert _pick(Layer.SUBDOMAIN, "en/healthcare/x", cands, {4: 100.0, 1: -1.0}) == peer(1)


@pytest.mark.parametrize(
    ("scores", "winner"),
    [
        ({1: 0.5, 2: 0.9, 3: 0.1}, 2),
        ({1: 0.9, 2: 0.9, 3: 0.1}, "smallest-id-of-1-2"),
        ({}, "smallest-id"),
        ({1: float("nan"), 2: 0.0, 3: -1.0}, 2),  # a broken score never wins
    ],
)
def test_ties_go_to_score_then_smallest_peer_id(scores: dict[int, float], winner: Any) -> None:
    cands = [record(i, Layer.LANGUAGE, "en") for i in (1, 2, 3)]
    got = _pick(Layer.DOMAIN, "en/x", cands, scores)
    if winner == "smallest-id-of-1-2":
        assert got == min((peer(1), peer(2)), key=str)
    elif winner == "smallest-id":
        assert got == min((peer(i) for i in (1, 2, 3)), key=str)
    else:
        assert got == peer(winner)


def test_expired_and_excluded_candidates_are_not_eligible() -> None:
    cands = [record(1, Layer.LANGUAGE, "en", ttl=10), record(2, Layer.LANGUAGE, "en")]
    best = select_parent(Layer.DOMAIN, "en/x", cands, T0 + 10, score=lambda r, now: 0.0)
    assert best is not None and best.peer_id == peer(2)
    assert _pick(Layer.DOMAIN, "en/x", cands, exclude=[peer(1), peer(2)]) is None


def test_measured_score_ignores_self_reported_uptime() -> None:
    score = MeasuredScore({peer(1): 0.010, peer(2): 0.200, peer(4): float("nan")})
    fast_new = record(1, Layer.LANGUAGE, "en", started=T0 - 60)
    slow_old = record(2, Layer.LANGUAGE, "en", started=T0 - 86_400 * 30)
    unknown = record(3, Layer.LANGUAGE, "en", started=T0 - 86_400)
    assert score(fast_new, T0) > score(slow_old, T0) > score(unknown, T0) == -math.inf
    assert not score.measured(peer(3)) and not score.measured(peer(4))  # broken: unmeasured
    # uptime is what the candidate says about itself: it changes nothing
    assert score(record(2, Layer.LANGUAGE, "en", started=T0), T0) == score(slow_old, T0)


def test_a_fake_master_claiming_uptime_does_not_beat_an_anchor() -> None:
    """Issue 14: a fresh key's record claimed 23 h of uptime and won while every latency was
    unknown.  Now only measured candidates are eligible, and an anchor wins a tie."""
    real, fake = (
        record(1, Layer.MASTER, "", started=T0 - 60),
        record(2, Layer.MASTER, "", started=T0 - 23 * 3600),
    )
    latencies: dict[PeerId, float] = {}
    score = MeasuredScore(latencies)
    h = HierarchyState(
        peer(9), Layer.LANGUAGE, "en", config=CFG, score=score, anchors={peer(1)},
        measured=score.measured,
    )  # fmt: skip
    # not measured yet: not eligible
    assert h.record_seen(fake, T0) == [
        WaitForParent("no master node on our domain path measured yet")
    ]
    h.record_seen(real, T0)
    assert h.parent is None
    latencies[peer(2)] = 0.001  # the fake answers first, and faster
    acts = h.candidate_measured(peer(2), T0 + 1)
    assert h.parent == peer(2) and isinstance(acts[0], SelectParent)
    latencies[peer(1)] = 0.050
    acts = h.candidate_measured(peer(1), T0 + 2)
    assert h.parent == peer(1)  # the anchor replaces a non-anchor on the same domain depth
    assert acts[0] == SelectParent(
        peer(1), peer(2), "an anchor on an equally long domain prefix became reachable"
    )
    latencies[peer(3)] = 0.0001
    assert h.record_seen(record(3, Layer.MASTER, ""), T0 + 3) == []  # no flap away from it
    assert h.candidate_measured(peer(3), T0 + 3) == []


def test_admission_follows_admit_domains() -> None:
    cfg = HierarchyConfig(
        child_ttl_s=90, register_interval_s=30, parent_timeout_s=30, lost_backoff_s=60,
        admit_domains=("en/news", "en/sport"),
    )  # fmt: skip
    h = HierarchyState(peer(1), Layer.LANGUAGE, "en", config=cfg)
    (ok,) = h.child_registered(record(2, Layer.DOMAIN, "en/news"), T0)
    assert isinstance(ok, AcceptChild)
    (no,) = h.child_registered(record(3, Layer.DOMAIN, "en/zz"), T0)
    assert isinstance(no, RejectChild) and "admits children from 'en/news', 'en/sport'" in no.reason


def test_a_closed_node_refuses_every_child_and_says_why() -> None:
    """A node whose learning plan is a leaf publishes no versions: a child it admitted would
    wait for a first version forever, with nothing saying why."""
    cfg = HierarchyConfig(closed="this node's learning plan is a leaf")
    h = HierarchyState(peer(1), Layer.DOMAIN, "en/healthcare", config=cfg)
    (no,) = h.child_registered(record(2, Layer.SUBDOMAIN, "en/healthcare/cardio"), T0)
    assert isinstance(no, RejectChild) and no.reason == "this node's learning plan is a leaf"
    assert h.children == frozenset()
    assert h.refused[-1]["reason"] == "this node's learning plan is a leaf"


# --- the state machine ---------------------------------------------------------------------

CFG = HierarchyConfig(
    child_ttl_s=90, register_interval_s=30, parent_timeout_s=30, lost_backoff_s=60
)


def _node(i: int = 1, layer: Layer = Layer.DOMAIN, domain: str = "en/healthcare") -> HierarchyState:
    return HierarchyState(peer(i), layer, domain, config=CFG)


def test_a_node_waits_then_selects_and_registers() -> None:
    h = _node()
    assert h.tick(T0) == [WaitForParent("no language node on our domain path yet")]
    assert h.tick(T0 + 1) == []  # said once
    acts = h.record_seen(record(2, Layer.LANGUAGE, "en"), T0 + 2)
    assert acts == [SelectParent(peer(2), None, "best eligible parent"), RegisterWith(peer(2))]
    assert h.parent == peer(2)
    assert h.status()["parent"] == str(peer(2))


def test_master_never_looks_for_a_parent() -> None:
    h = HierarchyState(peer(1), Layer.MASTER, "", config=CFG)
    assert h.tick(T0) == []
    assert h.record_seen(record(2, Layer.MASTER, ""), T0) == []
    assert h.parent is None


def test_irrelevant_records_change_nothing() -> None:
    h = _node()
    h.tick(T0)
    for r in (
        record(2, Layer.LANGUAGE, "fr"),
        record(3, Layer.MASTER, ""),
        record(4, Layer.DOMAIN, "en/healthcare"),
        record(1, Layer.LANGUAGE, "en"),  # our own peer id
    ):
        assert h.record_seen(r, T0) == []
    assert h.parent is None


def test_reregisters_on_a_timer_and_stays_while_heard() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en"), T0)
    assert h.tick(T0 + 29) == []
    h.parent_heard(peer(2), T0 + 29)
    assert h.tick(T0 + 30) == [RegisterWith(peer(2))]
    assert h.tick(T0 + 31) == []
    h.parent_heard(peer(2), T0 + 55)
    assert h.tick(T0 + 60) == [RegisterWith(peer(2))]
    assert h.parent == peer(2)


def test_missed_heartbeats_lose_the_parent_and_reselect() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en"), T0)
    h.record_seen(record(3, Layer.LANGUAGE, "en"), T0)
    first = h.parent
    other = peer(3) if first == peer(2) else peer(2)
    h.parent_heard(other, T0 + 20)  # hearing from a non-parent does not count
    acts = h.tick(T0 + 31)
    assert isinstance(acts[0], ParentLost) and acts[0].peer == first
    assert "no sign of life" in acts[0].reason
    assert acts[1:] == [SelectParent(other, None, "best eligible parent"), RegisterWith(other)]


def test_record_expiry_loses_the_parent_and_waits_without_candidates() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en"), T0)
    acts = h.record_expired(peer(2), T0 + 5)
    assert acts == [
        ParentLost(peer(2), "its node record expired"),
        WaitForParent("no language node on our domain path yet"),
    ]
    assert h.parent is None
    assert h.record_expired(peer(2), T0 + 6) == []


def test_tick_notices_expired_candidate_records_itself() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en", ttl=100), T0)
    h.parent_heard(peer(2), T0 + 99)
    acts = h.tick(T0 + 100)
    assert ParentLost(peer(2), "its node record expired") in acts
    assert h.parent is None


def test_a_parent_whose_record_moves_away_is_lost() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en"), T0)
    acts = h.record_seen(record(2, Layer.LANGUAGE, "fr", seq=2), T0 + 1)
    assert isinstance(acts[0], ParentLost) and acts[0].peer == peer(2)
    assert h.parent is None


def test_longer_prefix_takes_over_but_a_better_score_does_not() -> None:
    scores: dict[PeerId, float] = {}
    h = HierarchyState(
        peer(1),
        Layer.SUBDOMAIN,
        "en/healthcare/cardiology",
        config=CFG,
        score=lambda r, now: scores.get(r.peer_id, 0.0),
    )
    h.record_seen(record(2, Layer.DOMAIN, "en/healthcare"), T0)
    assert h.parent == peer(2)
    scores[peer(3)] = 99.0
    assert h.record_seen(record(3, Layer.DOMAIN, "en/healthcare"), T0 + 1) == []
    assert h.parent == peer(2)
    acts = h.record_seen(record(4, Layer.DOMAIN, "en/healthcare/cardiology"), T0 + 2)
    assert acts == [
        SelectParent(peer(4), peer(2), "a parent with a longer domain prefix appeared"),
        RegisterWith(peer(4)),
    ]


def test_a_lost_parent_is_avoided_until_backoff_or_restart() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en", started=T0 - 100), T0)
    h.tick(T0 + 31)  # lost: silent
    assert h.parent is None
    assert h.record_seen(record(2, Layer.LANGUAGE, "en", seq=2, started=T0 - 100), T0 + 32) == []
    assert h.parent is None  # a plain refresh does not lift the exclusion
    acts = h.tick(T0 + 31 + 60)  # backoff over
    assert acts[0] == SelectParent(peer(2), None, "best eligible parent")

    h2 = _node()
    h2.record_seen(record(2, Layer.LANGUAGE, "en", started=T0 - 100), T0)
    h2.registration_failed(peer(2), T0 + 1, "refused: full")
    assert h2.parent is None
    restarted = record(2, Layer.LANGUAGE, "en", seq=2, issued=T0 + 5, started=T0 + 4)
    assert h2.record_seen(restarted, T0 + 5)[0] == SelectParent(
        peer(2), None, "best eligible parent"
    )


def test_parent_restart_triggers_immediate_reregistration_and_keeps_it() -> None:
    h = _node()
    h.record_seen(record(2, Layer.LANGUAGE, "en", started=T0 - 100), T0)
    assert h.record_seen(record(2, Layer.LANGUAGE, "en", seq=2, started=T0 - 100), T0 + 5) == []
    restarted = record(2, Layer.LANGUAGE, "en", seq=3, issued=T0 + 20, started=T0 + 18)
    assert h.record_seen(restarted, T0 + 20) == [RegisterWith(peer(2))]
    assert h.parent == peer(2)
    assert h.tick(T0 + 45) == []  # the restart counted as a sign of life


# --- children ---------------------------------------------------------------------------------


def _child(i: int, domain: str = "en/healthcare/cardiology", **kw: Any) -> NodeRecord:
    return record(i, Layer.SUBDOMAIN, domain, **kw)


def _about_children(actions: list[Any]) -> list[Any]:
    """Leave out the parent side (these nodes have no parent and say so once)."""
    return [a for a in actions if not isinstance(a, WaitForParent)]


def test_children_register_refresh_and_expire() -> None:
    h = _node()
    assert h.child_registered(_child(5), T0) == [AcceptChild(peer(5), T0 + 90, True)]
    assert h.child_registered(_child(6, "en/healthcare/oncology"), T0 + 10)[0] == AcceptChild(
        peer(6), T0 + 100, True
    )
    assert h.child_registered(_child(5), T0 + 60) == [AcceptChild(peer(5), T0 + 150, False)]
    assert h.children == {peer(5), peer(6)}
    assert _about_children(h.tick(T0 + 100)) == [DropChild(peer(6), "registration expired")]
    assert h.children == {peer(5)}
    assert h.child_left(peer(5), T0 + 101) == [DropChild(peer(5), "left")]
    assert h.child_left(peer(5), T0 + 101) == []


@pytest.mark.parametrize(
    ("rec", "match"),
    [
        (record(5, Layer.SUBDOMAIN, "en/law/contracts"), "cannot be our child"),
        (record(5, Layer.DEVICE, "en/healthcare/cardiology"), "cannot be our child"),
        (record(5, Layer.DOMAIN, "en/healthcare"), "cannot be our child"),
        (record(1, Layer.SUBDOMAIN, "en/healthcare/x"), "own child"),
        (record(5, Layer.SUBDOMAIN, "en/healthcare/x", ttl=10, issued=T0 - 20), "expired"),
    ],
)
def test_child_registration_refusals(rec: NodeRecord, match: str) -> None:
    h = _node()
    (act,) = h.child_registered(rec, T0)
    assert isinstance(act, RejectChild) and match in act.reason
    assert h.children == frozenset()


def test_device_takes_no_children_and_capacity_is_bounded() -> None:
    dev = HierarchyState(peer(1), Layer.DEVICE, "en/a/b", config=CFG)
    (act,) = dev.child_registered(record(5, Layer.DEVICE, "en/a/b"), T0)
    assert isinstance(act, RejectChild) and "devices have no children" in act.reason
    h = HierarchyState(
        peer(1), Layer.DOMAIN, "en/healthcare", config=HierarchyConfig(max_children=1)
    )
    assert isinstance(h.child_registered(_child(5), T0)[0], AcceptChild)
    assert isinstance(h.child_registered(_child(6), T0)[0], RejectChild)
    assert isinstance(h.child_registered(_child(5), T0 + 1)[0], AcceptChild)  # refresh is fine


def test_a_child_that_moves_out_of_the_subtree_is_dropped() -> None:
    h = _node()
    h.child_registered(_child(5), T0)
    acts = _about_children(h.record_seen(_child(5, "en/law/contracts", seq=2), T0 + 1))
    assert acts == [DropChild(peer(5), "its record moved it out of our subtree")]


def test_children_survive_the_parents_restart() -> None:
    before = _node()
    before.child_registered(_child(5), T0)
    before.child_registered(_child(6), T0 + 80)
    saved = json.loads(json.dumps(before.snapshot()))  # what the daemon writes to disk

    after = _node()  # the restarted process, same peer id
    after.restore(saved, T0 + 85)
    assert after.children == {peer(5), peer(6)}
    # child 5 re-registers after seeing the new started_ms: refreshed, not re-added
    assert after.child_registered(_child(5), T0 + 86) == [AcceptChild(peer(5), T0 + 176, False)]
    assert _about_children(after.tick(T0 + 171)) == [DropChild(peer(6), "registration expired")]
    assert after.children == {peer(5)}


def test_restore_drops_expired_caps_far_future_and_refuses_junk() -> None:
    h = _node()
    h.restore({"version": 1, "children": {str(peer(5)): T0 - 1, str(peer(6)): T0 + 1e6}}, T0)
    assert h.children == {peer(6)}
    assert h.child_expiry(peer(6)) == T0 + 90
    bads: list[Any] = [
        {"version": 2, "children": {}},
        {"version": 1},
        {"version": 1, "children": {"nope": T0}},
        {"version": 1, "children": {str(peer(5)): "soon"}},
        {"version": 1, "children": {str(peer(5)): float("inf")}},
        [],
    ]
    for bad in bads:
        with pytest.raises(HierarchyError):
            h.restore(bad, T0)


def test_config_and_state_validation() -> None:
    with pytest.raises(HierarchyError, match="below child_ttl_s"):
        HierarchyConfig(child_ttl_s=30, register_interval_s=30)
    with pytest.raises(HierarchyError, match="positive"):
        HierarchyConfig(parent_timeout_s=0)
    with pytest.raises(HierarchyError, match="domain must have"):
        HierarchyState(peer(1), Layer.LANGUAGE, "en/healthcare")
    assert issubclass(HierarchyError, NetworkError)


@given(st.lists(st.tuples(st.integers(2, 9), st.sampled_from(["en", "fr"])), max_size=12))
def test_selected_parent_is_always_the_best_eligible(seen: list[tuple[int, str]]) -> None:
    h = _node()
    known: dict[int, NodeRecord] = {}
    for seq, (i, lang) in enumerate(seen, start=1):
        r = record(i, Layer.LANGUAGE, lang, seq=seq)
        known[i] = r
        h.record_seen(r, T0)
    eligible = {peer(i) for i, r in known.items() if r.domain == "en"}
    if not eligible:
        assert h.parent is None
    else:
        assert h.parent in eligible


def test_an_isolated_peer_is_no_child_no_parent_until_released() -> None:
    h = HierarchyState(peer(1), Layer.LANGUAGE, "en", config=CFG)
    h.record_seen(record(2, Layer.MASTER, ""), T0)
    h.record_seen(record(3, Layer.MASTER, ""), T0)
    first = h.parent
    assert first in (peer(2), peer(3))
    other = peer(3) if first == peer(2) else peer(2)
    h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0)
    acts = h.isolate(first, T0 + 100, T0 + 1, "proof: provenance")
    assert ParentLost(first, "isolated: proof: provenance") in acts
    assert h.parent == other  # the other candidate takes over
    acts = h.isolate(peer(4), T0 + 100, T0 + 1, "trust -12")
    assert acts == [DropChild(peer(4), "isolated: trust -12")]
    (no,) = h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0 + 2)
    assert isinstance(no, RejectChild) and "isolated" in no.reason
    h.release(peer(4), T0 + 100)
    (ok,) = h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0 + 100)
    assert isinstance(ok, AcceptChild)


def test_a_distrusted_peer_is_refused_as_child_and_a_distrusted_parent_is_left() -> None:
    """The global view weighs in: a parent that becomes distrusted is left (not only a lost
    one), a distrusted candidate is never chosen, a distrusted peer is no child; all of it
    lifts when the verdict does."""
    h = HierarchyState(peer(1), Layer.LANGUAGE, "en", config=CFG)
    h.record_seen(record(2, Layer.MASTER, ""), T0)
    h.record_seen(record(3, Layer.MASTER, ""), T0)
    first = h.parent
    other = peer(3) if first == peer(2) else peer(2)
    assert isinstance(h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0)[0], AcceptChild)
    acts = h.standing_changed({first: "distrust 0.2 > bar 0.01"}, T0 + 1)
    assert acts[0] == ParentLost(first, "parent distrusted: distrust 0.2 > bar 0.01")
    assert acts[1:] == [SelectParent(other, None, "best eligible parent"), RegisterWith(other)]
    # the other one too: no parent at all rather than a distrusted one
    acts = h.standing_changed({first: "d", other: "d", peer(4): "d"}, T0 + 2)
    assert DropChild(peer(4), "distrusted: d") in acts and h.parent is None
    assert ParentLost(other, "parent distrusted: d") in acts
    assert h.tick(T0 + 1000) == [] and h.parent is None  # backoff over, still not chosen
    (no,) = h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0 + 3)
    assert isinstance(no, RejectChild) and no.reason.startswith("distrusted: peers this node")
    assert h.refused[-1] == {"peer": str(peer(4)), "reason": no.reason}
    # the verdict lifts: a parent again, and the child is welcome
    acts = h.standing_changed({}, T0 + 1001)
    assert isinstance(acts[0], SelectParent) and h.parent in (first, other)
    assert isinstance(h.child_registered(record(4, Layer.DOMAIN, "en/news"), T0 + 1001)[0],
                      AcceptChild)  # fmt: skip
