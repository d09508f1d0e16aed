"""What leaves a node's learner: its updates to the parent and its versions to the children.

Owns :class:`Outbox`, the part of :class:`~p2phier.node.learner.Learner` that packs an
adapter as a signed artifact and publishes it.  How each artifact travels is
:func:`p2phier.node.learncore.wire_choice`'s decision (pure): by default an int8
delta on the stream's previous artifact, which the receiver already holds, and a
full adapter (a keyframe: int8, or fp16 where the plan sends fp16) when it holds none,
when the receiver changed, or every ``keyframe_every`` artifacts.  A delta is packed
against the previous artifact *as readers rebuild it* (:func:`p2phier.artifact.pack_adapter`), so
quantisation error never compounds along a chain.  Updates going up use the plan's coarser
int8 step (``update_rms_steps``) and travel whole where that compresses smaller than the
delta; versions going down keep the finest step.  A delta that cannot be packed
(the shapes changed: a re-factorised version of another rank, another tier; the
previous artifact gone from the store) falls back to a keyframe, logged: a node
never fails to send because of its encoding.  No torch, no trio of its own: it
runs in the learner's driver.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from p2phier.artifact import Artifact
from p2phier.errors import P2PHierError
from p2phier.learnplan import LearnPlan
from p2phier.node.learncore import (
    CHILDREN,
    LearnerState,
    SentRef,
    VersionRef,
    keyframe_encoding,
    wire_choice,
)

if TYPE_CHECKING:
    from p2phier.node.daemon import NodeDaemon

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Outbox:
    """Packing and publishing of the learner's artifacts (a mixin of ``Learner``, whose
    driver supplies the attributes declared here)."""

    node: NodeDaemon
    plan: LearnPlan
    state: LearnerState
    errors: deque[str]
    dir: Path

    async def _work(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        raise NotImplementedError  # the learner's worker thread

    def prototypes_bytes(self) -> bytes | None:
        return None  # node/protos.py: a node with prototypes sends them up

    async def _choose_answering(self) -> None:
        return None  # node/protos.py

    async def _publish_flat(self, flat: Path, *, base_cid: str | None, round_: int) -> None:
        """Publish ``flat`` to the children as this node's version, and hold the version as
        its artifact rebuilds it (an int8 delta or an int8 keyframe is not ``flat`` to the
        last bit): the children train on that, so their updates are measured against it
        here too.  Otherwise every child's update would carry the encoding's error, the same
        in all of them (two children that learned nothing would send one update: twins)."""
        art = await self._pack(flat, base_version=base_cid, round_=round_, stream="down")
        held = await self._work(self._as_published, str(art.cid), self.dir / "flat" / str(art.cid))
        self.state.flat = VersionRef(str(art.cid), str(held), round_)
        self.state.published[str(art.cid)] = str(held)
        if self.node.config.layer.below is not None:
            try:
                await self.node.publish(str(art.cid), "children")
            except P2PHierError as exc:
                self.errors.append(f"publish to children: {exc}")

    def _as_published(self, cid: str, out: Path) -> Path:
        """The adapter the artifact ``cid`` stands for, as any reader rebuilds it (blocking)."""
        from p2phier.artifact import materialise

        if not out.exists():
            materialise(self.node.store, cid, out)
        return out

    async def _send_up(self, art: Artifact) -> dict[str, Any] | str:
        if self.node.hierarchy.parent is None:
            return "no parent"
        try:
            return await self.node.publish(str(art.cid), "parent")
        except P2PHierError as exc:
            self.errors.append(f"publish to parent: {exc}")
            return str(exc)

    async def _pack(
        self,
        adapter: Path,
        *,
        base_version: str | None,
        round_: int,
        metrics: Any = None,
        stream: str = "up",
    ) -> Artifact:
        """``adapter`` as this node's next artifact of ``stream`` (``up``: to the parent,
        ``down``: to the children), a delta or a keyframe as :func:`wire_choice` says."""
        tier = self.state.tier
        if tier is None:
            raise P2PHierError("this node has no tier yet")
        parent = self.node.hierarchy.parent
        to = CHILDREN if stream == "down" else str(parent) if parent is not None else ""
        previous = self.state.sent.get(stream)
        choice = wire_choice(
            previous, to, encoding=self.plan.wire_encoding, keyframe_every=self.plan.keyframe_every
        )
        art: Artifact | None = None
        reason = choice.reason
        if choice.parent is not None:
            try:
                art = await self._pack_as(
                    adapter, tier, base_version, round_, metrics, parent=choice.parent,
                    stream=stream,
                )  # fmt: skip
            except P2PHierError as exc:
                reason = f"keyframe: the delta on {choice.parent} could not be packed ({exc})"
                logger.info("%s: %s", stream, reason)
        if art is None:
            art = await self._pack_as(
                adapter, tier, base_version, round_, metrics, parent=None, stream=stream
            )
        chain = previous.chain + 1 if art.manifest.parent is not None and previous else 0
        self.state.sent[stream] = SentRef(str(art.cid), to, chain)
        logger.debug("%s artifact %s (%d bytes): %s", stream, art.cid, art.stored_bytes, reason)
        return art

    async def _pack_as(
        self,
        adapter: Path,
        tier: dict[str, Any],
        base_version: str | None,
        round_: int,
        metrics: Any,
        *,
        parent: str | None,
        stream: str,
    ) -> Artifact:
        from p2phier.artifact import pack_adapter

        node = self.node
        # the node's class prototypes go up with its updates (node/protos.py), never down:
        # its children answer within their own tasks
        protos = self.prototypes_bytes() if stream == "up" else None
        coarse = self.plan.update_rms_steps if stream == "up" else 0.0
        art: Artifact = await self._work(
            lambda: pack_adapter(
                node.store,
                adapter,
                node.identity,
                layer=node.config.layer.label,
                domain=node.config.domain,
                base_model_id=tier["tier_id"],
                base_model_cid=tier["bundle_cid"],
                encoding="int8-delta"
                if parent is not None
                else keyframe_encoding(self.plan.wire_encoding),
                parent=parent,
                # updates at the plan's coarser step, and whole where that is smaller;
                # versions at the finest step (see LearnSettings.update_rms_steps).  At
                # the finest step a delta and the whole take about the same bytes: 0
                # keeps the former wire exactly
                int8_rms_steps=coarse,
                keyframe=keyframe_encoding(self.plan.wire_encoding)
                if coarse and parent is not None
                else None,
                round=round_,
                metrics={k: float(v) for k, v in (metrics or {}).items() if _finite(v)},
                now=node.clock(),
                base_version=base_version,
                prototypes=protos,
            )
        )
        return art


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
