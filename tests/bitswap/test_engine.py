"""The server side: presences, blocks, cancels, limits, priority, fairness, upload rate."""

from __future__ import annotations

import pytest

from p2phier.bitswap import (
    BlockPresence,
    Engine,
    EngineConfig,
    LedgerBook,
    LocalBlockCorrupt,
    Message,
    PresenceType,
    SendMessage,
    WantEntry,
    Wantlist,
    WantsDropped,
    WantType,
)
from p2phier.cid import CID, DAG_PB
from p2phier.errors import BlockNotFoundError, CorruptBlockError, StoreIOError, UsageError

from .helpers import DictSource

HAVE, BLOCK = WantType.HAVE, WantType.BLOCK


def blocks(n: int, size: int = 100, tag: str = "b") -> dict[CID, bytes]:
    out = {}
    for i in range(n):
        data = f"{tag}{i}:".encode().ljust(size, b".")
        out[CID.raw(data)] = data
    return out


def want(*entries: WantEntry, full: bool = False) -> Message:
    return Message(wantlist=Wantlist(tuple(entries), full))


def sent(actions: list, peer: str | None = None) -> list[Message]:  # type: ignore[type-arg]
    return [a.message for a in actions if isinstance(a, SendMessage) and peer in (None, a.peer)]


def presences(actions: list) -> list[tuple[CID, PresenceType]]:  # type: ignore[type-arg]
    return [(p.cid, p.type) for m in sent(actions) for p in m.presences]


def served(actions: list, peer: str | None = None) -> list[bytes]:  # type: ignore[type-arg]
    return [b.data for m in sent(actions, peer) for b in m.blocks]


HELD = CID.raw(b"held")
MISSING = CID.raw(b"missing")


def engine(**cfg: object) -> Engine:
    return Engine(DictSource({HELD: b"held"}), EngineConfig(**cfg))  # type: ignore[arg-type]


def test_want_have_is_answered_with_have_or_dont_have() -> None:
    e = engine()
    e.receive_message("A", want(WantEntry(HELD, 1, False, HAVE, True)), 0.0)
    e.receive_message("A", want(WantEntry(MISSING, 1, False, HAVE, True)), 0.0)
    out = e.poll(0.0)
    assert presences(out) == [(HELD, PresenceType.HAVE), (MISSING, PresenceType.DONT_HAVE)]
    assert served(out) == []  # a want-have never gets the block
    # the HAVE-answered want is done; the DONT_HAVE one stays
    assert [w.cid for w in e.wantlist("A")] == [MISSING]


def test_without_send_dont_have_a_missing_block_gets_no_answer_until_it_arrives() -> None:
    src = DictSource()
    e = Engine(src)
    e.receive_message("A", want(WantEntry(MISSING, 1, False, HAVE, False)), 0.0)
    assert e.poll(0.0) == []
    src.put(MISSING, b"missing")
    e.blocks_added([MISSING])
    assert presences(e.poll(1.0)) == [(MISSING, PresenceType.HAVE)]


def test_want_block_is_served_and_a_late_block_is_sent_when_it_arrives() -> None:
    src = DictSource({HELD: b"held"})
    e = Engine(src)
    e.receive_message(
        "A",
        want(WantEntry(HELD, 1, False, BLOCK, True), WantEntry(MISSING, 1, False, BLOCK, True)),
        0.0,
    )
    out = e.poll(0.0)
    assert served(out) == [b"held"]
    assert presences(out) == [(MISSING, PresenceType.DONT_HAVE)]
    assert sent(out)[0].blocks[0].prefix == HELD.prefix()
    assert e.poll(0.0) == []
    src.put(MISSING, b"missing")
    e.blocks_added([MISSING])
    assert served(e.poll(1.0)) == [b"missing"]
    assert e.wantlist("A") == []
    led = e.ledgers.get("A")
    assert (led.blocks_sent, led.bytes_sent) == (2, len(b"held") + len(b"missing"))


def test_a_cidv0_want_is_served_with_the_v0_prefix() -> None:
    data = b"\x0a\x02\x08\x01"
    v0 = CID(0, DAG_PB, CID.dag_pb(data).multihash)
    e = Engine(DictSource({CID.dag_pb(data): data}))
    e.receive_message("A", want(WantEntry(v0)), 0.0)
    (msg,) = sent(e.poll(0.0))
    assert msg.blocks[0].prefix == bytes.fromhex("00701220")
    assert msg.blocks[0].claimed_key() == CID.dag_pb(data)


def test_cancel_removes_the_want_and_the_unsent_response() -> None:
    e = engine()
    e.receive_message("A", want(WantEntry(HELD)), 0.0)
    e.receive_message("A", want(WantEntry.cancel_of(HELD)), 0.0)
    assert e.poll(0.0) == []
    assert e.wantlist("A") == [] and e.pending("A") == 0


def test_a_full_wantlist_replaces_the_old_one() -> None:
    e = Engine(DictSource())
    e.receive_message("A", want(WantEntry(MISSING), WantEntry(HELD)), 0.0)
    other = CID.raw(b"other")
    e.receive_message("A", want(WantEntry(other), full=True), 0.0)
    assert [w.cid for w in e.wantlist("A")] == [other]


def test_a_want_have_never_downgrades_a_want_block() -> None:
    e = Engine(DictSource())
    e.receive_message("A", want(WantEntry(MISSING, 1, False, BLOCK)), 0.0)
    e.receive_message("A", want(WantEntry(MISSING, 1, False, HAVE)), 0.0)
    assert e.wantlist("A")[0].want_type is BLOCK


def test_blocks_go_out_highest_priority_first_then_oldest_first() -> None:
    bs = blocks(4, size=100)
    cids = list(bs)
    e = Engine(DictSource(bs), EngineConfig(turn_bytes=1))  # one block per message
    e.receive_message(
        "A",
        want(
            WantEntry(cids[0], priority=1),
            WantEntry(cids[1], priority=5),
            WantEntry(cids[2], priority=1),
            WantEntry(cids[3], priority=9),
        ),
        0.0,
    )
    out = sent(e.poll(0.0))
    assert [m.blocks[0].data for m in out] == [bs[cids[i]] for i in (3, 1, 0, 2)]
    # pendingBytes tells the peer how much is still queued for it
    assert [m.pending_bytes for m in out] == [300, 200, 100, 0]


def test_wants_over_the_per_peer_capacity_are_dropped_and_counted() -> None:
    e = Engine(DictSource(), EngineConfig(max_wants_per_peer=3))
    cids = list(blocks(5))
    actions = e.receive_message("A", want(*(WantEntry(c) for c in cids)), 0.0)
    assert actions == [WantsDropped("A", 2, "capacity")]
    assert len(e.wantlist("A")) == 3
    assert e.ledgers.get("A").wants_dropped == 2
    # a cancel frees a slot; updating a held want needs none
    e.receive_message("A", want(WantEntry.cancel_of(cids[0]), WantEntry(cids[4])), 0.0)
    assert {w.cid for w in e.wantlist("A")} == {cids[1], cids[2], cids[4]}


def test_the_per_peer_request_rate_is_a_token_bucket_on_want_entries() -> None:
    e = Engine(DictSource(), EngineConfig(request_rate=1.0, request_burst=5))
    cids = list(blocks(12))
    actions = e.receive_message("A", want(*(WantEntry(c) for c in cids[:8])), 0.0)
    assert actions == [WantsDropped("A", 3, "rate")]
    # another peer has its own bucket
    assert e.receive_message("B", want(*(WantEntry(c) for c in cids[:5])), 0.0) == []
    # two seconds later A may send two more; cancels are always free
    actions = e.receive_message(
        "A", want(WantEntry.cancel_of(cids[0]), *(WantEntry(c) for c in cids[8:11])), 2.0
    )
    assert actions == [WantsDropped("A", 1, "rate")]
    assert len(e.wantlist("A")) == 4 + 2
    # reconnecting does not refill the bucket
    e.peer_disconnected("A")
    actions = e.receive_message("A", want(*(WantEntry(c) for c in cids[:3])), 2.0)
    assert actions == [WantsDropped("A", 3, "rate")]
    e.forget_peer("A")
    assert e.receive_message("A", want(*(WantEntry(c) for c in cids[:3])), 2.0) == []


def test_two_peers_share_a_limited_upload_fairly() -> None:
    a_blocks, b_blocks = blocks(20, 1000, "a"), blocks(20, 1000, "b")
    cfg = EngineConfig(upload_rate=2000.0, upload_burst=2000, turn_bytes=1000)
    e = Engine(DictSource({**a_blocks, **b_blocks}), cfg)
    # A asks first and for everything: it must not starve B
    e.receive_message("A", want(*(WantEntry(c) for c in a_blocks)), 0.0)
    e.receive_message("B", want(*(WantEntry(c) for c in b_blocks)), 0.0)
    got = {"A": 0, "B": 0}
    order: list[str] = []
    now = 0.0
    while now <= 5.0:
        for a in e.poll(now):
            if isinstance(a, SendMessage):
                got[a.peer] += sum(len(b.data) for b in a.message.blocks)
                order.append(a.peer)
        now += 0.25
    assert got["A"] > 0 and got["B"] > 0
    assert abs(got["A"] - got["B"]) <= 1000
    assert order[:6] == ["A", "B", "A", "B", "A", "B"]  # turns alternate across polls
    # and the upload never beat the operator's rate: burst + rate * elapsed
    assert got["A"] + got["B"] <= 2000 + 2000 * 5.0


def test_upload_rate_is_enforced_and_next_wakeup_says_when_to_poll() -> None:
    bs = blocks(10, 1000)
    e = Engine(DictSource(bs), EngineConfig(upload_rate=1000.0, upload_burst=2000))
    e.receive_message("A", want(*(WantEntry(c) for c in bs)), 0.0)
    assert len(served(e.poll(0.0))) == 2  # the burst
    assert e.poll(0.5) == []
    assert e.next_wakeup(0.5) == pytest.approx(1.0)
    assert len(served(e.poll(1.0))) == 1
    total = 3
    t = 1.0
    while t < 8.0:
        t = e.next_wakeup(t) or t + 1
        total += len(served(e.poll(t)))
    assert total == 2 + int(t)  # one block per second after the burst
    # the operator lifts the limit: the rest goes at once
    e.set_upload_rate(None, None, t)
    assert len(served(e.poll(t))) == 10 - total


def test_presences_are_not_held_back_by_the_upload_limit() -> None:
    big = b"x" * 1000
    e = Engine(DictSource({CID.raw(big): big}), EngineConfig(upload_rate=1.0, upload_burst=1000))
    e.receive_message("A", want(WantEntry(CID.raw(big))), 0.0)
    assert len(served(e.poll(0.0))) == 1  # spends the whole bucket
    e.receive_message("A", want(WantEntry(MISSING, 1, False, HAVE, True)), 0.1)
    assert presences(e.poll(0.1)) == [(MISSING, PresenceType.DONT_HAVE)]


def test_a_corrupt_local_block_is_never_served() -> None:
    src = DictSource()
    src.put(HELD, b"rotten")  # bytes that do not hash to HELD
    e = Engine(src)
    e.receive_message("A", want(WantEntry(HELD, 1, False, BLOCK, True)), 0.0)
    out = e.poll(0.0)
    assert served(out) == []
    assert LocalBlockCorrupt(HELD) in out
    assert presences(out) == [(HELD, PresenceType.DONT_HAVE)]
    assert e.ledgers.get("A").bytes_sent == 0


def test_a_block_larger_than_we_serve_counts_as_absent() -> None:
    data = b"x" * 2000
    cid = CID.raw(data)
    e = Engine(DictSource({cid: data}), EngineConfig(max_served_block_size=1000))
    e.receive_message("A", want(WantEntry(cid, 1, False, BLOCK, True)), 0.0)
    assert presences(e.poll(0.0)) == [(cid, PresenceType.DONT_HAVE)]


def test_a_turn_carries_at_least_one_block_and_at_most_turn_bytes() -> None:
    bs = blocks(5, 600)
    e = Engine(DictSource(bs), EngineConfig(turn_bytes=1000))
    e.receive_message("A", want(*(WantEntry(c) for c in bs)), 0.0)
    out = sent(e.poll(0.0))
    assert [len(m.blocks) for m in out] == [1, 1, 1, 1, 1]
    for m in out:
        Message.decode(m.encode())  # everything we send is something we accept


def test_disconnect_forgets_wants_but_keeps_the_ledger() -> None:
    e = engine()
    e.receive_message("A", want(WantEntry(HELD)), 0.0)
    e.poll(0.0)
    e.receive_message("A", want(WantEntry(MISSING)), 0.0)
    e.peer_disconnected("A")
    assert e.peers() == [] and e.poll(1.0) == []
    assert e.ledgers.get("A").blocks_sent == 1


def test_ledgers_can_be_shared() -> None:
    book = LedgerBook()
    e = Engine(DictSource({HELD: b"held"}), ledgers=book)
    e.receive_message("A", want(WantEntry(HELD)), 3.0)
    e.poll(3.0)
    assert book.get("A").blocks_sent == 1 and book.get("A").last_seen == 3.0


def test_config_is_validated() -> None:
    with pytest.raises(UsageError):
        EngineConfig(upload_rate=0)
    with pytest.raises(UsageError):
        EngineConfig(max_wants_per_peer=0)
    with pytest.raises(UsageError, match="too large"):
        EngineConfig(turn_bytes=4 << 20)


def test_presence_only_messages_round_trip() -> None:
    msg = Message(presences=(BlockPresence(HELD, PresenceType.HAVE),))
    assert Message.decode(msg.encode()) == msg


class FailingSource(DictSource):
    """A store whose disk has gone bad, or whose block rotted between lookups."""

    def __init__(self, size_error: Exception | None, read_error: Exception | None) -> None:
        super().__init__({HELD: b"held"})
        self.size_error, self.read_error = size_error, read_error

    def block_size(self, cid: CID) -> int:
        if self.size_error:
            raise self.size_error
        return super().block_size(cid)

    def get_block(self, cid: CID) -> bytes:
        if self.read_error:
            raise self.read_error
        return super().get_block(cid)


def test_store_errors_are_answered_as_absent_not_raised() -> None:
    e = Engine(FailingSource(StoreIOError("disk gone"), None))
    e.receive_message("A", want(WantEntry(HELD, 1, False, BLOCK, True)), 0.0)
    assert presences(e.poll(0.0)) == [(HELD, PresenceType.DONT_HAVE)]


def test_a_block_the_store_finds_corrupt_on_read_is_reported_not_served() -> None:
    e = Engine(FailingSource(None, CorruptBlockError("rotted")))
    e.receive_message("A", want(WantEntry(HELD, 1, False, BLOCK, True)), 0.0)
    out = e.poll(0.0)
    assert LocalBlockCorrupt(HELD) in out and served(out) == []
    assert presences(out) == [(HELD, PresenceType.DONT_HAVE)]


def test_a_block_removed_between_lookup_and_read_is_answered_as_absent() -> None:
    e = Engine(FailingSource(None, BlockNotFoundError("gc took it")))
    e.receive_message("A", want(WantEntry(HELD, 1, False, BLOCK, True)), 0.0)
    out = e.poll(0.0)
    assert served(out) == [] and not [a for a in out if isinstance(a, LocalBlockCorrupt)]
    assert presences(out) == [(HELD, PresenceType.DONT_HAVE)]
