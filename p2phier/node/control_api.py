"""The node's local control API: status, peers and the commands its control socket serves.

Owns :func:`node_status` (what ``node status --json`` and the devnet show),
:func:`node_peers` and :func:`control_handlers`, the handler table for
:func:`p2phier.net.control.serve_control`; kept apart from
:mod:`p2phier.node.daemon`, which is about the node's life cycle and networking.
Arguments from the socket are checked here (types, ranges) before use.  It reads
the daemon through public attributes and read-only properties only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from p2phier.errors import UsageError
from p2phier.node.housekeeping import operator_pins
from p2phier.records import Layer

if TYPE_CHECKING:
    from p2phier.node.daemon import NodeDaemon


def node_status(node: NodeDaemon) -> dict[str, Any]:
    host = node.host
    return {
        "peer_id": str(node.peer),
        "layer": node.config.layer.label,
        "domain": node.config.domain,
        "base_model_id": node.base_model_id,
        "parent": str(node.hierarchy.parent) if node.hierarchy.parent else None,
        "children": sorted(str(p) for p in node.hierarchy.children),
        "head": str(node.head) if node.head else None,
        "peers": sorted(host.connected_peers()),
        "addresses": host.addrs,
        "inbound": host.gate.status(),
        "records": len(node.book),
        "record_seq": node.record_seq,
        "started_ms": node.started_ms,
        **node.intake.status(),
        "peers_refused": dict(node.refused),
        # peers over their budgets (most refused first): messages dropped before any check
        "over_budget": {
            "announcements": node.intake.budget.status(),
            "records": node.records.record_budget.status(),
            "registrations": node.records.registration_budget.status(),
        },
        # round trips this node measured itself (ms): the only figures parent choice uses
        "measured_ms": {str(p): round(rtt * 1000, 2) for p, rtt in node.latencies.items()},
        "misbehaviour": list(node.guard.misbehaviour),
        "isolated": node.guard.trust.isolated(node.clock()),
        # distrusted by the global view (reports of peers this node trusts): no child, no parent
        "distrusted": node.guard.distrusted(),
        "children_refused": list(node.hierarchy.refused),  # the latest, with their reasons
        "bitswap": _wire_totals(node),
        # the node's own pins, its garbage collections, per-peer state forgotten
        "retention": node.housekeeping.status(),
        "topics": node.topics,
        "control_socket": str(node.config.control_socket),
        "learn": node.learner.status() if node.learner is not None else None,
    }


def _wire_totals(node: NodeDaemon) -> dict[str, Any]:
    """Block bytes this node sent and received over Bitswap (peers whose ledgers were
    pruned included)."""
    book = node.bitswap.ledgers
    totals = book.totals()
    return {
        "bytes_sent": totals.bytes_sent,
        "bytes_received": totals.bytes_received,
        # the received bytes of this node's own fetches, by what they were for
        "received_for": dict(book.received_for),
    }


def node_peers(node: NodeDaemon, layer: str | None, domain: str | None) -> list[dict[str, Any]]:
    lay = Layer.parse(layer) if layer else None
    out = []
    connected = set(node.host.connected_peers())
    for record in node.book.query(lay, domain_prefix=domain, now=node.clock()):
        if record.peer_id == node.peer:
            continue
        entry = record.to_json()
        entry["connected"] = str(record.peer_id) in connected
        out.append(entry)
    return out


def control_handlers(node: NodeDaemon) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
    async def status(args: Mapping[str, Any]) -> Any:
        return node_status(node)

    async def peers(args: Mapping[str, Any]) -> Any:
        return node_peers(node, _opt_str(args, "layer"), _opt_str(args, "domain"))

    # What the operator asks for over the socket pins on the operator's behalf: the node
    # never unpins it (p2phier/node/housekeeping.py).
    async def publish(args: Mapping[str, Any]) -> Any:
        with operator_pins():
            return await node.publish(_req_str(args, "cid"), _req_str(args, "to"))

    async def fetch(args: Mapping[str, Any]) -> Any:
        timeout = args.get("timeout", 120.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise UsageError("fetch timeout must be a positive number of seconds")
        with operator_pins():
            return await node.fetch(_req_str(args, "cid"), float(timeout))

    async def learn_round(args: Mapping[str, Any]) -> Any:
        if node.learner is None:
            raise UsageError("learning is not enabled on this node (learn.enabled)")
        value = args.get("round")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError("round must be an integer >= 1")
        return node.learner.request_round(value)

    async def trust(args: Mapping[str, Any]) -> Any:
        view = node.guard.trust.status(node.clock())
        view["reports_held"] = len(node.guard.reports)
        view["reports_refused"] = node.guard.reports_refused
        view["global"] = node.guard.global_view()
        # per listed peer (global, local and distrusted): trust, distrust, standing, reporters
        # against it; "global" keeps its plain numbers
        view["standing"] = node.guard.standing_view([*view["global"], *view["peers"]])
        view["distrusted"] = node.guard.distrusted()
        return view

    async def stop(args: Mapping[str, Any]) -> Any:
        node.stop()
        return {"stopping": True}

    return {
        "status": status,
        "peers": peers,
        "publish": publish,
        "fetch": fetch,
        "learn.round": learn_round,
        "trust": trust,
        "stop": stop,
    }


def _opt_str(args: Mapping[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{key} must be a string")
    return value


def _req_str(args: Mapping[str, Any], key: str) -> str:
    value = _opt_str(args, key)
    if not value:
        raise UsageError(f"{key} is required")
    return value
