"""Standing (pure): negative opinions weighted by their reporters' global trust; a verdict
per peer that slander and Sybils cannot turn against an honest node."""

from __future__ import annotations

import numpy as np
import pytest

from p2phier.errors import UsageError
from p2phier.trust.global_trust import global_trust
from p2phier.trust.standing import (
    Standing,
    StandingConfig,
    anchor_share,
    distrust,
    standings,
)

ALPHA = 0.5


def _view(n: int, pairs: list[tuple[int, int, float]], anchors: list[int]) -> list[Standing]:
    r, c, v = (np.array(x) for x in zip(*pairs, strict=True))
    r, c, v = r.astype(np.int64), c.astype(np.int64), v.astype(np.float64)
    t = global_trust(n, r, c, v, np.array(anchors, np.int64)).trust
    codes = standings(t, distrust(n, r, c, v, t), alpha=ALPHA, anchors=len(anchors))
    return [Standing.from_code(x) for x in codes]


def test_a_peer_one_vouched_node_reports_at_minus_10_is_distrusted_a_newcomer_is_unknown() -> None:
    # 0 anchor vouches for 1 and 2; 1 caught 3 misbehaving (-10); 4 is a newcomer 2 met once
    s = _view(6, [(0, 1, 1.0), (0, 2, 1.0), (1, 3, -10.0), (1, 2, 1.0), (2, 4, 0.0)], [0])
    assert s[0] is s[1] is s[2] is Standing.TRUSTED
    assert s[3] is Standing.DISTRUSTED
    assert s[4] is s[5] is Standing.UNKNOWN  # nobody reported them: never distrusted


def test_slander_by_keys_nobody_trusts_weighs_nothing() -> None:
    # 1 is honest and vouched for; 2..41 are a Sybil cluster slandering 1 and 5 (a newcomer)
    pairs = [(0, 1, 1.0)] + [(i, j, -1000.0) for i in range(2, 42) for j in (1, 5)]
    pairs += [(i, i + 1, 1000.0) for i in range(2, 41)]
    s = _view(42, pairs, [0])
    assert s[1] is Standing.TRUSTED and s[5] is Standing.UNKNOWN


def test_a_reporter_cannot_shout_louder_with_big_numbers_or_many_subjects() -> None:
    n = 6
    t = np.array([0.4, 0.3, 0.3, 0.0, 0.0, 0.0])
    # 1 says -9000 of 3; 2 says -5 of 4: the same share of equally trusted voices
    r, c, v = np.array([1, 2]), np.array([3, 4]), np.array([-9000.0, -5.0])
    d = distrust(n, r, c, v, t)
    assert d[3] == pytest.approx(d[4]) == pytest.approx(0.3)
    # 1 names three subjects: each gets a third of its voice, and praise dilutes it too
    r, c, v = np.array([1, 1, 1, 1]), np.array([3, 4, 5, 2]), np.array([-6.0, -6.0, -6.0, 18.0])
    d = distrust(n, r, c, v, t)
    assert d[3] == pytest.approx(0.05) and d[2] == 0.0
    assert distrust(n, np.array([1]), np.array([1]), np.array([-5.0]), t)[1] == 0.0  # itself


def test_a_mild_opinion_is_no_testimony() -> None:
    # the anchor's vouched peer 1 saw 3 stall once (-1) and 4 send a wrong block (-5)
    s = _view(5, [(0, 1, 1.0), (1, 3, -1.0), (1, 4, -5.0)], [0])
    assert s[3] is Standing.UNKNOWN and s[4] is Standing.DISTRUSTED
    t = np.array([0.5, 0.5, 0.0])
    strict = StandingConfig(severe=0.5)
    assert distrust(3, np.array([1]), np.array([2]), np.array([-1.0]), t, config=strict)[2] == 0.5


def test_a_peer_whose_standing_outweighs_its_accusers_keeps_it() -> None:
    # 0 (anchor) vouches for 1, 2 and 3; 3 reports 1 at -10 too: 1 has more trust than
    # 3's voice against it
    s = _view(4, [(0, 1, 1.0), (0, 2, 1.0), (0, 3, 1.0), (3, 1, -10.0)], [0])
    assert s[1] is Standing.TRUSTED
    # ...but a peer with none, reported by the same voice, is distrusted
    s = _view(5, [(0, 1, 1.0), (0, 2, 1.0), (0, 3, 1.0), (3, 4, -10.0)], [0])
    assert s[4] is Standing.DISTRUSTED


@pytest.mark.parametrize("seed", range(4))
def test_colluding_slanderers_make_no_honest_node_distrusted(seed: int) -> None:
    """600 nodes, 30 % colluders who praise each other, slander 20 honest nodes each at
    -10 and are camouflaged towards 20 % of the honest nodes that deal with them."""
    rng = np.random.default_rng(seed)
    n, n_bad, deg = 600, 180, 20
    n_honest = n - n_bad
    honest, bad = np.arange(n_honest), np.arange(n_honest, n)
    r = [np.repeat(honest, deg)]
    c = [rng.integers(0, n, n_honest * deg)]
    is_bad = c[0] >= n_honest
    camouflage = rng.random(is_bad.size) < 0.2
    v = [np.where(is_bad & ~camouflage, -1.0, 1.0) + rng.normal(0, 0.2, is_bad.size)]
    r += [np.repeat(bad, deg), np.repeat(bad, deg)]
    c += [rng.choice(bad, n_bad * deg), rng.choice(honest, n_bad * deg)]
    v += [np.full(n_bad * deg, 10.0), np.full(n_bad * deg, -10.0)]
    rows, cols, vals = np.concatenate(r), np.concatenate(c), np.concatenate(v)
    anchors = np.arange(10)
    t = global_trust(n, rows, cols, vals, anchors).trust
    codes = standings(t, distrust(n, rows, cols, vals, t), alpha=ALPHA, anchors=10)
    assert not (codes[honest] == -1).any()


def test_inputs_are_checked() -> None:
    with pytest.raises(UsageError):
        distrust(2, np.array([0]), np.array([1, 0]), np.array([1.0]), np.zeros(2))
    with pytest.raises(UsageError):
        anchor_share(ALPHA, 0)
    with pytest.raises(UsageError):
        StandingConfig(distrust_floor=0.0)
