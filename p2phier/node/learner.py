"""The node's learning worker: local cycles, aggregation, versions up and down the hierarchy.

Owns :class:`Learner`, which the daemon runs when ``learn.enabled`` is set.
It never imports torch: every model step is a blocking function of
:mod:`p2phier.learn.cycle` run in a worker thread, one at a time, at the
lowered CPU priority ``learn.worker_nice`` (:mod:`p2phier.node.worker`), so
that training never delays what the node serves to its peers.

The model of one node (all adapters live in the node's own tier space):

* ``base``: the parent's latest *flat* version (its complete model as one
  adapter), mapped block by block into this node's tier when the tiers
  differ, and calibrated on the node's own data where this tier is distilled
  (the node's updates are measured against it, their heads expressed against
  the version as received); the master has none;
* ``flat`` (nodes with children): this node's complete model, published to
  its children (signed by this node, ``base_version`` = the parent's flat);
* ``local`` (nodes that train): a LoRA adapter with a personal head, trained
  on newly arrived private data on top of ``flat`` (or ``base`` for a leaf).

A round (``learn.round R``): a training node runs a continual-learning cycle on the
data that arrived by round R; a leaf publishes its update to its parent. A parent
collects its children's updates for round R (those trained on its current flat,
until every registered child has sent one or ``collect_s`` passes), adds its own,
aggregates under the plan's rule and applies the timing rule; a published candidate
becomes the new flat and goes to the children. A child's update of that round that
comes later is still screened against the round's updates, and its verdict is
evidence against its author. A non-root parent then sends what it learned upstream,
``aggregate - base``, whether the timing rule published the aggregate to its
children or held it back. When a new parent version arrives, the node rebases: a
parent's flat becomes the new base (its contribution went upstream), a training
node's ``local`` restarts its LoRA keeping its personal head (the plan's ``rebase =
"reset"``, the default) or stays on top of the new model (``"keep"``: its next
update is only what it learns from then on, ``local - since``), and the new flat is
relayed to the children. An aggregate the timing rule held back never reaches the
node's children directly: it went up, and comes back in the parent's next version.

What leaves the node (packing, delta or keyframe, publishing) is
:class:`p2phier.node.outbox.Outbox`'s; applying a parent's version (its tier, the
mapping, the calibration, the rebase) is :class:`p2phier.node.inbound.Inbound`'s.
What to do next (rebase, a round, or wait, and why; failed steps retried with backoff)
is decided by
:class:`p2phier.node.learncore.LearnerCore`, who a round waits for by
:class:`p2phier.node.collect.Collection`; this module is the trio driver that carries
the steps out.  State (``learn/state.json``,
:class:`~p2phier.node.learncore.LearnerState`) is written atomically after
every step, so a restarted node resumes from its store and catches up from its
parent; step directories the state no longer names are removed after each step.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio

from p2phier.announce import Announcement, down_topic, up_topic
from p2phier.artifact import Artifact
from p2phier.cid import CID
from p2phier.errors import InputFileError, P2PHierError
from p2phier.fsutil import load_json, write_atomic
from p2phier.learn.aggregate import OWN_UPDATE
from p2phier.learnplan import LearnPlan, NodeData, load_data
from p2phier.node.collect import ChildSeen, Collection
from p2phier.node.inbound import Inbound
from p2phier.node.learncore import (
    LearnerCore,
    LearnerState,
    LocalRef,
    Rebase,
    StateError,
    VersionRef,
    VersionSeen,
    Wait,
    pending_after_publish,
    probe_rounds,
    sends_held,
)
from p2phier.node.protos import ProtoBook
from p2phier.node.worker import PriorityWorker
from p2phier.trust.standing import Standing

if TYPE_CHECKING:
    from p2phier.node.daemon import NodeDaemon

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
MAX_STATE_BYTES = 4 << 20
POLL_S = 0.25
#: where learning steps write; what the state no longer names is removed after each step
#: (tiers are kept: a node has one, and its parents' and teacher's)
STEP_DIRS = ("local", "candidate", "up", "flat", "versions", "mapped", "updates", "mapped-up",
             "poisoned", "sibling", "calibrated", "own", "domain")  # fmt: skip
_P = ParamSpec("_P")
_T = TypeVar("_T")


_Update = VersionSeen
#: how long a round's late updates are still screened, at least (else the plan's collect_s)
LATE_SCREEN_MIN_S = 300.0
#: how many past rounds' screens are kept for late updates (their adapters stay on disk)
LATE_SCREEN_ROUNDS = 2


@dataclass
class ScreenedRound:
    """A round's screen, kept for the updates that come after it: its round, the flat its
    updates were trained on, the updates screened (``author -> (adapter, weight)``, the
    node's own included) and every author judged so far."""

    round: int
    flat_cid: str
    flat_dir: Path
    updates: dict[str, tuple[Path, float]]
    judged: set[str]
    until: float  # monotonic time after which late updates are no longer screened
    #: the round's probe (the screen's trusted direction where the node sent no own update):
    #: without it a late update was judged with no trusted direction at all
    probe: Any = None


class Learner(Inbound, ProtoBook):
    """One node's learning worker (see the module docstring)."""

    def __init__(self, node: NodeDaemon, plan: LearnPlan) -> None:
        self.node = node
        self.plan = plan
        self.dir = node.config.home / "learn"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.busy = "starting"
        self.waiting = ""  # what the worker waits for (status), when it waits
        self.errors: deque[str] = deque(maxlen=16)
        self.state = self._load_state()
        self.core = LearnerCore(
            is_root=node.config.layer.above is None,
            requested_round=self.state.round,
            follow_parent=node.config.learn_follow_parent,
        )
        self.data: NodeData | None = None
        self.updates: dict[str, _Update] = {}  # child peer id -> its latest update
        self._wake = trio.Event()
        # half the shutdown bound for a running step: the host needs the rest to close
        self._worker = PriorityWorker(
            node.config.learn_worker_nice,
            name="p2phier-learn",
            stop_grace_s=node.config.shutdown_timeout_s / 2,
        )
        self._gone_since: dict[str, float] = {}  # child -> first seen without a connection
        self._unsaved = False
        #: CIDs a step is fetching or importing (a tier bundle): kept pinned meanwhile
        self._in_flight: set[str] = set()
        #: the last rounds screened (oldest first), for their late updates (_screen_late)
        self._screened: list[ScreenedRound] = []
        self.proto_info: dict[str, Any] = {}  # the last prototype steps (status)

    @property
    def requested_round(self) -> int:
        return self.core.requested_round

    @property
    def versions(self) -> dict[str, _Update]:
        """Parent peer id -> its latest version accepted."""
        return self.core.versions

    # --- persistence --------------------------------------------------------------------------
    def _load_state(self) -> LearnerState:
        """The saved state; one that cannot be used is moved aside (kept for a person to look
        at) with the reason logged and in ``errors``, and the node starts afresh."""
        path = self.dir / STATE_FILE
        if not path.exists():
            return LearnerState()
        try:
            return LearnerState.from_json(load_json(path, MAX_STATE_BYTES, "learner state"))
        except (InputFileError, StateError) as exc:
            aside = path.with_name(f"{STATE_FILE}.bad-{int(time.time())}")
            try:
                path.replace(aside)
                where = f"moved aside to {aside.name}"
            except OSError as move_exc:
                where = f"could not be moved aside ({move_exc})"
            msg = f"learner state unusable, {where}; starting afresh: {exc}"
            logger.warning("%s", msg)
            self.errors.append(msg)
            return LearnerState()

    def _save(self) -> None:
        """Write the state atomically; a failed write (a full disk) is logged and retried
        after the next step, and never stops the node."""
        try:
            write_atomic(
                self.dir / STATE_FILE, json.dumps(self.state.to_json(), sort_keys=True).encode()
            )
            self._unsaved = False
        except OSError as exc:
            self._unsaved = True
            logger.warning("learner state not saved: %s", exc)
            self.errors.append(f"state not saved: {exc}")

    def retained(self) -> set[str]:
        """The CIDs this learner still needs (the store's retention keeps them pinned): its
        tiers, its parent's version, its own versions, updates not yet aggregated, and the
        last artifact of each outgoing stream (the next one is a delta on it)."""
        st = self.state
        keep = set(st.tiers) | set(st.published) | {ref.cid for ref in st.sent.values()}
        keep.update(ref.cid for ref in (st.base, st.flat) if ref is not None)
        if st.tier is not None and st.tier.get("bundle_cid"):
            keep.add(str(st.tier["bundle_cid"]))
        keep.update(u.cid for u in self.updates.values())
        keep.update(v.cid for v in self.core.versions.values())
        return keep | self._in_flight

    def _kept_paths(self) -> list[Path]:
        """Step directories still in use: everything else under :data:`STEP_DIRS` goes."""
        st = self.state
        paths = [Path(ref.dir) for ref in (st.base, st.flat) if ref is not None]
        received = self._received()
        if received is not None:
            paths.append(received)
        for ctx in self._screened:  # what late updates are screened against
            paths += [ctx.flat_dir, *(p for p, _ in ctx.updates.values())]
        if st.local is not None:
            paths += [Path(p) for p in (st.local.dir, st.local.on, st.local.since) if p]
        if st.domain_on:  # what the kept domain part lies on
            paths.append(Path(st.domain_on))
        return paths

    def _sweep(self) -> int:
        """Remove the step directories no longer in use (blocking); how many went."""
        kept = [p.resolve() for p in self._kept_paths()]
        removed = 0
        for kind in STEP_DIRS:
            root = self.dir / kind
            if not root.is_dir():
                continue
            for child in root.iterdir():
                c = child.resolve()
                if any(k == c or c in k.parents for k in kept):
                    continue
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        live = {str(p) for p in kept}
        self.state.published = {
            cid: d for cid, d in self.state.published.items() if str(Path(d).resolve()) in live
        }
        return removed

    def _tier_dir(self) -> Path:
        if self.state.tier is None:
            raise P2PHierError("this node has no tier yet")
        return Path(self.state.tier["dir"])

    def _flat(self) -> VersionRef:
        if self.state.flat is None:
            raise P2PHierError("this node has no version of its own yet")
        return self.state.flat

    def _new_dir(self, kind: str) -> Path:
        self.state.seq += 1
        return self.dir / kind / f"{self.state.seq:05d}"

    async def _work(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run a blocking learning step in the worker thread (one at a time)."""
        return await self._worker.run(lambda: fn(*args, **kwargs))

    # --- intake (called by the daemon for every accepted artifact) ----------------------------
    def on_accepted(self, ann: Announcement, art: Artifact) -> None:
        m = art.manifest
        update = _Update(
            str(ann.author),
            str(ann.cid),
            m.round,
            str(m.base_version) if m.base_version else None,
            str(m.base_model_cid) if m.base_model_cid else None,
            ann.created_ms,
        )
        # Kept per author: the parent may be re-selected (after a lost registration) after its
        # version was accepted; _step applies only the current parent's.
        if ann.topic == down_topic(ann.author):
            self.core.version_seen(update)
        elif ann.topic == up_topic(self.node.peer):
            self.updates[update.author] = update
        self._wake.set()

    def judges(self, ann: Announcement) -> bool:
        """Whether this learner decides if ``ann``'s update was useful (a child's update to
        a parent that aggregates: only an update its screen kept counts in the child's
        favour)."""
        return ann.topic == up_topic(self.node.peer) and self.state.flat is not None

    def request_round(self, round_: int) -> dict[str, Any]:
        self.core.request_round(round_)
        self._wake.set()
        return {"requested": self.requested_round, "done": self.state.round}

    # --- the worker loop ----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._worker.close()

    async def _run(self) -> None:
        # torch is imported here, in the worker thread (seconds: the event loop keeps serving),
        # never when the daemon module loads; later imports in this module are cache hits.
        await self._work(importlib.import_module, "p2phier.learn.cycle")
        from p2phier.learn import cycle

        await self._work(cycle.setup, self.plan)
        if self.plan.data is not None:
            self.data = await self._work(load_data, self.plan.data)
        await self._guard("start", self._start)
        await self._guard("catch up", self._catch_up)
        # a follower's rounds start with its parent's versions (LearnerCore.rebased)
        interval = (
            self.node.config.learn_round_interval_s if self.core.timer_drives_rounds() else 0.0
        )
        next_auto = time.monotonic() + interval
        while True:
            self.busy = ""
            if interval > 0 and time.monotonic() >= next_auto:
                next_auto = time.monotonic() + interval
                self.request_round(self.state.round + 1)
            with trio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = trio.Event()
            await self._step()

    async def _catch_up(self) -> None:
        """After a restart: the parent's newest version the daemon accepted but we never applied."""
        parent = self.node.hierarchy.parent
        if parent is None:
            return
        topic = down_topic(parent)
        mine = [e for e in self.node.accepted if e.get("author") == str(parent)
                and e.get("topic") == topic]  # fmt: skip
        if not mine or mine[-1]["cid"] == (self.state.base.cid if self.state.base else None):
            return
        entry = mine[-1]
        from p2phier.artifact.verify import read_artifact

        art = await self._work(read_artifact, self.node.store.get_block, CID.parse(entry["cid"]))
        m = art.manifest
        self.core.version_seen(
            _Update(
                str(parent),
                entry["cid"],
                m.round,
                str(m.base_version) if m.base_version else None,
                str(m.base_model_cid) if m.base_model_cid else None,
                int(entry.get("created_ms") or m.created_ms),
            )
        )
        logger.info("catching up with %s's version %s", parent, entry["cid"])

    async def _guard(self, what: str, fn: Callable[[], Awaitable[None]]) -> bool:
        try:
            self.busy = what
            await fn()
            return True
        except Exception as exc:  # a failed step is retried later; it must not stop the node
            logger.warning("learning step %s failed: %s", what, exc, exc_info=True)
            self.errors.append(f"{what}: {exc}")
            return False

    async def _step(self) -> None:
        """Do what :class:`LearnerCore` says is next: rebase, a round, or wait (and say why)."""
        if self._unsaved:
            self._save()
        if late := self._late():
            await self._guard("late screen", lambda: self._screen_late(late))
        parent = self.node.hierarchy.parent
        action = self.core.next(self.state, str(parent) if parent else None, time.monotonic())
        if isinstance(action, Wait):
            self.waiting = action.reason
            return
        self.waiting = ""
        if isinstance(action, Rebase):
            # A failure (e.g. the parent's tier could not be fetched yet) is retried later.
            if await self._guard("rebase", lambda: self._apply(action.version)):
                self.core.succeeded("rebase")
                asked = self.core.rebased(action.version, self.state)
                if asked is not None:
                    logger.info("parent version %s (round %d): round %d follows",
                                action.version.cid, action.version.round, asked)  # fmt: skip
            else:
                self.core.failed("rebase", time.monotonic())
        else:
            # A node that missed rounds (down, restarted) does one round on everything that
            # arrived meanwhile rather than replaying each: it rejoins its parent's current
            # round.  A failed round is not done: it is retried with backoff.
            r = action.round
            if await self._guard(f"round {r}", lambda: self._round(r)):
                self.core.succeeded("round")
                self.state.round = r
            else:
                self.core.failed("round", time.monotonic())
        self._save()
        try:
            removed = await self._work(self._sweep)
            if removed:
                logger.debug("%d step directories removed", removed)
        except OSError as exc:  # a sweep that fails is tried again after the next step
            logger.warning("step directories not removed: %s", exc)
        self._wake.set()

    # --- start: own tier, first version of the master -----------------------------------------
    async def _start(self) -> None:
        from p2phier.learn import cycle

        tp = self.plan.tier
        if tp.teacher_dir is not None and tp.teacher_weights_cid:
            facts = await self._work(cycle.check_tier, tp.teacher_dir, tp.teacher_weights_cid)
            await self._remember_tier(Path(facts["dir"]))
        if self.state.tier is None and tp.source == "dir":
            assert tp.dir is not None and tp.weights_cid is not None
            facts = await self._work(cycle.check_tier, tp.dir, tp.weights_cid)
            await self._set_tier(facts)
        if self.state.tier is not None:
            self.node.set_base_model(self.state.tier["tier_id"])
        if self.node.config.layer.above is None and self.state.flat is None and self.plan.parent:
            tier = self._tier_dir()
            flat = await self._work(cycle.init_version, self.plan, tier, [], self._new_dir("flat"))
            await self._publish_flat(flat, base_cid=None, round_=0)
        self._save()

    async def _remember_tier(self, tier_dir: Path) -> str:
        from p2phier.learn import api

        bundle = await self._work(api.export_tier, self.node.store, tier_dir)
        self.state.tiers[str(bundle)] = str(tier_dir)
        return str(bundle)

    async def _set_tier(self, facts: dict[str, Any]) -> None:
        facts["bundle_cid"] = await self._remember_tier(Path(facts["dir"]))
        self.state.tier = facts
        self.node.set_base_model(facts["tier_id"])
        logger.info("tier %s ready (%s)", facts["tier_id"], facts["bundle_cid"])

    def _model(self) -> tuple[list[Path], Path | None]:
        """This node's current model as (stack, adapter)."""
        local = self.state.local
        if local is not None:
            return [Path(local.on)], Path(local.dir)
        if self.state.flat is not None:
            return [], Path(self._flat().dir)
        base = self.state.base
        return ([Path(base.dir)] if base else []), None

    # --- a round ------------------------------------------------------------------------------
    def _arrived(self, round_: int) -> list[Any]:
        assert self.data is not None
        return [e for a in self.data.arrivals[: max(0, round_)] for e in a]

    def _latest_arrival(self, r: int) -> list[Any]:
        assert self.data is not None
        for batch in reversed(self.data.arrivals[: max(0, r)]):
            if batch:
                return list(batch)
        raise P2PHierError(f"no data has arrived by round {r}: nothing to train on")

    async def _round(self, r: int) -> None:
        from p2phier.learn import cycle

        began = time.time()
        rec: dict[str, Any] = {"round": r, "started_ms": int(began * 1000)}
        tier = self._tier_dir()
        if self.plan.trains and self.data is not None:
            earlier = self._arrived(self.state.consumed)
            new = self._arrived(r)[len(earlier) :]
            if not new:
                # Its data ran out (or this retries a round it trained in already): it trains
                # on its latest arrival again, as a federated client trains on its data every
                # round, rather than failing the round and holding its parent's.
                new = self._latest_arrival(r)
                rec["trained_on"] = "latest arrival again (no new data)"
            stack, _ = self._model()
            if self.state.flat is not None:
                stack = [Path(self._flat().dir)]
            local = self.state.local
            result = await self._work(
                cycle.train,
                self.plan,
                tier,
                stack,
                self._new_dir("local"),
                new,
                earlier=earlier,
                test=self.data.test,
                adapter=Path(local.dir) if local else None,
                seed=self.plan.seed + r,
            )
            self.state.consumed = r
            on = str(stack[0]) if stack else ""
            since = local.since if local is not None and local.on == on else ""
            self.state.local = LocalRef(result["adapter"], on, since)
            rec.update(
                trained=len(new), train_s=result["train_s"], accuracy_own=result["accuracy_own"]
            )
            self.state.accuracy_own = result["accuracy_own"]
            await self._own_prototypes(r)
            if self.state.flat is None and self.state.base is not None:
                adapter, received = await self._own_update(), self._received()
                if received is not None:  # the calibration stays here
                    adapter = await self._work(
                        cycle.sendable, adapter, self._new_dir("up"),
                        calibrated=Path(self.state.base.dir), received=received,
                    )  # fmt: skip
                art = await self._pack(
                    adapter,
                    base_version=self.state.base.cid,
                    round_=r,
                    metrics=result["metrics"],
                )
                rec["sent"] = await self._send_up(art)
        if self.state.flat is not None:
            await self._aggregate(r, rec, began)
        rec["wall_s"] = round(time.time() - began, 3)
        self.state.record_round(r, rec)
        logger.info("round %d done: %s", r, rec)

    async def _own_update(self) -> Path:
        """The node's own update: its adapter, or what it learned since the last rebase that
        kept the adapter (the rest is in the version it is on already)."""
        from p2phier.learn import cycle

        local = self.state.local
        assert local is not None
        if not local.since:
            return Path(local.dir)
        return await self._work(
            cycle.learned_since, self.plan, Path(local.dir), Path(local.since), self._new_dir("own")
        )

    async def _collect(self, r: int, began: float, rec: dict[str, Any]) -> dict[str, _Update]:
        """Children's updates on the current flat, once :class:`Collection` says the round's
        collecting is over (every child that is still alive sent one for round ``r``,
        known children's are in and newcomers had their grace, or ``collect_s``)."""
        cfg = self.node.config
        collection = Collection(
            began=began,
            collect_s=self.plan.collect_s,
            # A child whose connection dropped re-dials at its next registration refresh.
            gone_s=cfg.hierarchy.register_interval_s + cfg.dial_timeout_s,
            newcomer_min_s=self.plan.newcomer_min_s,
            gone_since=self._gone_since,
        )
        trust = self.node.guard.trust
        while True:
            current = self._flat().cid
            fresh = {a: u for a, u in self.updates.items() if u.base_version == current}
            now = time.time()
            seen = [
                ChildSeen(
                    peer=str(c),
                    connected=self.node.connected(c),
                    known=trust.history(str(c), now) > 0,
                    done=str(c) in fresh and fresh[str(c)].round >= r,
                )
                for c in self.node.hierarchy.children
            ]
            why = collection.observe(seen, now)
            if why is not None:
                if why != "every child":
                    logger.info("round %d: collecting ended: %s", r, why)
                rec["collected"] = why
                # how long the children took as this parent saw it: what the timing rule's
                # grace for newcomers followed
                rec["collect_took_s"] = round(now - began, 3)
                return fresh
            if late := self._late():
                await self._guard("late screen", lambda: self._screen_late(late))
                self.busy = f"round {r}"
            await trio.sleep(POLL_S)

    async def _prepare_update(self, u: _Update, tier: Path) -> Path:
        """A child's verified update as an adapter dir in this node's tier space."""
        from p2phier.learn import cycle

        raw = self.dir / "updates" / u.cid
        their = await self._tier_of(u.base_model_cid, u.author)
        if not raw.exists():
            await self._work(self._unpack, u.cid, raw, their)
        if await self._work(cycle.same_tier, tier, their):
            return raw
        return await self._work(
            cycle.map_up, raw, self.dir / "mapped-up" / u.cid, child_tier=their, own_tier=tier
        )

    async def _aggregate(self, r: int, rec: dict[str, Any], began: float) -> None:
        from p2phier.learn import cycle

        tier = self._tier_dir()
        flat, flat_cid = Path(self._flat().dir), self._flat().cid
        fresh = await self._collect(r, began, rec)
        rec["children_updates"] = sorted(fresh)
        updates: dict[str, tuple[Path, float]] = {}
        skipped = []
        excluded: dict[str, str] = {}
        weights: dict[str, dict[str, Any]] = {}
        guard = self.node.guard
        for author, u in sorted(fresh.items()):
            # A newcomer's update counts only as far as its history justifies; a child
            # isolated since its update arrived (a proof, or its trust fell), or one the
            # network distrusts, not at all.  A weight-0 child that is not isolated is
            # still screened: the evidence counts even when the update does not.
            weight, why = guard.trust.weight(author, self.node.clock())
            if guard.is_isolated(author):
                excluded[author] = why
                continue
            if guard.standing(author) is Standing.DISTRUSTED:
                excluded[author] = "distrusted by the network (global trust)"
                continue
            try:
                weights[author] = {"weight": weight, "why": why}
                updates[author] = (await self._prepare_update(u, tier), weight)
            except Exception as exc:  # one child's bad or unreachable update: skip that child
                logger.warning("update %s from %s skipped: %s", u.cid, author, exc)
                self.errors.append(f"update from {author}: {exc}")
                skipped.append(author)
        rec["skipped_updates"] = skipped
        rec["trust_weights"] = weights
        local = self.state.local
        if self.plan.trains and local is not None and local.on == str(flat):
            updates[OWN_UPDATE] = (await self._own_update(), 1.0)
        candidate: Path | None = None  # this round's aggregate, published or held
        if updates:
            probe: list[Any] = []
            if self.data is not None:
                trains, consumed = self.plan.trains, self.state.consumed
                probe = self._arrived(probe_rounds(trains=trains, consumed=consumed, round_=r))
            out = await self._work(
                cycle.aggregate,
                self.plan,
                tier,
                [],
                flat,
                updates=updates,
                out_dir=self._new_dir("candidate"),
                probe=probe,
                validation=self.data.test if self.data else [],
                round_=r,
                now=self.node.clock(),
            )
            for author, v in out["screen"].items():
                if v["ok"] and weights.get(author, {}).get("weight", 0.0) > 0:
                    guard.useful_update(author)
                if v["penalty"] > 0:
                    guard.bad_update(author, v["penalty"], f"round {r}: {v['reason']}")
                if not v["ok"]:
                    excluded[author] = f"screen: {v['reason']}"
                elif weights.get(author, {}).get("weight") == 0.0:
                    excluded[author] = f"weight 0: {weights[author]['why']}"
            rec["screen"] = {a: v["reason"] for a, v in out["screen"].items()}
            kept = [a for a in fresh if a in updates and a not in excluded]
            for author in kept:
                self._keep_child_prototypes(author, self.dir / "updates" / fresh[author].cid)
            if kept:
                await self._merge_prototypes()
            candidate = Path(out["candidate"])
            # an update of this round that comes after it is still screened (_screen_late)
            screened = ScreenedRound(
                r, flat_cid, flat, dict(updates), set(fresh) | {OWN_UPDATE},
                until=time.monotonic() + max(self.plan.collect_s, LATE_SCREEN_MIN_S),
                probe=out.get("probe"),
            )  # fmt: skip
            older = [c for c in self._screened if c.round != r]
            self._screened = [*older, screened][-LATE_SCREEN_ROUNDS:]
            rec.update(
                decision="published" if out["publish"] else "held",
                reason=out["reason"],
                aggregate_s=out["aggregate_s"],
                validation_before=out["validation_before"],
                validation_after=out["validation_after"],
                n_updates=out["n_updates"],
            )
            if out["publish"]:
                base = self.state.base
                await self._publish_flat(
                    Path(out["candidate"]), base_cid=base.cid if base else None, round_=r
                )
                # not clear(): an update that came while the version was published stays
                flats = {self._flat().cid, *(c.flat_cid for c in self._screened)}
                self.updates = pending_after_publish(self.updates, fresh, flats)
                if out["validation_after"] is not None and not self.plan.trains:
                    # a trainer's own accuracy is its local (personal) model's, set below
                    self.state.accuracy_own = out["validation_after"]
                if local is not None and self.plan.trains:
                    result = await self._rebase_local(tier, flat, Path(self._flat().dir))
                    self.state.accuracy_own = result["accuracy_own"]
            await self._choose_answering()
        else:
            rec.update(decision="held", reason="no updates arrived", n_updates=0)
        if excluded:
            rec["excluded_updates"] = excluded
            logger.warning("round %d: updates left out: %s", r, excluded)
        base = self.state.base
        if base is not None:
            # What goes up is what this node learned, published or not, unless it made the
            # node's validation set worse (learncore.sends_held).
            held = rec.get("decision") == "held" and candidate is not None
            if held and not sends_held(
                rec.get("validation_before"), rec.get("validation_after"),
                tolerance=self.plan.tolerance,
            ):  # fmt: skip
                held = False
                rec["held_candidate_kept_home"] = "it made this node's validation set worse"
            learned = candidate if held and candidate else Path(self._flat().dir)
            rec["sent_held_candidate"] = held
            up = await self._work(
                cycle.update_since,
                learned,
                Path(base.dir),
                self._new_dir("up"),
                max_rank=self.plan.version_rank,
                received=self._received(),
            )
            art = await self._pack(up, base_version=base.cid, round_=r)
            rec["sent"] = await self._send_up(art)

    def _late(self) -> list[tuple[ScreenedRound, _Update]]:
        """Children's updates of the last screened rounds that came after them, on the flat
        each aggregated, once that flat is no longer the current one (while it is, the next
        round screens them with the others)."""
        now = time.monotonic()
        self._screened = [c for c in self._screened if now <= c.until]
        flat = self.state.flat.cid if self.state.flat is not None else None
        children = {str(c) for c in self.node.hierarchy.children}
        return [
            (ctx, u)
            for ctx in self._screened if flat != ctx.flat_cid
            for a, u in sorted(self.updates.items())
            if a in children and a not in ctx.judged
            and u.base_version == ctx.flat_cid and u.round == ctx.round
        ]  # fmt: skip

    async def _screen_late(self, late: list[tuple[ScreenedRound, _Update]]) -> None:
        """Screen each late update against its round's updates; its verdict is evidence
        against its author like any other (an attacker that waits for its siblings'
        updates to craft its own, as ALIE and IPM do, is always late), though the update
        no longer counts.  Checked between steps and while a round collects: a late update
        may come while the next round waits for its children."""
        from p2phier.learn import cycle

        guard, tier = self.node.guard, self._tier_dir()
        for ctx, u in late:
            ctx.judged.add(u.author)
            if guard.is_isolated(u.author):
                continue
            path = await self._prepare_update(u, tier)
            verdicts = await self._work(
                cycle.screen_late, ctx.flat_dir, {**ctx.updates, u.author: (path, 1.0)}, ctx.probe
            )
            v = verdicts[u.author]
            if v["penalty"] > 0:
                guard.bad_update(u.author, v["penalty"], f"round {ctx.round} (late): {v['reason']}")
            self.state.rounds.setdefault(str(ctx.round), {}).setdefault("late_screen", {})[
                u.author
            ] = v["reason"]
            logger.info("round %d: late update from %s: %s", ctx.round, u.author, v["reason"])

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        s = self.state.to_json()
        return {
            "busy": self.busy,
            "waiting": self.waiting,
            "requested_round": self.requested_round,
            "round": s["round"],
            "tier": s["tier"],
            "base": s["base"],
            "flat": s["flat"],
            "local": s["local"],
            "trains": self.plan.trains,
            "consumed": s["consumed"],
            "accuracy_own": s["accuracy_own"],
            "rounds": s["rounds"],
            "applied": s["applied"],
            "pending_updates": sorted(self.updates),
            "prototypes": str(p) if (p := self.prototypes_file()) else None,
            "prototypes_info": self.proto_info,
            "ncm_tasks": self.ncm_tasks(),
            "errors": list(self.errors),
        }
