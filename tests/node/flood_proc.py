"""A registered child that floods its parent (separate process).

``python -m tests.node.flood_proc PARENT_ADDR COUNT`` is a ``language``/``zz``
node as issue 14's attacker was: it registers with the parent, then COUNT times
re-registers with a new record whose head is a new CID and announces that CID
on the parent's up topic.  It answers Bitswap streams by reading and never
replying, so every fetch of its updates stalls.  It prints one JSON line
``{"peer_id", "accepted", "refused", "published"}`` when done and holds its
connections until stdin closes.  Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from p2phier.announce import Announcement, sign_announcement, up_topic
from p2phier.bitswap import PROTOCOL_ID
from p2phier.cid import CID
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.errors import NetworkError
from p2phier.identity import Identity, PeerId
from p2phier.net.host import PeerAddr, open_host
from p2phier.net.pubsub import GossipConfig, open_gossip
from p2phier.net.register import register_with
from p2phier.records import Layer
from tests.node.peer_kit import signed_record

SETUP_TIMEOUT_S = 60.0
MAX_LIFETIME_S = 300.0


async def main(parent_addr: str, count: int) -> None:
    me = Identity.generate()
    parent = PeerAddr.parse(parent_addr)
    topic = up_topic(PeerId.parse(parent.peer))
    started = int(time.time() * 1000)
    async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=0.5)) as gossip:

        async def stall(stream: object) -> None:
            await trio.sleep_forever()  # HAVE nothing, serve nothing, never close

        host.set_stream_handler(PROTOCOL_ID, stall)  # type: ignore[arg-type]

        def record(seq: int, head: CID | None) -> bytes:
            return signed_record(
                me, host, layer=Layer.LANGUAGE, domain="zz", seq=seq, head=head, started_ms=started
            )

        with trio.fail_after(SETUP_TIMEOUT_S):
            await host.connect(parent)
            verdict = await register_with(host, parent.peer, record(1, None), timeout=10.0)
            assert verdict.accepted, verdict.reason
            while parent.peer not in gossip.peers_on(topic):
                await trio.sleep(0.1)
        accepted = refused = published = 0
        for i in range(count):
            head = CID.raw(b"flood %d %s" % (i, str(me.peer_id).encode()))
            try:
                v = await register_with(host, parent.peer, record(i + 2, head), timeout=10.0)
            except NetworkError:
                refused += 1
                continue
            accepted += v.accepted
            refused += not v.accepted
            ann = Announcement(
                author=me.peer_id,
                topic=topic,
                cid=head,
                parent=None,
                layer=Layer.LANGUAGE,
                domain="zz",
                base_model_id=DEFAULT_BASE_MODEL,
                round=1,
                seq=i + 1,
                created_ms=int(time.time() * 1000),
                size=4096,
            )
            await gossip.publish(topic, sign_announcement(ann, me))
            published += 1
        line = {
            "peer_id": str(me.peer_id),
            "accepted": accepted,
            "refused": refused,
            "published": published,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        with trio.move_on_after(MAX_LIFETIME_S):
            async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                while await stdin.receive_some(4096):  # until EOF
                    pass


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
