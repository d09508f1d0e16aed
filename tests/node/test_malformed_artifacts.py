"""A registered child that announces artifacts a reader must refuse (real processes).

The attacker is a ``p2phier node run`` whose publish skips the honest node's verification
(:class:`p2phier.devnet.attacker.MalformedArtifactDaemon`); the artifacts are forged in
its store the way a hostile author would build them, signed with its own key, so
provenance holds and only their content is wrong.  The int8 encoding (a full adapter:
the node's keyframes) is the newest way to be wrong: a manifest that names a parent with
it, and a payload outside its symmetric range.  Its parent must refuse each with a clear
reason, count it against the child (bad-artifact evidence: two within a day are
tolerated, three isolate), never crash, and go on accepting the child's valid updates
until then.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from safetensors.numpy import load_file

from p2phier.artifact import SIGNING_DOMAIN, Envelope
from p2phier.artifact.compress import compress
from p2phier.artifact.encode import SEP, Encoding, encode_tensors
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.artifact.tensors import write_safetensors
from p2phier.artifact.verify import META_ENCODING, META_FORMAT, PAYLOAD_FORMAT, BlockSource
from p2phier.cid import CID
from p2phier.devnet.procs import NodeProc, open_cluster, wait_for
from p2phier.identity import Identity
from p2phier.store import DiskStore
from p2phier.wire import p2phier_pb2 as pb
from tests.node.peer_kit import fetch_failure, pack_own_update


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    specs = [("master", "master", ""), ("zz", "language", "zz", "malformed-artifact")]
    with open_cluster(tmp_path_factory.mktemp("malformed"), specs) as nodes:
        yield nodes


def _valid_int8(node: NodeProc, seed: int, round_: int) -> str:
    """A valid int8 keyframe of ``node``'s own, packed into its store as a node packs one."""
    return pack_own_update(node, seed, round_, layer="language", domain="zz", encoding="int8")


def _forge(
    node: NodeProc, like: str, round_: int, *, parent: str | None = None, minus_128: bool = False
) -> str:
    """``like`` (a valid int8 keyframe in ``node``'s store) re-signed by its author with one
    flaw: a parent named (int8 is a full adapter: the format refuses it), or a payload whose
    first stored value is -128 (outside the symmetric range every int8 reader checks)."""
    key = Identity.load(node.home / "identity.key")
    with DiskStore(node.home / "store") as store:
        get = BlockSource(store).get_block
        m = pb.Manifest.FromString(pb.SignedManifest.FromString(get(CID.parse(like))).manifest)
        m.round = round_  # announcement rounds never go back: each its own
        if parent is not None:
            m.parent = CID.parse(parent).to_bytes()
        if minus_128:
            adapter = write_synthetic_adapter(node.home.parent / "adapter-forged", seed=99)
            tensors = load_file(str(adapter / "adapter_model.safetensors"))
            enc = encode_tensors(tensors, Encoding.INT8).tensors
            first = sorted(k for k in enc if SEP not in k)[0]
            enc[first] = np.array(enc[first], copy=True)
            enc[first].flat[0] = -128
            raw = write_safetensors(enc, {META_FORMAT: PAYLOAD_FORMAT, META_ENCODING: "int8"})
            z = compress(raw)
            m.tensors.cid = store.add_bytes(z, pin=False).to_bytes()
            m.tensors.size, m.tensors_raw_size = len(z), len(raw)
        data = m.SerializeToString(deterministic=True)
        env = Envelope(data, key.sign(SIGNING_DOMAIN, data), key.peer_id.multihash_bytes)
        return str(store.add_bytes(env.to_bytes(), pin=False))


def _accepted(master: NodeProc) -> set[str]:
    return {a["cid"] for a in master.status()["accepted"]}


def test_int8_artifacts_a_reader_must_refuse_are_refused_and_the_child_still_heard(
    net: dict[str, NodeProc],
) -> None:
    master, zz = net["master"], net["zz"]
    wait_for("zz registered with the master", lambda: zz.peer_id in master.status()["children"])
    # first a valid int8 keyframe: the new encoding crosses the network and is accepted
    good = _valid_int8(zz, 1, round_=1)
    zz.call("publish", {"cid": good, "to": "parent"})
    wait_for("the master to accept zz's int8 keyframe", lambda: good in _accepted(master))

    with_parent = _forge(zz, good, 2, parent=good)
    zz.call("publish", {"cid": with_parent, "to": "parent"})
    error = wait_for("the master to refuse int8 with a parent",
                     lambda: fetch_failure(master, with_parent))  # fmt: skip
    assert "full adapter" in error and "int8-delta" in error, error

    out_of_range = _forge(zz, good, 3, minus_128=True)
    zz.call("publish", {"cid": out_of_range, "to": "parent"})
    error = wait_for("the master to refuse the -128 payload",
                     lambda: fetch_failure(master, out_of_range))  # fmt: skip
    assert "-128" in error, error

    # nothing of either was taken; each counts against its author (bad-artifact: signed and
    # announced by hash, no accident of the network), and the master is up
    assert {with_parent, out_of_range}.isdisjoint(_accepted(master))
    status = master.status()
    assert status["announcements_dropped_by_peer"][zz.peer_id]["bad-artifact"] == 2
    assert [m["reason"] for m in status["misbehaviour"] if m["peer"] == zz.peer_id] == [
        "bad-artifact",
        "bad-artifact",
    ]
    # two within a day do not isolate (trust/local.py: -5 each against -10, and its valid
    # keyframe counted +1): its next valid update is accepted as before
    assert zz.peer_id not in status["isolated"] and zz.peer_id in status["children"]
    after = _valid_int8(zz, 2, round_=4)
    zz.call("publish", {"cid": after, "to": "parent"})
    wait_for("the master to accept zz's next valid update", lambda: after in _accepted(master))
    # a third does: the child is isolated and dropped
    third = _forge(zz, good, 5, parent=good)
    zz.call("publish", {"cid": third, "to": "parent"})
    wait_for("the master to isolate zz", lambda: zz.peer_id in master.status()["isolated"])
    status = master.status()
    assert third not in _accepted(master) and zz.peer_id not in status["children"]
    assert master.proc.poll() is None
