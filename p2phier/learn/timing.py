"""When a parent publishes a new version (pure; no clock, no I/O).

The rule: publish a candidate only when its validation score improves on the
current version by at least ``margin`` AND, on every domain the current version
already serves, the candidate's accuracy drops by at most ``tolerance``.
Otherwise keep collecting updates.  A candidate that cannot be evaluated on a
domain the current version serves is refused: silence is not evidence.

Every decision is returned as a frozen :class:`PublishDecision` carrying the
numbers it was made from, and logged, so an operator can see why a version was
or was not published.  The caller passes ``now``; this module never reads a clock.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from p2phier.errors import LearnError

logger = logging.getLogger(__name__)

#: Float slack so that 0.90 - 0.89 counts as a drop of 0.01, not 0.0100000001.
_EPS = 1e-9


class TimingError(LearnError, ValueError):
    """A timing policy or evaluation is malformed."""


@dataclass(frozen=True)
class TimingPolicy:
    """Thresholds of the publish rule.

    ``margin``: the least validation improvement worth publishing (in the
    metric's units).  ``tolerance``: the largest accuracy drop allowed on any
    previously held domain.  ``higher_is_better``: False for losses/perplexity.
    ``min_updates``: children's updates needed before a candidate is considered.
    """

    margin: float = 0.005
    tolerance: float = 0.01
    higher_is_better: bool = True
    min_updates: int = 1

    def __post_init__(self) -> None:
        for name in ("margin", "tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TimingError(f"{name} must be a finite number >= 0, got {value}")
        if self.min_updates < 0:
            raise TimingError(f"min_updates must be >= 0, got {self.min_updates}")


@dataclass(frozen=True)
class Evaluation:
    """A version's scores: one validation metric and accuracy per domain it serves."""

    validation: float
    domain_accuracy: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.validation):
            raise TimingError(f"validation score must be finite, got {self.validation}")
        for domain, acc in self.domain_accuracy.items():
            if not (math.isfinite(acc) and 0.0 <= acc <= 1.0):
                raise TimingError(f"accuracy on {domain!r} must be in [0, 1], got {acc}")


@dataclass(frozen=True)
class DomainCheck:
    domain: str
    before: float
    after: float | None  # None: the candidate was not evaluated on this domain
    drop: float | None
    ok: bool


@dataclass(frozen=True)
class PublishDecision:
    """One decision with every number it used; ``publish`` is the verdict."""

    publish: bool
    reason: str
    now: float
    round: int
    n_updates: int
    validation_before: float
    validation_after: float
    improvement: float  # signed so that positive is better, whatever the metric
    margin: float
    tolerance: float
    domains: tuple[DomainCheck, ...]

    def to_json(self) -> str:
        """A single-line JSON record (sorted keys) for logs and reports."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def decide(
    policy: TimingPolicy,
    current: Evaluation,
    candidate: Evaluation,
    *,
    now: float,
    round: int,
    n_updates: int,
) -> PublishDecision:
    """Apply the publish rule to a candidate version against the current one."""
    if n_updates < 0:
        raise TimingError(f"n_updates must be >= 0, got {n_updates}")
    sign = 1.0 if policy.higher_is_better else -1.0
    improvement = sign * (candidate.validation - current.validation)
    checks: list[DomainCheck] = []
    for domain in sorted(current.domain_accuracy):
        before = current.domain_accuracy[domain]
        after = candidate.domain_accuracy.get(domain)
        if after is None:
            checks.append(DomainCheck(domain, before, None, None, ok=False))
            continue
        drop = before - after
        checks.append(DomainCheck(domain, before, after, drop, ok=drop <= policy.tolerance + _EPS))

    failed = [c for c in checks if not c.ok]
    if n_updates < policy.min_updates:
        publish = False
        reason = f"waiting: {n_updates} of {policy.min_updates} updates collected"
    elif improvement < policy.margin - _EPS:
        publish = False
        reason = f"validation improved by {improvement:.4g} < margin {policy.margin:.4g}"
    elif failed:
        publish = False
        unevaluated = [c for c in failed if c.drop is None]
        if unevaluated:
            reason = f"candidate was not evaluated on held domain {unevaluated[0].domain!r}"
        else:
            worst = max(failed, key=lambda c: c.drop if c.drop is not None else math.inf)
            reason = (
                f"accuracy on held domain {worst.domain!r} drops by {worst.drop:.4g} "
                f"> tolerance {policy.tolerance:.4g}"
            )
    else:
        publish = True
        reason = (
            f"validation improved by {improvement:.4g} >= margin {policy.margin:.4g}; "
            f"no held domain dropped by more than {policy.tolerance:.4g}"
        )
    decision = PublishDecision(
        publish=publish,
        reason=reason,
        now=now,
        round=round,
        n_updates=n_updates,
        validation_before=current.validation,
        validation_after=candidate.validation,
        improvement=improvement,
        margin=policy.margin,
        tolerance=policy.tolerance,
        domains=tuple(checks),
    )
    logger.info("publish decision: %s", decision.to_json())
    return decision
