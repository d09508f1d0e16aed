"""A fresh key that slanders a peer in signed trust reports (separate process).

``python -m tests.node.slander_proc NODE_ADDR VICTIM_PEER_ID`` connects to the node,
waits until the node reads the trust topic, then publishes, every 2 s (within the
node's report budget) and with a new sequence number each time, a valid signed trust
report of its own that rates the victim -1000 (the most a report can say) and itself
+1000.  It prints ``{"peer_id"}`` after the first one and stops when stdin closes.
Every wait has a deadline; it never outlives ``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from p2phier.identity import Identity, PeerId
from p2phier.net.host import PeerAddr, open_host
from p2phier.net.pubsub import GossipConfig, open_gossip
from p2phier.trust.report import TRUST_TOPIC, TrustReport, sign_report
from tests.node.peer_kit import run_until_eof

SETUP_TIMEOUT_S = 60.0
MAX_LIFETIME_S = 300.0
EVERY_S = 2.0


async def main(node_addr: str, victim: str) -> None:
    me = Identity.generate()
    node = PeerAddr.parse(node_addr)
    target = PeerId.parse(victim)
    async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=0.5)) as gossip:
        with trio.fail_after(SETUP_TIMEOUT_S):
            await host.connect(node)
            while node.peer not in gossip.peers_on(TRUST_TOPIC):
                await trio.sleep(0.1)

        def report() -> bytes:
            now = int(time.time() * 1000)
            opinions = ((target, -1000.0), (me.peer_id, 1000.0))
            return sign_report(TrustReport(me.peer_id, now, now, opinions), me)

        await gossip.publish(TRUST_TOPIC, report())
        sys.stdout.write(json.dumps({"peer_id": str(me.peer_id)}) + "\n")
        sys.stdout.flush()

        async def slander_forever() -> None:
            while True:
                await trio.sleep(EVERY_S)
                await gossip.publish(TRUST_TOPIC, report())

        await run_until_eof(slander_forever, MAX_LIFETIME_S)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
