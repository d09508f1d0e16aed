"""EigenTrust global trust (pure): a distribution, anchored, weighted by the reporters' own
trust, so Sybil clusters and colluders get only what trusted nodes give them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2phier.errors import UsageError
from p2phier.trust.global_trust import GlobalTrustConfig, _anderson, _solve, global_trust


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


# --- the solver: Anderson-accelerated power iteration -----------------------------------

PLAIN = GlobalTrustConfig(anderson_memory=0)

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]


def _reference(
    n: int, edges: Edges, anchors: np.ndarray, alpha: float, steps: int = 10_000
) -> np.ndarray:
    """Plain power iteration to an L1 step of 1e-12 (or ``steps`` steps), written apart
    from the module."""
    r, c, v = edges
    p = np.zeros(n)
    p[np.unique(anchors)] = 1.0 / len(np.unique(anchors))
    pos = (v > 0) & (r != c)
    out = np.zeros(n)
    np.add.at(out, r[pos], v[pos])
    t = p.copy()
    for _ in range(steps):
        nxt = np.zeros(n)
        np.add.at(nxt, c[pos], v[pos] / out[r[pos]] * t[r[pos]])
        nxt = (1 - alpha) * (nxt + t[out == 0].sum() * p) + alpha * p
        if np.abs(nxt - t).sum() < 1e-12:
            return nxt
        t = nxt
    assert steps < 10_000, "the reference did not converge"
    return t


def _random_graph(n: int, seed: int) -> tuple[Edges, np.ndarray]:
    """Random positive opinions, a colluder clique that praises itself and slanders the rest,
    silent reporters (only low opinions), self-opinions and a few anchors."""
    rng = np.random.default_rng(seed)
    degree = rng.poisson(5, n)
    r = np.repeat(np.arange(n), degree)
    c = rng.integers(0, n, r.size)
    v = rng.gamma(2.0, 1.0, r.size) * np.where(rng.random(r.size) < 0.2, -1, 1)
    silent = rng.random(n) < 0.15
    v[silent[r]] = -np.abs(v[silent[r]])  # they report, but nothing positive
    clique = rng.choice(n, max(2, n // 5), replace=False)
    cr = np.repeat(clique, 8)
    cc = np.concatenate([rng.choice(clique, cr.size), rng.integers(0, n, cr.size)])
    cv = np.concatenate([np.full(cr.size, 10.0), np.full(cr.size, -10.0)])
    r, c, v = np.concatenate([r, cr, cr]), np.concatenate([c, cc]), np.concatenate([v, cv])
    anchors = rng.choice(n, int(rng.integers(1, 6)), replace=True)
    return (r.astype(np.int64), c.astype(np.int64), v), anchors.astype(np.int64)


def _bench_like(nodes: int = 2000, sybils: int = 200, degree: int = 10) -> tuple[int, Edges]:
    """bench/trust_sim.py's network, smaller: 30 % colluding slanderers and a Sybil clique."""
    rng = np.random.default_rng(0)
    n_bad = int(0.3 * nodes)
    honest, bad = np.arange(nodes - n_bad), np.arange(nodes - n_bad, nodes)
    sybil = np.arange(nodes, nodes + sybils)
    r = np.repeat(honest, degree)
    c = rng.integers(0, nodes, r.size)
    camouflage = rng.random(r.size) < 0.2
    v = np.where(c < honest.size, 1.0 + rng.normal(0, 0.3, r.size),
                 np.where(camouflage, 0.5 + rng.normal(0, 0.2, r.size), -1.0))  # fmt: skip
    br = np.repeat(bad, degree)
    rows = [r, br, br, np.repeat(sybil, degree)]
    cols = [c, rng.choice(bad, br.size), rng.choice(honest, br.size),
            rng.choice(sybil, sybils * degree)]  # fmt: skip
    vals = [v, np.full(br.size, 10.0), np.full(br.size, -10.0), np.full(sybils * degree, 10.0)]
    edges = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    return nodes + sybils, (edges[0].astype(np.int64), edges[1].astype(np.int64), edges[2])


@pytest.mark.parametrize("alpha", [0.5, 0.15])
@pytest.mark.parametrize(("n", "seed"), [(50, 0), (50, 1), (200, 2), (1000, 3), (5000, 4)])
def test_the_accelerated_result_is_within_the_stopping_rules_bound(
    n: int, seed: int, alpha: float
) -> None:
    edges, anchors = _random_graph(n, seed)
    ref = _reference(n, edges, anchors, alpha)
    cfg = GlobalTrustConfig(alpha=alpha)
    res = global_trust(n, *edges, anchors, config=cfg)
    assert res.converged
    assert (res.trust >= 0).all() and res.trust.sum() == pytest.approx(1.0, abs=1e-12)
    # |g(x) - t*| <= (1 - alpha) / alpha * tolerance (the module docstring), plus the
    # reference's own 1e-12
    assert np.abs(res.trust - ref).sum() <= (1 - alpha) / alpha * cfg.tolerance + 1e-11
    plain = global_trust(n, *edges, anchors, config=GlobalTrustConfig(alpha, anderson_memory=0))
    assert res.iterations <= plain.iterations


def test_fewer_steps_than_plain_iteration_on_a_network_like_the_benchmark() -> None:
    n, edges = _bench_like()
    anchors = np.arange(10, dtype=np.int64)
    plain = global_trust(n, *edges, anchors, config=PLAIN)
    fast = global_trust(n, *edges, anchors)
    assert plain.converged and fast.converged
    assert fast.iterations < plain.iterations and fast.iterations < 10
    assert np.abs(fast.trust - plain.trust).sum() < 2e-4  # both within 1e-4 of t*
    assert fast.trust[n - 200 :].sum() == 0.0  # the Sybils, whom nobody trusted vouches for


@pytest.mark.parametrize("memory", [0, 3])
def test_max_iterations_caps_the_power_steps(memory: int) -> None:
    n, edges = _bench_like(500, 50)
    anchors = np.arange(5, dtype=np.int64)
    for cap in (1, 2, 3):
        cfg = GlobalTrustConfig(max_iterations=cap, anderson_memory=memory)
        res = global_trust(n, *edges, anchors, config=cfg)
        assert res.iterations == cap and not res.converged
        assert (res.trust >= 0).all() and res.trust.sum() == pytest.approx(1.0)
        if memory == 0:  # exactly the cap-th power step from the anchors, as before
            ref = _reference(n, edges, anchors, 0.5, steps=cap)
            assert np.abs(res.trust - ref).sum() < 1e-12


@pytest.mark.parametrize("memory", [0, 3])
def test_a_warm_start_still_converges_in_fewer_steps(memory: int) -> None:
    n, edges = _bench_like(1000, 100)
    anchors = np.arange(10, dtype=np.int64)
    cfg = GlobalTrustConfig(anderson_memory=memory)
    cold = global_trust(n, *edges, anchors, config=cfg)
    r, c, v = edges
    changed = np.random.default_rng(1).random(v.size) < 0.01
    v2 = np.where(changed, v * 1.5, v)
    warm = global_trust(n, r, c, v2, anchors, config=cfg, warm=cold.trust)
    again = global_trust(n, r, c, v2, anchors, config=cfg)
    assert warm.converged and warm.iterations < again.iterations
    assert np.abs(warm.trust - again.trust).sum() < 2e-4
    # from the exact answer one step shows the residual is below tolerance
    exact = _reference(n, edges, anchors, 0.5)
    assert global_trust(n, *edges, anchors, config=cfg, warm=exact).iterations == 1
    # an unusable warm start (nothing positive) is the cold start; a wrong length is an error
    zero = global_trust(n, *edges, anchors, config=cfg, warm=np.zeros(n))
    assert zero.iterations == cold.iterations and np.array_equal(zero.trust, cold.trust)
    with pytest.raises(UsageError):
        global_trust(n, *edges, anchors, config=cfg, warm=np.ones(n + 1))


@pytest.mark.parametrize("memory", [0, 3])
def test_edge_cases(memory: int) -> None:
    cfg = GlobalTrustConfig(anderson_memory=memory)
    none = _edges([])
    # no edges: everything stays with the anchors, after one step that changes nothing
    res = global_trust(4, *none, np.array([1, 2]), config=cfg)
    assert res.converged and res.iterations == 1
    assert res.trust.tolist() == [0.0, 0.5, 0.5, 0.0]
    # a single node that is its own anchor
    assert global_trust(1, *none, np.array([0]), config=cfg).trust.tolist() == [1.0]
    # a single anchor with a chain behind it: 0 -> 1 -> 2 -> 0
    chain = _edges([(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0)])
    t = global_trust(3, *chain, np.array([0]), config=cfg).trust
    assert np.abs(t - _reference(3, chain, np.array([0]), 0.5)).sum() < 1e-4
    # every reporter silent (only low opinions and self-praise): trust stays with the anchors
    silent = _edges([(0, 1, -5.0), (1, 2, 0.0), (2, 2, 9.0), (3, 0, -1.0)])
    res = global_trust(4, *silent, np.array([3]), config=cfg)
    assert res.converged and res.iterations == 1 and res.trust.tolist() == [0, 0, 0, 1.0]


def test_anderson_memory_is_checked_and_a_wild_mix_falls_back_to_the_plain_step() -> None:
    with pytest.raises(UsageError):
        GlobalTrustConfig(anderson_memory=-1)
    # residuals f0 = (.1, -.1), f1 = (.2, -.2): the mix extrapolates g1 - 2 (g1 - g0), which is
    # (-1, 2), far outside the simplex
    g0, g1 = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    memory = [(g0, np.array([0.1, -0.1])), (g1, np.array([0.2, -0.2]))]
    assert _anderson(memory, 0.4) is None
    nan = [(g0, np.array([np.nan, 0.0])), (g1, np.array([0.2, -0.2]))]
    assert _anderson(nan, 0.4) is None


@pytest.mark.parametrize("bad", ["grows", "nan"])
def test_a_mix_whose_residual_grows_is_dropped_for_the_plain_step(bad: str) -> None:
    # g(x) = (1 - a) M x + a p with M column-stochastic; the 3rd power step (the first
    # Anderson candidate's) is sabotaged: the solver must drop it and still converge
    rng = np.random.default_rng(7)
    n, alpha = 30, 0.5
    m = rng.random((n, n)) * (rng.random((n, n)) < 0.2)
    m[0] += 1e-3  # no empty column
    m /= m.sum(axis=0)
    p = np.zeros(n)
    p[:2] = 0.5
    seen: list[np.ndarray] = []
    given: list[np.ndarray] = []

    def step(x: np.ndarray) -> np.ndarray:
        seen.append(x)
        gx: np.ndarray = (1 - alpha) * m @ x + alpha * p
        given.append(gx + (np.nan if bad == "nan" else 1.0) if len(seen) == 3 else gx)
        return given[-1]

    cfg = GlobalTrustConfig()
    res = _solve(step, p.copy(), cfg)
    exact = np.linalg.solve(np.eye(n) - (1 - alpha) * m, alpha * p)
    assert res.converged and res.iterations == len(seen)
    assert np.array_equal(seen[3], given[1])  # next: the plain step from the last good iterate
    assert np.abs(res.trust - exact).sum() <= cfg.tolerance
    clean = _solve(lambda x: (1 - alpha) * m @ x + alpha * p, p.copy(), cfg)
    assert res.iterations > clean.iterations  # the dropped step counts
