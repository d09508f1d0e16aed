"""The update intake: announcement in, fetched, verified, provenance-checked update out.

Owns :class:`UpdateIntake`, the pipeline the daemon feeds with every
announcement that arrives (gossip, or a head pulled from a peer):

1. the sender's announcement budget (:mod:`p2phier.trust.budget`), then the
   :class:`~p2phier.announce.AnnouncementFilter` decide, before any fetch
   (budget first, then signature, topic, sender's place in the hierarchy,
   record, replay);
2. the announcement waits in a queue that holds **at most one pending fetch per
   (topic, author)**: a newer announcement replaces a queued older one, and an
   author has at most one fetch running, so one peer's flood cannot starve the
   others of the fetch slots;
3. before it starts, and while it runs, the author must still be this node's
   child (up topic) or parent (down topic): a fetch for an author that left
   is dropped or cancelled (:meth:`UpdateIntake.author_gone`);
4. the artifact is fetched envelope first and its **provenance** checked before
   its content is fetched: the manifest's signer must be the announcing author,
   and its layer, domain, base model, round and lineage must be what the
   announcement (itself checked against the author's node record) says.  A
   mismatch is dropped, counted under ``provenance`` and reported as evidence;
5. the whole artifact is verified (signature, content, lineage) and every file
   it needs is pinned (envelope, config, payload, its lineage's: ``on_pinned``
   names them), then it is listed as accepted and handed on (``on_accepted``).

Transient failures (a connection reset, missing blocks, a timeout) are retried
with backoff while the announcement is still its author's newest.  A fetch
cancelled because its author left is taken up again when the author, back in
place, re-announces it (its periodic re-publication); a refused update is not.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from p2phier.announce import (
    Announcement,
    AnnouncementFilter,
    Reject,
    SenderContext,
    parse_topic,
    topic_purpose,
)
from p2phier.artifact import DEFAULT_LIMITS, Artifact, pin_artifact, verify_artifact
from p2phier.artifact.verify import read_artifact
from p2phier.bitswap import FetchFailedError
from p2phier.cid import CID
from p2phier.errors import (
    ArtifactError,
    FormatVersionError,
    MissingBlocksError,
    NetworkError,
    NewerManifestError,
    P2PHierError,
    PeerTimeoutError,
    ProtocolViolationError,
)
from p2phier.identity import PeerId
from p2phier.net.bitswap_state import FetchStats
from p2phier.records import NodeRecord, now_ms
from p2phier.store import DiskStore
from p2phier.trust import ANNOUNCEMENTS, RateBudget
from p2phier.trust.proofs import ProvenanceError, check_provenance

logger = logging.getLogger(__name__)

#: accepted artifacts listed in status (which stay pinned: p2phier/node/retention.py)
MAX_ACCEPTED = 256
#: fetches running at once (each may take many seconds on a slow link)
MAX_PARALLEL_FETCHES = 4
#: waits before re-fetching an announced update whose bytes did not arrive
FETCH_RETRY_S = (5.0, 15.0, 30.0, 60.0, 120.0)
#: peers whose announcement drops are counted one by one in status (least recent go first)
MAX_DROP_PEERS = 256
#: queued (topic, author) fetches; one each, so this bounds distinct authors waiting
MAX_QUEUED = 1024
#: the evidence kind of an announced update whose author did not serve it in time
STALL = "stall"
#: the drop reason of an announcement over its sender's budget
RATE = "rate"
#: updates remembered as refused (never fetched again when re-announced)
MAX_GIVEN_UP = 4096
#: the drop reason of an update whose artifact is not what its announcement said
PROVENANCE = "provenance"
#: the evidence kind of an announced update whose artifact fails verification
BAD_ARTIFACT = "bad-artifact"
#: the evidence kind of an author that withheld its newest announced update (said
#: DONT_HAVE) while taking blocks from this node
FREE_RIDE = "free-ride"


def _remember(seen: OrderedDict[str, None], key: str, cap: int) -> None:
    """Add ``key`` to ``seen``, forgetting the oldest beyond ``cap``."""
    seen[key] = None
    while len(seen) > cap:
        seen.popitem(last=False)


class Fetcher(Protocol):
    """What the intake needs from the network: Bitswap fetches and DHT provider lookups."""

    async def fetch(
        self,
        cid: CID,
        providers: list[str],
        *,
        timeout: float,
        pin: bool,
        purpose: str,
        stats: FetchStats,
    ) -> Any: ...

    async def providers(self, cid: CID) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Evidence:
    """Something a peer did that trust should remember (first-hand observation)."""

    peer: str
    kind: str
    detail: str
    at_ms: int
    #: for a proof: the signed messages that disagree, as received (re-checkable by anyone)
    proof: tuple[bytes, ...] = ()


class UpdateIntake:
    """Announcements in (:meth:`offer`), accepted updates out (``on_accepted``)."""

    def __init__(
        self,
        local: PeerId,
        store: DiskStore,
        record_of: Callable[[PeerId], NodeRecord | None],
        context: Callable[[str], SenderContext],
        *,
        clock: Callable[[], float],
        block_timeout_s: float,
        on_accepted: Callable[[Announcement, Artifact], None],
        on_evidence: Callable[[Evidence], None],
        on_change: Callable[[], None],
        max_parallel: int = MAX_PARALLEL_FETCHES,
        rank_providers: Callable[[list[str]], list[str]] = lambda providers: providers,
        on_pinned: Callable[[Announcement, tuple[CID, ...]], None] = lambda ann, files: None,
        served_to: Callable[[str], int] = lambda peer: 0,
    ) -> None:
        self.local = local
        self.store = store
        self.filter = AnnouncementFilter(local, record_of)
        self.context = context
        self.clock = clock
        self.block_timeout_s = block_timeout_s
        self.on_accepted = on_accepted
        self.on_evidence = on_evidence
        self.on_change = on_change
        self.on_pinned = on_pinned
        self.rank_providers = rank_providers
        #: block bytes this node has served a peer (its Bitswap ledger here)
        self.served_to = served_to
        #: announcements whose author was found withholding them (counted once each)
        self._withheld: OrderedDict[str, None] = OrderedDict()
        #: announcements each sender may make this node check, per second and at once
        self.budget = RateBudget(ANNOUNCEMENTS)
        self.accepted: deque[dict[str, Any]] = deque(maxlen=MAX_ACCEPTED)
        self.rejected: Counter[str] = Counter()  # announcement drop reasons
        # sending peer (gossip origin, or the peer a head was pulled from) -> drop reasons
        self.rejected_by_peer: OrderedDict[str, Counter[str]] = OrderedDict()
        self.fetch_failures: deque[dict[str, Any]] = deque(maxlen=64)
        self.superseded = 0  # queued announcements replaced by their author's newer one
        self.cancelled = 0  # fetches dropped because the author left the hierarchy
        self._queued: OrderedDict[tuple[str, PeerId], tuple[Announcement, int]] = OrderedDict()
        self._running: dict[PeerId, tuple[str, trio.CancelScope]] = {}  # author -> (cid, scope)
        self._wake = trio.Event()
        self._max_parallel = max_parallel
        self._signed: OrderedDict[str, bytes] = OrderedDict()  # cid -> signed announcement
        #: updates not fetched again when re-announced (refused, or retries spent)
        self._given_up: OrderedDict[str, None] = OrderedDict()
        self._fetcher: Fetcher | None = None
        self._spawn: Callable[..., None] | None = None

    # --- input ------------------------------------------------------------------------------
    def offer(self, topic: str, data: bytes, sender: str) -> bool:
        """Filter one announcement from ``sender`` and queue its fetch; True if accepted
        (the gossipsub validator's answer).  A drop is counted under the sender."""
        now = self.clock()
        if not self.budget.allow(sender, now):
            # Over its budget: refused before the signature check (the expensive part).
            self._count_drop(sender, RATE)
            self.on_evidence(Evidence(sender, RATE, "over its announcement budget", now_ms(now)))
            return False
        result = self.filter.validate(data, self.context(topic), now)
        if result.reason is Reject.DUPLICATE and result.announcement is not None:
            # The very announcement accepted before, re-published: fetch it again if its
            # fetch was cancelled (its author left and came back) and nothing else has it.
            self._requeue(result.announcement)
        if not result.accepted:
            reason = result.reason.value if result.reason else "?"
            self._count_drop(sender, reason)
            # A replay is not evidence against anyone: the bytes are the author's own
            # signed (older) announcement, which any relay may hand on late (gossip
            # re-delivers, siblings answer pulls with what they hold: seen in a 12-node
            # devnet, 35 copies of a parent's older announcement in one run, which
            # counted against the parent made two honest children isolate it).  It is
            # dropped and counted, nothing more.
            if result.reason is Reject.BAD_SIGNATURE:
                self.on_evidence(Evidence(sender, reason, result.detail, now_ms(now)))
            # Duplicates are every child's periodic re-announcement: not worth a line each.
            level = logging.DEBUG if result.reason is Reject.DUPLICATE else logging.INFO
            logger.log(level, "announcement on %s from %s dropped (%s): %s",
                       topic, sender, reason, result.detail)  # fmt: skip
            return False
        assert result.announcement is not None
        self._signed[str(result.announcement.cid)] = data  # kept for a provenance proof
        while len(self._signed) > MAX_QUEUED:
            self._signed.popitem(last=False)
        self.on_change()
        self._enqueue(result.announcement, 0)
        return True

    def _requeue(self, ann: Announcement) -> None:
        key = str(ann.cid)
        if (
            self._is_accepted(key)
            or key in self._given_up
            or any(str(a.cid) == key for a, _ in self._queued.values())
            or any(cid == key for cid, _ in self._running.values())
            or not self._still_expected(ann)
        ):
            return
        logger.info("re-queued %s from %s (its earlier fetch did not finish)", key, ann.author)
        self._enqueue(ann, 0)

    def author_gone(self, author: PeerId) -> None:
        """``author`` is no longer our child or parent: drop its queued fetch, cancel its
        running one."""
        for key in [k for k in self._queued if k[1] == author]:
            del self._queued[key]
            self.cancelled += 1
        running = self._running.get(author)
        if running is not None:
            running[1].cancel()

    # --- the fetch loop -----------------------------------------------------------------------
    async def run(self, fetcher: Fetcher, spawn: Callable[..., None]) -> None:
        """Start fetches as slots free up, one per author at a time, oldest queued first."""
        self._fetcher = fetcher
        self._spawn = spawn
        async with trio.open_nursery() as nursery:
            while True:
                started = False
                for key in list(self._queued):
                    ann, attempt = self._queued[key]
                    if ann.author in self._running:
                        continue  # its running fetch finishes first
                    if len(self._running) >= self._max_parallel:
                        break
                    del self._queued[key]
                    if not self._still_expected(ann):
                        self.cancelled += 1
                        continue
                    scope = trio.CancelScope()
                    self._running[ann.author] = (str(ann.cid), scope)
                    nursery.start_soon(self._fetch_one, ann, attempt, scope)
                    started = True
                if not started:
                    self._wake = trio.Event()
                    await self._wake.wait()

    @property
    def fetching(self) -> list[str]:
        return sorted(cid for cid, _ in self._running.values())

    @property
    def queued(self) -> int:
        return len(self._queued)

    def _enqueue(self, ann: Announcement, attempt: int) -> None:
        key = (ann.topic, ann.author)
        if self._is_accepted(str(ann.cid)):
            return
        old = self._queued.pop(key, None)
        if old is not None and old[0].seq < ann.seq:
            self.superseded += 1
            logger.debug("queued update %s superseded by %s", old[0].cid, ann.cid)
        elif old is not None:
            ann, attempt = old  # a retry of an older one never replaces a newer one
        if len(self._queued) >= MAX_QUEUED:
            logger.warning("fetch queue full; announcement of %s dropped", ann.cid)
            return
        self._queued[key] = (ann, attempt)
        self._wake.set()

    def _still_expected(self, ann: Announcement) -> bool:
        ctx = self.context(ann.topic)
        try:
            kind = parse_topic(ann.topic).kind.value
        except P2PHierError:
            return False
        if kind == "up":
            return ann.author in ctx.children
        return ann.author == ctx.parent

    def _is_accepted(self, cid: str) -> bool:
        return any(a["cid"] == cid for a in self.accepted)

    async def _fetch_one(self, ann: Announcement, attempt: int, scope: trio.CancelScope) -> None:
        key = str(ann.cid)
        try:
            with scope:
                await self._fetch_and_accept(ann, attempt)
            if scope.cancelled_caught:
                self.cancelled += 1
                logger.info("fetch of %s cancelled: %s left the hierarchy", key, ann.author)
        finally:
            self._running.pop(ann.author, None)
            self._wake.set()

    async def _fetch_and_accept(self, ann: Announcement, attempt: int) -> None:
        key = str(ann.cid)
        if self._is_accepted(key):
            return
        assert self._fetcher is not None
        try:
            # The author has it (it just announced it): ask it first, and the DHT's
            # providers only when a retry is needed (a lookup costs seconds per hop).
            providers = [str(ann.author)]
            if attempt:
                providers += [
                    p for p in await self._fetcher.providers(ann.cid) if p not in providers
                ]
                # a provider that stalled or misbehaved before is asked last (trust order)
                providers = self.rank_providers(providers)
            stats = FetchStats()
            art = await self._fetch_artifact(ann, providers, stats)
            files = await trio.to_thread.run_sync(pin_artifact, self.store, ann.cid)
        except (P2PHierError, trio.TooSlowError) as exc:
            self._failed(ann, attempt, exc)
            return
        self.on_pinned(ann, files)
        self.accepted.append(
            {
                "cid": key,
                "author": str(ann.author),
                "topic": ann.topic,
                "round": ann.round,
                "seq": ann.seq,
                "parent": str(ann.parent) if ann.parent else None,
                "bytes": art.stored_bytes,
                # what this fetch took from the network (blocks held already cost nothing)
                "wire_bytes": stats.bytes_received,
                "accepted_ms": now_ms(self.clock()),
                "created_ms": ann.created_ms,
            }
        )
        self.on_change()
        logger.info("accepted %s from %s (round %d)", key, ann.author, ann.round)
        self.on_accepted(ann, art)

    def _failed(self, ann: Announcement, attempt: int, exc: BaseException) -> None:
        key = str(ann.cid)
        self.fetch_failures.append({"cid": key, "author": str(ann.author), "error": str(exc)})
        if isinstance(exc, ProvenanceError):
            self._give_up(key)
            self._count_drop(str(ann.author), PROVENANCE)
            proof = exc.proof
            self.on_evidence(
                Evidence(str(ann.author), PROVENANCE, str(exc), now_ms(self.clock()), proof)
            )
            logger.warning("update %s from %s dropped: %s", key, ann.author, exc)
            return
        # The announcement was valid: only its bytes did not arrive (a connection reset, a
        # busy provider).  Its re-publications are duplicates and never fetched again, so
        # retry it here while it is still the author's newest on that topic.
        transient = isinstance(exc, NetworkError | MissingBlocksError | trio.TooSlowError)
        if isinstance(exc, ArtifactError) and not isinstance(
            exc, MissingBlocksError | FormatVersionError | NewerManifestError
        ):
            # Bytes its author signed and announced by hash that break the format: no
            # accident of the network (the blocks matched their CIDs).  What a newer
            # release may write and this one cannot read is refused without blame.
            self._count_drop(str(ann.author), BAD_ARTIFACT)
            self.on_evidence(
                Evidence(str(ann.author), BAD_ARTIFACT, str(exc), now_ms(self.clock()))
            )
        if isinstance(exc, FetchFailedError) and str(ann.author) in exc.dont_have:
            self._withholding(ann, exc)
        if isinstance(exc, PeerTimeoutError | trio.TooSlowError):
            # The author announced it and did not serve it in time: a stall, remembered
            # (it weighs little and decays: an honest node on a bad link recovers).
            self.on_evidence(Evidence(str(ann.author), STALL, str(exc), now_ms(self.clock())))
        if transient and attempt < len(FETCH_RETRY_S) and self._spawn is not None:
            logger.info("update %s from %s not fetched (%s); retry in %.0f s",
                        key, ann.author, exc, FETCH_RETRY_S[attempt])  # fmt: skip
            self._spawn(self._retry, ann, attempt + 1)
        else:
            self._give_up(key)
            logger.warning("update %s from %s rejected: %s", key, ann.author, exc)

    def _withholding(self, ann: Announcement, exc: FetchFailedError) -> None:
        """The author said DONT_HAVE for a block of the update it announced.  An honest
        node pins what it publishes before announcing it and keeps its newest (and the
        lineage its deltas need: node/retention.py), so for its newest announcement that
        is withholding: free-riding where it took blocks from this node (its ledger
        here), else a stall.  Counted once per announcement (its retries ask again); an
        older announcement a relay handed on late may be gone from its author by right."""
        key = str(ann.cid)
        mark = self.filter.high_water(ann.topic, ann.author)
        if key in self._withheld or (mark is not None and mark.seq != ann.seq):
            return
        _remember(self._withheld, key, MAX_GIVEN_UP)
        author = str(ann.author)
        took = self.served_to(author)
        kind = FREE_RIDE if took > 0 else STALL
        detail = f"announced {key} and then said DONT_HAVE for its blocks"
        if took > 0:
            detail += f", having taken {took} bytes of blocks from this node"
        logger.warning("%s from %s: %s", kind, author, detail)
        self.on_evidence(Evidence(author, kind, f"{detail} ({exc})", now_ms(self.clock())))

    def _give_up(self, cid: str) -> None:
        _remember(self._given_up, cid, MAX_GIVEN_UP)

    async def _retry(self, ann: Announcement, attempt: int) -> None:
        await trio.sleep(FETCH_RETRY_S[attempt - 1])
        mark = self.filter.high_water(ann.topic, ann.author)
        if mark is not None and mark.seq != ann.seq:
            return  # superseded by a newer announcement, which is fetched instead
        self._enqueue(ann, attempt)

    async def _fetch_artifact(
        self, ann: Announcement, providers: list[str], stats: FetchStats
    ) -> Artifact:
        """Fetch the envelope, check provenance, then content and lineage; verify it all."""
        assert self._fetcher is not None
        timeout = self.block_timeout_s * 6
        purpose = topic_purpose(ann.topic)
        cid = ann.cid
        current: CID | None = cid
        for _ in range(DEFAULT_LIMITS.max_chain):
            assert current is not None
            await self._fetcher.fetch(
                current, providers, timeout=timeout, pin=False, purpose=purpose, stats=stats
            )
            art = await trio.to_thread.run_sync(read_artifact, self.store.get_block, current)
            m = art.manifest
            if current != cid and m.author != ann.author:
                # an update stream is its author's own lineage: a delta on somebody else's
                # artifact would pass their work off as a change of its own
                raise ProvenanceError(
                    f"artifact {cid}'s lineage holds {current}, signed by {m.author}, not by "
                    f"its announcer {ann.author}"
                )
            if current == cid:
                try:
                    check_provenance(ann, art.manifest, art.cid)
                except ProvenanceError as exc:
                    signed = self._signed.get(str(cid))
                    proof = (signed, art.envelope_bytes) if signed else ()
                    raise ProvenanceError(str(exc), proof) from None
                if ann.size and art.stored_bytes > ann.size:
                    raise ProtocolViolationError(
                        f"artifact {cid} is larger than the {ann.size} bytes its announcement "
                        "declared"
                    )
            for ref in m.files:
                await self._fetcher.fetch(
                    ref, providers, timeout=timeout, pin=False, purpose=purpose, stats=stats
                )
            current = m.parent
            if current is None:
                break
        art = await trio.to_thread.run_sync(
            lambda: verify_artifact(self.store, cid, expected_base_model=ann.base_model_id)
        )
        if art.manifest.parent != ann.parent:  # pragma: no cover - checked with provenance
            raise ArtifactError(f"artifact {cid}'s lineage differs from its announcement")
        return art

    def _count_drop(self, sender: str, reason: str) -> None:
        self.rejected[reason] += 1
        per_peer = self.rejected_by_peer.get(sender)
        if per_peer is None:
            per_peer = self.rejected_by_peer[sender] = Counter()
            while len(self.rejected_by_peer) > MAX_DROP_PEERS:
                self.rejected_by_peer.popitem(last=False)
        self.rejected_by_peer.move_to_end(sender)
        per_peer[reason] += 1

    # --- status and state -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "accepted": list(self.accepted),
            "fetching": self.fetching,
            "fetches_queued": self.queued,
            "fetches_superseded": self.superseded,
            "fetches_cancelled": self.cancelled,
            "fetch_failures": list(self.fetch_failures),
            "announcements_dropped": dict(self.rejected),
            "announcements_dropped_by_peer": {
                peer: dict(reasons) for peer, reasons in self.rejected_by_peer.items()
            },
        }

    def restore(self, accepted: Iterable[Mapping[str, Any]]) -> None:
        self.accepted.extend(dict(a) for a in accepted)


__all__ = [
    "Evidence",
    "Fetcher",
    "UpdateIntake",
]
