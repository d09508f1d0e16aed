"""The update screen (p2phier/trust/quality.py): each attack's signature is flagged, honest
updates are not, and the gates keep a converged or disagreeing round from flagging anyone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2phier.errors import UsageError
from p2phier.trust.quality import QualityConfig, TrustedLoss, screen

DIM = 400
ON = QualityConfig(harm_ratio=0.15)  # the harmful check (off by default)


def honest_round(
    seed: int, n: int = 8, signal: float = 1.0, spread: float = 0.6
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``n`` honest updates: one shared direction (``signal``) plus each child's own
    (non-IID) part; and the parent's probe, from the same direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)

    def one() -> dict[str, np.ndarray]:
        own = rng.normal(size=DIM)
        v = signal * direction + spread * own / np.linalg.norm(own)
        return {"a.lora_delta": v[:300].reshape(20, 15), "head": v[300:]}

    return {f"c{i}": one() for i in range(n)}, one()


def flags(verdicts: dict) -> dict[str, tuple[str, ...]]:  # type: ignore[type-arg]
    return {a: v.flags for a, v in verdicts.items() if v.flags}


@pytest.mark.parametrize("seed", range(5))
def test_honest_round_flags_nobody(seed: int) -> None:
    updates, probe = honest_round(seed)
    verdicts = screen(updates, probe)
    assert flags(verdicts) == {}
    assert all(v.penalty == 0 for v in verdicts.values())
    assert all(v.cos_probe is not None and v.cos_probe > 0.3 for v in verdicts.values())


@pytest.mark.parametrize(
    ("attack", "flag"),
    [
        ("sign-flip", "opposes"),
        ("scaling", "outsized"),
        ("free-rider", "idle"),
        ("noise", "unaligned"),
    ],
)
def test_each_attack_is_flagged(attack: str, flag: str) -> None:
    updates, probe = honest_round(1)
    rng = np.random.default_rng(9)
    good = updates["c0"]
    if attack == "sign-flip":
        bad = {k: -v for k, v in good.items()}
    elif attack == "scaling":
        bad = {k: 5 * v for k, v in good.items()}
    elif attack == "free-rider":
        bad = {k: 0.001 * v for k, v in good.items()}
    else:
        # noise of an honest norm, orthogonal to both references (as high-dimensional
        # noise is; a 400-element toy needs it made so)
        raw = {k: rng.normal(size=v.shape) for k, v in good.items()}
        flat = np.concatenate([raw[k].ravel() for k in sorted(raw)])
        for ref in (probe, {k: np.mean([u[k] for u in updates.values()], 0) for k in good}):
            r = np.concatenate([np.asarray(ref[k]).ravel() for k in sorted(raw)])
            flat -= flat @ r / (r @ r) * r
        flat *= np.linalg.norm(np.concatenate([good[k].ravel() for k in sorted(good)])) / (
            np.linalg.norm(flat)
        )
        sizes = np.cumsum([raw[k].size for k in sorted(raw)])[:-1]
        bad = {
            k: part.reshape(raw[k].shape)
            for k, part in zip(sorted(raw), np.split(flat, sizes), strict=True)
        }
    updates["bad"] = bad
    verdicts = screen(updates, probe)
    assert flag in verdicts["bad"].flags, verdicts["bad"]
    assert verdicts["bad"].penalty >= 0.5
    assert not verdicts["bad"].ok
    assert flags(verdicts).keys() == {"bad"}, flags(verdicts)


def test_colluders_sending_one_update_are_twins() -> None:
    updates, probe = honest_round(2)
    crafted = {k: np.mean([u[k] for u in updates.values()], 0) * 0.9 for k in updates["c0"]}
    updates["x1"] = crafted
    updates["x2"] = {k: v.copy() for k, v in crafted.items()}
    verdicts = screen(updates, probe)
    assert verdicts["x1"].twin == "x2" and verdicts["x2"].twin == "x1"
    assert flags(verdicts) == {"x1": ("twin",), "x2": ("twin",)}


def test_scaled_copy_is_not_a_twin() -> None:
    updates, probe = honest_round(3)
    updates["big"] = {k: 1.2 * v for k, v in updates["c0"].items()}
    verdicts = screen(updates, probe)
    assert verdicts["big"].twin is None


def test_scale_bounds_every_update_to_the_clip_ratio() -> None:
    updates, probe = honest_round(4)
    updates["big"] = {k: 2.5 * v for k, v in updates["c3"].items()}
    v = screen(updates, probe)["big"]
    assert v.ok  # 2.5x is under the outsized ratio: bounded, not flagged
    assert v.norm_ratio * v.scale == pytest.approx(QualityConfig().clip_ratio, rel=1e-6)


def test_a_converged_round_flags_no_direction() -> None:
    """Noise-like honest updates (no shared direction): cosines swing both ways, and
    neither opposition nor noise may be judged."""
    for seed in range(5):
        updates, probe = honest_round(5 + 10 * seed, signal=0.0, spread=1.0)
        verdicts = screen(updates, probe)
        assert all(v.cos_probe is None for v in verdicts.values())  # the probe says nothing
        assert flags(verdicts) == {}
        # ...but the round record still shows each update's cosine with it, as not counted
        for v in verdicts.values():
            assert v.cos_probe_unused is not None
            assert f"cos probe {v.cos_probe_unused:+.2f} not counted" in v.reason()
    agreeing, probe = honest_round(4)
    assert all(v.cos_probe_unused is None for v in screen(agreeing, probe).values())


def test_a_weakly_agreeing_round_still_flags_an_update_far_below_it() -> None:
    """Non-IID children on real LoRA agree only weakly (cosines with the consensus of
    0.1-0.2, measured), under the round's agreement gate; an update that opposes them lies
    far below the round's own spread (robust z) and is flagged all the same."""
    updates, _ = honest_round(11, n=9, signal=0.25, spread=1.0)
    honest = screen(updates, None)
    assert flags(honest) == {}
    median = float(np.median([v.cos_consensus for v in honest.values()]))
    assert 0.05 < median < QualityConfig().consensus_min  # the gate stays shut
    updates["flip"] = {k: -v for k, v in updates["c0"].items()}
    verdicts = screen(updates, None)
    assert "opposes" in verdicts["flip"].flags, verdicts["flip"]
    assert flags(verdicts).keys() == {"flip"}


@pytest.mark.parametrize("seed", range(20))
def test_a_colluder_is_an_outlier_of_the_others_spread_not_of_its_own(seed: int) -> None:
    """A weakly agreeing round of six: five honest children, one of them a dissenter
    (partly against the others' mean, cosine about -0.3), and an IPM colluder (-0.5 x the
    honest mean, plus noise: about -0.6).  Measured in its own cosine's spread (as before)
    the colluder went unflagged in a real run (z -4.0) while dissenters were flagged
    fully in 7 of these 20 rounds; measured in the others' spread (leave-one-out, its
    MAD at least ``oppose_z_floor``) the colluder is flagged every time and an honest
    child earns at most a trace of evidence."""
    rng = np.random.default_rng(100 + seed)
    updates, _ = honest_round(seed, n=5, signal=0.25, spread=1.0)

    def flat(u: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([u["a.lora_delta"].ravel(), u["head"]])

    def shaped(v: np.ndarray) -> dict[str, np.ndarray]:
        return {"a.lora_delta": v[:300].reshape(20, 15), "head": v[300:]}

    mean = np.mean([flat(u) for u in updates.values()], axis=0)
    noise = rng.normal(size=DIM)
    noise *= np.linalg.norm(mean) / np.linalg.norm(noise)
    updates["ipm"] = shaped(-0.5 * mean + 0.5 * noise)
    own = rng.normal(size=DIM)
    own *= np.linalg.norm(flat(updates["c0"])) / np.linalg.norm(own)
    updates["dissent"] = shaped(own - 0.35 * np.linalg.norm(own) * mean / np.linalg.norm(mean))
    verdicts = screen(updates, None)
    assert (
        verdicts["dissent"].cos_consensus is not None and verdicts["dissent"].cos_consensus < -0.15
    )
    assert "opposes" in verdicts["ipm"].flags, verdicts["ipm"]
    assert all(v.penalty < 0.1 for a, v in verdicts.items() if a != "ipm"), verdicts


def test_a_converged_round_flags_only_a_far_larger_update() -> None:
    updates, probe = honest_round(6, signal=0.0, spread=1.0)
    updates["outlier"] = {k: 4 * v for k, v in updates["c0"].items()}  # x4: bounded only
    updates["boost"] = {k: 9 * v for k, v in updates["c1"].items()}  # x9: flagged
    verdicts = screen(updates, probe)
    assert verdicts["outlier"].ok and verdicts["outlier"].scale < 1
    assert "outsized" in verdicts["boost"].flags


def test_few_updates_without_probe_judge_no_direction() -> None:
    updates, _ = honest_round(7, n=2)
    updates["c1"] = {k: -v for k, v in updates["c0"].items()}
    verdicts = screen(updates, None)
    assert all(v.cos_consensus is None and v.cos_probe is None for v in verdicts.values())
    assert flags(verdicts) == {}


def test_partial_updates_compare_on_their_tensors() -> None:
    updates, probe = honest_round(8)
    updates["shallow"] = {"head": updates["c0"]["head"]}  # covers the head only
    v = screen(updates, probe)["shallow"]
    assert v.cos_probe is not None and v.cos_consensus is not None
    assert "opposes" not in v.flags and "unaligned" not in v.flags


def test_reason_names_flags_and_figures() -> None:
    updates, probe = honest_round(1)
    updates["flip"] = {k: -v for k, v in updates["c0"].items()}
    reason = screen(updates, probe)["flip"].reason()
    assert reason.startswith("opposes (") and "cos probe -" in reason


def test_empty_round_and_bad_config() -> None:
    assert screen({}, None) == {}
    with pytest.raises(UsageError):
        QualityConfig(clip_ratio=4.0, outsized_ratio=3.0)
    with pytest.raises(UsageError):
        QualityConfig(unaligned_below=0.3, consensus_min=0.2)
    with pytest.raises(UsageError):
        QualityConfig(min_updates=1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=6, max_size=6
        ),
        min_size=1,
        max_size=7,
    ),
    st.booleans(),
)
def test_any_finite_round_gets_a_bounded_verdict(rows: list[list[float]], probe: bool) -> None:
    updates = {f"u{i}": {"t": np.array(r, np.float32)} for i, r in enumerate(rows)}
    ref = {"t": np.array(rows[0], np.float32)} if probe else None
    verdicts = screen(updates, ref)
    assert set(verdicts) == set(updates)
    for v in verdicts.values():
        assert 0.0 <= v.penalty <= 1.0
        assert 0.0 < v.scale <= 1.0
        assert v.ok == (not v.flags)
        for c in (v.cos_probe, v.cos_consensus):
            assert c is None or -1.0 - 1e-9 <= c <= 1.0 + 1e-9


def test_a_small_family_is_judged_by_norms_and_twins_only() -> None:
    """With fewer than ``min_updates`` updates there is no consensus, and the parent's
    own update alone cannot tell a child of another sub-domain (whose update may well
    oppose it) from an attacker: no direction is judged."""
    updates, probe = honest_round(10, n=3)
    updates["other-subdomain"] = {k: -v for k, v in probe.items()}  # opposes the parent's own
    verdicts = screen(updates, probe)
    assert all(v.cos_consensus is None and v.cos_probe is None for v in verdicts.values())
    assert flags(verdicts) == {}


def test_an_update_that_harms_the_trusted_set_is_flagged_whatever_its_direction() -> None:
    """A label flipper's update looks like any other (here: an honest-looking one); what
    gives it away is what it does, applied alone, to the parent's held-out set."""
    updates, probe = honest_round(3)
    after = {a: 1.0 - 0.01 * i for i, a in enumerate(sorted(updates))}  # honest: better
    after["c1"] = 1.0 + 0.1 * np.log(5)  # an honest child costing a little (0.1: no penalty)
    after["c2"] = 1.0 + 0.3 * np.log(5)  # the flipper: 0.3 of the chance loss
    loss = TrustedLoss(before=1.0, after=after, unit=float(np.log(5)))
    off = screen(updates, probe, loss=loss)  # the default: measured, not judged
    assert flags(off) == {} and off["c2"].harm == pytest.approx(0.3)
    verdicts = screen(updates, probe, ON, loss=loss)
    assert flags(verdicts) == {"c2": ("harmful",)}
    assert verdicts["c2"].harm == pytest.approx(0.3)
    assert verdicts["c2"].penalty == pytest.approx((0.3 - 0.15) / 0.2)
    assert verdicts["c1"].penalty == 0.0 and verdicts["c0"].harm == 0.0
    assert "harm +0.30" in verdicts["c2"].reason()
    # graded: a smaller harm is evidence without a flag
    after["c2"] = 1.0 + 0.2 * np.log(5)
    v = screen(updates, probe, ON, loss=TrustedLoss(1.0, after, float(np.log(5))))["c2"]
    assert v.ok and v.penalty == pytest.approx(0.25)


def test_harm_is_judged_only_with_enough_updates_and_for_authors_measured() -> None:
    updates, probe = honest_round(4, n=3)
    loss = TrustedLoss(1.0, {a: 3.0 for a in updates}, 1.6)
    assert flags(screen(updates, probe, ON, loss=loss)) == {}  # fewer than min_updates
    updates, probe = honest_round(4)
    loss = TrustedLoss(1.0, {"c0": 3.0, "c1": 0.9, "c2": 0.95}, 1.6)
    verdicts = screen(updates, probe, ON, loss=loss)
    assert flags(verdicts) == {"c0": ("harmful",)}
    assert verdicts["c3"].harm is None


def test_where_every_child_overfits_harm_counts_over_the_median() -> None:
    """A small model whose children overfit their few examples: every update raises the
    held-out loss.  Only what an update adds over the round's median counts."""
    updates, probe = honest_round(6)
    after = {a: 1.6 + 0.3 + 0.01 * i for i, a in enumerate(sorted(updates))}
    after["c4"] = 1.6 + 0.3 + 0.5 * np.log(5)
    verdicts = screen(updates, probe, ON, loss=TrustedLoss(1.6, after, float(np.log(5))))
    assert flags(verdicts) == {"c4": ("harmful",)}
    assert max(v.harm or 0.0 for a, v in verdicts.items() if a != "c4") < 0.05


def test_a_trusted_loss_must_be_finite() -> None:
    with pytest.raises(UsageError):
        TrustedLoss(float("nan"), {}, 1.0)
    with pytest.raises(UsageError):
        TrustedLoss(1.0, {"a": -1.0}, 1.0)
    with pytest.raises(UsageError):
        TrustedLoss(1.0, {}, 0.0)
    with pytest.raises(UsageError):
        QualityConfig(harm_span=0.0)


def _flat(u: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(u[k], np.float64).ravel() for k in sorted(u)])


def _shaped(like: dict[str, np.ndarray], flat: np.ndarray) -> dict[str, np.ndarray]:
    sizes = np.cumsum([like[k].size for k in sorted(like)])[:-1]
    parts = np.split(flat, sizes)
    return {k: p.reshape(like[k].shape) for k, p in zip(sorted(like), parts, strict=True)}


def _orthogonal(seed: int, *refs: np.ndarray) -> np.ndarray:
    """A unit vector orthogonal to every one of ``refs``."""
    v = np.random.default_rng(seed).normal(size=DIM)
    for _ in range(2):
        for r in refs:
            v -= v @ r / (r @ r) * r
    return v / np.linalg.norm(v)


def test_an_update_that_echoes_the_round_is_flagged_where_children_differ() -> None:
    """A free-rider sending the mean of its siblings' updates (ALIE with one attacker:
    the paper's z is 0) sits closer to the round's middle than any honest child of its
    own data; where the children all agree (IID) no gap opens and nobody is flagged."""
    updates, probe = honest_round(12, n=9, signal=0.8, spread=1.0)
    honest = screen(updates, probe)
    assert flags(honest) == {}
    assert max(v.cos_consensus or 0 for v in honest.values()) < QualityConfig().echo_above
    updates["echo"] = {k: np.mean([u[k] for u in updates.values()], 0) for k in updates["c0"]}
    verdicts = screen(updates, probe)
    assert flags(verdicts) == {"echo": ("echo",)}, verdicts["echo"]
    assert verdicts["echo"].penalty == 1.0
    iid, iid_probe = honest_round(13, n=9, signal=1.0, spread=0.25)
    iid["mean"] = {k: np.mean([u[k] for u in iid.values()], 0) for k in iid["c0"]}
    assert flags(screen(iid, iid_probe)) == {}


def test_a_large_update_in_an_agreeing_round_is_evidence_not_a_flag() -> None:
    updates, probe = honest_round(4)
    cfg = QualityConfig()
    for times, expected in ((2.3, 0.0), (2.7, 0.45), (2.9, 0.85)):
        updates["big"] = {k: times * v for k, v in updates["c3"].items()}
        v = screen(updates, probe)["big"]
        assert v.ok and v.scale < 1, v  # bounded, still aggregated
        ratio = (v.norm_ratio - cfg.large_from) / (cfg.outsized_ratio - cfg.large_from)
        assert v.penalty == pytest.approx(max(0.0, ratio)), v
        assert v.penalty == pytest.approx(expected, abs=0.15), v
    # where the round has converged honest children differ in size: no evidence
    loose, loose_probe = honest_round(6, signal=0.0, spread=1.0)
    loose["big"] = {k: 2.9 * v for k, v in loose["c0"].items()}
    assert screen(loose, loose_probe)["big"].penalty == 0.0


def test_weak_opposition_to_both_references_is_weak_evidence() -> None:
    """Below the ``opposes`` flag, an update that points slightly against both the probe
    and the consensus (a sign flipper once the round begins to converge) is graded
    evidence, up to 0.5 where the flag begins; honest updates of the round get none."""
    # children that share the round's direction to different degrees: their cosines
    # spread (0.1-0.8), so a slightly negative one is no outlier for the z test
    rng = np.random.default_rng(14)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    rows = []
    for signal in np.linspace(0.15, 1.5, 9):
        own = rng.normal(size=DIM)
        rows.append(signal * direction + own / np.linalg.norm(own))
    like = honest_round(14)[1]
    updates = {f"c{i}": _shaped(like, row) for i, row in enumerate(rows)}
    probe = _shaped(like, direction + 0.5 * _orthogonal(5, direction))
    mean = _flat({k: np.mean([u[k] for u in updates.values()], 0) for k in updates["c0"]})
    down = -mean / np.linalg.norm(mean)
    side = _orthogonal(3, mean, _flat(probe))
    norm = np.linalg.norm(_flat(updates["c0"]))
    updates["weak"] = _shaped(updates["c0"], norm * (0.12 * down + np.sqrt(1 - 0.12**2) * side))
    verdicts = screen(updates, probe)
    v = verdicts["weak"]
    assert v.cos_probe is not None and v.cos_consensus is not None
    assert max(v.cos_probe, v.cos_consensus) < 0, v
    assert v.ok and 0.1 < v.penalty < 0.5, v
    assert all(verdicts[a].penalty == 0 for a in updates if a != "weak")


def test_noise_the_z_test_calls_opposing_is_flagged_as_noise_too() -> None:
    """In a round that agrees tightly, an update orthogonal to everything lies far below
    the round's cosines (the z test's ``opposes``); its near-zero cosines make it noise,
    a full flag, not a graded one."""
    updates, probe = honest_round(15, n=9, signal=1.0, spread=0.3)
    mean = _flat({k: np.mean([u[k] for u in updates.values()], 0) for k in updates["c0"]})
    noise = _orthogonal(4, mean, _flat(probe)) * np.linalg.norm(_flat(updates["c0"]))
    updates["noise"] = _shaped(updates["c0"], noise)
    v = screen(updates, probe)["noise"]
    assert "unaligned" in v.flags and v.penalty == 1.0, v


LABELS = ("business", "sport", "tech")


def mass(diag: float, toward: dict[tuple[str, str], float] | None = None) -> dict:  # type: ignore[type-arg]
    """Per label, the mean probability of each label on its examples: ``diag`` on its own,
    the rest spread evenly, then the ``toward[(l, k)]`` moves of l's examples to k."""
    rest = (1.0 - diag) / (len(LABELS) - 1)
    m = {lo: {k: diag if k == lo else rest for k in LABELS} for lo in LABELS}
    for (lo, k), amount in (toward or {}).items():
        m[lo][k] += amount
        m[lo][lo] -= amount
    return m


def mislabel_loss(after: dict, per_label: int = 8) -> TrustedLoss:  # type: ignore[type-arg]
    return TrustedLoss(
        1.0, {a: 1.0 for a in after}, float(np.log(3)),
        before_mass=mass(0.5), after_mass=after, label_counts={k: per_label for k in LABELS},
    )  # fmt: skip


def test_an_update_that_teaches_one_labels_examples_as_another_is_flagged() -> None:
    """A label flipper (its sport articles labelled tech) moves the trusted set's sport
    examples to tech while tech's own examples gain nothing.  Honest children teach
    their labels, moving their own examples furthest (a skewed child's bias moves the
    others a little, less than its own): not flagged, whatever their direction."""
    updates, probe = honest_round(7)
    after = {}
    for i, a in enumerate(sorted(updates)):
        k = LABELS[i % 3]  # an honest child of one label: its examples gain most
        after[a] = mass(0.5)
        for lo in LABELS:
            after[a][lo][k] += 0.3 if lo == k else 0.1
            after[a][lo][lo if lo != k else LABELS[(i + 1) % 3]] -= 0.3 if lo == k else 0.1
    after["c3"] = mass(0.5, {("sport", "tech"): 0.4, ("tech", "sport"): 0.1})
    verdicts = screen(updates, probe, loss=mislabel_loss(after))  # on by default
    assert flags(verdicts) == {"c3": ("mislabels",)}
    v = verdicts["c3"]
    # sport -> tech: 0.4 of sport's way left to tech (0.75) = 0.53; tech's own: -0.1;
    # in units of the round's median teaching (an honest child's own label: 0.3 of 0.5)
    assert v.mislabel == pytest.approx((0.4 / 0.75) / (0.3 / 0.5), abs=1e-6)
    assert v.penalty == 1.0 and "mislabel +0.89" in v.reason()
    assert all(verdicts[a].mislabel <= 0 for a in verdicts if a != "c3")  # type: ignore[operator]
    off = screen(updates, probe, QualityConfig(mislabel_from=None), loss=mislabel_loss(after))
    assert flags(off) == {}


def test_mislabels_weighs_a_move_in_the_trusted_sets_noise() -> None:
    """A per-label mean over few examples is noisy: a move that is a flag with 20 trusted
    examples per label is weaker evidence with 8 (thresholds x sqrt(20 / 8)), and the
    fewest label counted decides."""
    updates, probe = honest_round(7)
    after = {}
    for i, a in enumerate(sorted(updates)):
        k = LABELS[i % 3]
        after[a] = mass(0.5)
        for lo in LABELS:
            after[a][lo][k] += 0.3 if lo == k else 0.1
            after[a][lo][lo if lo != k else LABELS[(i + 1) % 3]] -= 0.3 if lo == k else 0.1
    after["c3"] = mass(0.5, {("sport", "tech"): 0.15})  # (0.15 / 0.75) / (0.3 / 0.5) = 0.33
    # the thresholds alone: in this round every other child moves exactly nothing, which
    # the outlier test (next test) would count against c3 whatever the noise
    cfg = QualityConfig(mislabel_z=None)
    full = screen(updates, probe, cfg, loss=mislabel_loss(after, cfg.mislabel_full_examples))["c3"]
    assert full.mislabel == pytest.approx(1 / 3, abs=1e-6)
    assert full.flags == ("mislabels",) and full.penalty == pytest.approx(
        (1 / 3 - cfg.mislabel_from) / cfg.mislabel_span  # type: ignore[operator]
    )
    few = screen(updates, probe, cfg, loss=mislabel_loss(after, 8))["c3"]
    noise = math.sqrt(cfg.mislabel_full_examples / 8)
    assert few.ok and few.penalty == pytest.approx(
        (1 / 3 - noise * cfg.mislabel_from) / (noise * cfg.mislabel_span)  # type: ignore[operator]
    )
    # never below the defaults
    many = screen(updates, probe, cfg, loss=mislabel_loss(after, 100))["c3"]
    assert many.flags == ("mislabels",) and many.penalty == pytest.approx(full.penalty)
    one_short = mislabel_loss(after, 100)
    one_short = TrustedLoss(
        1.0, one_short.after, one_short.unit, before_mass=one_short.before_mass,
        after_mass=after, label_counts={"business": 100, "sport": 100, "tech": 8},
    )  # fmt: skip
    assert screen(updates, probe, cfg, loss=one_short)["c3"].penalty == pytest.approx(few.penalty)


def _spread_round(seed: int, c3: float, spread: float) -> tuple[dict[str, Any], Any, TrustedLoss]:
    """A round whose children all teach business, the i-th also moving sport's examples
    to tech by ``spread`` x i (a round whose mislabel values spread that much); c3 moves
    them by ``c3``."""
    updates, probe = honest_round(seed)
    after = {}
    for i, a in enumerate(sorted(updates)):
        move = c3 if a == "c3" else spread * i
        after[a] = mass(0.5, {("sport", "tech"): move})
        after[a]["business"]["business"] += 0.3  # the round's teaching: 0.3 of 0.5
        after[a]["business"]["tech"] -= 0.3
    return updates, probe, mislabel_loss(after, 20)


def test_a_few_wrong_answers_taught_where_the_round_teaches_none_are_flagged() -> None:
    """A label flipper whose data is mostly of a label its mapping keeps teaches few wrong
    answers (bench/attacks.py, label-flip at 30 % on seed 1: 22 of 122 articles flipped,
    mislabel 0.18 and 0.11 in rounds 2 and 3, under the thresholds, where honest children
    moved at most 0.02): far above its round's spread, it is evidence, and a flag; the
    same move in a round whose honest children spread as widely is not."""
    # (0.06 / 0.75) / (0.3 / 0.5) = 0.13: under mislabel_from, over mislabel_z_min
    updates, probe, loss = _spread_round(7, 0.06, 0.0)
    v = screen(updates, probe, loss=loss)["c3"]
    assert v.mislabel == pytest.approx(0.08 / 0.6, abs=1e-6)
    # z = 0.13 / 0.02 (the MAD's floor) = 6.7: past 3.5 + 3, severity 1
    assert v.flags == ("mislabels",) and v.penalty == 1.0
    off = screen(updates, probe, QualityConfig(mislabel_z=None), loss=loss)["c3"]
    assert off.ok and off.penalty == 0.0
    # children moving sport's examples to tech by 0 to 0.21 (mislabel -0.30 to +0.17
    # over the round's median): c3's +0.14 lies within their spread
    updates, probe, loss = _spread_round(7, 0.2, 0.03)
    v = screen(updates, probe, loss=loss)
    assert v["c3"].mislabel == pytest.approx(0.1444, abs=1e-3)
    assert v["c3"].ok and v["c3"].penalty == 0.0, v["c3"]
    assert not any(x.flags for x in v.values())
    # a move under mislabel_z_min is no evidence however tight the round
    updates, probe, loss = _spread_round(7, 0.03, 0.0)  # mislabel 0.067
    v = screen(updates, probe, loss=loss)["c3"]
    assert v.mislabel is not None and 0 < v.mislabel < QualityConfig().mislabel_z_min
    assert v.ok and v.penalty == 0.0


def test_a_label_the_model_already_knows_is_not_counted_as_unmoved() -> None:
    """An honest child of tech, where the model already gives tech 0.95: its own examples
    can gain 0.05 at most, while its bias moves business examples to tech by 0.2.  As
    shares of the way each had left, tech's own moved all of theirs: not a mislabel."""
    updates, probe = honest_round(8)
    before = mass(0.5)
    before["tech"] = {"business": 0.025, "sport": 0.025, "tech": 0.95}
    teach = {lo: dict(v) for lo, v in before.items()}
    teach["tech"] = {"business": 0.0, "sport": 0.0, "tech": 1.0}
    teach["business"]["tech"] += 0.2
    teach["business"]["business"] -= 0.2
    after = {}
    for a in sorted(updates):  # the others teach business a little
        after[a] = {lo: dict(v) for lo, v in before.items()}
        after[a]["business"]["business"] += 0.2
        after[a]["business"]["sport"] -= 0.2
    after["c0"] = teach
    loss = TrustedLoss(1.0, {a: 1.0 for a in updates}, 1.1, before_mass=before,
                       after_mass=after, label_counts={k: 8 for k in LABELS})  # fmt: skip
    verdicts = screen(updates, probe, loss=loss)
    assert verdicts["c0"].ok and verdicts["c0"].mislabel is not None
    assert verdicts["c0"].mislabel < 0.3


def test_mislabels_needs_enough_examples_per_label_and_counts_over_the_median() -> None:
    updates, probe = honest_round(9)
    honest = mass(0.5, {("sport", "business"): 0.1})
    honest["business"]["business"] += 0.2  # teaches business: its own examples move most
    honest["business"]["tech"] -= 0.2
    flip = mass(0.5, {("sport", "tech"): 0.4})
    flip["business"]["business"] += 0.2
    flip["business"]["tech"] -= 0.2
    after = {a: honest for a in updates} | {"c1": flip}
    loss = mislabel_loss(after)
    assert screen(updates, probe, loss=loss)["c1"].flags == ("mislabels",)
    counts = {"business": 8, "sport": 2, "tech": 8}
    few = TrustedLoss(1.0, loss.after, loss.unit, before_mass=loss.before_mass,
                      after_mass=after, label_counts=counts)  # fmt: skip
    v = screen(updates, probe, loss=few)["c1"]  # sport has 2 examples: not judged
    assert v.ok and v.mislabel is not None and v.mislabel <= 0
    # every child moving sport to tech alike (the trusted set's sport articles read as
    # tech to everyone's data): the round's median, not a flag
    same = screen(updates, probe, loss=mislabel_loss({a: flip for a in updates}))
    assert flags(same) == {} and all(v.mislabel == 0 for v in same.values())
    # a round that teaches nothing has no unit to measure a move in
    idle = mislabel_loss({a: mass(0.5) for a in updates} | {"c1": flip})
    assert screen(updates, probe, loss=idle)["c1"].mislabel is None


@pytest.mark.parametrize("seed", range(4))
def test_an_update_against_the_round_and_the_probe_is_flagged_a_dissenter_is_not(
    seed: int,
) -> None:
    """The probe depth test.  Real MiniLM leaves agree with the round and with the parent's
    probe only weakly (cosines 0.05-0.24); a sign flipper's update is an honest one
    negated, so its cosine with the probe is about minus theirs, while an honest child of a
    topic the round opposes dissents from the round as deeply but is about orthogonal to
    the probe (which holds its topic too).  The z test alone is turned off here (as it was,
    in effect, for the real flipper: z -4.2 where it starts at 4) to see this test alone.
    Large updates (real LoRA deltas have 10^5 elements and more): a cosine's chance part
    is then small."""
    dim = 20_000
    rng = np.random.default_rng(seed)

    def unit(v: np.ndarray) -> np.ndarray:
        return np.asarray(v / np.linalg.norm(v))

    shared, majority = unit(rng.normal(size=dim)), unit(rng.normal(size=dim))
    updates = {
        f"c{i}": {"d": 0.2 * shared + 0.2 * majority + unit(rng.normal(size=dim))} for i in range(9)
    }
    probe = {"d": 0.6 * shared + unit(rng.normal(size=dim))}
    z_off = QualityConfig(oppose_z=50.0)
    flipped = {**updates, "flip": {"d": -updates["c0"]["d"]}}
    assert screen(flipped, None, z_off)["flip"].flags == ()  # no probe: nothing to see
    verdicts = screen(flipped, probe, z_off)
    assert verdicts["flip"].flags == ("opposes",) and verdicts["flip"].penalty == 1.0
    assert flags(verdicts).keys() == {"flip"}
    # the dissenter: against the majority's topic, none of the probe's direction
    dissent = {**updates, "dissent": {"d": -0.35 * majority + unit(rng.normal(size=dim))}}
    judged = screen(dissent, probe, z_off)
    assert judged["dissent"].cos_consensus is not None and judged["dissent"].cos_consensus < -0.1
    assert flags(judged) == {} and judged["dissent"].penalty < 0.1, judged["dissent"]
    # a probe the round's updates do not agree with says nothing
    stranger = {"d": unit(rng.normal(size=dim))}
    assert flags(screen(flipped, stranger, z_off)) == {}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("z", [1.0, -1.0, 0.3])
def test_a_little_is_enough_is_shifted_an_honest_update_is_not(seed: int, z: float) -> None:
    """ALIE (Baruch et al. 2019) sends the honest mean minus z standard deviations, every
    coordinate moved the same way: near the middle of the round by every distance, but
    one-sided.  An honest update's departure from the consensus is its own data's, as
    often up as down; one half as long as the rest (less data) is not one-sided either."""
    updates, probe = honest_round(seed, n=9)
    stack = {k: np.stack([u[k] for u in updates.values()]) for k in updates["c0"]}
    updates["alie"] = {k: v.mean(0) - z * v.std(0) for k, v in stack.items()}
    updates["short"] = {k: 0.5 * v for k, v in updates.pop("c8").items()}
    verdicts = screen(updates, probe)
    alie = verdicts["alie"]
    assert alie.shift is not None and abs(alie.shift) > 0.5, alie
    assert alie.flags == ("shifted",) and alie.penalty == 1.0, alie
    assert flags(verdicts).keys() == {"alie"}
    # two colluders lean the honest updates' consensus their way, and are still the outliers
    updates["alie2"] = {k: v * 1.01 for k, v in updates["alie"].items()}
    assert flags(screen(updates, probe)).keys() == {"alie", "alie2"}
    # too few updates for a consensus: no shift is measured
    few = {a: updates[a] for a in ("c0", "c1", "alie")}
    assert all(v.shift is None for v in screen(few, probe).values())


def test_a_shift_needs_a_difference() -> None:
    same = {"a": np.ones((3, 4))}
    verdicts = screen({f"c{i}": same for i in range(5)})
    assert all(v.shift is None and "shifted" not in v.flags for v in verdicts.values())
    with pytest.raises(UsageError):
        QualityConfig(shift_span=0.0)
