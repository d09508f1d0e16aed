"""Global trust: an EigenTrust iteration over the nodes' local opinions (pure, numpy).

Owns :func:`global_trust` and :class:`GlobalTrustConfig`.  Each reporter ``i``
states its local opinion of the peers it dealt with (``LocalTrust`` scores);
only the positive part counts and each reporter's opinions are normalised to
sum to 1 (``c_ij``), so a reporter cannot shout louder by reporting big
numbers, and a low opinion (slander) simply gives nothing.  Global trust is the
stationary point of

    t = g(t) = (1 - alpha) * C^T t + alpha * p

where ``p`` is uniform over the *anchors* (the pre-trusted peers an operator
names, as in EigenTrust, Kamvar et al. 2003).  Every report is thus weighted by
its reporter's own global trust: a Sybil cluster whose members vouch for each
other, or colluders who rate each other highly and slander everyone else, get
only the trust that honest, trusted nodes give them, however many they are.  A
reporter with no positive opinion defers to the anchors.

Solver.  ``g`` (one sparse ``bincount`` over the reported edges: a *power step*)
is applied from ``warm`` (last round's result) or from ``p``.  Plain power
iteration shrinks the error by about ``(1 - alpha)`` times the graph's second
eigenvalue per step; Anderson acceleration (Walker & Ni 2011, type II) instead
takes as next iterate the combination of the last few ``g(x_i)`` whose residuals
``g(x_i) - x_i`` cancel best (a least-squares solve on an ``n x m`` matrix), still
ONE power step per iteration, so ``iterations`` counts power steps.  Safeguards:
an ill-posed solve (NaN), a candidate with noticeably negative entries, or one
whose residual came out larger than its predecessor's is dropped for the plain
step ``g(x)`` from the last accepted iterate and the memory is reset (a rejected
candidate's power step still counts).  So the accepted residuals only shrink.

Error bound.  ``C^T`` (with silent reporters sending their share to ``p``) has
non-negative entries and columns summing to 1, so for ANY real vectors
``|g(x) - g(y)|_1 <= (1 - alpha) |x - y|_1``: ``g`` is a contraction of the L1
norm with the fixed point ``t*``.  Hence for an iterate ``x`` with residual
``r = |g(x) - x|_1``: ``|x - t*| <= r + (1 - alpha) |x - t*|``, i.e.
``|x - t*| <= r / alpha``, and ``|g(x) - t*| <= (1 - alpha) / alpha * r``.  We stop
when ``r < tolerance`` and return ``g(x)``: exactly what the plain iteration did
(its "L1 change of one step" is the residual of the previous iterate, and it
returned the new one), so the bound, ``(1 - alpha) / alpha * tolerance`` (=
``tolerance`` at ``alpha = 0.5``), is the same as before.  Accepted iterates are
kept non-negative and summing to 1, so ``g(x)`` is too up to rounding; the result
is clipped at 0 and renormalised against that rounding only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from p2phier.errors import UsageError

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class GlobalTrustConfig:
    #: the share of trust that flows back to the anchors at each step (EigenTrust's ``a``).
    #: A colluding group that vouches only for itself keeps what flows into it for
    #: (1 - a) / a more steps: at PageRank's 0.15 it multiplies its inflow by 5.7 (19 % of
    #: all trust for 30 % camouflaged colluders in bench/trust_sim.py), at 0.5 by 1 (4 %).
    #: Higher also converges faster; the cost is that trust stays closer to the anchors.
    alpha: float = 0.5
    #: stop when the L1 residual |g(t) - t| is below this (trust sums to 1); the result is
    #: then within (1 - alpha) / alpha * tolerance of the exact one (module docstring)
    tolerance: float = 1e-4
    #: the most power steps (matvecs), rejected Anderson candidates included
    max_iterations: int = 100
    #: how many past steps Anderson acceleration mixes (0: plain power iteration).  On
    #: graphs shaped like bench/trust_sim.py 2, 3 and 10 take the same steps (the gain is
    #: capped by how fast trust spreads out from the anchors, not by the memory); 3 costs
    #: only three n-vectors and an n x 3 solve, and can still cancel a second slow mode.
    anderson_memory: int = 3

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1 and 0 < self.tolerance < 1 and self.max_iterations >= 1):
            raise UsageError("alpha and tolerance must lie in (0, 1), max_iterations >= 1")
        if self.anderson_memory < 0:
            raise UsageError("anderson_memory must be >= 0 (0: plain power iteration)")


@dataclass(frozen=True, slots=True)
class GlobalTrust:
    trust: F64  # per node, sums to 1
    iterations: int  # power steps applied
    converged: bool


def global_trust(
    n: int,
    reporters: I64,
    subjects: I64,
    opinions: F64,
    anchors: I64,
    *,
    config: GlobalTrustConfig | None = None,
    warm: F64 | None = None,
) -> GlobalTrust:
    """Global trust of ``n`` nodes from the edges ``reporters[k] -> subjects[k]`` with
    local opinion ``opinions[k]`` (any real; only the positive part counts)."""
    cfg = config or GlobalTrustConfig()
    if not (len(reporters) == len(subjects) == len(opinions)):
        raise UsageError("reporters, subjects and opinions must be of one length")
    if len(anchors) == 0:
        raise UsageError("global trust needs at least one anchor (a pre-trusted peer)")
    for name, idx in (("reporters", reporters), ("subjects", subjects), ("anchors", anchors)):
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise UsageError(f"{name} must index the {n} nodes")
    p = np.zeros(n)
    p[anchors] = 1.0 / len(np.unique(anchors))
    # Only positive opinions count, a node's opinion of itself does not, and each
    # reporter's row is normalised to 1 (c_ij).
    keep = (opinions > 0) & (reporters != subjects) & np.isfinite(opinions)
    rows, cols, vals = reporters[keep], subjects[keep], opinions[keep].astype(np.float64)
    row_sum = np.bincount(rows, weights=vals, minlength=n).astype(np.float64)
    c = vals / row_sum[rows]
    silent = row_sum == 0  # no positive opinion: defers to the anchors

    def step(x: F64) -> F64:
        # (bincount of no edges is an int array: keep every step in float64)
        flow = np.bincount(cols, weights=c * x[rows], minlength=n).astype(np.float64)
        flow += x[silent].sum() * p
        return (1.0 - cfg.alpha) * flow + cfg.alpha * p

    x = p.copy()
    if warm is not None:
        if len(warm) != n:
            raise UsageError(f"warm must hold the {n} nodes' trust")
        # the error bound needs a start in the simplex; an unusable one falls back to p
        w = np.nan_to_num(np.maximum(np.asarray(warm, dtype=np.float64), 0.0), posinf=0.0)
        x = w / w.sum() if w.sum() > 0 else x
    return _solve(step, x, cfg)


def _solve(step: Callable[[F64], F64], x: F64, cfg: GlobalTrustConfig) -> GlobalTrust:
    gx = step(x)
    f = gx - x
    res = float(np.abs(f).sum())
    used = 1
    # (g(x_i), g(x_i) - x_i) of the accepted iterates since the last reset, oldest first
    memory: list[tuple[F64, F64]] = [(gx, f)]
    while res >= cfg.tolerance and used < cfg.max_iterations:
        cand = _anderson(memory, res) if cfg.anderson_memory else None
        if cand is None:
            memory = memory[-1:]  # plain step: restart the memory from x
        x_new = gx if cand is None else cand
        g_new = step(x_new)
        used += 1
        f_new = g_new - x_new
        res_new = float(np.abs(f_new).sum())
        if cand is not None and not res_new <= res:
            # The mix made things worse (or NaN): drop it and take the plain step from x
            # next, which shrinks the residual by (1 - alpha) at least.
            memory = memory[-1:]
            continue
        gx, f, res = g_new, f_new, res_new
        memory = [*memory, (gx, f)][-(cfg.anderson_memory + 1) :]
    # Accepted iterates are >= 0 and sum to 1, so this only undoes rounding.
    out = np.maximum(gx, 0.0)
    return GlobalTrust(out / out.sum(), used, res < cfg.tolerance)


def _anderson(memory: list[tuple[F64, F64]], res: float) -> F64 | None:
    """The Anderson candidate from ``memory`` (None: take the plain step)."""
    if len(memory) < 2:
        return None
    g_k, f_k = memory[-1]
    d_g = np.stack([b[0] - a[0] for a, b in pairwise(memory)], axis=1)
    d_f = np.stack([b[1] - a[1] for a, b in pairwise(memory)], axis=1)
    # rcond truncates near-dependent directions (the minimum-norm solution): the
    # regularisation that keeps gamma bounded when the residuals stop being independent.
    try:
        gamma = np.linalg.lstsq(d_f, f_k, rcond=1e-10)[0]
    except np.linalg.LinAlgError:  # the SVD did not converge (NaN in the memory)
        return None
    cand: F64 = g_k - d_g @ gamma  # sums to 1: the g(x_i) do and the weights sum to 1
    # Clipping moves the candidate by about twice its negative mass (L1); more than half
    # the current residual would spend the gain the mix was for, so take the plain step.
    negative = float(-cand[cand < 0].sum())
    if not (np.isfinite(cand).all() and negative <= 0.5 * res):
        return None
    cand = np.maximum(cand, 0.0)
    out: F64 = cand / cand.sum()
    return out
