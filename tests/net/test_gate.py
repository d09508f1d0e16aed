"""The inbound gate's counting (pure): caps on handshakes in total and per IP, live per IP."""

from __future__ import annotations

from p2phier.net.gate import InboundGate


def test_handshakes_are_capped_per_ip_and_in_total() -> None:
    gate = InboundGate(max_handshakes=5, max_handshakes_per_ip=2, max_inbound_per_ip=3)
    for _ in range(2):
        assert gate.admit("10.0.0.1") is None
        gate.opened("10.0.0.1")
    assert gate.admit("10.0.0.1") == "handshakes-per-ip"
    assert gate.admit("10.0.0.2") is None  # another address is not held up
    gate.handshake_over("10.0.0.1")  # one finished its handshake: a slot for that IP again
    assert gate.admit("10.0.0.1") is None
    gate.opened("10.0.0.1")
    gate.handshake_over("10.0.0.1")
    assert gate.admit("10.0.0.1") == "connections-per-ip"  # 3 live from one address
    for ip in ("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"):
        gate.opened(ip)
    assert gate.admit("10.0.0.9") == "handshakes"  # 5 in their handshake in total
    gate.closed("10.0.0.2", in_handshake=True)
    assert gate.admit("10.0.0.9") is None
    gate.closed("10.0.0.1", in_handshake=False)
    gate.closed("10.0.0.1", in_handshake=False)
    gate.closed("10.0.0.1", in_handshake=True)  # the one still in its handshake
    assert "10.0.0.1" not in gate.live and "10.0.0.1" not in gate.handshaking
    assert gate.status() == {"handshaking": 3, "inbound": 3, "refused": {}}
