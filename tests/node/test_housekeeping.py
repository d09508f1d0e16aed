"""Housekeeping against a real disk store and the real intake: the node's own pins,
retention, periodic GC (issue 15, bounded resources).

A parent (``language``/``en``) accepts its children's updates round after round
through :class:`~p2phier.node.intake.UpdateIntake` (a fake fetcher copies the
blocks, as Bitswap would); the clocks are lists the test moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2phier.announce import SenderContext, sign_announcement, up_topic
from p2phier.artifact import Artifact, artifact_files, pack_adapter, verify_artifact
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.cid import CID
from p2phier.errors import StoreError
from p2phier.identity import PeerId
from p2phier.node.housekeeping import PIN_GRACE_S, Housekeeping, PinLedger, operator_pins
from p2phier.node.intake import UpdateIntake
from p2phier.node.retention import Held
from p2phier.records import Layer, RecordBook, sign_record
from p2phier.store import DiskStore, MemoryStore
from p2phier.unixfs import iter_dag
from tests.node.fakes import FakeFetcher
from tests.node_logic.helpers import BASE, T0, announcement, ident, record

LOCAL = 50
TOPIC = up_topic(ident(LOCAL).peer_id)
KEEP = 2


class Parent:
    """The parent's store, intake and housekeeping; its children publish into ``source``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = DiskStore(tmp / "store")
        self.source = MemoryStore()
        self.book = RecordBook()
        self.children: set[PeerId] = set()
        self.needed: set[str] = set()
        self.accepted: list[str] = []
        self.wall = [T0 + 1]
        self.mono = [1000.0]
        self.hk = Housekeeping(
            self.store,
            local=str(ident(LOCAL).peer_id),
            interval_s=600.0,
            keep=KEEP,
            needed=lambda: self.needed,
            live_authors=lambda: [str(c) for c in self.children],
            clock=lambda: self.wall[0],
            monotonic=lambda: self.mono[0],
        )
        self.intake = UpdateIntake(
            ident(LOCAL).peer_id,
            self.store,
            self.book.get,
            lambda topic: SenderContext(topic, None, frozenset(self.children)),
            clock=lambda: self.wall[0],
            block_timeout_s=5.0,
            on_accepted=lambda ann, art: self.accepted.append(str(art.cid)),
            on_evidence=lambda ev: None,
            on_change=lambda: None,
            on_pinned=self.hk.accepted,
        )
        self.fetcher = FakeFetcher(self.source, self.store)

    def child(self, i: int) -> None:
        self.book.accept(sign_record(record(i, Layer.DOMAIN, "en/news"), ident(i)), T0)
        self.children.add(ident(i).peer_id)

    def pack(self, i: int, round_: int) -> Artifact:
        adapter = write_synthetic_adapter(self.tmp / f"adapter-{i}-{round_}", seed=100 * i + round_)
        return pack_adapter(
            self.source, adapter, ident(i), layer="domain", domain="en/news",
            base_model_id=BASE, round=round_, now=T0,
        )  # fmt: skip

    def announce(self, i: int, art: Artifact, round_: int) -> bytes:
        ann = announcement(
            i, TOPIC, Layer.DOMAIN, "en/news", seq=round_, round_=round_, cid=art.cid,
            size=art.stored_bytes,
        )  # fmt: skip
        return sign_announcement(ann, ident(i))

    async def accept(self, arts: dict[int, Artifact], round_: int) -> None:
        """Each child ``i`` announces ``arts[i]``; wait until all are accepted."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.intake.run, self.fetcher, nursery.start_soon)
            for i, art in arts.items():
                assert self.intake.offer(TOPIC, self.announce(i, art, round_), f"c{i}")
            with trio.fail_after(10):
                while not all(str(a.cid) in self.accepted for a in arts.values()):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    def pins(self) -> set[str]:
        return {str(c) for c in self.store.pins()}

    def stored_bytes(self) -> int:
        return sum(self.store.block_size(c) for c in self.store.iter_block_cids())


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Parent]:
    p = Parent(tmp_path)
    try:
        yield p
    finally:
        p.store.close()
        p.source.close()


def _files(store: DiskStore | MemoryStore, art: Artifact) -> set[str]:
    return {str(c) for c in artifact_files(store.get_block, art.cid)}


async def test_an_accepted_update_has_every_file_pinned_and_owned(parent: Parent) -> None:
    parent.child(1)
    art = parent.pack(1, 1)
    await parent.accept({1: art}, 1)
    files = _files(parent.source, art)
    assert len(files) == 3  # envelope, config, payload
    assert parent.pins() == files
    assert parent.hk.ledger.owned() == files
    (held,) = parent.hk.ledger.held()
    assert (held.cid, held.author, held.round, held.files) == (
        str(art.cid), str(ident(1).peer_id), 1, frozenset(files)
    )  # fmt: skip
    # GC now keeps the whole artifact readable (before, only its envelope was pinned)
    parent.mono[0] += PIN_GRACE_S
    await parent.hk.collect()
    verify_artifact(parent.store, art.cid, expected_base_model=BASE)


async def test_pins_and_bytes_stay_bounded_over_many_rounds(parent: Parent) -> None:
    """Issue 15: accepted artifacts stayed pinned forever.  Now each child's newest KEEP stay,
    what the learner needs stays, what the operator pinned stays; the rest is collected."""
    parent.child(1)
    parent.child(2)
    rounds = 8
    arts = {(i, r): parent.pack(i, r) for i in (1, 2) for r in range(1, rounds + 1)}
    # The operator pinned child 1's first update by hand (the CLI: another store object)
    # before the node accepted it, and asks for child 2's first payload over the socket later.
    operator = DiskStore(parent.tmp / "store")
    for c, block in iter_dag(arts[1, 1].cid, parent.source.get_block):
        operator.put_block(c, block)
    operator.pin(arts[1, 1].cid)
    operator.close()
    parent.needed = {str(arts[2, 2].cid)}  # the learner still uses child 2's round 2
    one = max(a.stored_bytes for a in arts.values())
    removed = 0
    for r in range(1, rounds + 1):
        parent.wall[0] += 60
        await parent.accept({i: arts[i, r] for i in (1, 2)}, r)
        if r == 1:
            payload = artifact_files(parent.store.get_block, arts[2, 1].cid)[2]
            with operator_pins():
                parent.store.pin(payload)
        parent.mono[0] += PIN_GRACE_S
        report = await parent.hk.collect()
        removed += report["blocks_removed"]
        # bounded: KEEP per child, the needed one and the operator's, whatever the round
        assert len(parent.pins()) <= 2 * KEEP * 3 + 3 + 2
        assert parent.stored_bytes() <= (2 * KEEP + 3) * one
    assert removed > 0
    newest = {(i, r) for i in (1, 2) for r in (rounds, rounds - 1)}
    for key in newest | {(2, 2)}:
        verify_artifact(parent.store, arts[key].cid, expected_base_model=BASE)
    pins = parent.pins()
    assert str(arts[1, 1].cid) in pins  # the operator's pin stayed
    assert str(payload) in pins  # so did the one made on the operator's behalf
    for key, art in arts.items():
        if key not in newest | {(2, 2)}:
            assert not parent.store.has_block(art.manifest.tensors.cid) or key == (2, 1), key
    assert len(parent.hk.ledger.held()) == len(newest) + 1  # the others were forgotten


async def test_a_file_pinned_again_lately_is_kept_until_the_grace_has_passed(
    parent: Parent,
) -> None:
    """An artifact being accepted or published is pinned before it is listed: a file of a
    dropped artifact that was just pinned again may belong to it, so it stays a while."""
    parent.child(1)
    arts = [parent.pack(1, r) for r in (1, 2, 3)]
    for r, art in enumerate(arts, start=1):
        await parent.accept({1: art}, r)
    old_payload = arts[0].manifest.tensors.cid
    parent.mono[0] += PIN_GRACE_S
    parent.store.pin(old_payload)  # again, just now (no new pin: still owned)
    report = await parent.hk.collect()
    assert report["unpinned"] == 1  # its envelope (the config is the kept updates' too)
    assert str(old_payload) in parent.pins()
    assert str(arts[0].cid) in {h.cid for h in parent.hk.ledger.held()}  # tried again later
    parent.mono[0] += PIN_GRACE_S
    report = await parent.hk.collect()
    assert report["unpinned"] == 1 and report["dropped"] == 1
    assert str(old_payload) not in parent.pins()
    assert not parent.store.has_block(old_payload)


async def test_the_pass_is_due_every_interval_deferred_while_fetching_never_when_off(
    parent: Parent,
) -> None:
    ran: list[int] = []
    busy = [True]

    async def collect() -> dict[str, Any]:
        ran.append(1)
        return {}

    parent.hk.collect = collect  # type: ignore[method-assign]
    parent.hk.busy = lambda: busy[0]
    await parent.hk.tick()
    assert ran == []  # not due yet
    parent.mono[0] += 600
    await parent.hk.tick()
    assert ran == []  # due, but fetches are in flight
    busy[0] = False
    await parent.hk.tick()
    assert ran == [1]
    await parent.hk.tick()
    assert ran == [1]  # the next one is an interval away
    busy[0] = True
    parent.mono[0] += 1200  # deferred for a whole interval already: it runs anyway
    await parent.hk.tick()
    assert ran == [1, 1]
    parent.hk.interval_s = 0.0
    parent.mono[0] += 10_000
    await parent.hk.tick()
    assert ran == [1, 1]


async def test_a_failed_collection_is_reported_never_raised(parent: Parent) -> None:
    def broken() -> list[CID]:
        raise StoreError("the index is unreadable")

    parent.store.gc = broken  # type: ignore[method-assign]
    report = await parent.hk.collect()
    assert report["error"] == "the index is unreadable"
    assert parent.hk.status()["last_gc"] == report

    def unknown() -> set[str]:
        raise KeyError("base")

    parent.hk.needed = unknown  # a learner whose view fails: nothing is collected
    report = await parent.hk.collect()
    assert report["error"].startswith("what is needed is unknown")


def test_the_ledger_survives_a_restart_and_refuses_junk() -> None:
    a = CID.raw(b"a")
    b = CID.raw(b"b")
    ledger = PinLedger()
    ledger.observe(a, True)
    ledger.observe(b, False)  # pinned before: not the node's
    with operator_pins():
        ledger.observe(CID.raw(b"c"), True)  # the operator's
    ledger.hold(Held(str(a), "author", "topic", 3, 1234, frozenset({str(a)})))
    saved = ledger.snapshot()
    again = PinLedger()
    again.restore(saved)
    assert again.owned() == {str(a)}
    assert again.held() == ledger.held()
    with pytest.raises((TypeError, ValueError)):
        PinLedger().restore({"held": [[str(a), "author", "topic", "3", 1234, []]]})
    with pytest.raises(ValueError):
        PinLedger().restore({"held": [[str(a), "author"]]})


def test_a_pin_made_for_the_operator_disowns_what_the_node_owned() -> None:
    ledger = PinLedger()
    a = CID.raw(b"a")
    ledger.observe(a, True)
    with operator_pins():
        ledger.observe(a, False)
    assert ledger.owned() == set()


def test_what_the_node_needs_is_its_head_and_what_the_learner_retains() -> None:
    from types import SimpleNamespace

    from p2phier.node.housekeeping import needed_by

    head = CID.raw(b"head")
    node: Any = SimpleNamespace(head=head, learner=None)
    assert needed_by(node) == {str(head)}
    node.learner = SimpleNamespace()  # a learner without retained(): nothing more
    assert needed_by(node) == {str(head)}
    node.learner = SimpleNamespace(retained=lambda: {"bafy-a", "bafy-b"})
    node.head = None
    assert needed_by(node) == {"bafy-a", "bafy-b"}
