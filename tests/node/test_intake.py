"""The update intake on its own: queueing per author, cancellation, provenance (issue 14).

A parent (``language``/``en``) with registered children; a fake fetcher copies
blocks from a source store the way Bitswap would, and can hold a fetch open
(a provider that answers HAVE and never serves) until the test lets it go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from p2phier.announce import SenderContext, sign_announcement, up_topic
from p2phier.artifact import Artifact, pack_adapter
from p2phier.artifact.synthetic import write_synthetic_adapter
from p2phier.cid import CID
from p2phier.identity import Identity, PeerId
from p2phier.node.intake import Evidence, UpdateIntake
from p2phier.records import Layer, RecordBook, sign_record
from p2phier.store import DiskStore, MemoryStore
from tests.node.fakes import FakeFetcher
from tests.node_logic.helpers import BASE, T0, announcement, ident, record

LOCAL = 50  # the parent
TOPIC = up_topic(ident(LOCAL).peer_id)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = DiskStore(tmp / "store")
        self.source = MemoryStore()
        self.book = RecordBook()
        self.children: set[PeerId] = set()
        self.accepted: list[str] = []
        self.evidence: list[Evidence] = []
        self.intake = UpdateIntake(
            ident(LOCAL).peer_id,
            self.store,
            self.book.get,
            lambda topic: SenderContext(topic, None, frozenset(self.children)),
            clock=lambda: T0 + 1,
            block_timeout_s=5.0,
            on_accepted=lambda ann, art: self.accepted.append(str(art.cid)),
            on_evidence=self.evidence.append,
            on_change=lambda: None,
            max_parallel=2,
        )
        self.fetcher = FakeFetcher(self.source, self.store)

    def child(self, i: int) -> None:
        self.book.accept(sign_record(record(i, Layer.DOMAIN, "en/news"), ident(i)), T0)
        self.children.add(ident(i).peer_id)

    def pack(self, i: int, seed: int, *, signer: int | None = None, **kw: Any) -> Artifact:
        args: dict[str, Any] = {
            "layer": "domain",
            "domain": "en/news",
            "base_model_id": BASE,
            "round": 1,
            "now": T0,
        }
        args.update(kw)
        adapter = write_synthetic_adapter(self.tmp / f"adapter-{i}-{seed}", seed=seed)
        return pack_adapter(self.source, adapter, ident(signer or i), **args)

    def announce(self, i: int, art: Artifact, seq: int, **kw: Any) -> bytes:
        ann = announcement(
            i,
            TOPIC,
            Layer.DOMAIN,
            "en/news",
            seq=seq,
            round_=kw.pop("round_", 1),
            cid=art.cid,
            size=art.stored_bytes,
            **kw,
        )
        return sign_announcement(ann, ident(i))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.store.close()
        w.source.close()


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def test_a_flooding_author_holds_one_slot_and_one_queue_entry(world: World) -> None:
    """Issue 14: 200 re-announcements queued 253 fetches behind 4 slots; an honest child's
    update waited minutes.  Now a newer announcement replaces the author's queued one, an
    author runs one fetch at a time, and the honest update is fetched at once."""
    world.child(1)  # the attacker
    world.child(2)  # honest
    arts = [world.pack(1, seed) for seed in range(6)]
    for art in arts:
        world.fetcher.hold[str(art.cid)] = trio.Event()  # HAVE, never served
    honest = world.pack(2, 100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, arts[0], 1), "attacker")
        await _until(lambda: world.intake.fetching == [str(arts[0].cid)], "attacker's first")
        for seq, art in enumerate(arts[1:], start=2):
            assert world.intake.offer(TOPIC, world.announce(1, art, seq), "attacker")
        assert world.intake.queued == 1  # only its newest waits; 4 were superseded
        assert world.intake.superseded == len(arts) - 2
        assert world.intake.offer(TOPIC, world.announce(2, honest, 1), "honest")
        await _until(lambda: str(honest.cid) in world.accepted, "the honest update")
        # the attacker's newest is still queued behind its own stalled fetch, not running
        assert world.intake.fetching == [str(arts[0].cid)]
        world.intake.author_gone(ident(1).peer_id)  # its registration expired
        await _until(lambda: world.intake.fetching == [], "the stalled fetch cancelled")
        assert world.intake.queued == 0 and world.intake.cancelled == 2
        nursery.cancel_scope.cancel()
    assert world.accepted == [str(honest.cid)]
    started = [c for c in world.fetcher.started if c in {str(a.cid) for a in arts}]
    assert started == [str(arts[0].cid)]  # the superseded ones never started


async def test_a_queued_fetch_of_an_author_who_left_never_starts(world: World) -> None:
    world.child(1)
    world.child(3)
    blocker = world.pack(3, 7)
    world.fetcher.hold[str(blocker.cid)] = trio.Event()
    world.intake._max_parallel = 1  # one slot: the next fetch must queue
    mine = world.pack(1, 8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(3, blocker, 1), "c3")
        await _until(lambda: world.intake.fetching == [str(blocker.cid)], "blocker running")
        assert world.intake.offer(TOPIC, world.announce(1, mine, 1), "c1")
        assert world.intake.queued == 1
        world.children.discard(ident(1).peer_id)  # dropped as a child before its turn
        world.fetcher.hold[str(blocker.cid)].set()
        await _until(lambda: str(blocker.cid) in world.accepted, "blocker accepted")
        await _until(lambda: world.intake.queued == 0, "queue drained")
        nursery.cancel_scope.cancel()
    assert str(mine.cid) not in world.fetcher.started
    assert world.intake.cancelled == 1


@pytest.mark.parametrize(
    ("pack_kw", "ann_kw", "message"),
    [
        ({"signer": 9}, {}, "is signed by .* not by the announcer"),
        ({"layer": "language", "domain": "en"}, {}, "its manifest says language/en"),
        ({"round": 2}, {}, "its round is 2, the announcement's 1"),
        ({"base_model_id": "other/model"}, {}, "its base model is 'other/model'"),
    ],
    ids=["another-signer", "another-layer-domain", "another-round", "another-base-model"],
)
async def test_an_update_that_is_not_what_was_announced_is_dropped_as_evidence(
    world: World, pack_kw: dict[str, Any], ann_kw: dict[str, Any], message: str
) -> None:
    """Issue 14: an artifact signed by another key, naming another layer and domain, was
    accepted as the announcer's own update."""
    world.child(1)
    art = world.pack(1, 3, **pack_kw)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, art, 1, **ann_kw), "c1")
        await _until(lambda: world.evidence, "evidence")
        nursery.cancel_scope.cancel()
    assert world.accepted == []
    (ev,) = world.evidence
    assert ev.peer == str(ident(1).peer_id) and ev.kind == "provenance"
    import re

    assert re.search(message, ev.detail), ev.detail
    status = world.intake.status()
    assert status["announcements_dropped"] == {"provenance": 1}
    assert status["announcements_dropped_by_peer"] == {str(ident(1).peer_id): {"provenance": 1}}
    # the content was never fetched: provenance is checked on the envelope
    assert str(art.manifest.tensors.cid) not in world.fetcher.started
    assert not world.store.pins()


async def test_the_announcers_own_update_is_accepted(world: World) -> None:
    world.child(1)
    art = world.pack(1, 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, art, 1), "c1")
        await _until(lambda: world.accepted, "accepted")
        nursery.cancel_scope.cancel()
    assert world.accepted == [str(art.cid)] and world.evidence == []
    assert art.cid in world.store.pins()


def test_identity_helper_is_deterministic() -> None:
    assert Identity.from_seed(b"\x01" * 32).peer_id == Identity.from_seed(b"\x01" * 32).peer_id


async def test_a_cancelled_fetch_is_taken_up_again_when_its_author_returns(world: World) -> None:
    """A parent restarting at a new address is lost and found again by its children; the
    update it announced meanwhile must still be fetched (seen in test_network)."""
    world.child(1)
    art = world.pack(1, 5)
    world.fetcher.hold[str(art.cid)] = trio.Event()
    signed = world.announce(1, art, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, signed, "c1")
        await _until(lambda: world.intake.fetching == [str(art.cid)], "running")
        world.children.discard(ident(1).peer_id)
        world.intake.author_gone(ident(1).peer_id)
        await _until(lambda: world.intake.fetching == [], "cancelled")
        world.fetcher.hold.pop(str(art.cid)).set()
        assert not world.intake.offer(TOPIC, signed, "c1")  # a duplicate: not forwarded...
        assert world.intake.queued == 0  # ...and not fetched while the author is away
        world.children.add(ident(1).peer_id)  # it registers again
        assert not world.intake.offer(TOPIC, signed, "c1")  # its periodic re-publication
        await _until(lambda: str(art.cid) in world.accepted, "fetched after all")
        nursery.cancel_scope.cancel()


async def test_a_refused_update_is_not_fetched_again_when_re_announced(world: World) -> None:
    world.child(1)
    art = world.pack(1, 6, signer=9)  # provenance fails
    signed = world.announce(1, art, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, signed, "c1")
        await _until(lambda: world.evidence, "refused")
        for _ in range(3):
            assert not world.intake.offer(TOPIC, signed, "c1")
        assert world.intake.queued == 0 and world.intake.fetching == []
        nursery.cancel_scope.cancel()
    assert world.fetcher.started.count(str(art.cid)) == 1


def test_a_sender_over_its_budget_is_dropped_before_the_signature_check(world: World) -> None:
    world.child(1)
    art = world.pack(1, 7)
    bad = bytearray(world.announce(1, art, 1))
    bad[-1] ^= 1  # a broken signature: each one costs a verification if it gets that far
    checked = []
    validate = world.intake.filter.validate

    def counting(*args: Any) -> Any:
        checked.append(1)
        return validate(*args)

    world.intake.filter.validate = counting  # type: ignore[method-assign]
    for _ in range(100):
        assert not world.intake.offer(TOPIC, bytes(bad), "flooder")
    burst = int(world.intake.budget.budget.burst)
    assert len(checked) == burst  # the rest never reached the filter
    dropped = world.intake.status()["announcements_dropped_by_peer"]["flooder"]
    assert dropped == {"bad-signature": burst, "rate": 100 - burst}
    assert world.intake.budget.status() == {"flooder": 100 - burst}


async def test_an_author_that_does_not_serve_its_update_is_reported_as_stalling(
    world: World,
) -> None:
    from p2phier.errors import PeerTimeoutError

    world.child(1)
    art = world.pack(1, 12)

    async def stalled(cid: CID, providers: list[str], *, timeout: float, **_: Any) -> Any:
        raise PeerTimeoutError(f"{providers[0]} sent nothing for {timeout}s")

    world.fetcher.fetch = stalled  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, art, 1), "c1")
        await _until(lambda: world.evidence, "evidence")
        nursery.cancel_scope.cancel()
    (ev,) = world.evidence
    assert ev.kind == "stall" and ev.peer == str(ident(1).peer_id)


async def test_an_older_announcement_handed_on_late_is_dropped_and_counts_against_nobody(
    world: World,
) -> None:
    """Relays re-deliver an author's older announcement (gossip late, siblings' pulls):
    dropped as a replay and counted, but not evidence against the author, who signed it
    honestly (35 such copies once made two honest children isolate their parent)."""
    world.child(1)
    old = world.announce(1, world.pack(1, 1), 10)
    new = world.announce(1, world.pack(1, 2, round=2), 20, round_=2)
    assert world.intake.offer(TOPIC, new, str(ident(1).peer_id))
    for _ in range(15):  # (within its announcement budget: 20 at once)
        assert not world.intake.offer(TOPIC, old, str(ident(1).peer_id))
    dropped = world.intake.status()["announcements_dropped_by_peer"][str(ident(1).peer_id)]
    assert dropped == {"replay": 15}
    assert world.evidence == []


async def test_a_delta_on_the_authors_own_previous_update_is_accepted(world: World) -> None:
    """Issue 15: updates travel as int8 deltas on the author's previous update."""
    world.child(1)
    first = world.pack(1, 4)
    delta = world.pack(1, 5, parent=first.cid, encoding="int8-delta", round=2)
    assert delta.stored_bytes < first.stored_bytes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, first, 1), "c1")
        await _until(lambda: world.accepted, "first accepted")
        ann = world.announce(1, delta, 2, round_=2, parent=first.cid)
        assert world.intake.offer(TOPIC, ann, "c1")
        await _until(lambda: len(world.accepted) == 2, "delta accepted")
        nursery.cancel_scope.cancel()
    assert world.accepted == [str(first.cid), str(delta.cid)] and world.evidence == []
    # the delta's pins hold its lineage: the parent cannot be collected from under it
    assert {first.cid, delta.cid} <= set(world.store.pins())


async def test_an_update_whose_lineage_runs_through_another_authors_artifact_is_dropped(
    world: World,
) -> None:
    """A hostile child announces a delta on its sibling's update: the receiver would
    rebuild the sibling's work as the child's own.  Dropped as provenance evidence against
    the announcer, nothing pinned."""
    world.child(1)
    world.child(2)
    sibling = world.pack(2, 7)
    theft = world.pack(1, 8, parent=sibling.cid, encoding="int8-delta")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, theft, 1, parent=sibling.cid), "c1")
        await _until(lambda: world.evidence, "evidence")
        nursery.cancel_scope.cancel()
    assert world.accepted == []
    (ev,) = world.evidence
    assert ev.peer == str(ident(1).peer_id) and ev.kind == "provenance"
    assert "not by its announcer" in ev.detail
    assert not world.store.pins()


def _forged(world: World, i: int, like: Artifact, *, parent: CID | None = None,
            extra: bytes = b"") -> Any:  # fmt: skip
    """``like`` re-signed by child ``i`` with its manifest changed: a parent named, or
    ``extra`` protobuf bytes appended (a field this build does not know)."""
    from types import SimpleNamespace

    from p2phier.artifact import SIGNING_DOMAIN, Envelope
    from p2phier.wire import p2phier_pb2 as pb

    m = pb.Manifest.FromString(like.manifest.to_bytes())
    if parent is not None:
        m.parent = parent.to_bytes()
    data = m.SerializeToString(deterministic=True) + extra
    env = Envelope(data, ident(i).sign(SIGNING_DOMAIN, data), ident(i).peer_id.multihash_bytes)
    cid = world.source.add_bytes(env.to_bytes())
    return SimpleNamespace(cid=cid, stored_bytes=like.stored_bytes + len(extra))


@pytest.mark.parametrize(
    ("flaw", "blamed"),
    [("int8-with-a-parent", True), ("a-field-of-a-newer-format", False)],
)
async def test_an_artifact_that_breaks_the_format_is_evidence_a_newer_one_is_not(
    world: World, flaw: str, blamed: bool
) -> None:
    """An update its author signed and announced that fails verification counts against it
    (bad-artifact); one that only uses what a newer release writes (an unknown field) is
    refused without blame: its author may run a newer p2phier."""
    world.child(1)
    like = world.pack(1, 8, encoding="int8")
    if flaw == "int8-with-a-parent":
        art = _forged(world, 1, like, parent=like.cid)
    else:
        art = _forged(world, 1, like, extra=bytes([0xF8, 0x07, 0x01]))  # field 127, varint 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, art, 1), "c1")
        await _until(lambda: world.intake.status()["fetch_failures"], "the refusal")
        nursery.cancel_scope.cancel()
    assert world.accepted == []
    (failure,) = world.intake.status()["fetch_failures"]
    assert failure["cid"] == str(art.cid)
    dropped = world.intake.status()["announcements_dropped_by_peer"]
    if blamed:
        assert "full adapter" in failure["error"]
        (ev,) = world.evidence
        assert (ev.peer, ev.kind) == (str(ident(1).peer_id), "bad-artifact")
        assert dropped == {str(ident(1).peer_id): {"bad-artifact": 1}}
    else:
        assert "newer format" in failure["error"]
        assert world.evidence == [] and dropped == {}
    assert not world.store.pins()


async def test_an_author_that_withholds_its_announced_update_is_free_riding_once(
    world: World, autojump_clock: trio.abc.Clock
) -> None:
    """An author that says DONT_HAVE for the update it just announced withholds it: a
    free-ride where its ledger here shows blocks this node served it, a stall where it
    took nothing; counted once per announcement however often it is retried (its real
    back-offs, on trio's autojumping clock), and never against another provider that
    lacks it."""
    from p2phier.bitswap import FetchFailedError
    from p2phier.node.intake import FETCH_RETRY_S

    world.child(1)
    world.child(2)
    author1, author2 = str(ident(1).peer_id), str(ident(2).peer_id)
    took = {author1: 3 << 20}
    world.intake.served_to = lambda peer: took.get(peer, 0)
    calls: list[str] = []

    async def withheld(cid: CID, providers: list[str], *, timeout: float, **_: Any) -> Any:
        calls.append(str(cid))
        raise FetchFailedError(
            f"cannot fetch {cid}: no provider could deliver it",
            dont_have=frozenset([str(ident(7).peer_id), *providers]),
        )

    async def nobody_else(cid: CID) -> list[str]:
        return [str(ident(7).peer_id)]  # a provider the DHT names, which lacks it too

    world.fetcher.fetch = withheld  # type: ignore[method-assign]
    world.fetcher.providers = nobody_else  # type: ignore[method-assign]
    attempts = 1 + len(FETCH_RETRY_S)
    wait = sum(FETCH_RETRY_S) + 60.0  # virtual seconds
    async with trio.open_nursery() as nursery:
        nursery.start_soon(world.intake.run, world.fetcher, nursery.start_soon)
        assert world.intake.offer(TOPIC, world.announce(1, world.pack(1, 1), 1), author1)
        assert world.intake.offer(TOPIC, world.announce(2, world.pack(2, 2), 1), author2)
        # every retry of both ran, and failed the same way
        await _until(lambda: len(calls) >= 2 * attempts, "retries", wait)
        await _until(lambda: not world.intake.fetching and not world.intake.queued, "idle", wait)
        nursery.cancel_scope.cancel()
    assert len(calls) == 2 * attempts
    kinds = sorted((ev.peer, ev.kind) for ev in world.evidence)
    assert kinds == sorted([(author1, "free-ride"), (author2, "stall")]), world.evidence
    (ride,) = [ev for ev in world.evidence if ev.kind == "free-ride"]
    assert f"{3 << 20} bytes" in ride.detail and "DONT_HAVE" in ride.detail
