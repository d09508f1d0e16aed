"""Attacker nodes: real ``p2phier node run`` processes with one behaviour changed.

``python -m p2phier.devnet.attacker ATTACK node run [the usual flags]`` runs the
node command with the daemon class of ``ATTACK`` instead of
:class:`~p2phier.node.daemon.NodeDaemon`.  Everything else (identity, store,
transport, gossip, Bitswap, control socket) is the real node's, so what a test
or a devnet scenario measures is what the honest nodes' defences do against a
peer that speaks every protocol correctly and lies where it matters.  Each
attack is the smallest override that reproduces what an attacker would do; none
of this code runs in an honest node.

Attacks:

``foreign-artifact``
    publishes artifacts it did not sign, for any layer and domain, as its own
    updates (``node publish`` skips the honest node's own-update check).
``claims-uptime``
    its signed node record claims it started 23 hours ago (self-reported
    uptime once decided parent choice while every latency was unknown).
"""

from __future__ import annotations

import sys
from typing import Any

from p2phier.artifact import Artifact
from p2phier.cid import CID
from p2phier.node.daemon import NodeDaemon


class ForeignArtifactDaemon(NodeDaemon):
    """Announces whatever artifact it is told to, signed by anyone, as its own update."""

    def _check_publishable(self, cid: CID, art: Artifact) -> None:
        return None


class ClaimsUptimeDaemon(NodeDaemon):
    """Claims in its record to have been up for 23 hours."""

    CLAIMED_UPTIME_S = 23 * 3600

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_ms -= self.CLAIMED_UPTIME_S * 1000


ATTACKS: dict[str, type[NodeDaemon]] = {
    "foreign-artifact": ForeignArtifactDaemon,
    "claims-uptime": ClaimsUptimeDaemon,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ATTACKS:
        sys.stderr.write(f"usage: attacker {{{','.join(ATTACKS)}}} node run [flags]\n")
        raise SystemExit(2)
    from p2phier.cli import node as node_cli
    from p2phier.cli.main import app

    node_cli.DAEMON_CLASS = ATTACKS[argv[0]]
    sys.stderr.write(f"attacker: {argv[0]}\n")
    app(argv[1:], prog_name="p2phier")


if __name__ == "__main__":
    main(sys.argv[1:])
