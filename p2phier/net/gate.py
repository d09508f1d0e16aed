"""The inbound connection gate: caps on unfinished handshakes and on connections per IP.

Owns :class:`InboundGate` and :func:`install_gate`.  py-libp2p 0.8.1 admits an
inbound TCP connection into one pool of slots (``max_connections -
min_connections``) that it holds from the accept through the security and
muxer handshakes (up to ``inbound_upgrade_timeout``, 10 s) for the
connection's whole life.  500 connections that never send a byte fill the pool,
and an honest peer could not connect for tens of seconds (issue 14).

The gate runs before that pool is touched and answers from the remote IP:

* at most ``max_handshakes`` connections may be in their handshake at once,
  and ``max_handshakes_per_ip`` from one IP: a silent connection beyond that
  is closed on accept, so a flood from a few addresses holds a few slots;
* at most ``max_inbound_per_ip`` live inbound connections from one IP.

A connection counts as "in its handshake" from the accept until
``upgrade_inbound_raw_conn`` returns (or the connection ends).  The counting
is pure (:class:`InboundGate`); :func:`install_gate` wraps the two swarm
methods on one swarm instance (py-libp2p has no hook for this; the names are
those of 0.8.1, pinned in ``pyproject.toml``).
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: the (ip, still in handshake?) of the inbound connection the current task handles
_CURRENT: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "p2phier_inbound", default=None
)


@dataclass
class InboundGate:
    """Counts of inbound connections by remote IP; decides admission (no I/O, no clock)."""

    max_handshakes: int = 128
    max_handshakes_per_ip: int = 16
    max_inbound_per_ip: int = 256
    handshaking: Counter[str] = field(default_factory=Counter)
    live: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # reason -> count

    def admit(self, ip: str) -> str | None:
        """None to admit a new connection from ``ip``, else why not."""
        if sum(self.handshaking.values()) >= self.max_handshakes:
            return "handshakes"
        if self.handshaking[ip] >= self.max_handshakes_per_ip:
            return "handshakes-per-ip"
        if self.live[ip] >= self.max_inbound_per_ip:
            return "connections-per-ip"
        return None

    def opened(self, ip: str) -> None:
        self.handshaking[ip] += 1
        self.live[ip] += 1

    def handshake_over(self, ip: str) -> None:
        _dec(self.handshaking, ip)

    def closed(self, ip: str, in_handshake: bool) -> None:
        if in_handshake:
            _dec(self.handshaking, ip)
        _dec(self.live, ip)

    def status(self) -> dict[str, Any]:
        return {
            "handshaking": sum(self.handshaking.values()),
            "inbound": sum(self.live.values()),
            "refused": dict(self.refused),
        }


def _dec(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _remote_ip(read_write_closer: Any) -> str:
    try:
        addr = read_write_closer.get_remote_address()
    except (AttributeError, OSError) as exc:  # a transport without it: one shared bucket
        logger.debug("no remote address for an inbound connection: %s", exc)
        return "?"
    return str(addr[0]) if addr else "?"


def install_gate(swarm: Any, gate: InboundGate) -> None:
    """Put ``gate`` in front of ``swarm``'s inbound connection handling."""
    handle = swarm._handle_inbound_connection
    upgrade = swarm.upgrade_inbound_raw_conn

    async def gated_handle(read_write_closer: Any, maddr: Any) -> None:
        ip = _remote_ip(read_write_closer)
        why = gate.admit(ip)
        if why is not None:
            gate.refused[why] += 1
            logger.debug("inbound connection from %s refused (%s)", ip, why)
            try:
                await read_write_closer.close()
            except Exception as exc:  # already gone; a refused connection needs no more
                logger.debug("closing a refused connection from %s: %s", ip, exc)
            return
        gate.opened(ip)
        state = [ip, True]
        token = _CURRENT.set(state)
        try:
            await handle(read_write_closer, maddr)
        finally:
            _CURRENT.reset(token)
            gate.closed(ip, bool(state[1]))

    async def gated_upgrade(raw_conn: Any, maddr: Any) -> Any:
        state = _CURRENT.get()
        try:
            return await upgrade(raw_conn, maddr)
        finally:
            if state is not None and state[1]:
                state[1] = False
                gate.handshake_over(str(state[0]))

    swarm._handle_inbound_connection = gated_handle
    swarm.upgrade_inbound_raw_conn = gated_upgrade
