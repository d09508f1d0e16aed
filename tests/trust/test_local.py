"""Local trust (pure): proofs isolate at once, observations accumulate and decay, isolations
expire and grow, the book is bounded."""

from __future__ import annotations

import pytest

from p2phier.errors import UsageError
from p2phier.trust.local import DEFAULT_PARAMS, Isolate, Kind, LocalTrust, Release, TrustConfig

H = 3600.0


def test_a_proof_isolates_at_once_and_the_isolation_expires() -> None:
    t = LocalTrust()
    (act,) = t.observe("m", Kind.PROVENANCE, 0.0, detail="signed by x, not by m")
    assert isinstance(act, Isolate) and act.until == H and "provenance" in act.reason
    assert t.is_isolated("m", 10.0) and t.isolated(10.0) == ["m"]
    assert t.observe("m", Kind.PROVENANCE, 20.0) == []  # already isolated: no second action
    assert t.tick(H - 1) == []
    assert t.tick(H) == [Release("m")]
    assert not t.is_isolated("m", H)
    (again,) = t.observe("m", Kind.EQUIVOCATION, H + 1)
    assert isinstance(again, Isolate) and again.until == H + 1 + 2 * H  # twice as long
    assert [p["kind"] for p in t.status(H + 1)["peers"]["m"]["proofs"]] == [
        "provenance",
        "provenance",
        "equivocation",
    ]


def test_observations_accumulate_and_decay() -> None:
    t = LocalTrust()
    for i in range(10):
        assert t.observe("s", Kind.STALL, float(i)) == []
    assert t.score("s", 10.0) == pytest.approx(-10.0, abs=0.02)
    (act,) = t.observe("s", Kind.STALL, 10.0)
    assert isinstance(act, Isolate)  # the eleventh stall within minutes
    # the same ten stalls spread over a day never isolate: each heals before the next
    u = LocalTrust()
    assert all(u.observe("s", Kind.STALL, i * 2 * H) == [] for i in range(10))
    assert -2.0 < u.score("s", 20 * H) < 0


def test_positive_evidence_offsets_accidents_but_not_proofs() -> None:
    t = LocalTrust()
    for _ in range(20):
        t.observe("good", Kind.USEFUL_UPDATE, 0.0)
    for i in range(15):
        assert t.observe("good", Kind.STALL, float(i)) == []  # 20 - 15 > -10
    assert t.observe("good", Kind.PROVENANCE, 20.0) != []


def test_an_honest_peer_with_occasional_mishaps_is_never_isolated() -> None:
    t = LocalTrust()
    now = 0.0
    for day in range(30):  # a replay and a stall every few hours, a month long
        for k in range(6):
            now = day * 86_400.0 + k * 4 * H
            assert t.observe("h", Kind.REPLAY, now) == []
            assert t.observe("h", Kind.STALL, now) == []
    assert not t.isolated(now)


def test_the_book_is_bounded_and_keeps_isolated_peers() -> None:
    t = LocalTrust(TrustConfig(max_peers=3))
    t.observe("bad", Kind.PROVENANCE, 0.0)
    for p in ("a", "b", "c", "d"):
        t.observe(p, Kind.STALL, 1.0)
    peers = t.status(2.0)["peers"]
    assert len(peers) == 3 and "bad" in peers and t.is_isolated("bad", 2.0)


def test_prune_forgets_decayed_strangers_never_an_isolated_peer() -> None:
    t = LocalTrust()
    t.observe("once-slow", Kind.STALL, 0.0)  # -1, halves every hour
    t.observe("helpful", Kind.USEFUL_UPDATE, 0.0)  # +1, halves every week
    t.observe("liar", Kind.PROVENANCE, 0.0)  # isolated at once, for an hour
    for _ in range(11):
        t.observe("flaky", Kind.STALL, 0.0)  # isolated by its score
    assert t.prune(H) == 0  # nothing has decayed to nothing yet
    day = 24 * H
    assert t.prune(day) == 1  # the stall is gone (2^-24); the rest holds
    assert set(t.status(day)["peers"]) == {"helpful", "liar", "flaky"}
    assert t.is_isolated("liar", 0.5 * H) and t.prune(0.5 * H) == 0
    # long after the evidence decayed, peers once isolated are still remembered
    t.tick(1000 * day)
    assert t.prune(1000 * day) == 1  # only "helpful"
    assert set(t.status(1000 * day)["peers"]) == {"liar", "flaky"}
    (again,) = t.observe("liar", Kind.PROVENANCE, 1000 * day)
    assert isinstance(again, Isolate) and again.until == 1000 * day + 2 * H  # still doubling


def test_config_is_checked() -> None:
    with pytest.raises(UsageError):
        TrustConfig(isolate_below=1.0)


def test_a_newcomer_counts_only_as_far_as_its_history_justifies() -> None:
    t = LocalTrust()
    assert t.weight("new", 0.0)[0] == pytest.approx(0.25)  # its first update
    t.observe("new", Kind.USEFUL_UPDATE, 0.0)  # ... was aggregated
    assert t.weight("new", 0.0)[0] == pytest.approx(0.5)
    t.observe("new", Kind.USEFUL_UPDATE, 1.0)
    assert t.weight("new", 1.0)[0] == pytest.approx(0.75, abs=1e-3)
    t.observe("new", Kind.USEFUL_UPDATE, 2.0)
    assert t.weight("new", 2.0)[0] == pytest.approx(1.0, abs=1e-3)
    t.observe("new", Kind.BAD_SIGNATURE, 3.0)  # -5 of the -10 that isolate: half weight
    w, why = t.weight("new", 3.0)
    assert w == pytest.approx(0.5, abs=1e-3) and "evidence -5.00" in why
    t.observe("liar", Kind.PROVENANCE, 0.0)
    assert t.weight("liar", 1.0) == (0.0, "isolated: proof: provenance: ")
    assert t.weight("unknown", 0.0)[0] == pytest.approx(0.25)


def test_history_counts_useful_updates_decayed_and_is_zero_for_a_newcomer() -> None:
    trust = LocalTrust()
    assert trust.history("new", 0.0) == 0.0
    trust.observe("old", Kind.STALL, 0.0)
    assert trust.history("old", 0.0) == 0.0  # other evidence is no history
    trust.observe("old", Kind.USEFUL_UPDATE, 0.0)
    trust.observe("old", Kind.USEFUL_UPDATE, 0.0)
    assert trust.history("old", 0.0) == pytest.approx(2.0)
    week = DEFAULT_PARAMS[Kind.USEFUL_UPDATE].half_life_s
    assert trust.history("old", week) == pytest.approx(1.0)
