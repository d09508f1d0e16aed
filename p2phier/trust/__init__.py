"""Trust: what a node remembers of its peers and what it lets them cost (pure, no I/O).

Every module here is clock-free in the shape of py-libp2p's ``pubsub/score.py``:
events and ``now`` in, decisions and scores out.  :mod:`p2phier.trust.budget`
holds per-peer rate budgets checked before any expensive work.
"""

from p2phier.trust.budget import ANNOUNCEMENTS, RECORDS, REGISTRATIONS, Budget, RateBudget

__all__ = ["ANNOUNCEMENTS", "RECORDS", "REGISTRATIONS", "Budget", "RateBudget"]
