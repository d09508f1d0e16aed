"""The host wrapper: addresses, configuration, dialing (right and wrong peer ids), streams."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from libp2p.abc import INetStream

from p2phier.errors import ConfigError, InvalidPeerIdError, PeerTimeoutError
from p2phier.identity import Identity
from p2phier.net import DialError, HostConfig, PeerAddr, open_host

from .procs import children

A = Identity.from_seed(b"\x01" * 32)
B = Identity.from_seed(b"\x02" * 32)
C = Identity.from_seed(b"\x03" * 32)


def test_peer_addr_parses_full_addresses_and_bare_ids() -> None:
    pid = str(A.peer_id)
    addr = PeerAddr.parse(f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}")
    assert addr == PeerAddr(pid, ("/ip4/127.0.0.1/tcp/4001",))
    assert str(addr) == f"/ip4/127.0.0.1/tcp/4001/p2p/{pid}"
    assert PeerAddr.parse(pid) == PeerAddr(pid)
    assert str(PeerAddr(pid)) == pid
    with pytest.raises(ConfigError, match="no /p2p/"):
        PeerAddr.parse("/ip4/127.0.0.1/tcp/4001")
    with pytest.raises(ConfigError, match="not a valid multiaddr"):
        PeerAddr.parse("/ip4/999.0.0.1/tcp/1/p2p/" + pid)
    with pytest.raises(InvalidPeerIdError):
        PeerAddr.parse("12D3KooWnotreally")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"listen": ()}, "at least one listen"),
        ({"listen": ("/nonsense/1",)}, "not a valid multiaddr"),
        ({"dial_timeout": 0}, "dial_timeout"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout"),
        ({"negotiate_timeout": 0}, "negotiate_timeout"),
    ],
)
def test_host_config_is_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HostConfig(**kwargs)  # type: ignore[arg-type]


async def test_hosts_connect_and_carry_a_stream_with_verified_peer_ids() -> None:
    seen: list[str] = []

    async def echo(stream: object) -> None:
        from p2phier.net.streams import stream_peer

        seen.append(stream_peer(stream))  # type: ignore[arg-type]
        data = await stream.read(100)  # type: ignore[attr-defined]
        await stream.write(data[::-1])  # type: ignore[attr-defined]
        await stream.close()  # type: ignore[attr-defined]

    async with open_host(A) as a, open_host(B) as b:
        assert a.peer_id == str(A.peer_id)
        assert all(addr.endswith(f"/p2p/{b.peer_id}") for addr in b.addrs)
        b.set_stream_handler("/p2phier-test/echo/1", echo)
        await a.connect(b.addrs[0])
        assert a.is_connected(b.peer_id)
        stream = await a.open_stream(b.peer_id, "/p2phier-test/echo/1")
        await stream.write(b"hello")
        with trio.fail_after(10):
            assert await stream.read(100) == b"olleh"
        assert seen == [a.peer_id]  # the server saw the dialer's authenticated id
        assert a.peer_id in b.connected_peers()


async def test_dialing_an_address_with_the_wrong_peer_id_is_refused() -> None:
    streams: list[object] = []

    async def handler(stream: object) -> None:
        streams.append(stream)

    async with open_host(A) as a, open_host(B) as b:
        b.set_stream_handler("/p2phier-test/x/1", handler)
        wrong = PeerAddr(str(C.peer_id), tuple(b.listen_addrs))  # B's address, C's id
        with pytest.raises(DialError, match=str(C.peer_id)):
            await a.connect(wrong)
        with pytest.raises(DialError):
            await a.open_stream(str(C.peer_id), "/p2phier-test/x/1")
        await trio.sleep(0.2)  # let B process whatever the failed handshake left
        assert not a.is_connected(str(C.peer_id))
        assert not a.is_connected(b.peer_id)
        assert a.peer_id not in b.connected_peers()
        assert streams == []


async def test_unreachable_and_unknown_peers_fail_with_clear_errors() -> None:
    async with open_host(A) as a:
        with pytest.raises(DialError, match="no known address"):
            await a.connect(str(B.peer_id))
        # nothing listens on port 1 of 127.0.0.1
        with pytest.raises((DialError, PeerTimeoutError)):
            await a.connect(PeerAddr(str(B.peer_id), ("/ip4/127.0.0.1/tcp/1",)), timeout=5)


async def test_a_protocol_the_peer_does_not_speak_is_refused() -> None:
    async with open_host(A) as a, open_host(B) as b:
        await a.connect(b.addrs[0])
        with pytest.raises(DialError, match="/p2phier-test/none/1"):
            await a.open_stream(b.peer_id, "/p2phier-test/none/1", timeout=5)


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("huge", DialError, "length varint too long"),
        ("long", DialError, "line of 16000 bytes refused"),
        ("garbage", DialError, "line without its newline"),
        ("bad-header", DialError, "not the multistream header"),
        ("wrong-echo", DialError, "/something/else/1"),
        ("na", DialError, "does not speak"),
        ("cut", DialError, "closed the stream while negotiating"),
        ("silent", PeerTimeoutError, "took more than 3"),
    ],
)
async def test_a_peer_that_lies_in_stream_negotiation_is_refused_within_the_deadline(
    tmp_path: Path, mode: str, error: type[Exception], match: str
) -> None:
    """A real peer process answers our (pipelined) multistream-select proposal with
    garbage, a huge length, another protocol, a refusal, an early close, or silence:
    each is a clear error within the open deadline, nothing is allocated for the
    declared gigabyte, and the node opens streams to an honest peer right after."""
    with children(tmp_path) as kids:
        liar = kids.spawn("bad_select_proc", f"liar-{mode}", "--mode", mode).wait_ready()
        async with open_host(A) as a, open_host(B) as b:
            b.set_stream_handler("/p2phier-test/ok/1", _close_at_once)
            await a.connect(liar.addr)
            with trio.fail_after(15), pytest.raises(error, match=match):
                await a.open_stream(liar.peer_id, "/p2phier-test/ok/1", timeout=3)
            await a.connect(b.addrs[0])
            stream = await a.open_stream(b.peer_id, "/p2phier-test/ok/1", timeout=10)
            await stream.close()


async def _close_at_once(stream: INetStream) -> None:
    await stream.close()
