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
    ReadAheadSource,
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


def sent_actions(actions: list) -> list[SendMessage]:  # type: ignore[type-arg]
    return [a for a in actions if isinstance(a, SendMessage)]


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


def test_the_per_peer_request_rate_paces_a_peer_without_dropping_its_wants() -> None:
    e = Engine(DictSource(), EngineConfig(request_rate=1.0, request_burst=5))
    cids = list(blocks(12))
    assert e.read_ready_at("A", 0.0) == 0.0  # a peer never heard from is read at once
    assert e.receive_message("A", want(*(WantEntry(c) for c in cids[:8])), 0.0) == []
    assert len(e.wantlist("A")) == 8  # nothing dropped: 3 entries over the burst...
    assert e.read_ready_at("A", 0.0) == pytest.approx(3.0)  # ...are paid by waiting
    assert e.read_ready_at("A", 2.0) == pytest.approx(3.0)
    assert e.read_ready_at("A", 3.0) == 3.0
    # another peer has its own bucket
    assert e.receive_message("B", want(*(WantEntry(c) for c in cids[:5])), 0.0) == []
    assert e.read_ready_at("B", 0.0) == 0.0
    # cancels are free: A's bucket is back at 0 at t=3, two cancels leave it there
    cancels = want(WantEntry.cancel_of(cids[0]), WantEntry.cancel_of(cids[1]))
    e.receive_message("A", cancels, 3.0)
    assert e.read_ready_at("A", 3.0) == 3.0
    assert len(e.wantlist("A")) == 6
    # reconnecting does not refill the bucket
    e.receive_message("A", want(*(WantEntry(c) for c in cids[8:12])), 3.0)
    e.peer_disconnected("A")
    assert e.read_ready_at("A", 3.0) == pytest.approx(7.0)
    e.forget_peer("A")
    assert e.read_ready_at("A", 3.0) == 3.0


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


def test_room_limits_the_messages_built_per_peer_and_upcoming_names_their_blocks() -> None:
    a_blocks, b_blocks = blocks(12, 1000, "a"), blocks(12, 1000, "b")
    src = DictSource({**a_blocks, **b_blocks})
    e = Engine(src, EngineConfig(turn_bytes=2000))  # two blocks per message
    e.receive_message("A", want(*(WantEntry(c, 100 - i) for i, c in enumerate(a_blocks))), 0.0)
    e.receive_message("B", want(*(WantEntry(c) for c in b_blocks)), 0.0)
    room = {"A": 2, "B": 0}
    ahead = e.upcoming(room.__getitem__)
    assert ahead == list(a_blocks)[:4]  # A's next two turns, most urgent first; none of B's
    src.reads = 0
    out = e.poll(0.0, room=room.__getitem__)
    assert [a.peer for a in sent_actions(out)] == ["A", "A"]
    assert served(out) == [a_blocks[c] for c in ahead]  # exactly what upcoming named
    assert src.reads == 4  # only the blocks that were sent were read
    assert e.upcoming(room.__getitem__) == list(a_blocks)[4:8]  # nothing was changed
    # a peer without room is not a reason to wake up; one with room is
    assert e.next_wakeup(0.0, room=lambda peer: 0) is None
    assert e.next_wakeup(0.0, room=room.__getitem__) == 0.0
    # B keeps its turn and is served as soon as it has room, before A's third message
    room = {"A": 1, "B": 1}
    assert [a.peer for a in sent_actions(e.poll(1.0, room=room.__getitem__))] == ["B", "A"]
    # without room, everything owed is built at once (the sans-IO default)
    assert len(served(e.poll(2.0))) == 24 - 4 - 2 - 2


def test_upcoming_names_the_next_turn_before_the_upload_budget_allows_it() -> None:
    bs = blocks(6, 1000)
    e = Engine(DictSource(bs), EngineConfig(upload_rate=1000.0, upload_burst=1000, turn_bytes=2000))
    e.receive_message("A", want(*(WantEntry(c) for c in bs)), 0.0)
    assert len(served(e.poll(0.0))) == 1  # the burst is spent
    assert e.poll(0.5) == []
    # read ahead while waiting for the budget: the next turn, not the whole want list
    assert e.upcoming(lambda peer: 1) == list(bs)[1:3]


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


def test_prune_forgets_refilled_buckets_and_idle_ledgers_of_peers_without_wants() -> None:
    e = Engine(DictSource({HELD: b"held"}), EngineConfig(request_rate=1.0, request_burst=5))
    cids = list(blocks(8))
    e.receive_message("A", want(*(WantEntry(c) for c in cids)), 0.0)  # 3 over its burst
    e.receive_message("B", want(WantEntry(HELD)), 0.0)
    e.poll(0.0)
    e.receive_message("C", want(WantEntry(MISSING)), 0.0)  # still wants: kept
    e.peer_disconnected("A")
    e.peer_disconnected("B")
    assert e.prune(1.0, idle_s=100.0) == 0
    assert e.read_ready_at("A", 1.0) == pytest.approx(3.0)  # A's debt is not forgiven
    assert e.prune(100.0, idle_s=100.0, keep={"B"}) == 1  # A: idle and gone
    assert e.ledgers.peers() == ["B", "C"]
    assert set(e._buckets) == {"C"}  # A's and B's refilled; C still holds wants
    assert e.ledgers.totals().blocks_sent == 1  # B's block, still counted
    assert e.prune(1000.0, idle_s=100.0) == 1  # B: no longer kept
    assert e.ledgers.peers() == ["C"] and e.ledgers.totals().blocks_sent == 1
    e.receive_message("A", want(*(WantEntry(c) for c in cids[:5])), 1000.0)
    assert e.read_ready_at("A", 1000.0) == 1000.0  # a fresh, full bucket: what it had


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


class CorruptOnRead(DictSource):
    def get_block(self, cid: CID) -> bytes:
        if cid == HELD:
            self.reads += 1
            raise CorruptBlockError("rotten")
        return super().get_block(cid)


def test_blocks_read_ahead_are_served_from_memory_and_errors_are_kept() -> None:
    bs = blocks(4, 100)
    src = CorruptOnRead({**bs, HELD: b"held"})
    ahead = ReadAheadSource(src)
    e = Engine(ahead)
    e.receive_message("A", want(WantEntry(HELD, 9), *(WantEntry(c) for c in bs)), 0.0)
    upcoming = e.upcoming(lambda peer: 1)
    assert upcoming[0] == HELD and set(upcoming[1:]) == set(bs)
    assert ahead.missing(upcoming) == upcoming
    ahead.keep(ahead.read(upcoming))  # what a driver runs in a worker thread
    assert ahead.missing(upcoming) == [] and src.reads == 5
    out = e.poll(0.0)
    assert src.reads == 5  # nothing was read again
    assert sorted(served(out)) == sorted(bs.values())
    # the error met while reading ahead was raised in the engine's read: reported
    assert LocalBlockCorrupt(HELD) in out
    # what is no longer upcoming is dropped; a block kept and not yet sent stays
    first, second = list(bs)[:2]
    ahead.keep(ahead.read([first, second]))
    ahead.retain([second])
    assert ahead.missing([first, second]) == [first]
    assert ahead.get_block(first) == bs[first]  # read from the source again
    assert src.reads == 5 + 2 + 1


class SizeCounting(DictSource):
    def __init__(self, blocks: dict[CID, bytes]) -> None:
        super().__init__(blocks)
        self.size_calls = 0

    def block_size(self, cid: CID) -> int:
        self.size_calls += 1
        return super().block_size(cid)


def test_a_read_ahead_source_remembers_sizes_until_a_read_fails() -> None:
    src = SizeCounting({HELD: b"held"})
    e = Engine(ReadAheadSource(src, sizes=2))
    e.receive_message("A", want(WantEntry(HELD, 1, False, HAVE, True)), 0.0)
    assert presences(e.poll(0.0)) == [(HELD, PresenceType.HAVE)]
    e.receive_message("A", want(WantEntry(HELD)), 0.1)  # then the block itself
    assert served(e.poll(0.1)) == [b"held"]
    assert src.size_calls == 1
    # the block is gone: its read fails, the size is forgotten, the next want finds it absent
    del src.blocks[HELD]
    e.receive_message("B", want(WantEntry(HELD, 1, False, BLOCK, True)), 0.2)
    assert presences(e.poll(0.2)) == [(HELD, PresenceType.DONT_HAVE)]
    e.receive_message("C", want(WantEntry(HELD, 1, False, HAVE, True)), 0.3)
    assert presences(e.poll(0.3)) == [(HELD, PresenceType.DONT_HAVE)]
    assert src.size_calls == 2


def test_peers_ranked_last_get_only_what_the_others_leave() -> None:
    a_blocks, d_blocks = blocks(6, 1000, "a"), blocks(6, 1000, "d")
    cfg = EngineConfig(upload_rate=2000.0, upload_burst=2000, turn_bytes=1000)
    e = Engine(DictSource({**a_blocks, **d_blocks}), cfg)
    e.serve_last = lambda peer: peer == "D"  # e.g. a peer the network distrusts
    # D asks first: it still waits until A has nothing left
    e.receive_message("D", want(*(WantEntry(c) for c in d_blocks)), 0.0)
    e.receive_message("A", want(*(WantEntry(c) for c in a_blocks)), 0.0)
    order: list[str] = []
    now = 0.0
    while now <= 8.0:
        order += [a.peer for a in e.poll(now) if isinstance(a, SendMessage) and a.message.blocks]
        now += 0.25
    assert order.count("A") == 6 and order.count("D") == 6
    assert order[:6] == ["A"] * 6  # every block of A's before any of D's
    # and when nobody else wants anything, D is served at once
    e2 = Engine(DictSource(d_blocks), cfg)
    e2.serve_last = lambda peer: True
    e2.receive_message("D", want(*(WantEntry(c) for c in d_blocks)), 0.0)
    assert len(served(e2.poll(0.0), "D")) == 2  # the burst
