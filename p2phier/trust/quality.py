"""Update quality: which children's updates a parent leaves out of a round, and why.

Owns :func:`screen`, the check a parent runs on its children's updates before
aggregating them (pure numpy: updates in, one :class:`Verdict` per author out;
no clock, no torch).  A flagged update is left out of the round, every update
is bounded in norm (``Verdict.scale``), and each verdict's ``penalty`` becomes
first-hand evidence against its author (``Kind.BAD_UPDATE`` in
:mod:`p2phier.trust.local`), so that an author who keeps sending bad updates
loses its weight and is isolated while an honest child flagged now and then is
not.  ``bench/attacks.py`` measures the whole pipeline against the published
attacks.

An update is a mapping of tensor names to arrays (the merged LoRA deltas and
head differences of :mod:`p2phier.learn.aggregate`).  Each one is compared with
two references, over the tensors it has:

* the *probe*: an update the parent trusts, trained on its own private data
  (its own ``local`` update, or its probe-set update), as in FLTrust;
* the *consensus*: the coordinate-wise median of the round's other updates
  (leave-one-out, so that an update cannot pull its reference its way), which
  a minority cannot move far.

Flags, for what the published attacks must do to matter:

``opposes``
    the update points against both references.  Graded: the less negative of
    its two cosines, past ``oppose_margin``, over ``oppose_span`` gives a
    severity in 0..1, and 0.5 flags it.  Weaker opposition to both, between 0
    and the flag, is graded evidence from 0 up to 0.5 but no flag: a sign flipper
    whose round has begun to converge still points slightly against both (-0.12
    and -0.37 in ``bench/attacks.py``), while an honest child's better cosine was
    under 0 in 8 of 1,800 updates of agreeing rounds (-0.11 the least).  Where
    the round agrees only weakly
    (non-IID children on real LoRA: cosines with the consensus of 0.1-0.2,
    measured in ``devnet/scenarios/attack.toml``), a negative cosine also counts
    by how far it lies below the round's own spread (robust z: median and MAD of
    the other updates' cosines, the MAD at least ``oppose_z_floor``; from ``oppose_z``
    below, over ``oppose_z_span``), in full only from a cosine of
    ``-oppose_z_depth`` (less in proportion above it): an honest single-topic child
    lies at -0.2..-0.3 in such rounds, several of the round's spreads below it, while
    an IPM colluder lies at -0.7.  The parent's probe tells those two apart
    (the *probe depth* test, :func:`_probe_depth`): an update at least
    ``probe_oppose_z`` below the round's spread that points against the probe
    by as much as the round's other updates point its way (their median cosine
    with it, at least ``probe_agree_min``; and an outlier of their cosines with
    it too) is opposition, past ``probe_oppose_from`` of that median, over
    ``probe_oppose_span``.  A sign flipper's update is an honest one negated
    (-0.08 and -0.14 against a median +0.10 and +0.13, real MiniLM rounds 1-2);
    an honest child of a topic the round opposes is about orthogonal to the
    probe, which holds its topic too (-0.03 and -0.07 against +0.31 and +0.29,
    the CI's tiny-tier runs).  It reads the probe whether or not it agrees with
    the round's median (on MiniLM's non-IID leaves it does only at 0.1-0.2).
    Sign-flipping, inner-product manipulation, label flipping once it bites.
    An update the z test flags whose cosines are as near zero as ``unaligned``
    asks is noise, and flagged so too;
``outsized``
    its norm is over ``outsized_ratio`` times the round's median: scaling and
    model replacement, which must be large to survive averaging.  Below that, in
    a round that agrees (see the gates), a norm over ``large_from`` times the
    median is graded evidence (severity 0..1 up to ``outsized_ratio``), though
    not a flag: a model-replacement update at 2.9 times would otherwise count as
    useful.  Honest updates there reach 2.48 times the median, rarely (2 of 5,460
    over 2 in ``bench/attacks.py``'s world on 9 seeds; from 2.0 that one update
    isolated an honest child two noise flags had brought to the threshold), and
    scaling attackers come as low as 2.48 too: the two overlap, so this evidence
    starts at 2.5 and counts only beside other evidence;
``idle``
    its norm is under ``idle_ratio`` times the median: a free-rider sending
    back (almost) nothing;
``unaligned``
    nearly orthogonal to both references (``unaligned_below``): random noise;
``harmful``
    applied alone to the parent's model, it makes the parent's trusted held-out
    set (its own private data, which no child sees) worse: the loss it adds
    there over the loss before the round (or over the round's median update's,
    where that raises it too: children that overfit their few examples), in
    units of a classifier's chance loss (log of the number of labels; a language
    model's loss before the round), past ``harm_ratio``, over
    ``harm_span``, gives a severity in 0..1, and 0.5 flags it.  Label flipping,
    and sign flipping in a round that agrees too weakly for ``opposes``, send
    well-formed updates that teach the model wrong answers: they are measured
    where it matters.  In ``bench/attacks.py`` an honest child of non-IID data
    added at most 0.15 in 300 clean rounds (what it costs other topics, while
    it helps its own), a label flipper typically 0.2-0.6, a sign flipper
    0.3-1.2.  Measured only where the learning code has a trusted set
    (:func:`p2phier.learn.api.trusted_loss`) and, as the direction checks, with
    ``min_updates`` or more updates.  **Off by default** (``harm_ratio`` None):
    in ``devnet/scenarios/attack.toml`` (real LoRA on MiniLM, leaves of one or
    two topics) an honest single-topic leaf's update applied alone cost the
    parent's held-out set as much as the label flipper's (1.68 against 1.81 in
    round 3), and the check isolated that honest leaf.  Applied alone, an update
    of skewed data is biased towards its topics whether its labels are true or
    not; the simulator's milder mixtures hide that (``mislabels`` tells them apart);
``mislabels``
    applied alone, it teaches the parent's model that the trusted examples of one
    label are another label's, which that label's own examples contradict.  The
    learning code applies each update at ``mislabel_scale`` (0.1) of its size, about
    the weight a round's average gives it: its first-order effect (in full, an
    honest update overfit to a few examples of one topic moved the politics
    examples of a real run to business, 0.14 -> 0.90).  Per pair of labels (l, k)
    of the trusted set: how far the update moves l's examples towards k (their mean
    probability of k), as a share of the way they had left to go (1 - before, at
    least :data:`MIN_ROOM`), minus the share by which it moves k's own examples
    towards k (none if it moves them away); the largest over the pairs, over the
    round's median of the same where that is positive, in units of the round's
    median teaching (each update's largest share of a label's own examples moved
    towards it: how far a round's children move the model depends on the model and
    their training, the ratio does not), past ``mislabel_from``, over
    ``mislabel_span``, gives a severity in 0..1, and 0.5 flags it.  An honest child
    teaches the labels of its data: its bias towards them moves every label's
    examples their way, its own labels' examples most (their features are the ones
    it learned), however skewed its data and however much its update costs the
    other labels.  A label flipper moves the examples of its data's true labels to
    the labels it was told, while those labels' own examples gain nothing or lose.
    A per-label mean over n examples is noisy as 1/sqrt(n): with fewer than
    ``mislabel_full_examples`` (20) trusted examples of the fewest label counted,
    ``mislabel_from`` and ``mislabel_span`` grow as sqrt(20 / n).  Measured on real
    MiniLM runs (``devnet/scenarios/attack.toml``, its clean twin and
    ``attack-collude.toml``, 10 leaves of one or two topics, 4 rounds each): with
    the parent's 40 held-out articles (8 per label) honest leaves reached 0.25 (most
    under 0.1) and the label flipper 0.27, 0.40, 0.72 and 0.76 in rounds 1-4; with
    100 (20 per label, as the scenarios now give it) honest leaves reached 0.18 but
    once (0.33, an entertainment leaf in round 3 of one attack run), the label
    flipper 0.25, 0.81, 0.39, 0.09 in one run and 0.25, 0.83, 0.50 in another
    (isolated in round 3), the sign flipper at most 0.24.  From 0.15, a flag from
    0.25 (with 8 per label from 0.24, a flag from 0.40, above the honest 0.25): the
    honest leaf's 0.33 was one flag, which its aggregated rounds outweigh.  In
    ``bench/attacks.py``'s simulator (a softmax head, 20 trusted examples per label,
    milder honest updates) honest children stay under 0.1, and label flippers fall
    from about 0.85 in round 1 to 0.2-0.4 by round 3 as the honest majority's model
    grows confident; from 0.15 they are isolated within 2-3 rounds but one: at 30 %
    on seed 1 an attacker whose data is 98 of 122 articles of the label the mirror
    keeps (politics) teaches 22 wrong answers and scored 0.32, 0.18, 0.11, 0.09 in
    rounds 1-4 while its round's honest children stayed under 0.02 after round 1.
    Hence the *outlier* part: a value of at least ``mislabel_z_min`` (0.075, half the
    evidence threshold: under it a move is in any round's noise) that lies
    ``mislabel_z`` (3.5) or more robust spreads above the round's other values (median
    and MAD, leave-one-out, the MAD at least ``mislabel_z_floor``, 0.02; both scaled by
    the noise factor below) is evidence from there, over ``mislabel_z_span`` (3): a
    flag from z 5, in full from 6.5.  That flipper lay 6.5 and 8.1 spreads above its
    round in rounds 2-3 and is isolated in round 2; in ``bench/attacks.py``'s 13,080
    honest updates (every attack and the clean runs, seeds 0-2) none over 0.075, the
    highest z of those over 0.05 3.9.  Where honest children spread widely, as real
    leaves of one topic do (up to 0.18, most under 0.1), a value among them is no
    outlier and only the thresholds above count.  It cannot see a flipper whose wrong
    answers teach its target label too (tech articles labelled business teach business
    features: on seed 3 of the simulator, beyond the bench's seeds, one such stays
    under 0.03 after round 1).  The ``harmful`` check could not
    tell the real ones apart (an honest single-topic leaf cost the trusted set as
    much as the flipper); this check asks where the probability goes.  Measured
    only for a classifier's trusted set, labels with ``mislabel_examples`` or more
    examples, and with ``min_updates`` or more updates.  On by default.
``echo``
    (almost) the mean of the others: its cosine with the round's consensus is
    at least ``echo_above`` and ``echo_gap`` above the round's median cosine.  A
    free-rider that sends back what its siblings sent (ALIE with one attacker,
    whose published ``z`` is 0: the honest mean exactly).  Two honest children
    of different private data do not sit that close to everyone's middle: in
    ``bench/attacks.py``'s 13,000 honest non-IID updates the highest cosine was
    0.78 (round median 0.67) and the widest gap over the median 0.33 (cosine 0.39);
    where every child agrees (IID data) the median is high too and no gap opens;
``twin``
    (almost) the same update as another author's (cosine over ``twin_above``,
    lengths within :data:`TWIN_LENGTH`): colluders that compute one crafted
    update and all send it (ALIE, IPM), or a copy of a sibling's.  Two honest
    children train on different private data and never agree that closely.
``shifted``
    its departure from the consensus moves (nearly) every coordinate the same way:
    its *shift*, the sum of its differences from the consensus over the sum of
    their magnitudes (-1: every coordinate lower), lies past ``shift_from`` from the
    other updates' median shift (severity 0..1 over ``shift_span``; 0.5 flags it),
    and past ``noise_sigmas`` of chance (which matters only for toy-sized updates).
    "A little is enough" (ALIE) sends the honest mean minus z standard deviations,
    coordinate by coordinate: near the middle of the round by every distance and
    cosine (its cosine with the consensus is the round's highest), but one-sided.
    The real ALIE colluder of ``devnet/scenarios/attack-collude.toml`` (MiniLM, z 1)
    had a shift of -1.00 in round 1, its nine honest siblings +0.13..+0.16 (they
    lean the other way a little because the colluder pulls their leave-one-out
    consensus its way: hence the others' median, not 0), the IPM colluder +0.34; in
    ``bench/attacks.py``'s 3,000 clean non-IID updates no shift was further than
    0.025 from 0.  An honest update's own data move it as often up as down, a short
    one (less data) is not one-sided either.  A colluder that flips each coordinate's
    sign at random is not shifted, but it then sends noise of an honest size, which
    averaging cancels;

Why the gates.  While the round learns, honest updates agree (the median
cosine with the consensus is at least ``consensus_min``) and have like norms:
then every check applies.  Once the model has converged on their data, honest
updates are mostly noise and their cosines swing both ways, and a child whose
data differ from most keeps a larger update than the rest (up to 4.5 times the
median, measured): then the probe counts only if it still agrees with the
round, ``unaligned`` needs half the tolerance, and ``outsized`` twice the
ratio, while ``scale`` (``clip_ratio`` of the median) bounds every update.  On
100 clean non-IID rounds this flags an honest child a couple of times in 3,000
updates and isolates none; the price is that an attack that starts once the
round has converged is bounded and weighed, not always isolated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from p2phier.errors import UsageError

Tensors = Mapping[str, NDArray[np.floating]]

#: two updates of one direction are twins only if their lengths differ by less than this
TWIN_LENGTH = 0.05
#: the ``mislabels`` check measures a move as a share of the way left to a probability of 1,
#: and never of less than this (a label the model already gives 0.99 has no way to go, and
#: its examples' noise must not become a large share)
MIN_ROOM = 0.05


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """Thresholds; each default is argued in the module docstring and measured by
    ``bench/attacks.py`` (attackers flagged, zero honest children isolated in 100
    clean non-IID rounds)."""

    oppose_margin: float = 0.2
    oppose_span: float = 0.15
    oppose_z: float = 4.0
    oppose_z_span: float = 2.0
    oppose_z_floor: float = 0.08
    oppose_z_depth: float = 0.5
    #: the probe depth test (``opposes``): from this robust z against the round...
    probe_oppose_z: float = 3.0
    #: ...where the other updates' median cosine with the probe is at least this...
    probe_agree_min: float = 0.05
    #: ...the update's opposition to the probe in units of that median, past this, over
    #: ``probe_oppose_span``
    probe_oppose_from: float = 0.25
    probe_oppose_span: float = 0.5
    outsized_ratio: float = 3.0
    clip_ratio: float = 1.5
    idle_ratio: float = 0.05
    unaligned_below: float = 0.05
    noise_sigmas: float = 3.0
    consensus_min: float = 0.2
    twin_above: float = 0.995
    #: the ``shifted`` check: an update whose shift lies this far from the others' median
    #: shift is evidence, over ``shift_span`` (half of it: a flag)
    shift_from: float = 0.2
    shift_span: float = 0.2
    echo_above: float = 0.8
    echo_gap: float = 0.25
    large_from: float = 2.5
    #: None: the ``harmful`` check is off (the default: see the module docstring)
    harm_ratio: float | None = None
    harm_span: float = 0.2
    #: None: the ``mislabels`` check is off
    mislabel_from: float | None = 0.15
    mislabel_span: float = 0.2
    #: ``mislabel_from`` and ``mislabel_span`` hold from this many trusted examples per
    #: label; with fewer (the fewest label counted) both grow as sqrt(this / fewer)
    mislabel_full_examples: int = 20
    #: the share of its size at which an update is applied for the ``mislabels`` check
    mislabel_scale: float = 0.1
    #: a label counts in the ``mislabels`` check only with this many trusted examples
    mislabel_examples: int = 3
    #: the ``mislabels`` outlier test: a value at least ``mislabel_z_min`` (times the
    #: noise factor) that lies this many robust spreads above the round's other values
    #: (their MAD at least ``mislabel_z_floor``, times the noise factor) is evidence, over
    #: ``mislabel_z_span`` (None: the outlier test is off)
    mislabel_z: float | None = 3.5
    mislabel_z_span: float = 3.0
    mislabel_z_floor: float = 0.02
    mislabel_z_min: float = 0.075
    min_updates: int = 5

    def __post_init__(self) -> None:
        if not (self.outsized_ratio >= self.clip_ratio >= 1 and 0 <= self.idle_ratio < 1):
            raise UsageError("need outsized_ratio >= clip_ratio >= 1 and idle_ratio in [0, 1)")
        if not (0 <= self.oppose_margin < 1 and 0 < self.oppose_span <= 1):
            raise UsageError("oppose_margin must lie in [0, 1), oppose_span in (0, 1]")
        if min(self.oppose_z, self.oppose_z_span, self.oppose_z_floor, self.oppose_z_depth) <= 0:
            raise UsageError("oppose_z, oppose_z_span, oppose_z_floor, oppose_z_depth must be > 0")
        if min(self.probe_oppose_z, self.probe_agree_min, self.probe_oppose_span) <= 0 or not (
            self.probe_oppose_from >= 0
        ):
            raise UsageError(
                "probe_oppose_z, probe_agree_min, probe_oppose_span must be > 0, "
                "probe_oppose_from >= 0"
            )
        if not 0 <= self.unaligned_below < self.consensus_min <= 1:
            raise UsageError("need 0 <= unaligned_below < consensus_min <= 1")
        if not (1 <= self.large_from < self.outsized_ratio and 0 < self.echo_gap <= 1):
            raise UsageError("need 1 <= large_from < outsized_ratio and echo_gap in (0, 1]")
        if not (0 <= self.shift_from < 2 and self.shift_span > 0):
            raise UsageError("need shift_from in [0, 2) and shift_span > 0")
        if not (0 < self.twin_above <= 1 and self.min_updates >= 3 and self.noise_sigmas > 0):
            raise UsageError("need twin_above in (0, 1], min_updates >= 3, noise_sigmas > 0")
        if not ((self.harm_ratio is None or self.harm_ratio > 0) and self.harm_span > 0):
            raise UsageError("harm_ratio and harm_span must be positive")
        if not (
            (self.mislabel_from is None or 0 <= self.mislabel_from < 1)
            and self.mislabel_span > 0
            and 0 < self.mislabel_scale <= 1
            and 1 <= self.mislabel_examples <= self.mislabel_full_examples
        ):
            raise UsageError(
                "need mislabel_from in [0, 1), mislabel_span > 0, mislabel_scale in (0, 1], "
                "1 <= mislabel_examples <= mislabel_full_examples"
            )
        if (
            (self.mislabel_z is not None and self.mislabel_z <= 0)
            or min(self.mislabel_z_span, self.mislabel_z_floor) <= 0
            or not 0 <= self.mislabel_z_min < 1
        ):
            raise UsageError(
                "mislabel_z, mislabel_z_span, mislabel_z_floor must be > 0, "
                "mislabel_z_min in [0, 1)"
            )

    @property
    def needs_loss(self) -> bool:
        """Whether a check uses the parent's trusted set (:class:`TrustedLoss`)."""
        return self.harm_ratio is not None or self.mislabel_from is not None


@dataclass(frozen=True, slots=True)
class TrustedLoss:
    """The parent's loss on its trusted held-out set: ``before`` the round, and with each
    author's update applied alone (``after``), as the learning code measured them;
    ``unit``: what a harm of 1 is (a classifier's chance loss, log(labels): a loss that
    nears 0 as the model converges would magnify the odd example an honest child's
    update costs; a language model's loss before the round)."""

    before: float
    after: Mapping[str, float]
    unit: float
    #: per label of the trusted set, the mean probability the model gives each of its
    #: labels on that label's examples, before the round (empty: not measured)
    before_mass: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: per author measured: the same with its update applied alone
    after_mass: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    #: per label of the trusted set: how many examples it has
    label_counts: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = [self.before, *self.after.values()]
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise UsageError("a trusted-set loss must be finite and non-negative")
        if not (math.isfinite(self.unit) and self.unit > 0):
            raise UsageError("a trusted-set loss unit must be finite and positive")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the screen saw in one author's update."""

    author: str
    norm: float
    norm_ratio: float  # norm over the round's median norm
    cos_probe: float | None  # None: no probe (or no tensor in common)
    cos_consensus: float | None  # None: too few updates for a consensus
    #: trusted-set loss this update adds, applied alone, in the loss's unit (None: not
    #: measured)
    harm: float | None
    #: how far, applied alone, it moves one label's trusted examples to another label
    #: beyond what it does for that label's own (None: not measured; see ``mislabels``)
    mislabel: float | None
    twin: str | None  # the author whose update this one (almost) equals
    flags: tuple[str, ...]
    #: how much evidence against the author (0..1; a flagged update counts at least 0.5)
    penalty: float = 0.0
    #: factor that bounds the update to ``clip_ratio`` times the round's median norm
    scale: float = 1.0
    #: its cosine with the probe where the probe did not count (it disagreed with the
    #: round): information for the round record, no check reads it
    cos_probe_unused: float | None = None
    #: how one-sided its departure from the consensus is (see ``shifted``; None: too few
    #: updates for a consensus)
    shift: float | None = None

    @property
    def ok(self) -> bool:
        return not self.flags

    def reason(self) -> str:
        """One line for logs and the round record."""
        parts = [f"norm x{self.norm_ratio:.2f} of median"]
        if self.cos_probe is not None:
            parts.append(f"cos probe {self.cos_probe:+.2f}")
        elif self.cos_probe_unused is not None:
            parts.append(f"cos probe {self.cos_probe_unused:+.2f} not counted")
        if self.cos_consensus is not None:
            parts.append(f"cos consensus {self.cos_consensus:+.2f}")
        if self.shift is not None:
            parts.append(f"shift {self.shift:+.2f}")
        if self.harm is not None:
            parts.append(f"harm {self.harm:+.2f}")
        if self.mislabel is not None:
            parts.append(f"mislabel {self.mislabel:+.2f}")
        if self.twin is not None:
            parts.append(f"same as {self.twin}")
        return f"{'+'.join(self.flags) or 'ok'} ({', '.join(parts)})"


def screen(
    updates: Mapping[str, Tensors],
    probe: Tensors | None = None,
    config: QualityConfig | None = None,
    *,
    loss: TrustedLoss | None = None,
) -> dict[str, Verdict]:
    """One verdict per author of ``updates`` (see the module docstring).

    The updates must already be validated (finite, one shape per tensor name:
    :func:`p2phier.learn.aggregate.validate_updates`).  ``loss``: the parent's
    trusted-set loss before and with each update (authors it lacks are not judged
    by it).
    """
    cfg = config or QualityConfig()
    authors = sorted(updates)
    if not authors:
        return {}
    norms = {a: _norm(updates[a]) for a in authors}
    median_norm = float(np.median([norms[a] for a in authors]))
    # Too few updates make no reference: the round's median is then one child's
    # opinion, and a parent's probe alone cannot tell a child of another sub-domain
    # (whose update may well oppose the parent's own) from an attacker.
    enough = len(authors) >= cfg.min_updates
    cos_c: dict[str, float | None] = {}
    stacks = _stacks(updates, authors) if enough else {}
    shift: dict[str, float | None] = {}
    if enough:
        for a in authors:
            # leave-one-out: an update must not pull its own reference its way
            consensus = _median(stacks, without=a)
            cos_c[a] = _cos(updates[a], consensus)
            shift[a] = _shift(updates[a], consensus)
    agreed = [c for c in cos_c.values() if c is not None]
    judge = bool(agreed) and float(np.median(agreed)) >= cfg.consensus_min
    mid = float(np.median(agreed)) if agreed else 0.0
    # the probe counts only while it agrees with the round: an honest parent's own
    # update is noise too once its model has converged on its data
    cos_p: dict[str, float | None] = {}
    unused: dict[str, float | None] = {}
    seen: dict[str, float | None] = {}
    if probe is not None and enough:
        c = _cos(probe, _median(stacks))
        seen = {a: _cos(updates[a], probe) for a in authors}
        if c is not None and c >= cfg.consensus_min:
            cos_p = seen
        else:
            unused = seen
    twins = _twins(updates, authors, norms, cfg.twin_above)
    harm = _harm(loss, authors) if enough else {}
    mislabel = _mislabel(loss, authors, cfg.mislabel_examples) if enough else {}
    # a per-label mean over n examples is noisy as 1/sqrt(n): honest children's largest
    # values in real rounds were 0.25 with 8 trusted examples per label, 0.18 with 20
    noise = math.sqrt(max(1.0, cfg.mislabel_full_examples / max(_fewest(loss, cfg), 1)))
    flag_at = cfg.oppose_margin + cfg.oppose_span / 2  # the cosine whose severity is 0.5
    out: dict[str, Verdict] = {}
    for a in authors:
        ratio = norms[a] / median_norm if median_norm > 0 else (0.0 if norms[a] == 0 else math.inf)
        cp, cc = cos_p.get(a), cos_c.get(a)
        refs = [c for c in (cp, cc) if c is not None]
        flags: list[str] = []
        severity = 0.0
        if cc is not None and (judge or cp is not None):
            # graded: the least opposed reference decides; consistent opposition adds up
            # in trust over rounds, while the odd negative cosine of an honest child on
            # non-IID data, or of a converged round, weighs little
            severity = min(1.0, max(0.0, (-max(refs) - cfg.oppose_margin) / cfg.oppose_span))
            # below the flag, weaker opposition to both references is weaker evidence (up
            # to 0.5 where the flag begins): a sign flipper whose round has begun to
            # converge still points against both, an honest child rarely does
            severity = max(severity, 0.5 * min(1.0, max(0.0, -max(refs)) / flag_at))
        if cc is not None and max(refs) < 0:
            # an outlier against the round, even where the round agrees only weakly
            others = [c for b, c in cos_c.items() if b != a and c is not None]
            z = _robust_z(cc, others, cfg.oppose_z_floor)
            outlier = min(1.0, max(0.0, (-z - cfg.oppose_z) / cfg.oppose_z_span))
            # ...in full only as far as it points against the round: a non-IID honest
            # child's dissent (-0.2..-0.3 in real rounds) is evidence, a colluder's -0.7 a flag
            severity = max(severity, outlier * min(1.0, -cc / cfg.oppose_z_depth))
            severity = max(severity, _probe_depth(a, cc, z, seen, cfg))
        if severity >= 0.5:
            flags.append("opposes")
        shifted = _shifted(a, shift, cfg, _size(updates[a]))
        if shifted >= 0.5:
            flags.append("shifted")
        severity = max(severity, shifted)
        if cc is not None and agreed and cc >= cfg.echo_above and cc - mid >= cfg.echo_gap:
            flags.append("echo")
        hurt = harm.get(a)
        harm_severity = 0.0
        if hurt is not None and cfg.harm_ratio is not None:
            harm_severity = min(1.0, max(0.0, (hurt - cfg.harm_ratio) / cfg.harm_span))
        if harm_severity >= 0.5:
            flags.append("harmful")
        severity = max(severity, harm_severity)
        moved = mislabel.get(a)
        if moved is not None and cfg.mislabel_from is not None:
            over = (moved - noise * cfg.mislabel_from) / (noise * cfg.mislabel_span)
            moved_severity = min(1.0, max(0.0, over))
            others = [m for b, m in mislabel.items() if b != a]
            if cfg.mislabel_z is not None and moved >= noise * cfg.mislabel_z_min and others:
                # ...or far above what the round's other children move: a flipper whose
                # data is mostly of a label its mapping keeps teaches few wrong answers,
                # persistently, while honest children of that round move next to none
                z = _robust_z(moved, others, noise * cfg.mislabel_z_floor)
                outlier = (z - cfg.mislabel_z) / cfg.mislabel_z_span
                moved_severity = max(moved_severity, min(1.0, max(0.0, outlier)))
            if moved_severity >= 0.5:
                flags.append("mislabels")
            severity = max(severity, moved_severity)
        # While the round learns, honest updates have like norms and a large one is a
        # boost; once it has converged, a child whose data differ from most keeps a
        # larger update than the rest (up to x4.5 of the median measured): then only
        # a far larger one is flagged, and the others are bounded by ``scale``.
        if enough and ratio > cfg.outsized_ratio * (1 if judge else 2):
            flags.append("outsized")
        elif enough and judge and ratio > cfg.large_from:
            large = (ratio - cfg.large_from) / (cfg.outsized_ratio - cfg.large_from)
            severity = max(severity, min(1.0, large))
        if enough and median_norm > 0 and ratio < cfg.idle_ratio:
            flags.append("idle")
        # Noise is as orthogonal to everything as chance allows (|cos| about 1/sqrt(d)
        # for d elements); an honest child of another sub-domain shares some direction
        # with the round.  Outside an agreeing round, half the tolerance.
        near = min(cfg.unaligned_below, cfg.noise_sigmas / math.sqrt(max(_size(updates[a]), 1)))
        near = near if judge else near / 2
        if (
            cc is not None
            and (judge or cp is not None)
            and not set(flags) - {"opposes"}  # a near-zero cosine the z test flagged
            and all(abs(c) < near for c in refs)
        ):
            flags.append("unaligned")
        if a in twins:
            flags.append("twin")
        penalty = 1.0 if set(flags) - {"opposes", "harmful", "mislabels", "shifted"} else severity
        scale = min(1.0, cfg.clip_ratio / ratio) if ratio > 0 else 1.0
        out[a] = Verdict(
            a, norms[a], ratio, cp, cc, hurt, moved, twins.get(a), tuple(flags), penalty, scale,
            cos_probe_unused=unused.get(a), shift=shift.get(a),
        )  # fmt: skip
    return out


def _probe_depth(
    a: str, cc: float, z: float, seen: Mapping[str, float | None], cfg: QualityConfig
) -> float:
    """The probe depth test's severity for author ``a`` (0 where it does not apply).

    An update that is an outlier against the round (robust z ``probe_oppose_z`` or more
    below) and points against the parent's probe, by as much as the round's other
    updates point its way (their median cosine with it, at least ``probe_agree_min``):
    a sign flipper's update is an honest one negated, so its cosine with the probe is
    about minus theirs (-0.08 and -0.14 against a median +0.10 and +0.14 in rounds 1-2
    of the real attack devnet).  An honest child of a topic the round opposes
    dissents from the round as deeply (z -4.2..-5.7 in the CI's tiny-tier runs), but
    it is about orthogonal to the parent's probe, which holds its topic too (-0.03
    and -0.07 against a median +0.31 and +0.29: 0.1 and 0.24 of it).  Counted with
    the probe whether it agrees with the round or not: on MiniLM's non-IID leaves it
    agrees with the round's median only at 0.1-0.2, yet every honest leaf's cosine
    with it was positive in rounds 1-3.
    """
    cp = seen.get(a)
    if cp is None or cp >= 0 or cc >= 0 or z > -cfg.probe_oppose_z:
        return 0.0
    others = [c for b, c in seen.items() if b != a and c is not None]
    mid = float(np.median(others)) if others else 0.0
    if mid < cfg.probe_agree_min:
        return 0.0
    # ...and an outlier of the others' cosines with the probe too: where they agree with
    # it only weakly, chance alone puts an orthogonal update's cosine below zero by as
    # much as theirs lies above it
    if _robust_z(cp, others, 1e-12) > -cfg.probe_oppose_z:
        return 0.0
    depth = -cp / mid
    return min(1.0, max(0.0, (depth - cfg.probe_oppose_from) / cfg.probe_oppose_span))


def _shifted(a: str, shift: Mapping[str, float | None], cfg: QualityConfig, size: int) -> float:
    """The ``shifted`` check's severity for author ``a`` (0 without a shift): how far its
    shift lies from the other updates' median shift, past ``shift_from``, over
    ``shift_span``.  Measured against the others' median, not against 0: colluders in
    the round pull the leave-one-out consensus of every honest update their way, so that
    the honest ones all lean the other way a little (+0.22..+0.55 beside two or three
    ALIE colluders at -0.9..-1.0 in ``bench/attacks.py``).  Never within chance: the
    shift of ``size`` differences of random sign spreads as sqrt(pi / 2 / size) (0.18
    for 48 elements, where honest toy updates reached 0.45; 0.004 for a real LoRA
    update's 10^5), and it counts only past ``noise_sigmas`` of that."""
    mine = shift.get(a)
    others = [v for b, v in shift.items() if b != a and v is not None]
    if mine is None or not others:
        return 0.0
    far = abs(mine - float(np.median(others)))
    chance = cfg.noise_sigmas * math.sqrt(math.pi / 2 / max(size, 1))
    return min(1.0, max(0.0, (far - max(cfg.shift_from, chance)) / cfg.shift_span))


def _robust_z(c: float, others: list[float], floor: float) -> float:
    """How far ``c`` lies from the other updates' cosines, in their robust spread (median
    and MAD; 0 without others).  Leave-one-out, as the consensus is: with six updates an
    outlier's own cosine widens the MAD it is measured in (an IPM colluder at -0.70 among
    honest -0.24..0.20 scored z -4.0 with itself, -9.4 without).  The spread is at least
    ``floor`` (the z test's ``oppose_z_floor``): honest updates that agree closely would
    otherwise make a mildly different honest one an outlier of many sigmas."""
    if not others:
        return 0.0
    mid = float(np.median(others))
    mad = 1.4826 * float(np.median([abs(x - mid) for x in others]))
    return (c - mid) / max(mad, floor)


def _harm(loss: TrustedLoss | None, authors: list[str]) -> dict[str, float]:
    """Per author measured: the loss its update, applied alone, adds to the parent's
    trusted set, in the loss's ``unit``, over the loss before the round or, where the
    round's median update raises it too (children that overfit their few examples,
    as a small model does), over the median's (0: no worse than that)."""
    if loss is None:
        return {}
    measured = [a for a in authors if a in loss.after]
    if not measured:
        return {}
    floor = max(loss.before, float(np.median([loss.after[a] for a in measured])))
    return {a: max(0.0, loss.after[a] - floor) / loss.unit for a in measured}


def _mislabel(loss: TrustedLoss | None, authors: list[str], min_examples: int) -> dict[str, float]:
    """Per author measured: the most its update (applied at a share of its size, as the
    learning code measured it) moves the trusted examples of one label towards another
    label ``k``, beyond what it moves ``k``'s own examples towards ``k``; each move as
    the share it takes of the way left to go (from the probability before to 1), so
    that a label the model already knows well is not counted as unmoved.  Over the
    round's median of the same where that is positive, in units of the round's median
    teaching (each update's largest move of a label's own examples towards it): the
    scale of a round's moves depends on the model and how far its children train, the
    ratio does not.  Labels with ``min_examples`` or more trusted examples only."""
    if loss is None or not loss.before_mass:
        return {}
    labels = _counted_labels(loss, min_examples)
    if len(labels) < 2:
        return {}
    before = np.array([[loss.before_mass[lo][k] for k in labels] for lo in labels])
    room = np.maximum(1.0 - before, MIN_ROOM)
    raw: dict[str, float] = {}
    teach: list[float] = []
    for a in authors:
        mass = loss.after_mass.get(a)
        if mass is None:
            continue
        share = (np.array([[mass[lo][k] for k in labels] for lo in labels]) - before) / room
        own = np.maximum(np.diag(share), 0.0)
        np.fill_diagonal(share, -np.inf)  # column k: the other labels' examples moved to k
        raw[a] = float(np.max(share.max(axis=0) - own))
        teach.append(float(own.max()))
    unit = float(np.median(teach)) if teach else 0.0
    if unit <= 0:  # a round that teaches nothing: nothing to compare a move with
        return {}
    floor = max(0.0, float(np.median(list(raw.values()))))
    return {a: (v - floor) / unit for a, v in raw.items()}


def _counted_labels(loss: TrustedLoss, min_examples: int) -> list[str]:
    """The trusted set's labels the ``mislabels`` check counts: ``min_examples`` or more."""
    return sorted(
        k for k in loss.before_mass if loss.label_counts.get(k, min_examples) >= min_examples
    )


def _fewest(loss: TrustedLoss | None, cfg: QualityConfig) -> int:
    """The fewest trusted examples of a label the ``mislabels`` check counts."""
    if loss is None:
        return 0
    counted = _counted_labels(loss, cfg.mislabel_examples)
    return min((loss.label_counts.get(k, cfg.mislabel_examples) for k in counted), default=0)


def _size(update: Tensors) -> int:
    return sum(int(np.asarray(v).size) for v in update.values())


def _norm(update: Tensors) -> float:
    total = sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in update.values())
    return math.sqrt(total)


def _cos(update: Tensors, ref: Tensors | None) -> float | None:
    """Cosine over the tensors both have (None: none in common, or a zero reference);
    summed tensor by tensor, so nothing is copied into one long vector."""
    if ref is None:
        return None
    keys = set(update) & set(ref)
    dot = nu = nr = 0.0
    for k in keys:
        u, r = np.asarray(update[k], np.float64).ravel(), np.asarray(ref[k], np.float64).ravel()
        dot += float(u @ r)
        nu += float(u @ u)
        nr += float(r @ r)
    if not keys or nr == 0.0:
        return None
    if nu == 0.0:
        return 0.0
    return dot / math.sqrt(nu * nr)


def _shift(update: Tensors, ref: Mapping[str, NDArray[np.float64]]) -> float | None:
    """How one-sided ``update``'s departure from ``ref`` is: the sum of its differences
    over the sum of their magnitudes, over the tensors both have (-1: every coordinate
    lower; None: none in common, or no difference at all)."""
    total = size = 0.0
    for k in set(update) & set(ref):
        d = np.asarray(update[k], np.float64) - ref[k]
        total += float(d.sum())
        size += float(np.abs(d).sum())
    return total / size if size > 0 else None


Stacks = dict[str, tuple[tuple[str, ...], NDArray[np.float64]]]


def _stacks(updates: Mapping[str, Tensors], authors: list[str]) -> Stacks:
    """Per tensor, its holders and their values stacked (built once per round)."""
    keys = sorted({k for a in authors for k in updates[a]})
    out: Stacks = {}
    for k in keys:
        holders = tuple(a for a in authors if k in updates[a])
        out[k] = holders, np.stack([np.asarray(updates[a][k], np.float64) for a in holders])
    return out


def _median(stacks: Stacks, without: str | None = None) -> dict[str, NDArray[np.float64]]:
    """Coordinate-wise median per tensor over the updates that have it, ``without`` one."""
    out: dict[str, NDArray[np.float64]] = {}
    for k, (holders, stack) in stacks.items():
        if without in holders:
            if len(holders) == 1:
                continue
            stack = np.delete(stack, holders.index(without), axis=0)
        out[k] = np.median(stack, axis=0)
    return out


def _twins(
    updates: Mapping[str, Tensors], authors: list[str], norms: Mapping[str, float], above: float
) -> dict[str, str]:
    """Authors whose non-zero update (almost) equals another's, each with its closest twin."""
    live = [a for a in authors if norms[a] > 0]
    out: dict[str, str] = {}
    best: dict[str, float] = {}
    for i, a in enumerate(live):
        for b in live[i + 1 :]:
            c = _cos(updates[a], updates[b])
            # equal direction and (nearly) equal length: one update sent twice
            longer = max(norms[a], norms[b])
            if c is None or c <= above or abs(norms[a] - norms[b]) > TWIN_LENGTH * longer:
                continue
            for x, y in ((a, b), (b, a)):
                if c > best.get(x, -2.0):
                    best[x], out[x] = c, y
    return out
