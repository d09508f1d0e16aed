"""The client side, driven by hand-played providers and explicit ``now`` values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.bitswap import (
    WRONG_BLOCK,
    BlockFetched,
    BlockPayload,
    BlockPresence,
    FetchComplete,
    FetchFailed,
    FetchFailedError,
    LedgerBook,
    LocalBlockCorrupt,
    Message,
    Misbehaviour,
    PeerTimedOut,
    PresenceType,
    SendMessage,
    Session,
    SessionConfig,
    SessionEvent,
    WantEntry,
    WantType,
)
from p2phier.cid import CID, Multihash
from p2phier.errors import CorruptBlockError, UsageError

from .helpers import DictSource, build_dag, events_of, links, make_node

HAVE, DONT = PresenceType.HAVE, PresenceType.DONT_HAVE
CFG = SessionConfig(block_timeout=10.0, have_timeout=5.0)


def session(
    root: CID,
    providers: list[str],
    local: DictSource | None = None,
    config: SessionConfig = CFG,
    ledgers: LedgerBook | None = None,
) -> Session:
    src = local or DictSource()
    return Session(root, providers, links=links, local=src.local, config=config, ledgers=ledgers)


def wants(events: list, peer: str) -> dict[CID, WantEntry]:  # type: ignore[type-arg]
    out: dict[CID, WantEntry] = {}
    for e in events_of(events, SendMessage):
        if e.peer == peer and e.message.wantlist is not None:
            for w in e.message.wantlist.entries:
                out[w.cid] = w
    return out


def kinds(events: list, peer: str) -> dict[CID, str]:  # type: ignore[type-arg]
    return {
        c: "cancel" if w.cancel else ("have" if w.want_type is WantType.HAVE else "block")
        for c, w in wants(events, peer).items()
    }


def presence(*items: tuple[CID, PresenceType]) -> Message:
    return Message(presences=tuple(BlockPresence(c, t) for c, t in items))


def block(cid: CID, data: bytes) -> Message:
    return Message(blocks=(BlockPayload.of(cid, data),))


def fetched(events: list) -> list[CID]:  # type: ignore[type-arg]
    return [e.cid for e in events_of(events, BlockFetched)]


SINGLE = CID.raw(b"single block")


def test_discovery_asks_every_provider_want_have_with_send_dont_have() -> None:
    s = session(SINGLE, ["A", "B"])
    ev = s.poll(0.0)
    for peer in ("A", "B"):
        (w,) = wants(ev, peer).values()
        assert (w.cid, w.want_type, w.send_dont_have, w.cancel) == (
            SINGLE,
            WantType.HAVE,
            True,
            False,
        )


def test_a_have_turns_into_a_want_block_and_the_block_completes_the_fetch() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    ev = s.poll(0.1)
    assert kinds(ev, "A") == {SINGLE: "block"}
    assert wants(ev, "A")[SINGLE].send_dont_have
    ev = s.receive_message("A", block(SINGLE, b"single block"), 0.2)
    assert fetched(ev) == [SINGLE]
    assert events_of(ev, FetchComplete) == [FetchComplete(SINGLE, 1, 0, 12)]
    # B was still asked (want-have): it gets a cancel
    assert kinds(s.poll(0.2), "B") == {SINGLE: "cancel"}
    assert s.complete and s.missing == 0


def test_a_silent_provider_times_out_and_the_block_is_asked_elsewhere() -> None:
    book = LedgerBook()
    s = session(SINGLE, ["A", "B"], ledgers=book)
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s.receive_message("B", presence((SINGLE, HAVE)), 0.1)
    assert kinds(s.poll(0.1), "A") == {SINGLE: "block"}  # A: fewest in flight, first
    assert s.next_deadline() == 10.1
    assert s.poll(10.0) == []  # not yet
    ev = s.poll(10.1)
    assert PeerTimedOut("A", SINGLE, WantType.BLOCK) in ev
    assert kinds(ev, "A") == {SINGLE: "cancel"}
    assert kinds(ev, "B") == {SINGLE: "block"}
    assert book.get("A").timeouts == 1
    ev = s.receive_message("B", block(SINGLE, b"single block"), 10.2)
    assert fetched(ev) == [SINGLE] and s.complete


def test_wrong_bytes_are_rejected_recorded_and_asked_elsewhere() -> None:
    seen: list[Misbehaviour] = []
    book = LedgerBook(on_misbehaviour=seen.append)
    s = session(SINGLE, ["A", "B"], ledgers=book)
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s.receive_message("B", presence((SINGLE, HAVE)), 0.1)
    s.poll(0.1)
    # A answers the want-block with the right prefix but wrong bytes
    ev = s.receive_message("A", block(SINGLE, b"forged block"), 0.2)
    assert fetched(ev) == []
    (m,) = events_of(ev, Misbehaviour)
    assert (m.peer, m.reason) == ("A", WRONG_BLOCK)
    assert seen == [m] and book.get("A").misbehaviour == 1
    # re-asked at B at once (no waiting for the deadline), cancelled at A
    ev = s.poll(0.2)
    assert kinds(ev, "B") == {SINGLE: "block"}
    assert kinds(ev, "A") == {SINGLE: "cancel"}
    assert s.providers() == ["B"]
    # whatever A sends from now on is ignored, even the right block
    assert fetched(s.receive_message("A", block(SINGLE, b"single block"), 0.3)) == []
    assert fetched(s.receive_message("B", block(SINGLE, b"single block"), 0.3)) == [SINGLE]


def test_unsolicited_blocks_are_misbehaviour_even_when_they_hash_correctly() -> None:
    root, blocks = build_dag(4, 50)
    s = session(root, ["A"])
    s.poll(0.0)
    leaf = next(c for c in blocks if c != root)
    # a stranger, and a provider sending a block it was never asked for
    ev = s.receive_message("C", block(leaf, blocks[leaf]), 0.1)
    assert [(m.peer, m.reason) for m in events_of(ev, Misbehaviour)] == [("C", WRONG_BLOCK)]
    ev = s.receive_message("A", block(leaf, blocks[leaf]), 0.1)
    assert [(m.peer, m.reason) for m in events_of(ev, Misbehaviour)] == [("A", WRONG_BLOCK)]
    assert fetched(ev) == []
    # with one provider gone bad and none left, the fetch fails and says why
    ev = s.poll(0.2)
    (f,) = events_of(ev, FetchFailed)
    assert f.cid == root and "A: sent a wrong or unsolicited block" in f.reason
    assert isinstance(s.error, FetchFailedError)


def test_a_node_with_several_sessions_can_defer_the_unsolicited_verdict() -> None:
    s = session(SINGLE, ["A"])
    s.poll(0.0)
    other = CID.raw(b"other")
    ev = s.receive_message("A", block(other, b"other"), 0.1, report_unsolicited=False)
    assert ev == [] and not s.asked("A", other) and s.asked("A", SINGLE)


def test_two_providers_share_the_blocks() -> None:
    root, blocks = build_dag(16, 100, fanout=16)
    s = session(root, ["A", "B"], config=SessionConfig(max_inflight_per_peer=4))
    s.poll(0.0)
    for p in ("A", "B"):
        s.receive_message(p, presence((root, HAVE)), 0.1)
    ev = s.poll(0.1)
    holder = "A" if kinds(ev, "A") == {root: "block"} else "B"
    s.receive_message(holder, block(root, blocks[root]), 0.2)
    ev = s.poll(0.2)
    # both said HAVE to the root: the leaves are asked as blocks at once, no want-have
    # round first, four at each, none twice
    at_a = [c for c, k in kinds(ev, "A").items() if k == "block"]
    at_b = [c for c, k in kinds(ev, "B").items() if k == "block"]
    assert set(kinds(ev, "A").values()) == set(kinds(ev, "B").values()) == {"block"}
    assert len(at_a) == 4 and len(at_b) == 4 and not set(at_a) & set(at_b)
    # delivering frees slots: the rest is split the same way until done
    t = 0.4
    while not s.done:
        for peer, cids in (("A", at_a), ("B", at_b)):
            for c in cids:
                s.receive_message(peer, block(c, blocks[c]), t)
        ev = s.poll(t)
        at_a = [c for c, k in kinds(ev, "A").items() if k == "block"]
        at_b = [c for c, k in kinds(ev, "B").items() if k == "block"]
        t += 0.1
    assert s.complete and s.fetched == 17
    assert s.ledgers.get("A").blocks_received >= 8 and s.ledgers.get("B").blocks_received >= 8


def root_fetched_from_a(
    root: CID, blocks: dict[CID, bytes], peers: list[str], *, max_inflight_per_peer: int
) -> tuple[Session, list[SessionEvent]]:
    """A session over ``peers`` that has asked for and received the root block from A
    (only A answered), and what it did then."""
    s = session(root, peers, config=SessionConfig(max_inflight_per_peer=max_inflight_per_peer))
    s.poll(0.0)
    s.receive_message("A", presence((root, HAVE)), 0.1)
    s.poll(0.1)
    s.receive_message("A", block(root, blocks[root]), 0.2)
    return s, s.poll(0.2)


def test_a_freed_slot_goes_to_the_most_urgent_waiting_block_the_freed_peer_has() -> None:
    root, blocks = build_dag(12, 64, fanout=12)
    leaves = [c for c in blocks if c != root]  # discovery order = priority order
    s, ev = root_fetched_from_a(root, blocks, ["A", "B"], max_inflight_per_peer=2)
    # A, confirmed by the root, is asked for the most urgent leaves at once; B, which
    # has not answered anything yet, is asked whether it has each
    assert kinds(ev, "A") == dict.fromkeys(leaves[:2], "block")
    assert kinds(ev, "B") == {root: "cancel", **dict.fromkeys(leaves, "have")}
    # B has only the last two
    s.receive_message("B", presence(*((c, HAVE) for c in leaves[-2:])), 0.3)
    s.receive_message("B", presence(*((c, DONT) for c in leaves[:-2])), 0.3)
    ev = s.poll(0.3)
    assert "A" not in {e.peer for e in events_of(ev, SendMessage)}
    # B's free slots go to the blocks it has, though more urgent ones wait for A
    assert [c for c, k in kinds(ev, "B").items() if k == "block"] == leaves[-2:]
    assert s.poll(0.3) == []  # everyone is busy: nothing to do, nothing re-sent
    s.receive_message("A", block(leaves[1], blocks[leaves[1]]), 0.4)
    ev = s.poll(0.4)
    assert [c for c, k in kinds(ev, "A").items() if k == "block"] == [leaves[2]]
    assert "B" not in {e.peer for e in events_of(ev, SendMessage)}
    # a slot freed at B finds nothing B has: it stays idle, and A's queue is untouched
    s.receive_message("B", block(leaves[-1], blocks[leaves[-1]]), 0.5)
    ev = s.poll(0.5)
    assert not [c for c, k in kinds(ev, "B").items() if k == "block"]
    s.receive_message("A", block(leaves[0], blocks[leaves[0]]), 0.6)
    assert [c for c, k in kinds(s.poll(0.6), "A").items() if k == "block"] == [leaves[3]]


def test_a_confirmed_provider_without_a_block_says_so_and_it_is_asked_elsewhere() -> None:
    """A provider that said HAVE to the root is asked for its children at once; one it
    lacks (DONT_HAVE) goes to the others, who are asked first (they never answered)."""
    root, blocks = build_dag(3, 64, fanout=3)
    leaves = [c for c in blocks if c != root]
    s, ev = root_fetched_from_a(root, blocks, ["A", "B"], max_inflight_per_peer=4)
    assert kinds(ev, "A") == dict.fromkeys(leaves, "block")
    s.receive_message("A", presence((leaves[0], DONT)), 0.3)
    s.receive_message("B", presence((leaves[0], HAVE)), 0.3)
    assert kinds(s.poll(0.3), "B") == {leaves[0]: "block"}
    for peer, c in (("B", leaves[0]), ("A", leaves[1]), ("A", leaves[2])):
        s.receive_message(peer, block(c, blocks[c]), 0.4)
    assert s.complete


def test_a_confirmed_provider_that_stalls_loses_its_queue_and_nothing_is_stranded() -> None:
    """Blocks waiting only for a confirmed provider's free slots are asked afresh when
    it lets a want run out (otherwise they would wait for a slot that is never used)."""
    root, blocks = build_dag(6, 64, fanout=6)
    leaves = [c for c in blocks if c != root]
    s, ev = root_fetched_from_a(root, blocks, ["A", "B"], max_inflight_per_peer=2)
    assert kinds(ev, "A") == dict.fromkeys(leaves[:2], "block")  # 4 wait for A's slots
    s.receive_message("B", presence((leaves[0], HAVE)), 0.3)
    s.receive_message("B", presence(*((c, DONT) for c in leaves[1:])), 0.3)
    assert s.poll(0.3) == []
    s.receive_message("A", block(leaves[1], blocks[leaves[1]]), 0.4)
    assert kinds(s.poll(0.4), "A") == {leaves[2]: "block"}
    ev = s.poll(0.2 + SessionConfig().block_timeout)  # leaves[0] runs out at A
    assert events_of(ev, PeerTimedOut) == [PeerTimedOut("A", leaves[0], WantType.BLOCK)]
    assert kinds(ev, "B") == {leaves[0]: "block"}
    # A is asked again for what waited for it, but whether it has it first
    assert kinds(ev, "A") == {leaves[0]: "cancel", **dict.fromkeys(leaves[3:], "have")}
    s.receive_message("A", presence(*((c, HAVE) for c in leaves[3:])), 15.3)
    assert kinds(s.poll(15.3), "A") == {leaves[3]: "block"}  # one slot is still taken


def test_scheduling_a_large_dag_does_not_rescan_every_waiting_block() -> None:
    root, blocks = build_dag(3000, 8, fanout=3000)
    leaves = [c for c in blocks if c != root]
    s, ev = root_fetched_from_a(root, blocks, ["A"], max_inflight_per_peer=4)
    asked = [c for c, k in kinds(ev, "A").items() if k == "block"]
    assert len(asked) == 4 and set(kinds(ev, "A").values()) == {"block"}
    order: list[CID] = []
    calls = 0
    original = s._best_ready

    def counted() -> tuple[int, CID] | None:
        nonlocal calls
        calls += 1
        return original()

    s._best_ready = counted  # type: ignore[method-assign]
    t = 0.4
    while not s.done:
        order += asked
        for c in asked:
            s.receive_message("A", block(c, blocks[c]), t)
        asked = [c for c, k in kinds(s.poll(t), "A").items() if k == "block"]
        t += 0.01
    assert s.complete and order == leaves  # strictly in priority order
    assert calls < 3 * len(leaves)  # a few steps per block, not one per waiting block


def test_claimed_keys_from_the_caller_replace_hashing() -> None:
    s = session(SINGLE, ["A"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s.poll(0.1)
    msg = block(SINGLE, b"single block")
    with pytest.raises(UsageError):
        s.receive_message("A", msg, 0.2, claimed=[])
    # a caller that hashed to something else: the block is judged by that key
    ev = s.receive_message("A", msg, 0.2, claimed=[CID.raw(b"other")])
    assert fetched(ev) == [] and events_of(ev, Misbehaviour)
    s2 = session(SINGLE, ["A"])
    s2.poll(0.0)
    s2.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s2.poll(0.1)
    ev = s2.receive_message("A", msg, 0.2, claimed=[msg.blocks[0].claimed_key()])
    assert fetched(ev) == [SINGLE] and s2.complete


def test_resume_skips_blocks_already_present() -> None:
    root, blocks = build_dag(8, 64, fanout=8)
    leaves = [c for c in blocks if c != root]
    local = DictSource({root: blocks[root], **{c: blocks[c] for c in leaves[:5]}})
    s = session(root, ["A"], local=local)
    ev = s.poll(0.0)
    assert set(kinds(ev, "A")) == set(leaves[5:])
    assert s.skipped == 6 and s.missing == 3


def test_everything_present_completes_without_a_message() -> None:
    root, blocks = build_dag(3, 10)
    s = session(root, ["A"], local=DictSource(blocks))
    ev = s.poll(0.0)
    assert ev == [FetchComplete(root, 0, len(blocks), 0)]


def test_a_corrupt_local_block_is_fetched_again() -> None:
    local = DictSource()
    local.put(SINGLE, b"rotten")
    s = session(SINGLE, ["A"], local=local)
    ev = s.poll(0.0)
    assert LocalBlockCorrupt(SINGLE) in ev
    assert kinds(ev, "A") == {SINGLE: "have"}


def test_a_store_that_reports_corruption_on_read_is_handled_like_a_corrupt_block() -> None:
    def local(cid: CID) -> bytes:
        raise CorruptBlockError(f"{cid} rotted; quarantined")

    s = Session(SINGLE, ["A"], links=links, local=local, config=CFG)
    ev = s.poll(0.0)
    assert LocalBlockCorrupt(SINGLE) in ev and kinds(ev, "A") == {SINGLE: "have"}


def test_dont_have_from_every_provider_fails_the_fetch_with_reasons() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, DONT)), 0.1)
    assert events_of(s.poll(0.1), FetchFailed) == []  # B has not answered yet
    s.receive_message("B", presence((SINGLE, DONT)), 0.2)
    ev = s.poll(0.2)
    (f,) = events_of(ev, FetchFailed)
    assert "A: said DONT_HAVE" in f.reason and "B: said DONT_HAVE" in f.reason
    assert s.done and not s.complete
    assert str(SINGLE) in str(s.error)
    # who said so travels with the error (an announcer that withholds what it announced)
    assert isinstance(s.error, FetchFailedError) and s.error.dont_have == {"A", "B"}


def test_an_unanswered_want_have_counts_as_no_after_its_deadline() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, DONT)), 0.1)
    ev = s.poll(5.0)
    assert PeerTimedOut("B", SINGLE, WantType.HAVE) in ev
    (f,) = events_of(ev, FetchFailed)
    assert "B: did not answer want-have within 5.0s" in f.reason
    assert isinstance(s.error, FetchFailedError) and s.error.dont_have == {"A"}  # not B


def test_dont_have_from_the_holder_moves_the_block_at_once() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s.receive_message("B", presence((SINGLE, HAVE)), 0.1)
    s.poll(0.1)
    s.receive_message("A", presence((SINGLE, DONT)), 0.2)  # it lost the block
    assert kinds(s.poll(0.2), "B") == {SINGLE: "block"}


def test_a_want_have_may_be_answered_with_the_block_itself() -> None:
    s = session(SINGLE, ["A"])
    s.poll(0.0)
    ev = s.receive_message("A", block(SINGLE, b"single block"), 0.1)
    assert fetched(ev) == [SINGLE] and s.complete


def test_a_late_duplicate_is_waste_not_misbehaviour() -> None:
    book = LedgerBook()
    s = session(SINGLE, ["A", "B"], ledgers=book)
    s.poll(0.0)
    s.receive_message("A", block(SINGLE, b"single block"), 0.1)
    ev = s.receive_message("B", block(SINGLE, b"single block"), 0.2)
    assert ev == [] and book.get("B").duplicate_blocks == 1 and book.get("B").misbehaviour == 0


def test_a_disconnected_provider_hands_its_blocks_to_another() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    s.receive_message("A", presence((SINGLE, HAVE)), 0.1)
    s.receive_message("B", presence((SINGLE, HAVE)), 0.1)
    s.poll(0.1)
    s.peer_disconnected("A")
    ev = s.poll(0.2)
    assert kinds(ev, "B") == {SINGLE: "block"} and kinds(ev, "A") == {}


def test_a_provider_added_later_is_asked_too() -> None:
    s = session(SINGLE, [])
    s.add_provider("A")
    assert kinds(s.poll(0.0), "A") == {SINGLE: "have"}


def test_no_provider_at_all_fails_clearly() -> None:
    s = session(SINGLE, [])
    (f,) = events_of(s.poll(0.0), FetchFailed)
    assert "no provider" in f.reason


def test_a_malformed_dag_node_fails_the_fetch() -> None:
    bad = CID.dag_pb(b"not a node")
    s = session(bad, ["A"])
    s.poll(0.0)
    ev = s.receive_message("A", block(bad, b"not a node"), 0.1)
    assert fetched(ev) == [bad]  # the bytes are right; the DAG is what is broken
    (f,) = events_of(ev, FetchFailed)
    assert "not a valid DAG node" in f.reason


def test_the_dag_size_cap_is_enforced() -> None:
    root, blocks = build_dag(10, 8, fanout=10)
    s = session(root, ["A"], config=SessionConfig(max_blocks=5))
    s.poll(0.0)
    ev = s.receive_message("A", block(root, blocks[root]), 0.1)
    (f,) = events_of(ev, FetchFailed)
    assert "more than 5 blocks" in f.reason
    # everything still asked is cancelled
    assert all(k == "cancel" for k in kinds(s.poll(0.1), "A").values())


def test_the_byte_cap_is_enforced() -> None:
    s = session(SINGLE, ["A"], config=SessionConfig(max_bytes=5))
    s.poll(0.0)
    ev = s.receive_message("A", block(SINGLE, b"single block"), 0.1)
    assert "larger than the 5-byte cap" in events_of(ev, FetchFailed)[0].reason


def test_cancel_abandons_the_fetch_and_cancels_everywhere() -> None:
    s = session(SINGLE, ["A", "B"])
    s.poll(0.0)
    ev = s.cancel()
    assert kinds(ev, "A") == {SINGLE: "cancel"} and kinds(ev, "B") == {SINGLE: "cancel"}
    assert events_of(ev, FetchFailed)


def test_cidv0_links_are_fetched_and_handed_over_as_v0() -> None:
    leaf = CID.raw(b"leaf")
    root, data = make_node([leaf], v0=True)
    s = session(root, ["A"])
    ev = s.poll(0.0)
    assert list(kinds(ev, "A")) == [root] and root.version == 0
    ev = s.receive_message("A", block(root, data), 0.1)
    assert fetched(ev) == [root]


@given(
    st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.binary(max_size=40), st.booleans()),
        max_size=12,
    )
)
def test_no_block_is_handed_over_unless_it_hashes_to_a_wanted_cid(
    sends: list[tuple[str, bytes, bool]],
) -> None:
    root, blocks = build_dag(3, 8, fanout=3, seed=1)
    s = session(root, ["A", "B"])
    s.poll(0.0)
    wanted = set(blocks)
    t = 0.0
    for peer, data, use_real in sends:
        t += 0.1
        if use_real:  # sometimes the genuine block, sometimes junk under its prefix
            cid = sorted(blocks, key=str)[len(data) % len(blocks)]
            payload = BlockPayload.of(cid, blocks[cid])
        else:
            payload = BlockPayload(root.prefix(), data)
        for e in s.receive_message(peer, Message(blocks=(payload,)), t) + s.poll(t):
            if isinstance(e, BlockFetched):
                assert e.cid in wanted and e.cid.verify(e.data)
                assert e.cid.multihash == Multihash.sha256(e.data)
                assert e.peer in ("A", "B")
