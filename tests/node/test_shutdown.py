"""Shutdown paths of the host and the daemon that crashed a node under load.

A child's registration can arrive while its parent is stopping: after the
daemon's task nursery has closed, while the host still serves streams.  The
daemon then spawned a head pull into the closed nursery; the RuntimeError
escaped the libp2p stream handler, tore down the swarm and the node exited 70
instead of 0 on SIGTERM.  These tests pin both halves of the fix in-process.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from p2phier.config import load_config
from p2phier.errors import NetworkError
from p2phier.identity import Identity
from p2phier.net.host import open_host
from p2phier.net.streams import read_frame, write_frame
from p2phier.node.daemon import NodeDaemon, open_node_store
from p2phier.records import Capabilities, HardwareClass, Layer, NodeRecord, now_ms, sign_record

pytestmark = pytest.mark.timeout(120)

ECHO = "/p2phier-test/echo/1"
BROKEN = "/p2phier-test/broken/1"


async def test_a_failing_stream_handler_does_not_take_the_host_down() -> None:
    async def broken(stream: object) -> None:
        raise RuntimeError("handler bug")

    async def echo(stream: object) -> None:
        from libp2p.abc import INetStream

        assert isinstance(stream, INetStream)
        data = await read_frame(stream, max_frame_size=64, timeout=10)
        await write_frame(stream, data, timeout=10, max_size=64)
        await stream.close()

    async with (
        open_host(Identity.generate()) as a,
        open_host(Identity.generate()) as b,
    ):
        b.set_stream_handler(BROKEN, broken)
        b.set_stream_handler(ECHO, echo)
        await a.connect(b.addrs[0])
        with pytest.raises(NetworkError):  # b resets the stream: no frame ever comes
            bad = await a.open_stream(b.peer_id, BROKEN)
            await read_frame(bad, max_frame_size=64, timeout=10)
        # b is still up and serving on the same connection
        good = await a.open_stream(b.peer_id, ECHO)
        await write_frame(good, b"still here", timeout=10, max_size=64)
        assert await read_frame(good, max_frame_size=64, timeout=10) == b"still here"


async def test_registration_after_the_node_stopped_is_answered(tmp_path: Path) -> None:
    cfg = load_config(
        environ={},
        flags={
            "home": str(tmp_path / "en"),
            "layer": "language",
            "domain": "en",
            "listen": ["/ip4/127.0.0.1/tcp/0"],
        },
    )
    cfg.home.mkdir(mode=0o700)
    store = open_node_store(cfg)
    try:
        async with NodeDaemon.open(cfg, Identity.generate(), store) as daemon:
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(lambda: daemon.run(on_ready=lambda _st: ready.set()))
                with trio.fail_after(60):
                    await ready.wait()
                daemon.stop()
            # The daemon's tasks are gone; a stream handler still running at this point
            # (as during the host's teardown) registers a child.
            child = Identity.generate()
            now = time.time()
            record = NodeRecord(
                peer_id=child.peer_id,
                addrs=("/ip4/127.0.0.1/tcp/1",),
                layer=Layer.DOMAIN,
                domain="en/news",
                base_model_id=cfg.base_model_id,
                capabilities=Capabilities(1 << 30, 0, HardwareClass.CPU),
                head=None,
                seq=1,
                issued_ms=now_ms(now),
                expires_ms=now_ms(now) + 300_000,
                started_ms=now_ms(now),
            )
            signed = sign_record(record, child)
            verdict = daemon.records.decide_registration(str(child.peer_id), signed)
            assert verdict == (True, "registered")
            assert child.peer_id in daemon.hierarchy.children
    finally:
        store.close()
