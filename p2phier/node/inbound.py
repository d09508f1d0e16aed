"""What comes down to a node's learner: its parent's versions, made its own.

Owns :class:`Inbound`, the part of :class:`~p2phier.node.learner.Learner` that applies
a parent's new version: fetch the parent's tier (by the bundle CID its signed manifest
names), unpack the version, build this node's tier on first use, map the version
block by block into this tier when the tiers differ, calibrate it where this tier is
distilled (:mod:`p2phier.learn.calibrate`: the mapped head does not fit a student's
features), make it the base, relay it to the children (a parent) and rebase the
node's own adapter onto it (a trainer: kept on top of it, or a fresh LoRA, as the plan's
``rebase`` says, the head fine-tuned on its own data, and the node told when its own
held-out accuracy fell).  No torch, no trio of its own: every
model step runs in the learner's worker thread.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from p2phier.cid import CID
from p2phier.errors import P2PHierError
from p2phier.learnplan import NodeData
from p2phier.node.learncore import LocalRef, VersionRef, VersionSeen
from p2phier.node.outbox import Outbox

logger = logging.getLogger(__name__)

#: where a parent's version fitted to a distilled tier goes (:func:`cycle.calibrate`)
CALIBRATED = "calibrated"
_P = ParamSpec("_P")
_T = TypeVar("_T")


class Inbound(Outbox):
    """Applying the parent's versions (a mixin of ``Learner``, whose driver supplies the
    attributes and the steps declared here)."""

    data: NodeData | None
    _in_flight: set[str]

    def _arrived(self, round_: int) -> list[Any]:
        raise NotImplementedError

    def _tier_dir(self) -> Path:
        raise NotImplementedError

    def _flat(self) -> VersionRef:
        raise NotImplementedError

    def _new_dir(self, kind: str) -> Path:
        raise NotImplementedError

    def _model(self) -> tuple[list[Path], Path | None]:
        raise NotImplementedError

    async def _set_tier(self, facts: dict[str, Any]) -> None:
        raise NotImplementedError

    def _received(self) -> Path | None:
        """The parent's version as it arrived (mapped into this tier) where the base is not
        that (calibrated, or as this node re-published it); None: the base is the version
        as it arrived."""
        base = self.state.base
        if base is None:
            return None
        mapped = self.dir / "mapped" / base.cid
        return mapped if mapped.is_dir() and Path(base.dir) != mapped else None

    async def _tier_of(self, bundle_cid: str | None, provider: str) -> Path:
        """The parent's tier dir: known already, or fetched by its bundle CID and verified."""
        if bundle_cid is None:
            raise ValueError("the parent's version names no base model CID")
        known = self.state.tiers.get(bundle_cid)
        if known and Path(known).is_dir():
            return Path(known)
        from p2phier.learn import api

        self._in_flight.add(bundle_cid)
        try:
            await self.node.fetch_object(bundle_cid, [provider])
            out = self.dir / "tiers" / bundle_cid
            if not out.exists():
                # The bundle CID comes from the parent's signed manifest and every block was
                # hash-checked on fetch: it is the trust anchor for the tier inside.
                await self._work(
                    api.import_tier,
                    self.node.store,
                    CID.parse(bundle_cid),
                    out,
                    expected_weights_cid=None,
                )
            self.state.tiers[bundle_cid] = str(out)
        finally:
            self._in_flight.discard(bundle_cid)
        return out

    # --- downstream: a new parent version -----------------------------------------------------
    async def _apply(self, v: VersionSeen) -> None:
        from p2phier.learn import cycle

        began = time.time()
        their_tier = await self._tier_of(v.base_model_cid, v.author)
        raw = self.dir / "versions" / v.cid
        if not raw.exists():
            await self._work(self._unpack, v.cid, raw, their_tier)
        if self.state.tier is None:
            records = self._arrived(1) if self.data else []
            out = self.dir / "tier"
            if out.exists():
                shutil.rmtree(out)
            facts = await self._work(cycle.build_tier, self.plan, their_tier, out, records)
            await self._set_tier(facts)
        tier = self._tier_dir()
        if await self._work(cycle.same_tier, tier, their_tier):
            base_dir = raw
        else:
            (mapped,) = await self._work(
                cycle.map_stack,
                [raw],
                [self.dir / "mapped" / v.cid],
                own_tier=tier,
                their_tier=their_tier,
            )
            base_dir = mapped
        entry: dict[str, Any] = {"cid": v.cid, "round": v.round, "created_ms": v.created_ms}
        records = self._arrived(max(1, self.state.consumed)) if self.data else []
        if (
            base_dir != raw
            and records
            and self.plan.calibrate_steps
            and await self._work(cycle.calibrates, tier, their_tier)
        ):
            # a distilled tier: the version's head was trained on the teacher's features
            fitted = await self._work(
                cycle.calibrate, self.plan, tier, base_dir, self.dir / CALIBRATED / v.cid,
                their_tier=their_tier, version=raw, records=records,
                seed=self.plan.seed + v.round,
            )  # fmt: skip
            base_dir = Path(fitted["adapter"])
            entry["calibrate_s"] = fitted["calibrate_s"]
        old_base = self.state.base
        if self.plan.parent:
            # A parent: its contribution went upstream, where it was averaged with its
            # siblings'; the parent's model is its model now, with its own domain's part
            # kept on top where its validation set says so.
            base_dir = await self._domain_part(base_dir, v, old_base, entry)
        self.state.base = VersionRef(v.cid, str(base_dir), v.round)
        if self.plan.parent:
            # Announcement rounds never go back (receivers refuse it): a node ahead of a slow
            # parent relays its version under its own round.
            await self._publish_flat(
                base_dir, base_cid=v.cid, round_=max(v.round, self.state.round)
            )
            # its base is its version as published: what its children hold, so a round that
            # adds nothing sends a zero update
            self.state.base = VersionRef(v.cid, self._flat().dir, v.round)
        local = self.state.local
        if local is not None and old_base is not None:
            on = Path(self._flat().dir) if self.state.flat else base_dir
            result = await self._rebase_local(tier, Path(local.on), on)
            entry["accuracy_before"] = before = result["before"].get("accuracy.own")
            entry["accuracy_own"] = after = result["accuracy_own"]
            if before is not None and after is not None and after < before:
                # The parent's new model serves this node's own held-out data worse than its
                # model before did, its personal head retrained on top: say so.
                entry["own_accuracy_fell"] = round(before - after, 4)
                msg = (f"parent version {v.cid}: own held-out accuracy fell from {before:.3f} "
                       f"to {after:.3f} on rebase")  # fmt: skip
                logger.warning("%s", msg)
                self.errors.append(msg)
        elif self.data is not None and self.data.test:
            stack, adapter = self._model()
            entry["accuracy_own"] = await self._work(
                cycle.evaluate, self.plan, tier, stack, adapter, self.data.test
            )
        now = time.time()
        entry["applied_ms"] = int(now * 1000)
        entry["propagation_s"] = round(max(0.0, now - v.created_ms / 1000.0), 3)
        entry["apply_s"] = round(now - began, 3)
        self.state.record_applied(entry)
        self.state.accuracy_own = entry.get("accuracy_own", self.state.accuracy_own)
        if self.plan.parent:
            await self._choose_answering()  # its model changed
        logger.info("applied parent version %s (round %d): %s", v.cid, v.round, entry)

    async def _domain_part(
        self, version: Path, v: VersionSeen, old_base: VersionRef | None, entry: dict[str, Any]
    ) -> Path:
        """``version`` (the parent's, in this tier), or it with this node's own domain's part
        on top (:func:`cycle.keep_domain`: the grandparent averaged this node's update with its
        siblings', so the version serves this domain less than what the node had) where its
        validation set says that is better.  The part is the node's flat minus the version
        it lies on: the version a part kept last time lay on (a part once kept stays, on
        every later version, until the validation set says otherwise), else its last base
        (what it published of its own since)."""
        from p2phier.learn import cycle

        flat = self.state.flat
        on = Path(self.state.domain_on) if self.state.domain_on else None
        if on is None or not on.is_dir():
            on = Path(old_base.dir) if old_base is not None else None
        if (
            not self.plan.keep_domain
            # a trainer keeps its own learning in its adapter and personal head; its flat
            # serves its children (and each check costs it a step on its critical path)
            or self.plan.trains
            or on is None
            or flat is None
            or self.data is None
            or not self.data.test
            or Path(flat.dir) == on  # nothing of its own
        ):
            self.state.domain_on = ""
            return version
        result = await self._work(
            cycle.keep_domain, self.plan, self._tier_dir(), version, self._new_dir("domain"),
            flat=Path(flat.dir), base=on, validation=self.data.test,
            round_=v.round, now=self.node.clock(),
        )  # fmt: skip
        entry["domain_part"] = {
            k: result[k] for k in ("kept", "reason", "validation_version", "validation_kept")
        }
        self.state.domain_on = str(version) if result["kept"] else ""
        return Path(result["adapter"])

    def _unpack(self, cid: str, out: Path, tier: Path) -> None:
        """Write an update's adapter, checked against the modules of the tier it was made on."""
        from p2phier.artifact import materialise
        from p2phier.learn.models import tier_module_names

        materialise(self.node.store, CID.parse(cid), out, base_modules=tier_module_names(tier))

    async def _rebase_local(self, tier: Path, old_on: Path, new_on: Path) -> dict[str, Any]:
        """Move the local adapter from ``old_on`` onto ``new_on`` (kept or a fresh LoRA, as the
        plan's ``rebase`` says; the head fine-tuned on the node's own data)."""
        from p2phier.learn import cycle

        local = self.state.local
        if local is None:
            raise P2PHierError("this node has no adapter of its own to rebase")
        result = await self._work(
            cycle.rebase,
            self.plan,
            tier,
            Path(local.dir),
            old_stack=[old_on],
            new_stack=[new_on],
            out_dir=self._new_dir("local"),
            test=self.data.test if self.data else (),
            personal=self._arrived(self.state.consumed) if self.data else (),
            accuracy_before=self.state.accuracy_own,
        )
        # kept: the node's next update is what it learns from here on
        since = result["adapter"] if self.plan.rebase == "keep" else ""
        self.state.local = LocalRef(result["adapter"], str(new_on), since)
        return result
