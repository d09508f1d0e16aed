"""A real node process and a peer with a non-Ed25519 key (as ordinary IPFS nodes have).

Regression for a remote crash: one WANT_HAVE from an RSA-keyed peer (kubo's
library makes RSA identities) made ``p2phier node run`` exit with "internal
error (ExceptionGroup)", because the Bitswap sender refused the peer id with
an exception nothing caught.  Transport work accepts every libp2p key type;
only p2phier's own signed objects need Ed25519 authors.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from p2phier.devnet.procs import FAST_ENV, REPO, NodeProc, open_cluster, wait_for
from p2phier.store import DiskStore
from tests.node.peer_kit import stop_helper


def test_a_peer_with_an_rsa_key_is_answered_and_can_bootstrap_a_node(tmp_path: Path) -> None:
    with open_cluster(tmp_path, [("master", "master", "")]) as nodes:
        master = nodes["master"]
        store = DiskStore(master.home / "store")
        try:
            cid = str(store.add_bytes(random.Random(5).randbytes(300 << 10)))
        finally:
            store.close()
        stderr = tmp_path / "foreign.stderr"
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.node.foreign_peer_proc", master.addr, cid],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
                env={**FAST_ENV, "PATH": ""},
            )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            assert line, f"foreign peer exited {proc.wait(30)}: {stderr.read_text()}"
            foreign = json.loads(line)
            assert foreign["peer_id"].startswith("Qm")  # RSA: a sha2-256 peer id
            assert foreign["presence"] == "HAVE"
            # the node is alive and lists the RSA peer like any other
            assert master.proc is not None and master.proc.poll() is None, master.log_tail()
            assert foreign["peer_id"] in master.status()["peers"]
            # a node bootstraps from an address ending in /p2p/Qm...
            home = tmp_path / "en"
            home.mkdir(mode=0o700)
            en = NodeProc("en", home, "language", "en", [foreign["addr"], master.addr])
            nodes["en"] = en  # reaped by open_cluster
            en.start()
            wait_for(
                "en to connect to the RSA peer and the master",
                lambda: {foreign["peer_id"], master.peer_id} <= set(en.status()["peers"]),
                timeout=60,
            )
            wait_for("en to find its parent", lambda: en.status()["parent"] == master.peer_id)
        finally:
            stop_helper(proc)
        # both nodes stop cleanly: no error was left behind to surface at shutdown
        assert en.stop() == 0, en.log_tail()
        assert master.stop() == 0, master.log_tail()
        assert "Traceback" not in master.log.read_text(), master.log_tail()
