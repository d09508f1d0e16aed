"""EigenTrust global trust (pure): a distribution, anchored, weighted by the reporters' own
trust, so Sybil clusters and colluders get only what trusted nodes give them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2phier.errors import UsageError
from p2phier.trust.global_trust import GlobalTrustConfig, global_trust


def _edges(pairs: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, c, v = zip(*pairs, strict=True) if pairs else ((), (), ())
    return np.array(r, np.int64), np.array(c, np.int64), np.array(v, np.float64)


def test_trust_flows_from_the_anchors_along_positive_opinions() -> None:
    # 0 (anchor) trusts 1, 1 trusts 2; 3 and 4 are a Sybil pair vouching for each other;
    # 5 slanders 1 and praises 3 (but nobody trusts 5)
    r, c, v = _edges([(0, 1, 1.0), (1, 2, 1.0), (3, 4, 9.0), (4, 3, 9.0), (5, 1, -9.0),
                      (5, 3, 9.0)])  # fmt: skip
    res = global_trust(6, r, c, v, np.array([0]))
    t = res.trust
    assert res.converged and t.sum() == pytest.approx(1.0)
    assert t[0] > 0 and t[1] > 0 and t[2] > 0
    assert t[3] == t[4] == t[5] == 0.0  # no trusted node vouches for them
    # 5's slander of 1 costs 1 nothing
    r2, c2, v2 = _edges([(0, 1, 1.0), (1, 2, 1.0)])
    assert global_trust(6, r2, c2, v2, np.array([0])).trust[1] == pytest.approx(t[1])


def test_a_report_counts_by_its_reporters_trust_not_by_its_numbers() -> None:
    # 1 and 2 are both trusted by the anchor; 1 says "9000" of 3, 2 says "1" of 4: each
    # reporter's opinions are normalised, so 3 and 4 get the same
    r, c, v = _edges([(0, 1, 1.0), (0, 2, 1.0), (1, 3, 9000.0), (2, 4, 1.0)])
    t = global_trust(5, r, c, v, np.array([0])).trust
    assert t[3] == pytest.approx(t[4])


@settings(max_examples=50, deadline=None)
@given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.floats(-10, 10)),
                max_size=200,
            ),
        )
    )
)
def test_always_a_distribution(case: tuple[int, list[tuple[int, int, float]]]) -> None:
    n, pairs = case
    r, c, v = _edges(pairs)
    res = global_trust(n, r, c, v, np.array([0]), config=GlobalTrustConfig(max_iterations=500))
    assert res.trust.sum() == pytest.approx(1.0) and (res.trust >= 0).all()


def test_a_warm_start_converges_in_fewer_steps() -> None:
    rng = np.random.default_rng(0)
    n = 500
    r = np.repeat(np.arange(n), 10)
    c = rng.integers(0, n, r.size)
    v = rng.random(r.size)
    cold = global_trust(n, r, c, v, np.arange(5))
    warm = global_trust(n, r, c, v * 1.01, np.arange(5), warm=cold.trust)
    assert warm.iterations < cold.iterations


def test_inputs_are_checked() -> None:
    r, c, v = _edges([(0, 1, 1.0)])
    with pytest.raises(UsageError):
        global_trust(2, r, c, v, np.array([], np.int64))
    with pytest.raises(UsageError):
        global_trust(1, r, c, v, np.array([0]))
    with pytest.raises(UsageError):
        GlobalTrustConfig(alpha=1.0)
