"""A peer with an RSA key (separate process), as an ordinary kubo node is.

``python -m tests.node.foreign_peer_proc NODE_ADDR CID`` starts a bare
py-libp2p host (TCP + Noise + Yamux) with a fresh RSA-2048 key (``Qm...`` peer
id), connects to the node, sends one Bitswap WANT_HAVE for ``CID`` on a stream
it closes right after writing (as boxo and helia do), and waits for the node's
answer on a stream the node opens back.  That answer is what crashed nodes: the
node's Bitswap sender refused the RSA peer id with an exception that escaped
its task.  It prints one JSON line (its peer id, its address, the presence it
got), then stays up, listening, until its stdin is closed (a test bootstraps a
second node from it).  Every wait has a deadline; it never outlives
``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import json
import math
import sys

import trio
from libp2p.abc import INetStream
from libp2p.crypto.rsa import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from p2phier.bitswap import PROTOCOL_ID, Message, WantEntry, Wantlist, WantType
from p2phier.cid import CID
from p2phier.net.host import PeerAddr
from p2phier.net.streams import STREAM_ERRORS, FrameReader, write_all
from tests.net.helpers import foreign_host

SETUP_TIMEOUT_S = 60.0
MAX_LIFETIME_S = 300.0


async def main(node_addr: str, cid_text: str) -> None:
    target = PeerAddr.parse(node_addr)
    cid = CID.parse(cid_text)
    send, answers = trio.open_memory_channel[Message](math.inf)

    async def inbox(stream: INetStream) -> None:
        reader = FrameReader(stream, max_frame_size=1 << 22, frame_timeout=10, idle_timeout=60)
        try:
            while (frame := await reader.next_frame()) is not None:
                await send.send(Message.decode(frame))
        except STREAM_ERRORS:
            pass

    async with foreign_host(create_new_key_pair(bits=2048)) as host:
        host.set_stream_handler(PROTOCOL_ID, inbox)  # type: ignore[arg-type]
        with trio.fail_after(SETUP_TIMEOUT_S):
            node = ID.from_base58(target.peer)
            await host.connect(PeerInfo(node, [Multiaddr(a) for a in target.addrs]))
            want = WantEntry(cid, want_type=WantType.HAVE, send_dont_have=True)
            stream = await host.new_stream(node, [PROTOCOL_ID])
            await write_all(stream, Message(wantlist=Wantlist((want,))).encode_frame(), timeout=10)
            await stream.close()
            while not (answer := await answers.receive()).presences:
                pass
        me = str(host.get_id())
        print(
            json.dumps(
                {
                    "peer_id": me,
                    "addr": f"{host.get_addrs()[0]}",
                    "presence": answer.presences[0].type.name,
                }
            ),
            flush=True,
        )
        with trio.move_on_after(MAX_LIFETIME_S):
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
