"""Shared helpers of the network tests: deterministic data, a raw Bitswap attacker,
a bare py-libp2p host with any key type (RSA, secp256k1: what IPFS peers have)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from p2phier.bitswap import PROTOCOL_ID, SessionConfig
from p2phier.identity import Identity
from p2phier.net import BitswapConfig, Host, open_host
from p2phier.net.streams import STREAM_ERRORS

#: short deadlines so fault tests finish quickly (the defaults are 15 s / 5 s)
FAST = BitswapConfig(
    # 4 blocks in flight per provider (default 32) so that a few-MiB object is split
    session=SessionConfig(block_timeout=2.0, have_timeout=2.0, max_inflight_per_peer=4),
    frame_timeout=2.0,
    write_timeout=3.0,
    open_timeout=5.0,
)


def data_of(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes (incompressible, distinct per seed)."""
    return random.Random(seed).randbytes(size)


@asynccontextmanager
async def raw_bitswap_stream(target_addr: str) -> AsyncIterator[tuple[Host, INetStream]]:
    """A host that speaks Bitswap's protocol id but writes whatever a test wants."""
    async with open_host(Identity.generate()) as host:
        await host.connect(target_addr)
        target = target_addr.rsplit("/p2p/", 1)[1]
        stream = await host.open_stream(target, PROTOCOL_ID)
        yield host, stream


@asynccontextmanager
async def foreign_host(key_pair: KeyPair) -> AsyncIterator[IHost]:
    """A bare py-libp2p host (TCP + Noise + Yamux, as kubo and helia speak) with
    ``key_pair`` of any type, listening on 127.0.0.1: a peer p2phier did not make."""
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=listen,
        enable_quic=False,
        enable_websocket=False,
    )
    async with host.run(listen):
        await host.get_network().auto_connector.stop()  # type: ignore[attr-defined]
        try:
            yield host
        finally:
            with trio.move_on_after(5):
                for peer in host.get_connected_peers():
                    await host.disconnect(peer)


async def stream_was_reset(stream: INetStream, timeout: float = 10.0) -> bool:
    """True when the far side reset (or closed) ``stream`` within ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            while True:
                if not await stream.read(1 << 16):
                    return True
        except STREAM_ERRORS:
            return True
    return False


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (polling) until ``condition()`` holds; fail the test after ``timeout``."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
