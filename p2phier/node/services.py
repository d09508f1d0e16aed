"""The node's network services, opened before the node object is built.

Owns :class:`NetServices` (one node's libp2p host, gossipsub router, kad-dht
and Bitswap driver) and :func:`open_services`, which opens them in order with
the settings of the node's configuration and closes them in reverse order.
The daemon is built on services that are already running, so none of its
parts is ever half-built; what it adds to them (stream handlers, topic
subscriptions, its guard's Bitswap hooks) it adds itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from p2phier.config import NodeConfig
from p2phier.identity import Identity
from p2phier.net.bitswap import Bitswap, BitswapConfig, open_bitswap
from p2phier.net.dht import Dht, open_dht
from p2phier.net.host import Host, HostConfig, open_host
from p2phier.net.pubsub import Gossip, GossipConfig, open_gossip
from p2phier.store import ContentStore


@dataclass(frozen=True)
class NetServices:
    """One node's running network services (see :func:`open_services`)."""

    host: Host
    gossip: Gossip
    dht: Dht
    bitswap: Bitswap


def host_config(config: NodeConfig) -> HostConfig:
    """The host settings of a node's configuration."""
    return HostConfig(
        listen=config.listen,
        dial_timeout=config.dial_timeout_s,
        stream_open_timeout=config.dial_timeout_s,
        shutdown_timeout=config.shutdown_timeout_s,
        max_handshakes=config.max_handshakes,
        max_handshakes_per_ip=config.max_handshakes_per_ip,
        max_inbound_per_ip=config.max_inbound_per_ip,
    )


@asynccontextmanager
async def open_services(
    config: NodeConfig, identity: Identity, store: ContentStore
) -> AsyncIterator[NetServices]:
    """Run the host, gossipsub, kad-dht and Bitswap (over ``store``) until the block exits.

    Gossipsub opens right after the host, before anyone is dialled: Pubsub learns of
    peers through connection events.  The operator's upload-rate limit is applied
    before the services are handed out.
    """
    bitswap_config = BitswapConfig(
        write_timeout=config.stream_timeout_s, open_timeout=config.dial_timeout_s
    )
    async with (
        open_host(identity, config=host_config(config)) as host,
        open_gossip(host, GossipConfig(heartbeat_s=config.gossip_heartbeat_s)) as gossip,
        open_dht(host, timeout=config.dial_timeout_s) as dht,
        open_bitswap(host, store, bitswap_config) as bitswap,
    ):
        if config.upload_rate_limit:
            bitswap.set_upload_rate(float(config.upload_rate_limit))
        yield NetServices(host=host, gossip=gossip, dht=dht, bitswap=bitswap)


__all__ = ["NetServices", "host_config", "open_services"]
