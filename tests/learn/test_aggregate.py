"""Aggregation rules and LoRA <-> merged-delta conversion (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.errors import LearnError
from p2phier.learn.aggregate import (
    DELTA_SUFFIX,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    OWN_UPDATE,
    AggregationConfig,
    AggregationError,
    ChildUpdate,
    LoraSpec,
    Rule,
    aggregate,
    cosine,
    effective_to_lora,
    global_norm,
    lora_to_effective,
    screen_round,
    subtract,
)

MOD = "base_model.model.encoder.layer.0.attention.self.query"
HEAD = "base_model.model.classifier.weight"


def _lora_state(rng: np.random.Generator, r: int = 4, out: int = 12, inp: int = 10) -> dict:
    return {
        MOD + LORA_A_SUFFIX: rng.normal(size=(r, inp)).astype(np.float32),
        MOD + LORA_B_SUFFIX: rng.normal(size=(out, r)).astype(np.float32),
        HEAD: rng.normal(size=(3, out)).astype(np.float32),
    }


def test_effective_is_scaled_product_and_heads_pass_through() -> None:
    rng = np.random.default_rng(0)
    state = _lora_state(rng)
    eff = lora_to_effective(state, LoraSpec(r=4, lora_alpha=8))
    expected = 2.0 * state[MOD + LORA_B_SUFFIX] @ state[MOD + LORA_A_SUFFIX]
    np.testing.assert_allclose(eff[MOD + DELTA_SUFFIX], expected, rtol=1e-5)
    np.testing.assert_array_equal(eff[HEAD], state[HEAD])
    assert set(eff) == {MOD + DELTA_SUFFIX, HEAD}


def test_equivalent_factorisations_give_the_same_effective_update() -> None:
    # Why products are averaged: (B R, R^-1 A) is the same adapter, yet averaging
    # the factors of the two gives a different product.
    rng = np.random.default_rng(1)
    state = _lora_state(rng)
    r_mat = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    other = dict(state)
    other[MOD + LORA_B_SUFFIX] = (state[MOD + LORA_B_SUFFIX] @ r_mat).astype(np.float32)
    other[MOD + LORA_A_SUFFIX] = (np.linalg.inv(r_mat) @ state[MOD + LORA_A_SUFFIX]).astype(
        np.float32
    )
    spec = LoraSpec(r=4, lora_alpha=4)
    e1, e2 = lora_to_effective(state, spec), lora_to_effective(other, spec)
    np.testing.assert_allclose(e1[MOD + DELTA_SUFFIX], e2[MOD + DELTA_SUFFIX], atol=1e-4)
    avg_a = (state[MOD + LORA_A_SUFFIX] + other[MOD + LORA_A_SUFFIX]) / 2
    avg_b = (state[MOD + LORA_B_SUFFIX] + other[MOD + LORA_B_SUFFIX]) / 2
    factor_avg = avg_b @ avg_a
    assert np.linalg.norm(factor_avg - e1[MOD + DELTA_SUFFIX]) > 0.1 * np.linalg.norm(
        e1[MOD + DELTA_SUFFIX]
    )
    result = aggregate([ChildUpdate("a", e1), ChildUpdate("b", e2)], AggregationConfig(Rule.FEDAVG))
    np.testing.assert_allclose(result.delta[MOD + DELTA_SUFFIX], e1[MOD + DELTA_SUFFIX], atol=1e-4)


@given(
    seed=st.integers(0, 2**32 - 1),
    rank=st.integers(1, 6),
    out=st.integers(6, 16),
    inp=st.integers(6, 16),
    alpha=st.sampled_from([1.0, 8.0, 16.0]),
)
def test_refactorise_recovers_low_rank_updates_exactly(
    seed: int, rank: int, out: int, inp: int, alpha: float
) -> None:
    rng = np.random.default_rng(seed)
    m = (rng.normal(size=(out, rank)) @ rng.normal(size=(rank, inp))).astype(np.float32)
    eff = {MOD + DELTA_SUFFIX: m, HEAD: rng.normal(size=(2, 3)).astype(np.float32)}
    ref = effective_to_lora(eff, rank, alpha)
    assert ref.state[MOD + LORA_A_SUFFIX].shape == (rank, inp)
    assert ref.state[MOD + LORA_B_SUFFIX].shape == (out, rank)
    back = lora_to_effective(ref.state, LoraSpec(r=rank, lora_alpha=alpha))
    np.testing.assert_allclose(back[MOD + DELTA_SUFFIX], m, atol=1e-3 * (1 + np.abs(m).max()))
    np.testing.assert_array_equal(back[HEAD], eff[HEAD])
    assert ref.max_relative_error < 1e-4


def test_truncation_error_is_the_svd_tail_and_deterministic() -> None:
    rng = np.random.default_rng(2)
    m = rng.normal(size=(20, 16)).astype(np.float32)
    ref = effective_to_lora({MOD + DELTA_SUFFIX: m}, 4, 8.0)
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    expected = np.sqrt(np.sum(s[4:] ** 2)) / np.linalg.norm(s)
    assert ref.relative_error[MOD] == pytest.approx(expected, rel=1e-6)
    back = lora_to_effective(ref.state, LoraSpec(r=4, lora_alpha=8.0))[MOD + DELTA_SUFFIX]
    assert np.linalg.norm(back - m) / np.linalg.norm(m) == pytest.approx(expected, rel=1e-4)
    again = effective_to_lora({MOD + DELTA_SUFFIX: m}, 4, 8.0)
    for key, value in ref.state.items():
        assert value.tobytes() == again.state[key].tobytes()


def test_lora_spec_scaling_follows_peft() -> None:
    spec = LoraSpec.from_config(
        {"r": 8, "lora_alpha": 16, "rank_pattern": {"value": 4}, "alpha_pattern": {}}
    )
    assert spec.scaling("encoder.layer.0.attention.self.query") == 2.0
    assert spec.scaling("encoder.layer.0.attention.self.value") == 4.0
    rs = LoraSpec.from_config({"r": 16, "lora_alpha": 8, "use_rslora": True})
    assert rs.scaling("x") == pytest.approx(2.0)
    with pytest.raises(AggregationError, match="DoRA"):
        LoraSpec.from_config({"r": 4, "lora_alpha": 8, "use_dora": True})
    with pytest.raises(AggregationError, match="r/lora_alpha"):
        LoraSpec.from_config({"lora_alpha": 8})


def test_unpaired_lora_factor_is_refused() -> None:
    rng = np.random.default_rng(3)
    state = _lora_state(rng)
    del state[MOD + LORA_B_SUFFIX]
    with pytest.raises(AggregationError, match=r"no .*lora_B"):
        lora_to_effective(state, LoraSpec(r=4, lora_alpha=8))


# --- robustness ---------------------------------------------------------------------


def _honest_and_attacked(seed: int = 0) -> tuple[dict, list[ChildUpdate]]:
    rng = np.random.default_rng(seed)
    true = {
        MOD + DELTA_SUFFIX: rng.normal(size=(16, 12)).astype(np.float32),
        HEAD: rng.normal(size=(3, 16)).astype(np.float32),
    }
    updates = []
    for i in range(5):
        noisy = {
            k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in true.items()
        }
        updates.append(ChildUpdate(f"honest{i}", noisy, weight=100.0))
    flipped = {k: -v for k, v in updates[0].delta.items()}
    scaled = {k: 10.0 * v for k, v in updates[1].delta.items()}
    updates.append(ChildUpdate("flipped", flipped, weight=100.0))
    updates.append(ChildUpdate("scaled", scaled, weight=100.0))
    return true, updates


def _relative_error(delta: dict, true: dict) -> float:
    return global_norm(subtract(delta, true)) / global_norm(true)


def test_fedavg_is_pulled_off_by_attackers() -> None:
    true, updates = _honest_and_attacked()
    honest_only = aggregate(updates[:5], AggregationConfig(Rule.FEDAVG))
    assert _relative_error(honest_only.delta, true) < 0.2
    attacked = aggregate(updates, AggregationConfig(Rule.FEDAVG))
    assert _relative_error(attacked.delta, true) > 0.8


@pytest.mark.parametrize(
    ("config", "bound"),
    [
        (AggregationConfig(Rule.MEDIAN), 0.3),
        (AggregationConfig(Rule.TRIMMED_MEAN, trim_ratio=0.2), 0.3),
        (AggregationConfig(Rule.NORM_CLIP), 0.4),
        (AggregationConfig(Rule.PROBE_SCORED), 0.2),
    ],
)
def test_robust_rules_resist_sign_flip_and_scaling(config: AggregationConfig, bound: float) -> None:
    true, updates = _honest_and_attacked()
    rng = np.random.default_rng(99)
    probe = {k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in true.items()}
    result = aggregate(updates, config, probe=probe)
    fed = aggregate(updates, AggregationConfig(Rule.FEDAVG))
    err = _relative_error(result.delta, true)
    assert err < bound
    assert err < 0.5 * _relative_error(fed.delta, true)
    assert cosine(result.delta, true) > 0.9


def test_probe_scoring_gives_the_sign_flipped_child_no_weight() -> None:
    true, updates = _honest_and_attacked()
    result = aggregate(updates, AggregationConfig(Rule.PROBE_SCORED), probe=true)
    by_child = {c.child: c for c in result.children}
    assert by_child["flipped"].score == 0.0
    assert by_child["flipped"].weight == 0.0
    assert by_child["scaled"].score is not None and by_child["scaled"].score > 0.9
    # the scaled child is rescaled to the probe's norm: the aggregate's norm stays near it
    assert global_norm(result.delta) <= 1.05 * global_norm(true)


def test_norm_clip_reports_clipping_and_honours_an_explicit_bound() -> None:
    _, updates = _honest_and_attacked()
    result = aggregate(updates, AggregationConfig(Rule.NORM_CLIP, clip_norm=1.0))
    assert all(c.clipped for c in result.children)
    assert global_norm(result.delta) <= 1.0 + 1e-5
    median_bound = aggregate(updates, AggregationConfig(Rule.NORM_CLIP))
    assert {c.child for c in median_bound.children if c.clipped} >= {"scaled"}


def test_probe_that_nobody_agrees_with_yields_zero_and_a_note() -> None:
    true, updates = _honest_and_attacked()
    anti = {k: -v for k, v in true.items()}
    result = aggregate(updates[:5], AggregationConfig(Rule.PROBE_SCORED), probe=anti)
    assert global_norm(result.delta) == 0.0
    assert "no update agrees" in result.note


def test_trimmed_mean_with_too_few_updates_says_it_trims_nothing() -> None:
    _, updates = _honest_and_attacked()
    result = aggregate(updates[:3], AggregationConfig(Rule.TRIMMED_MEAN, trim_ratio=0.2))
    assert "trims nothing" in result.note


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 7))
def test_order_does_not_matter_and_median_stays_in_range(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    updates = [
        ChildUpdate(f"c{i}", {"t": rng.normal(size=(3, 4)).astype(np.float32)}, weight=i + 1.0)
        for i in range(n)
    ]
    perm = list(reversed(updates))
    for rule in (Rule.FEDAVG, Rule.MEDIAN, Rule.TRIMMED_MEAN, Rule.NORM_CLIP):
        a = aggregate(updates, AggregationConfig(rule)).delta["t"]
        b = aggregate(perm, AggregationConfig(rule)).delta["t"]
        np.testing.assert_allclose(a, b, atol=1e-6)
    stacked = np.stack([u.delta["t"] for u in updates])
    med = aggregate(updates, AggregationConfig(Rule.MEDIAN)).delta["t"]
    assert np.all(med >= stacked.min(axis=0) - 1e-6)
    assert np.all(med <= stacked.max(axis=0) + 1e-6)
    same = [ChildUpdate(f"s{i}", updates[0].delta, weight=i + 1.0) for i in range(n)]
    np.testing.assert_allclose(
        aggregate(same, AggregationConfig(Rule.FEDAVG)).delta["t"], updates[0].delta["t"], atol=1e-6
    )


def test_fedavg_weights_by_example_count() -> None:
    a = ChildUpdate("a", {"t": np.ones((2,), np.float32)}, weight=3.0)
    b = ChildUpdate("b", {"t": np.zeros((2,), np.float32)}, weight=1.0)
    result = aggregate([a, b], AggregationConfig(Rule.FEDAVG))
    np.testing.assert_allclose(result.delta["t"], [0.75, 0.75])


# --- hostile input -------------------------------------------------------------------


def _u(name: str, **tensors: np.ndarray) -> ChildUpdate:
    return ChildUpdate(name, {k: v.astype(np.float32) for k, v in tensors.items()})


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "no updates"),
        ([_u("a", t=np.ones(2)), _u("a", t=np.ones(2))], "duplicate"),
        ([_u("a", t=np.ones(2)), _u("b", s=np.ones(2))], "different tensors"),
        ([_u("a", t=np.ones(2)), _u("b", t=np.ones(3))], "shape"),
        ([_u("a", t=np.ones(2)), _u("b", t=np.array([1.0, np.nan]))], "NaN"),
        ([_u("a", t=np.ones(2)), _u("b", t=np.array([1.0, np.inf]))], "NaN or inf"),
        ([ChildUpdate("a", {"t": np.ones(2, np.float32)}, weight=-1.0)], "weight"),
    ],
)
def test_bad_updates_are_refused_with_the_culprit_named(
    updates: list[ChildUpdate], message: str
) -> None:
    with pytest.raises(AggregationError, match=message) as info:
        aggregate(updates, AggregationConfig(Rule.MEDIAN))
    assert isinstance(info.value, LearnError) and isinstance(info.value, ValueError)


def test_probe_scored_needs_a_matching_nonzero_probe() -> None:
    ups = [_u("a", t=np.ones(2)), _u("b", t=np.ones(2))]
    with pytest.raises(AggregationError, match="needs the parent's probe"):
        aggregate(ups, AggregationConfig(Rule.PROBE_SCORED))
    with pytest.raises(AggregationError, match="zero"):
        aggregate(ups, AggregationConfig(Rule.PROBE_SCORED), probe={"t": np.zeros(2, np.float32)})
    with pytest.raises(AggregationError, match="same tensors"):
        aggregate(ups, AggregationConfig(Rule.PROBE_SCORED), probe={"u": np.ones(2, np.float32)})


def test_config_knobs_are_validated() -> None:
    with pytest.raises(AggregationError, match="trim_ratio"):
        AggregationConfig(Rule.TRIMMED_MEAN, trim_ratio=0.5)
    with pytest.raises(AggregationError, match="clip_norm"):
        AggregationConfig(Rule.NORM_CLIP, clip_norm=0.0)
    with pytest.raises(AggregationError, match="rank"):
        effective_to_lora({"x" + DELTA_SUFFIX: np.ones((2, 2), np.float32)}, 0, 8.0)


# --- screen_round: what a parent's round keeps ------------------------------------------------


def _round_updates(seed: int = 0) -> list[ChildUpdate]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(6, 8)).astype(np.float32)
    out = []
    for i in range(6):
        noise = rng.normal(size=(6, 8)).astype(np.float32) * 0.5
        out.append(ChildUpdate(f"c{i}", {"m.lora_delta": direction + noise}, 1.0))
    out.append(ChildUpdate(OWN_UPDATE, {"m.lora_delta": direction.copy()}, 1.0))
    return out


def test_screen_round_keeps_trusted_and_good_drops_flagged_and_weight_zero() -> None:
    updates = _round_updates()
    own = updates[-1].delta
    flip = ChildUpdate("flip", {k: -v for k, v in updates[0].delta.items()}, 1.0)
    zero_weight = ChildUpdate(
        "newly-distrusted", {k: 1.3 * v for k, v in updates[1].delta.items()}, 0.0
    )
    kept, verdicts = screen_round([*updates, flip, zero_weight], own, trusted=(OWN_UPDATE,))
    names = [u.child for u in kept]
    assert OWN_UPDATE in names and OWN_UPDATE not in verdicts  # trusted: never screened
    assert "flip" not in names and "opposes" in verdicts["flip"].flags
    # weight 0: judged (its evidence counts) but never aggregated
    assert "newly-distrusted" in verdicts and verdicts["newly-distrusted"].ok
    assert "newly-distrusted" not in names
    assert {f"c{i}" for i in range(6)} <= set(names)


def test_screen_round_bounds_a_large_update() -> None:
    updates = _round_updates(1)
    big = ChildUpdate("big", {k: 2.5 * v for k, v in updates[2].delta.items()}, 1.0)
    kept, verdicts = screen_round([*updates, big], updates[-1].delta, trusted=(OWN_UPDATE,))
    (bounded,) = [u for u in kept if u.child == "big"]
    median = float(np.median([global_norm(u.delta) for u in [*updates[:-1], big]]))
    assert global_norm(bounded.delta) == pytest.approx(1.5 * median, rel=1e-4)
    assert verdicts["big"].scale < 1


def test_screen_round_refuses_invalid_updates_before_judging() -> None:
    bad = ChildUpdate("nan", {"m.lora_delta": np.full((6, 8), np.nan, np.float32)}, 1.0)
    with pytest.raises(AggregationError, match="NaN"):
        screen_round([*_round_updates(), bad], None)


def test_plain_fedavg_is_captured_by_one_scaled_update_and_the_screen_is_not() -> None:
    """Why the screen matters: one child boosting its update 10x (model replacement) owns a
    plain FedAvg aggregate; after screen_round it has no say at all."""
    updates = _round_updates(2)
    honest_mean = {k: np.mean([u.delta[k] for u in updates[:-1]], axis=0) for k in updates[0].delta}
    evil = {k: -10.0 * v for k, v in honest_mean.items()}
    attacked = [*updates, ChildUpdate("evil", evil, 1.0)]
    plain = aggregate(attacked, AggregationConfig(Rule.FEDAVG), partial=True).delta
    assert cosine(plain, honest_mean) < -0.5  # the attacker's direction won
    kept, verdicts = screen_round(attacked, updates[-1].delta, trusted=(OWN_UPDATE,))
    assert "evil" not in [u.child for u in kept] and not verdicts["evil"].ok
    screened = aggregate(kept, AggregationConfig(Rule.FEDAVG), partial=True).delta
    assert cosine(screened, honest_mean) > 0.9


def test_refactorised_factors_have_fixed_signs() -> None:
    """Issue 15: a version travels as a delta on the previous one.  Each singular pair's
    sign is arbitrary in LAPACK (it flips with small changes of the matrix), which would
    make two nearly equal models' factors differ by twice their size; the sign is fixed:
    the largest entry of each ``B`` column is positive, the product unchanged."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = (rng.standard_normal((24, 4)) @ rng.standard_normal((4, 20))).astype(np.float32)
        ref = effective_to_lora({MOD + DELTA_SUFFIX: m}, 4, 8.0)
        b, a = ref.state[MOD + LORA_B_SUFFIX], ref.state[MOD + LORA_A_SUFFIX]
        rows = np.argmax(np.abs(b), axis=0)
        assert np.all(b[rows, np.arange(b.shape[1])] > 0)
        np.testing.assert_allclose(b @ a * (8.0 / 4), m, atol=1e-4)


def test_a_rank_above_the_matrixs_own_is_padded_with_exact_zeros() -> None:
    """Issue 15: versions and parents' updates keep the plan's rank whatever the merged
    delta's own, so consecutive ones have one shape (each travels as a delta on the
    previous); the components the matrix lacks are exact zeros (free once compressed)."""
    rng = np.random.default_rng(5)
    m = (rng.standard_normal((24, 3)) @ rng.standard_normal((3, 20))).astype(np.float32)
    ref = effective_to_lora({MOD + DELTA_SUFFIX: m}, 16, 32.0)
    b, a = ref.state[MOD + LORA_B_SUFFIX], ref.state[MOD + LORA_A_SUFFIX]
    assert b.shape == (24, 16) and a.shape == (16, 20)
    assert not b[:, 3:].any() and not a[3:, :].any()
    np.testing.assert_allclose(b @ a * (32.0 / 16), m, atol=1e-4)
    assert ref.max_relative_error < 1e-5
