"""The publish rule: improve validation by a margin without hurting held domains."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.learn.timing import Evaluation, TimingError, TimingPolicy, decide

POLICY = TimingPolicy(margin=0.01, tolerance=0.02)
CURRENT = Evaluation(0.80, {"news": 0.90, "health": 0.70})


def test_publishes_when_better_and_no_domain_suffers() -> None:
    cand = Evaluation(0.83, {"news": 0.89, "health": 0.72, "sport": 0.5})
    d = decide(POLICY, CURRENT, cand, now=10.0, round=3, n_updates=2)
    assert d.publish
    assert d.improvement == pytest.approx(0.03)
    assert [c.domain for c in d.domains] == ["health", "news"]  # only held domains are checked
    assert all(c.ok for c in d.domains)


def test_refuses_an_update_that_makes_an_earlier_domain_worse() -> None:
    cand = Evaluation(0.90, {"news": 0.85, "health": 0.80})  # big gain overall, news -0.05
    d = decide(POLICY, CURRENT, cand, now=11.0, round=4, n_updates=5)
    assert not d.publish
    assert "'news'" in d.reason and "0.05" in d.reason
    news = next(c for c in d.domains if c.domain == "news")
    assert news.drop == pytest.approx(0.05) and not news.ok


def test_drop_exactly_at_tolerance_is_allowed() -> None:
    cand = Evaluation(0.85, {"news": 0.88, "health": 0.70})
    assert decide(POLICY, CURRENT, cand, now=0, round=0, n_updates=1).publish


def test_refuses_when_improvement_is_below_margin() -> None:
    cand = Evaluation(0.805, {"news": 0.95, "health": 0.75})
    d = decide(POLICY, CURRENT, cand, now=0, round=0, n_updates=1)
    assert not d.publish and "margin" in d.reason


def test_refuses_a_candidate_not_evaluated_on_a_held_domain() -> None:
    cand = Evaluation(0.95, {"news": 0.95})
    d = decide(POLICY, CURRENT, cand, now=0, round=0, n_updates=1)
    assert not d.publish and "not evaluated" in d.reason and "health" in d.reason


def test_waits_for_enough_updates() -> None:
    policy = TimingPolicy(margin=0.0, tolerance=1.0, min_updates=3)
    d = decide(policy, CURRENT, Evaluation(0.99, {}), now=0, round=0, n_updates=2)
    assert not d.publish and "waiting" in d.reason


def test_lower_is_better_metrics_such_as_perplexity() -> None:
    policy = TimingPolicy(margin=1.0, tolerance=0.02, higher_is_better=False)
    cur = Evaluation(40.0, {"news": 0.5})
    assert decide(policy, cur, Evaluation(35.0, {"news": 0.5}), now=0, round=0, n_updates=1).publish
    worse = decide(policy, cur, Evaluation(45.0, {"news": 0.5}), now=0, round=0, n_updates=1)
    assert not worse.publish and worse.improvement == -5.0


def test_every_decision_is_logged_with_its_numbers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2phier.learn.timing")
    d = decide(
        POLICY,
        CURRENT,
        Evaluation(0.9, {"news": 0.5, "health": 0.7}),
        now=7.5,
        round=9,
        n_updates=4,
    )
    record = json.loads(d.to_json())
    assert record["publish"] is False and record["now"] == 7.5 and record["round"] == 9
    assert record["validation_after"] == 0.9
    assert any(d.to_json() in r.getMessage() for r in caplog.records)


@given(before=st.floats(0, 1), after=st.floats(0, 1), v0=st.floats(0, 1), v1=st.floats(0, 1))
def test_published_candidates_never_break_the_guarantees(
    before: float, after: float, v0: float, v1: float
) -> None:
    d = decide(
        POLICY,
        Evaluation(v0, {"d": before}),
        Evaluation(v1, {"d": after}),
        now=0,
        round=0,
        n_updates=1,
    )
    if d.publish:
        assert v1 - v0 >= POLICY.margin - 1e-6
        assert before - after <= POLICY.tolerance + 1e-6
    else:
        assert v1 - v0 < POLICY.margin + 1e-6 or before - after > POLICY.tolerance - 1e-6


def test_malformed_policy_and_scores_are_refused() -> None:
    with pytest.raises(TimingError, match="margin"):
        TimingPolicy(margin=-0.1)
    with pytest.raises(TimingError, match="tolerance"):
        TimingPolicy(tolerance=float("nan"))
    with pytest.raises(TimingError, match="accuracy"):
        Evaluation(0.5, {"d": 1.5})
    with pytest.raises(TimingError, match="finite"):
        Evaluation(float("inf"))
