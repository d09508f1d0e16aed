"""Opens many TCP connections that never send a byte (a separate process).

``python -m tests.net.silent_conns_proc HOST PORT COUNT SOURCE_IP`` connects
COUNT sockets from SOURCE_IP (any 127.x.y.z works on Linux loopback) to
HOST:PORT, prints one JSON line ``{"open": N}`` (how many connects succeeded),
and holds them, silent, until its stdin closes.  It reconnects none: a refused
or closed connection stays closed.  It exits by itself after MAX_LIFETIME_S.
"""

from __future__ import annotations

import json
import select
import socket
import sys

MAX_LIFETIME_S = 120.0


def main(host: str, port: int, count: int, source: str) -> None:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5.0)
        try:
            s.connect((host, port))
        except OSError:
            s.close()
            continue
        socks.append(s)
    sys.stdout.write(json.dumps({"open": len(socks)}) + "\n")
    sys.stdout.flush()
    select.select([sys.stdin], [], [], MAX_LIFETIME_S)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
