"""A child that sends its parent forged announcements, then knocks at a sibling (separate process).

``python -m tests.node.rogue_child_proc PARENT_ADDR`` is a ``domain``/``en/x`` node: it
registers with the parent (a ``language``/``en`` node), prints one JSON line
``{"peer_id"}`` and then publishes, every 0.3 s, an announcement of its own whose
signature is broken on the parent's up topic: first-hand evidence against it at the
parent (a bad signature, -5 each), never a proof anyone else could check.  For each line
``register ADDR`` on stdin it stops publishing, registers with the node at ADDR and
prints ``{"accepted", "reason"}``.  It stops when stdin closes.  Every wait has a
deadline; it never outlives ``MAX_LIFETIME_S``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import trio

from p2phier.announce import Announcement, sign_announcement, up_topic
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
PUBLISH_EVERY_S = 0.3  # well under gossipsub's 10 messages/s per topic


def _say(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def main(parent_addr: str) -> None:
    me = Identity.generate()
    parent = PeerAddr.parse(parent_addr)
    topic = up_topic(PeerId.parse(parent.peer))
    started = int(time.time() * 1000)
    seq = [0]
    async with open_host(me) as host, open_gossip(host, GossipConfig(heartbeat_s=0.5)) as gossip:

        def record() -> bytes:
            seq[0] += 1
            return signed_record(
                me, host, layer=Layer.DOMAIN, domain="en/x", seq=started + seq[0], head=None,
                started_ms=started,
            )  # fmt: skip

        with trio.fail_after(SETUP_TIMEOUT_S):
            await host.connect(parent)
            verdict = await register_with(host, parent.peer, record(), timeout=10.0)
            assert verdict.accepted, verdict.reason
            while parent.peer not in gossip.peers_on(topic):
                await trio.sleep(0.1)
        _say({"peer_id": str(me.peer_id)})

        forging = trio.CancelScope()

        async def forge() -> None:
            with forging:
                for i in range(1, 10_000):
                    ann = Announcement(
                        author=me.peer_id,
                        topic=topic,
                        cid=CID.raw(b"rogue %d %s" % (i, str(me.peer_id).encode())),
                        parent=None,
                        layer=Layer.DOMAIN,
                        domain="en/x",
                        base_model_id=DEFAULT_BASE_MODEL,
                        round=1,
                        seq=i,
                        created_ms=int(time.time() * 1000),
                        size=4096,
                    )
                    forged = bytearray(sign_announcement(ann, me))
                    forged[-1] ^= 0xFF  # the signature is the last field of the envelope
                    with contextlib.suppress(NetworkError):  # the parent cut it off
                        await gossip.publish(topic, bytes(forged))
                    await trio.sleep(PUBLISH_EVERY_S)

        async def register_at(addr: str) -> None:
            target = PeerAddr.parse(addr)
            try:
                with trio.fail_after(SETUP_TIMEOUT_S):
                    await host.connect(target)
                    v = await register_with(host, target.peer, record(), timeout=10.0)
                _say({"accepted": v.accepted, "reason": v.reason})
            except (NetworkError, trio.TooSlowError) as exc:
                _say({"accepted": False, "reason": f"no answer: {exc!r}"})

        with trio.move_on_after(MAX_LIFETIME_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forge)
                async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                    buf = b""
                    while chunk := await stdin.receive_some(4096):  # until EOF
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            words = line.decode().split()
                            if len(words) == 2 and words[0] == "register":
                                forging.cancel()
                                await register_at(words[1])
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
