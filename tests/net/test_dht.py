"""The kad-dht service: which protocol ids a node answers on, as kubo asks them."""

from __future__ import annotations

import pytest
import trio
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage

from p2phier.cid import encode_varint
from p2phier.identity import Identity
from p2phier.net import open_host
from p2phier.net.dht import open_dht
from p2phier.net.streams import read_frame, write_all


@pytest.mark.parametrize("protocol", ["/ipfs/kad/1.0.0", "/ipfs/lan/kad/1.0.0"])
async def test_the_dht_answers_on_the_wan_and_the_lan_protocol_id(protocol: str) -> None:
    # kubo on a LAN (or one machine) finds peers only through its LAN DHT,
    # /ipfs/lan/kad/1.0.0: a node answering /ipfs/kad/1.0.0 alone was invisible to it.
    async with (
        open_host(Identity.generate()) as server,
        open_dht(server),
        open_host(Identity.generate()) as asker,
    ):
        await asker.connect(server.addrs[0])
        stream = await asker.open_stream(server.peer_id, protocol)
        query = KadMessage(type=KadMessage.MessageType.FIND_NODE, key=b"some key")
        body = query.SerializeToString()
        await write_all(stream, encode_varint(len(body)) + body, timeout=10)
        with trio.fail_after(10):
            answer = KadMessage.FromString(
                await read_frame(stream, max_frame_size=1 << 16, timeout=10)
            )
        assert answer.type == KadMessage.MessageType.FIND_NODE
        await stream.reset()
