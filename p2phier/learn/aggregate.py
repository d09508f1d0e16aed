"""Robust aggregation of children's adapter updates (pure numpy, no torch).

What this module owns:

* the conversion between PEFT LoRA adapter tensors (``...lora_A.weight`` /
  ``...lora_B.weight`` pairs) and *effective* tensors: the merged low-rank
  product ``scaling * B @ A`` per module, plus every other tensor of the adapter
  (task heads saved through ``modules_to_save``) unchanged;
* the aggregation rules, applied to *updates* (effective tensors minus the
  parent's current effective tensors): weighted FedAvg, coordinate-wise median,
  trimmed mean, norm clipping, and probe-scored (FLTrust-style) weighting; with
  ``partial=True`` updates may cover different tensors (a shallower tier's
  update covers only its blocks) and each tensor is aggregated over the updates
  that have it, never counting a missing one as zero;
* re-factorisation of an aggregated merged delta back to rank ``r`` by
  truncated SVD, reporting the relative error it costs.

Why merged products and not factors: two adapters that compute the same
``B @ A`` can have completely different factors (any invertible ``R`` gives
``(B R)(R^-1 A)``), so averaging ``A`` and ``B`` separately averages
meaningless coordinates; averaging the products averages what the model
actually adds to its weights.

Every update comes from a peer and is hostile: shapes, key sets and finiteness
are checked before any arithmetic, and errors say which child and tensor failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2phier.errors import LearnError
from p2phier.trust.quality import QualityConfig, TrustedLoss, Verdict, screen

logger = logging.getLogger(__name__)

Array = NDArray[np.float32]
#: name -> tensor; for LoRA modules the name is ``<module>`` + :data:`DELTA_SUFFIX`.
Tensors = Mapping[str, Array]

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"
DELTA_SUFFIX = ".lora_delta"

#: The author name of a parent's own update beside its children's (trusted, never screened).
OWN_UPDATE = "self"

#: Refuse updates whose total size exceeds this many elements (a 6-layer
#: MiniLM with every Linear merged is ~14M); a peer cannot make us allocate more.
MAX_UPDATE_ELEMENTS = 64_000_000


class AggregationError(LearnError, ValueError):
    """Updates cannot be aggregated (mismatched tensors, non-finite values, bad rule)."""


# --- LoRA <-> effective tensors ----------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """The parts of a PEFT ``adapter_config.json`` that fix each module's scaling."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoraSpec:
        """Read the scaling fields of an adapter config; refuse what this code cannot merge."""
        try:
            r = int(config["r"])
            alpha = float(config["lora_alpha"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AggregationError(f"adapter config lacks a valid r/lora_alpha: {exc}") from exc
        if r <= 0 or not math.isfinite(alpha):
            raise AggregationError(f"adapter config has r={r}, lora_alpha={alpha}; need r > 0")
        if config.get("use_dora"):
            raise AggregationError("DoRA adapters are not supported: their update is not B @ A")
        return cls(
            r=r,
            lora_alpha=alpha,
            use_rslora=bool(config.get("use_rslora", False)),
            rank_pattern={str(k): int(v) for k, v in (config.get("rank_pattern") or {}).items()},
            alpha_pattern={
                str(k): float(v) for k, v in (config.get("alpha_pattern") or {}).items()
            },
        )

    def scaling(self, module: str) -> float:
        """PEFT's scaling for ``module``: alpha / r (or alpha / sqrt(r) with rsLoRA)."""
        r: int = self.r
        alpha: float = self.lora_alpha
        # PEFT matches pattern keys as suffixes of the module path.
        for key, rank in self.rank_pattern.items():
            if module == key or module.endswith("." + key):
                r = rank
        for key, value in self.alpha_pattern.items():
            if module == key or module.endswith("." + key):
                alpha = value
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def lora_to_effective(state: Mapping[str, NDArray[Any]], spec: LoraSpec) -> dict[str, Array]:
    """PEFT adapter tensors -> effective tensors (merged ``scaling * B @ A`` per module).

    Tensors that are not LoRA factors (saved heads, biases) pass through as float32.
    """
    out: dict[str, Array] = {}
    for key in sorted(state):
        if key.endswith(LORA_B_SUFFIX):
            continue
        tensor = np.asarray(state[key])
        if key.endswith(LORA_A_SUFFIX):
            module = key[: -len(LORA_A_SUFFIX)]
            b_key = module + LORA_B_SUFFIX
            if b_key not in state:
                raise AggregationError(f"adapter has {key} but no {b_key}")
            a = tensor.astype(np.float64)
            b = np.asarray(state[b_key]).astype(np.float64)
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
                raise AggregationError(
                    f"LoRA factors of {module} have shapes A{a.shape}, B{b.shape}: "
                    "need A (r, in) and B (out, r)"
                )
            out[module + DELTA_SUFFIX] = (spec.scaling(_peft_module(module)) * (b @ a)).astype(
                np.float32
            )
        else:
            out[key] = tensor.astype(np.float32)
    for key in state:
        if key.endswith(LORA_B_SUFFIX) and key[: -len(LORA_B_SUFFIX)] + LORA_A_SUFFIX not in state:
            raise AggregationError(f"adapter has {key} but no matching lora_A")
    return out


def _peft_module(module: str) -> str:
    """Strip PEFT's ``base_model.model.`` prefix so pattern matching sees the model path."""
    prefix = "base_model.model."
    return module[len(prefix) :] if module.startswith(prefix) else module


@dataclass(frozen=True)
class Refactorised:
    """LoRA factors recovered from effective tensors, with what truncation cost."""

    state: dict[str, Array]
    rank: int
    lora_alpha: float
    relative_error: dict[str, float]  # per LoRA module: ||M - B A s|| / ||M||

    @property
    def max_relative_error(self) -> float:
        return max(self.relative_error.values(), default=0.0)


#: singular values below this times a matrix's largest count as zero (lossless_rank, and the
#: exact zeros of effective_to_lora)
LOSSLESS_RTOL = 1e-6


def effective_to_lora(effective: Tensors, rank: int, lora_alpha: float) -> Refactorised:
    """Effective tensors -> PEFT LoRA tensors of rank ``rank`` (truncated SVD).

    The factors are balanced (``B = U sqrt(S)``, ``A = sqrt(S) V^T``) so neither
    carries all the magnitude; the scaling is ``lora_alpha / rank`` as PEFT uses.
    The result is deterministic for identical inputs, and each singular pair's sign is
    fixed (the largest entry of each ``U`` column positive) so that nearby inputs give
    nearby factors.
    """
    if rank <= 0:
        raise AggregationError(f"rank must be positive, got {rank}")
    scaling = lora_alpha / rank
    if scaling == 0 or not math.isfinite(scaling):
        raise AggregationError(f"lora_alpha={lora_alpha} gives an unusable scaling")
    state: dict[str, Array] = {}
    errors: dict[str, float] = {}
    for key in sorted(effective):
        tensor = np.asarray(effective[key], dtype=np.float64)
        if not key.endswith(DELTA_SUFFIX):
            state[key] = tensor.astype(np.float32)
            continue
        module = key[: -len(DELTA_SUFFIX)]
        if tensor.ndim != 2:
            raise AggregationError(f"merged delta {key} has shape {tensor.shape}; need 2-D")
        target = tensor / scaling
        u, s, vt = np.linalg.svd(target, full_matrices=False)
        # Each singular pair's sign is arbitrary (LAPACK's choice flips with tiny changes of
        # the matrix): fix it, so that consecutive versions of a slowly changing model have
        # close factors and a version travels as a small delta on the previous one.
        flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
        flip[flip == 0] = 1.0
        u, vt = u * flip, vt * flip[:, None]
        # components the matrix does not have (below lossless_rank's tolerance) are exact
        # zeros: a fixed rank above the matrix's own costs nothing once compressed, and
        # keeps consecutive versions the same shape (a version travels as a delta)
        k = min(rank, int(np.sum(s > LOSSLESS_RTOL * s[0])) if s.size and s[0] > 0 else 0)
        root = np.sqrt(s[:k])
        b = np.zeros((tensor.shape[0], rank))
        a = np.zeros((rank, tensor.shape[1]))
        b[:, :k] = u[:, :k] * root
        a[:k, :] = root[:, None] * vt[:k, :]
        norm = float(np.linalg.norm(tensor))
        residual = float(np.sqrt(np.sum(s[k:] ** 2))) * abs(scaling)
        errors[module] = residual / norm if norm > 0 else 0.0
        state[module + LORA_A_SUFFIX] = a.astype(np.float32)
        state[module + LORA_B_SUFFIX] = b.astype(np.float32)
    return Refactorised(state=state, rank=rank, lora_alpha=lora_alpha, relative_error=errors)


def lossless_rank(effective: Tensors, max_rank: int, rtol: float = LOSSLESS_RTOL) -> int:
    """The smallest rank (<= ``max_rank``) that keeps every merged delta's spectrum.

    Singular values below ``rtol`` times a matrix's largest are treated as zero.
    Aggregating n rank-r updates gives up to rank n*r; this says what to keep.
    """
    if max_rank <= 0:
        raise AggregationError(f"max_rank must be positive, got {max_rank}")
    rank = 1
    for key, tensor in effective.items():
        if key.endswith(DELTA_SUFFIX):
            s = np.linalg.svd(np.asarray(tensor, dtype=np.float64), compute_uv=False)
            if s.size and s[0] > 0:
                rank = max(rank, int(np.sum(s > rtol * s[0])))
    return min(rank, max_rank)


# --- tensor-dict arithmetic ----------------------------------------------------------


def subtract(a: Tensors, b: Tensors) -> dict[str, Array]:
    """``a - b`` key by key; keys of ``a`` missing from ``b`` count as zero there."""
    out: dict[str, Array] = {}
    for key, value in a.items():
        if key in b:
            if b[key].shape != value.shape:
                raise AggregationError(f"{key}: shape {value.shape} vs {b[key].shape}")
            out[key] = (value.astype(np.float64) - b[key]).astype(np.float32)
        else:
            out[key] = np.asarray(value, dtype=np.float32)
    return out


def add(a: Tensors, b: Tensors) -> dict[str, Array]:
    """``a + b`` key by key over the union of keys (missing means zero)."""
    out: dict[str, Array] = {k: np.asarray(v, dtype=np.float32) for k, v in a.items()}
    for key, value in b.items():
        if key in out:
            if out[key].shape != value.shape:
                raise AggregationError(f"{key}: shape {out[key].shape} vs {value.shape}")
            out[key] = (out[key].astype(np.float64) + value).astype(np.float32)
        else:
            out[key] = np.asarray(value, dtype=np.float32)
    return out


def global_norm(tensors: Tensors) -> float:
    """L2 norm over every element of every tensor."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in tensors.values()))


def dot(a: Tensors, b: Tensors) -> float:
    """Inner product over shared keys."""
    return sum(float(np.vdot(a[k].astype(np.float64), b[k])) for k in a if k in b)


def cosine(a: Tensors, b: Tensors) -> float:
    """Cosine similarity of two updates viewed as flat vectors (0 if either is zero)."""
    na, nb = global_norm(a), global_norm(b)
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot(a, b) / (na * nb)


def scale(tensors: Tensors, factor: float) -> dict[str, Array]:
    return {k: (v.astype(np.float64) * factor).astype(np.float32) for k, v in tensors.items()}


# --- rules ----------------------------------------------------------------------------


class Rule(StrEnum):
    """Aggregation rules; the string values are what configs and logs use."""

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    NORM_CLIP = "norm_clip"
    PROBE_SCORED = "probe_scored"


@dataclass(frozen=True)
class ChildUpdate:
    """One child's update: effective tensors minus the parent's current ones."""

    child: str
    delta: Tensors
    weight: float = 1.0  # e.g. the number of examples it trained on (FedAvg, norm clip)


@dataclass(frozen=True)
class AggregationConfig:
    """Which rule, and its knobs.

    ``trim_ratio``: fraction trimmed from *each* end per coordinate (trimmed mean).
    ``clip_norm``: L2 bound per update (norm clipping); ``None`` uses the median
    of the updates' norms, which needs no tuning and bounds any one child's pull.
    """

    rule: Rule = Rule.FEDAVG
    trim_ratio: float = 0.2
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim_ratio < 0.5:
            raise AggregationError(f"trim_ratio must be in [0, 0.5), got {self.trim_ratio}")
        if self.clip_norm is not None and not (
            self.clip_norm > 0 and math.isfinite(self.clip_norm)
        ):
            raise AggregationError(f"clip_norm must be a positive number, got {self.clip_norm}")


@dataclass(frozen=True)
class ChildReport:
    """What the rule did with one child (for logs and the node's trust evidence)."""

    child: str
    norm: float
    weight: float  # share of the aggregate (sums to 1 over children when defined)
    score: float | None = None  # probe-scored: ReLU(cosine with the probe update)
    clipped: bool = False


@dataclass(frozen=True)
class AggregationResult:
    delta: dict[str, Array]
    rule: Rule
    children: tuple[ChildReport, ...]
    note: str = ""


def validate_updates(updates: Sequence[ChildUpdate], *, partial: bool = False) -> tuple[str, ...]:
    """Check that updates agree on keys and shapes and are finite; return the sorted keys.

    With ``partial`` the updates may cover different subsets of the tensors (a
    shallower tier's update mapped up covers only its blocks): every update
    must still be non-empty, and a tensor must have one shape in every update
    that has it.  The keys returned are then the union.
    """
    if not updates:
        raise AggregationError("no updates to aggregate")
    names = [u.child for u in updates]
    if len(set(names)) != len(names):
        raise AggregationError(f"duplicate child ids in updates: {sorted(names)}")
    first = updates[0]
    keys = tuple(sorted(first.delta))
    shapes: dict[str, tuple[int, ...]] = {}
    union_total = 0
    for update in updates:
        if not update.delta:
            raise AggregationError(f"update from {update.child} has no tensors")
        total = sum(int(np.asarray(v).size) for v in update.delta.values())
        if total > MAX_UPDATE_ELEMENTS:
            raise AggregationError(
                f"update from {update.child} has {total} elements (limit {MAX_UPDATE_ELEMENTS})"
            )
        if not partial and tuple(sorted(update.delta)) != keys:
            missing = set(keys) - set(update.delta)
            extra = set(update.delta) - set(keys)
            raise AggregationError(
                f"update from {update.child} has different tensors "
                f"(missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
            )
        if not (math.isfinite(update.weight) and update.weight >= 0):
            raise AggregationError(f"update from {update.child} has weight {update.weight}")
        for key in sorted(update.delta):
            tensor = np.asarray(update.delta[key])
            if key not in shapes:
                shapes[key] = tensor.shape
                union_total += int(tensor.size)
            elif tensor.shape != shapes[key]:
                raise AggregationError(
                    f"update from {update.child}: {key} has shape {tensor.shape}, "
                    f"expected {shapes[key]}"
                )
            if not np.all(np.isfinite(tensor)):
                raise AggregationError(f"update from {update.child}: {key} has NaN or inf")
        if union_total > MAX_UPDATE_ELEMENTS:
            raise AggregationError(
                f"the updates hold {union_total} distinct elements (limit {MAX_UPDATE_ELEMENTS})"
            )
    return tuple(sorted(shapes))


Holders = tuple[int, ...]


def _holders(updates: Sequence[ChildUpdate], keys: Iterable[str]) -> dict[str, Holders]:
    """For each tensor, the indices of the updates that have it (all of them unless partial)."""
    return {k: tuple(i for i, u in enumerate(updates) if k in u.delta) for k in keys}


def _combine(
    updates: Sequence[ChildUpdate],
    keys: Iterable[str],
    coefficients: Callable[[Holders], Sequence[float]],
) -> dict[str, Array]:
    """Per tensor, the sum of its holders' values times ``coefficients(holders)``.

    Updates that lack a tensor take no part in it (never counted as zeros); the
    coefficients are computed once per distinct set of holders.
    """
    cache: dict[Holders, Sequence[float]] = {}
    out: dict[str, Array] = {}
    for key, holders in _holders(updates, keys).items():
        if holders not in cache:
            cache[holders] = coefficients(holders)
        acc = np.zeros(np.asarray(updates[holders[0]].delta[key]).shape, dtype=np.float64)
        for i, c in zip(holders, cache[holders], strict=True):
            if c != 0.0:
                acc += c * np.asarray(updates[i].delta[key], dtype=np.float64)
        out[key] = acc.astype(np.float32)
    return out


def _normalised(weights: Sequence[float], what: str) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise AggregationError(f"{what}: the weights sum to zero; nothing to average")
    return [w / total for w in weights]


def _stacked(updates: Sequence[ChildUpdate], key: str, holders: Holders) -> NDArray[np.float64]:
    return np.stack([np.asarray(updates[i].delta[key], np.float64) for i in holders])


def fedavg(updates: Sequence[ChildUpdate], *, partial: bool = False) -> AggregationResult:
    """Weighted mean of updates (weights = ``ChildUpdate.weight``). Not robust."""
    keys = validate_updates(updates, partial=partial)
    weights = [u.weight for u in updates]
    coeffs = _normalised(weights, "fedavg")
    reports = tuple(
        ChildReport(u.child, global_norm(u.delta), c) for u, c in zip(updates, coeffs, strict=True)
    )
    delta = _combine(updates, keys, lambda h: _normalised([weights[i] for i in h], "fedavg"))
    return AggregationResult(delta, Rule.FEDAVG, reports)


def coordinate_median(
    updates: Sequence[ChildUpdate], *, partial: bool = False
) -> AggregationResult:
    """Coordinate-wise median (unweighted): robust while fewer than half are bad."""
    keys = validate_updates(updates, partial=partial)
    out = {
        k: np.median(_stacked(updates, k, h), axis=0).astype(np.float32)
        for k, h in _holders(updates, keys).items()
    }
    n = len(updates)
    reports = tuple(ChildReport(u.child, global_norm(u.delta), 1.0 / n) for u in updates)
    return AggregationResult(out, Rule.MEDIAN, reports)


def trimmed_mean(
    updates: Sequence[ChildUpdate], trim_ratio: float, *, partial: bool = False
) -> AggregationResult:
    """Per coordinate, drop the ``floor(trim_ratio * n)`` largest and smallest, average the rest.

    ``n`` counts the updates that have the tensor.  With too few updates to
    trim anything the result is the plain mean, and the note says so: the rule
    then gives no protection.
    """
    keys = validate_updates(updates, partial=partial)
    holders = _holders(updates, keys)
    out: dict[str, Array] = {}
    for key, h in holders.items():
        n_h = len(h)
        k = math.floor(trim_ratio * n_h)
        stacked = np.sort(_stacked(updates, key, h), axis=0)
        out[key] = stacked[k : n_h - k].mean(axis=0).astype(np.float32)
    fewest = min(len(h) for h in holders.values())
    note = (
        ""
        if math.floor(trim_ratio * fewest) > 0
        else f"trimmed mean with n={fewest}, trim_ratio={trim_ratio} trims nothing"
    )
    n = len(updates)
    reports = tuple(ChildReport(u.child, global_norm(u.delta), 1.0 / n) for u in updates)
    return AggregationResult(out, Rule.TRIMMED_MEAN, reports, note)


def norm_clip(
    updates: Sequence[ChildUpdate], clip_norm: float | None, *, partial: bool = False
) -> AggregationResult:
    """Scale every update down to at most ``clip_norm`` (default: median norm), then FedAvg."""
    keys = validate_updates(updates, partial=partial)
    norms = [global_norm(u.delta) for u in updates]
    bound = float(np.median(norms)) if clip_norm is None else clip_norm
    factors = [1.0 if n <= bound or n == 0.0 else bound / n for n in norms]
    weights = [u.weight for u in updates]
    shares = _normalised(weights, "norm_clip")
    reports = tuple(
        ChildReport(u.child, n, s, clipped=f < 1.0)
        for u, n, s, f in zip(updates, norms, shares, factors, strict=True)
    )

    def coefficients(h: Holders) -> list[float]:
        held = _normalised([weights[i] for i in h], "norm_clip")
        return [s * factors[i] for i, s in zip(h, held, strict=True)]

    return AggregationResult(
        _combine(updates, keys, coefficients), Rule.NORM_CLIP, reports, f"clip norm {bound:.6g}"
    )


def probe_scored(
    updates: Sequence[ChildUpdate], probe: Tensors, *, partial: bool = False
) -> AggregationResult:
    """FLTrust-style: trust each update by ReLU(cosine) with the parent's probe update.

    Each update is rescaled to the probe update's norm (so no child wins by
    magnitude) and weighted by its score.  If no update points the probe's way
    (every score 0) the aggregate is zero and the note says so.  A partial
    update is compared with, and rescaled to, the probe restricted to its tensors.
    """
    keys = validate_updates(updates, partial=partial)
    if tuple(sorted(probe)) != keys:
        raise AggregationError("the probe update does not have the same tensors as the children")
    for key in keys:
        if (
            np.asarray(probe[key]).shape
            != np.asarray(next(u.delta[key] for u in updates if key in u.delta)).shape
        ):
            raise AggregationError(f"probe update: {key} has a different shape")
        if not np.all(np.isfinite(probe[key])):
            raise AggregationError(f"probe update: {key} has NaN or inf")
    probe_norm = global_norm(probe)
    if probe_norm == 0.0:
        raise AggregationError(
            "the probe update is zero: train on the probe set before probe-scored aggregation"
        )
    probes = [
        probe if len(u.delta) == len(probe) else {k: probe[k] for k in u.delta} for u in updates
    ]
    norms = [global_norm(u.delta) for u in updates]
    scores = [max(0.0, cosine(u.delta, p)) for u, p in zip(updates, probes, strict=True)]
    rescale = [(global_norm(p) / n if n > 0 else 0.0) for p, n in zip(probes, norms, strict=True)]
    total = sum(scores)
    note = ""
    if total == 0.0:
        shares = [0.0] * len(updates)
        note = "no update agrees with the probe update; aggregate is zero"
    else:
        shares = [s / total for s in scores]

    def coefficients(h: Holders) -> list[float]:
        held = sum(scores[i] for i in h)
        if held == 0.0:
            return [0.0] * len(h)
        return [scores[i] / held * rescale[i] for i in h]

    reports = tuple(
        ChildReport(u.child, n, sh, score=s)
        for u, n, sh, s in zip(updates, norms, shares, scores, strict=True)
    )
    delta = _combine(updates, keys, coefficients)
    return AggregationResult(delta, Rule.PROBE_SCORED, reports, note)


def screen_round(
    updates: Sequence[ChildUpdate],
    probe: Tensors | None,
    *,
    trusted: Iterable[str] = (),
    config: QualityConfig | None = None,
    loss: TrustedLoss | None = None,
) -> tuple[list[ChildUpdate], dict[str, Verdict]]:
    """The updates a round keeps, and the screen's verdict on every other one.

    ``trusted`` authors (the parent's own update) are kept as they are.  Every
    other update is screened (:func:`p2phier.trust.quality.screen`, ``probe`` as
    its trusted reference), a weight-0 one too (its author's trust left it out,
    but the evidence still counts); it is kept if the screen finds nothing and its
    weight is positive, bounded to the screen's ``clip_ratio`` times the round's
    median norm so that no child wins by magnitude.  ``loss``: the parent's
    trusted-set loss before the round and with each update applied alone (the
    screen's ``harmful`` check).  The caller turns each verdict's ``penalty`` into
    evidence against its author.
    """
    trusted = set(trusted)
    validate_updates(updates, partial=True)
    judged = [u for u in updates if u.child not in trusted]
    verdicts = screen({u.child: u.delta for u in judged}, probe, config, loss=loss)
    kept = [u for u in updates if u.child in trusted]
    for u in judged:
        v = verdicts[u.child]
        if v.ok and u.weight > 0:
            delta = u.delta if v.scale >= 1.0 else scale(u.delta, v.scale)
            kept.append(ChildUpdate(u.child, delta, u.weight))
    return kept, verdicts


def aggregate(
    updates: Sequence[ChildUpdate],
    config: AggregationConfig,
    *,
    probe: Tensors | None = None,
    partial: bool = False,
) -> AggregationResult:
    """Apply ``config.rule``; ``probe`` (the parent's own update) is needed for probe-scored.

    ``partial``: updates may cover different tensors; each tensor is aggregated
    over the updates that have it (see :func:`validate_updates`).
    """
    rule = Rule(config.rule)
    if rule is Rule.FEDAVG:
        result = fedavg(updates, partial=partial)
    elif rule is Rule.MEDIAN:
        result = coordinate_median(updates, partial=partial)
    elif rule is Rule.TRIMMED_MEAN:
        result = trimmed_mean(updates, config.trim_ratio, partial=partial)
    elif rule is Rule.NORM_CLIP:
        result = norm_clip(updates, config.clip_norm, partial=partial)
    else:
        if probe is None:
            raise AggregationError("probe-scored aggregation needs the parent's probe update")
        result = probe_scored(updates, probe, partial=partial)
    logger.info(
        "aggregated %d updates with %s: norm %.6g %s",
        len(updates),
        rule.value,
        global_norm(result.delta),
        " ".join(f"{c.child}:w={c.weight:.3f}" for c in result.children),
    )
    if result.note:
        logger.warning("aggregation %s: %s", rule.value, result.note)
    return result
