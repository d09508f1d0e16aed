"""Standing: global trust and distrust together, one verdict per peer (pure, numpy).

Owns :func:`distrust`, :func:`standings`, :class:`Standing` and
:class:`StandingConfig`.  :func:`~p2phier.trust.global_trust.global_trust`
counts only positive opinions, so a slanderer costs nobody anything there; this
module adds the other half.  Each reporter ``i`` speaks against a peer ``j``
with the share of its own voice its negative opinion takes, weighted by its own
global trust ``t_i``:

    distrust_j = sum_i t_i * max(0, -s_ij) / sum_k |s_ik|,  counting only s_ij <= -severe

``severe`` is 5, half of LocalTrust's isolation threshold: a stall or two, a
replay, a few messages over budget happen to honest peers now and then and are
no testimony; a wrong block, a bad signature, or a peer the reporter isolated
(below -10) are.

A reporter cannot shout louder with big numbers (its row is normalised) or with
many subjects (they share its one voice), and a reporter nobody trusted has no
voice at all: a Sybil cluster or a fresh key's slander weighs exactly 0.  Trust
and distrust are both shares of the one unit of trust the iteration hands out.

The verdict compares them against the *anchor share* ``alpha / anchors``, the
least trust each anchor holds from the anchoring alone (what an operator's word
is worth in this view; with 10 anchors and alpha 0.5, 0.05):

* **distrusted**: ``distrust_j >= distrust_floor * anchor share + t_j / (1 - alpha)``.
  ``t_j / (1 - alpha)`` is the trust-weighted voice *for* ``j`` before the
  iteration's damping (for a peer that is no anchor), so the voices against it must
  outweigh the voices for it, by at least the floor.  The floor (0.005 of an
  anchor's share) keeps noise out: colluders who slander at random spread their
  little trust thin, while the voices that clear it are an anchor's, a peer an
  anchor vouched for, or several ordinary trusted peers together.
* **trusted**: not distrusted and ``t_j >= trust_floor * anchor share`` (0.001).
* **unknown**: everything else, e.g. a newcomer nobody reported (distrust 0, so
  never distrusted) or a peer only untrusted keys vouch for.

On ``bench/trust_sim.py`` (10,000 nodes, 30 % colluding slanderers camouflaged
towards some honest nodes, 1,000 Sybils) no honest node is distrusted: the worst
slandered one reaches 0.3 of its bar (0.35 at most over networks of 100 to 10,000
nodes and several seeds; 0.62 when camouflaged colluders are rated as highly as
honest nodes), while a newcomer reported at -10 by the most trusted peer an anchor
vouched for clears it 3.7 to 20 times over.  Limit: colluders holding, together, more
trust than an honest victim can still outweigh it if all of them slander that one
victim; that is why a verdict alone never isolates anyone (the node also needs
evidence of its own) and costs only admission, parent choice and order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from p2phier.errors import UsageError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]


class Standing(enum.StrEnum):
    """A peer's place in this node's global view."""

    TRUSTED = "trusted"
    UNKNOWN = "unknown"
    DISTRUSTED = "distrusted"

    @classmethod
    def from_code(cls, code: int) -> Standing:
        """The standing of a code from :func:`standings` (-1, 0, 1)."""
        return _BY_CODE[int(code)]


_BY_CODE = {-1: Standing.DISTRUSTED, 0: Standing.UNKNOWN, 1: Standing.TRUSTED}


@dataclass(frozen=True, slots=True)
class StandingConfig:
    #: distrust must reach this fraction of an anchor's share (see the module docstring)
    distrust_floor: float = 0.005
    #: trust must reach this fraction of an anchor's share for "trusted"
    trust_floor: float = 0.001
    #: an opinion speaks against its subject only at or below -severe
    severe: float = 5.0

    def __post_init__(self) -> None:
        if not (0 < self.distrust_floor <= 1 and 0 < self.trust_floor <= 1):
            raise UsageError("distrust_floor and trust_floor must lie in (0, 1]")
        if not 0 <= self.severe < 1e6:
            raise UsageError("severe must be a non-negative opinion magnitude")


def distrust(
    n: int,
    reporters: I64,
    subjects: I64,
    opinions: F64,
    trust: F64,
    *,
    config: StandingConfig | None = None,
) -> F64:
    """Per node, the trust-weighted share of its reporters' voices spoken against it
    (the formula in the module docstring: opinions at or below ``-severe`` speak, with
    their share of their reporter's voice).  A reporter's opinion of itself is ignored."""
    severe = (config or StandingConfig()).severe
    if not (len(reporters) == len(subjects) == len(opinions)) or len(trust) != n:
        raise UsageError("reporters, subjects and opinions of one length; trust of n")
    keep = (reporters != subjects) & np.isfinite(opinions)
    rows, cols, vals = reporters[keep], subjects[keep], opinions[keep].astype(np.float64)
    loud = np.bincount(rows, weights=np.abs(vals), minlength=n).astype(np.float64)
    against = (vals < 0) & (vals <= -severe)
    rows, cols, vals = rows[against], cols[against], -vals[against]
    voice = trust[rows] * vals / loud[rows]
    return np.bincount(cols, weights=voice, minlength=n).astype(np.float64)


def anchor_share(alpha: float, anchors: int) -> float:
    """The least trust each of ``anchors`` anchors holds from the anchoring alone."""
    if anchors < 1:
        raise UsageError("a view needs at least one anchor")
    return alpha / anchors


def standings(
    trust: F64,
    against: F64,
    *,
    alpha: float,
    anchors: int,
    config: StandingConfig | None = None,
) -> I8:
    """Per node, 1 (trusted), 0 (unknown) or -1 (distrusted) from its global trust (computed
    with ``alpha`` over ``anchors`` distinct anchors) and its :func:`distrust`."""
    cfg = config or StandingConfig()
    unit = anchor_share(alpha, anchors)
    # t_j is damped by (1 - alpha), the voices against it are not: compare like with like
    vouched = trust / (1.0 - alpha)
    distrusted = against >= cfg.distrust_floor * unit + vouched
    trusted = ~distrusted & (trust >= cfg.trust_floor * unit)
    out = np.zeros(len(trust), np.int8)
    out[trusted] = 1
    out[distrusted] = -1
    return out
