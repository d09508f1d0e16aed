"""A peer that signs two different node records with one sequence number (separate process).

``python -m tests.node.equivocate_proc NODE_ADDR`` connects to the node, waits until
the node reads the records topic, publishes record A and then record B (same seq,
another head) over and over (gossip may drop any one), prints its peer id as one
JSON line, and stops when stdin closes.  Every wait has a deadline.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from p2phier.announce import RECORDS_TOPIC
from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.net.host import PeerAddr, open_host
from p2phier.net.pubsub import GossipConfig, open_gossip
from p2phier.records import Layer
from tests.node.peer_kit import run_until_eof, signed_record

SETUP_TIMEOUT_S = 60.0
MAX_LIFETIME_S = 300.0


async def main(node_addr: str) -> None:
    me = Identity.generate()
    node = PeerAddr.parse(node_addr)
    async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=0.5)) as gossip:
        now = int(time.time() * 1000)

        def record(head: bytes) -> bytes:
            return signed_record(
                me, host, layer=Layer.LANGUAGE, domain="qq", seq=now, head=CID.raw(head),
                started_ms=now, issued_ms=now,
            )  # fmt: skip

        a, b = record(b"head a"), record(b"head b")
        with trio.fail_after(SETUP_TIMEOUT_S):
            await host.connect(node)
            while node.peer not in gossip.peers_on(RECORDS_TOPIC):
                await trio.sleep(0.1)
        sys.stdout.write(json.dumps({"peer_id": str(me.peer_id)}) + "\n")
        sys.stdout.flush()

        async def publish_forever() -> None:
            while True:
                for data in (a, b):
                    await gossip.publish(RECORDS_TOPIC, data)
                    await trio.sleep(0.3)

        await run_until_eof(publish_forever, MAX_LIFETIME_S)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
