"""A hostile peer (separate process): sends bad announcements to a parent's up topic.

``python -m tests.node.hostile_proc PARENT_ADDR CHILD_ADDR`` connects to the
parent, pulls the child's latest (already accepted) announcement over the head
protocol, waits until it knows the parent reads the up topic, prints one JSON
line (its own peer id and the CIDs it will announce), waits for a line on
stdin (the test first makes the child publish something newer, so the copy
held here becomes an *old* announcement), and then publishes, over and over
(gossip may drop any one message): that old announcement again (a replay), a
copy with a broken signature, and an announcement of its own (a stranger: not
a registered child).  It stops, exit status 0, when its stdin is closed: the
test closes it once the parent has dropped all three kinds.  Every wait has a
deadline; it never outlives ``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import trio

from p2phier.announce import Announcement, open_announcement, sign_announcement, up_topic
from p2phier.cid import CID
from p2phier.identity import Identity, PeerId
from p2phier.net.host import PeerAddr, open_host
from p2phier.net.pubsub import GossipConfig, open_gossip, pull_head
from p2phier.records import Layer

#: deadline for the set-up (dials, the head pull, learning the parent's subscription);
#: generous: CI runs this on 2 cores beside torch training in the other xdist worker
SETUP_TIMEOUT_S = 60.0
#: the process exits (status 3) if the test never closes stdin
MAX_LIFETIME_S = 300.0
#: pause between two bad messages: stays well under gossipsub's 10 msgs/s per topic limit
PUBLISH_EVERY_S = 0.25


async def main(parent_addr: str, child_addr: str) -> None:
    me = Identity.generate()
    parent = PeerAddr.parse(parent_addr)
    child = PeerAddr.parse(child_addr)
    topic = up_topic(PeerId.parse(parent.peer))
    async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=0.5)) as gossip:
        with trio.fail_after(SETUP_TIMEOUT_S):
            await host.connect(parent)
            await host.connect(child)
            old = await pull_head(host, child.peer, topic, timeout=SETUP_TIMEOUT_S / 2)
            assert old is not None, "the child has published nothing on its parent's up topic"
            # A publish reaches the parent only once its subscription to the topic is known.
            while parent.peer not in gossip.peers_on(topic):
                await trio.sleep(0.1)
        forged = bytearray(old)
        forged[-1] ^= 0xFF  # the signature is the last field of the envelope
        stranger_cid = CID.raw(b"hostile update " + str(me.peer_id).encode())
        ann = open_announcement(old)
        stranger = Announcement(
            author=me.peer_id,
            topic=topic,
            cid=stranger_cid,
            parent=None,
            layer=Layer.DOMAIN,
            domain=ann.domain,
            base_model_id=ann.base_model_id,
            round=ann.round + 1,
            seq=ann.seq + 10,
            created_ms=int(time.time() * 1000),
        )
        bad = [old, bytes(forged), sign_announcement(stranger, me)]
        sys.stdout.write(
            json.dumps(
                {
                    "peer_id": str(me.peer_id),
                    "stranger_cid": str(stranger_cid),
                    "replayed_cid": str(ann.cid),
                }
            )
            + "\n"
        )
        sys.stdout.flush()

        async def publish_forever() -> None:
            while True:
                for data in bad:
                    await gossip.publish(topic, data)
                    await trio.sleep(PUBLISH_EVERY_S)

        with trio.move_on_after(MAX_LIFETIME_S) as lifetime:
            async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                if await _stdin_line(stdin):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(publish_forever)
                        while await stdin.receive_some(4096):  # until EOF
                            pass
                        nursery.cancel_scope.cancel()
    if lifetime.cancelled_caught:
        sys.stderr.write(f"hostile peer: stdin still open after {MAX_LIFETIME_S}s\n")
        raise SystemExit(3)


async def _stdin_line(stdin: trio.lowlevel.FdStream) -> bool:
    """Wait for the test's go-ahead (a newline); False at EOF (the test gave up)."""
    while chunk := await stdin.receive_some(4096):
        if b"\n" in chunk:
            return True
    return False


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
