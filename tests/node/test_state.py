"""The node's saved state (p2phier.node.state): round trip, and an unusable file is kept aside."""

from __future__ import annotations

from pathlib import Path

from p2phier.cid import CID
from p2phier.identity import Identity
from p2phier.node.state import NodeState, SavedMark, load_node_state, save_node_state, state_path


def test_round_trip_and_unusable_files_are_moved_aside(tmp_path: Path) -> None:
    me = Identity.from_seed(b"\x01" * 32).peer_id
    other = Identity.from_seed(b"\x02" * 32).peer_id
    path = state_path(tmp_path)
    state = NodeState(
        record_seq=3,
        announcement_seq=7,
        head=CID.raw(b"head"),
        hierarchy={"version": 1, "children": {}},
        marks=(SavedMark("t", other, 5, 2, "d"),),
        accepted=tuple({"cid": str(i)} for i in range(5)),
        pins={"owned": [str(CID.raw(b"mine"))], "held": []},
    )
    assert save_node_state(path, me, state)
    got: list[NodeState] = []
    assert load_node_state(path, me, got.append, max_accepted=2)
    assert got[0] == NodeState(**{**state.__dict__, "accepted": ({"cid": "3"}, {"cid": "4"})})
    # Saved by another identity: not applied, and the file is kept aside, not lost.
    data = path.read_bytes()
    assert not load_node_state(path, other, got.append, max_accepted=2)
    assert len(got) == 1 and not path.exists()
    (aside,) = path.parent.glob("node.bad-*")
    assert aside.read_bytes() == data
    # A file the daemon rejects while applying is moved aside too.
    assert save_node_state(path, me, state)

    def reject(s: NodeState) -> None:
        raise ValueError("no")

    assert not load_node_state(path, me, reject, max_accepted=2)
    assert not path.exists()
    assert not load_node_state(path, me, got.append, max_accepted=2)  # no file: start fresh
