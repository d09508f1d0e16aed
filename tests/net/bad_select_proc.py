"""Child process of the network tests: a peer whose stream negotiation lies.

Usage (from the repository root)::

    python -m tests.net.bad_select_proc --home DIR --mode MODE

Starts a real libp2p host on 127.0.0.1 (TCP, Noise, Yamux: the connection
itself is honest) whose multistream-select answers on every inbound stream are
hostile, by MODE:

* ``huge``: declares a 1 GiB line instead of the header;
* ``long``: declares a 16,000-byte line (a varint in range, a length out of it);
* ``garbage``: sends a line without its newline;
* ``bad-header``: a well-formed line that is not the multistream header;
* ``wrong-echo``: a valid header, then another protocol than the one proposed;
* ``na``: a valid header, then ``na`` (not a lie, but a refusal);
* ``silent``: reads the proposal and never answers;
* ``cut``: a valid header, then closes the stream.

Prints ONE JSON line ``{"peer_id", "addrs", "pid"}`` and runs until killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import trio
from libp2p.protocol_muxer.exceptions import MultiselectError

from p2phier.cid import encode_varint
from p2phier.identity import Identity
from p2phier.net import open_host

MODES = ("huge", "long", "garbage", "bad-header", "wrong-echo", "na", "silent", "cut")
HEADER = b"/multistream/1.0.0\n"


def _line(text: bytes) -> bytes:
    return encode_varint(len(text)) + text


async def _hostile_negotiate(mode: str, communicator: Any) -> None:
    stream = communicator.read_writer
    if mode == "huge":
        await stream.write(encode_varint(1 << 30) + b"/multistream")
    elif mode == "long":
        await stream.write(encode_varint(16_000) + b"/multistream")
    elif mode == "garbage":
        await stream.write(b"\x05hello")
    elif mode == "bad-header":
        await stream.write(_line(b"/notmultistream/1.0.0\n"))
    elif mode == "silent":
        await trio.sleep_forever()
    else:
        await stream.write(_line(HEADER))
        if mode == "wrong-echo":
            await stream.write(_line(b"/something/else/1\n"))
        elif mode == "na":
            await stream.write(_line(b"na\n"))
        elif mode == "cut":
            await stream.close()
    await trio.sleep(30)  # leave the answer on the wire; the dialer gives up first
    raise MultiselectError(f"hostile negotiation ({mode})")


async def serve(args: argparse.Namespace) -> None:
    home = Path(args.home)
    identity = Identity.load_or_create(home / "node.key")
    async with open_host(identity, ["/ip4/127.0.0.1/tcp/0"]) as host:
        mux = host.libp2p.get_mux()  # the stream-protocol router only, not the upgrader's

        async def negotiate(self: Any, communicator: Any, negotiate_timeout: int = 60) -> Any:
            await _hostile_negotiate(args.mode, communicator)

        mux.negotiate = types.MethodType(negotiate, mux)  # type: ignore[method-assign]
        info = {"peer_id": host.peer_id, "addrs": host.addrs, "pid": os.getpid()}
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        await trio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    trio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
