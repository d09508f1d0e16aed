"""The node's class prototypes (``ProtoBook``, a part of ``Learner``; no torch, no trio
beyond the learner's worker).

What this module owns: where a node keeps its prototypes (``learn/prototypes/``: its own
training data's, ``own.safetensors``; each child's latest as its update carried them,
``from/<peer>.safetensors``; their merge, ``merged.safetensors``: what the node sends up
with its updates and answers with), when they are recomputed (after each training cycle;
after each aggregation, from the children whose updates the round kept) and whose count:
a child isolated or distrusted since is left out, every other weighed by its trust weight
now and capped per label (:func:`p2phier.learn.prototypes.merge_senders`); with plan
``answer_by = "validated"``, which tasks it answers by nearest prototype (``answering.json``,
re-decided on its validation set after each aggregation and each parent version).  A
failure here is logged and said in the node's errors; it never fails a round.

Why: a parent whose answers span several tasks (the language node over news topics and
drug-review sentiments) routes each text to its task by its nearest prototype
(:func:`p2phier.learn.prototypes.answer`); no node trains its head across tasks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2phier.artifact.protofile import PROTOTYPES_FILE
from p2phier.errors import P2PHierError
from p2phier.fsutil import load_json, write_atomic
from p2phier.learnplan import NodeData
from p2phier.node.outbox import Outbox
from p2phier.trust.standing import Standing

if TYPE_CHECKING:
    from p2phier.learn.prototypes import Prototypes

logger = logging.getLogger(__name__)

PROTOTYPES_DIR = "prototypes"
OWN = "own.safetensors"
MERGED = "merged.safetensors"
ANSWERING = "answering.json"
FROM = "from"


class ProtoBook(Outbox):
    """Keeping and merging the node's prototypes (a mixin of ``Learner``)."""

    proto_info: dict[str, Any]
    data: NodeData | None

    def _tier_dir(self) -> Path:
        raise NotImplementedError

    def _arrived(self, round_: int) -> list[Any]:
        raise NotImplementedError

    @property
    def _protos(self) -> Path:
        return self.dir / PROTOTYPES_DIR

    def prototypes_file(self) -> Path | None:
        """The node's merged prototypes, where it has any."""
        path = self._protos / MERGED
        return path if path.exists() else None

    def prototypes_bytes(self) -> bytes | None:
        """What the node sends up: its merged prototypes, saying which tasks it answers by
        them (:meth:`ncm_tasks`)."""
        from p2phier.learn.prototypes import load, to_file

        path = self.prototypes_file()
        if path is None:
            return None
        try:
            merged = load(path)
            return None if merged is None else to_file(merged.answering(self.ncm_tasks(merged)))
        except P2PHierError as exc:  # the update goes without them, and the node says why
            self._proto_failed("prototypes to send", exc)
            return None

    async def _own_prototypes(self, round_: int) -> None:
        """Recompute the prototypes of the node's training data so far, then the merge."""
        from p2phier.learn import cycle

        try:
            tiers = [Path(d) for d in self.state.tiers.values()]
            space = await self._work(cycle.prototype_space, self._tier_dir(), tiers)
            if space is None:
                self.proto_info["own"] = "no root-tier encoder on this node"
                return
            self._protos.mkdir(parents=True, exist_ok=True)
            self.proto_info["own"] = await self._work(
                cycle.own_prototypes, self.plan, space, self._arrived(round_), self._protos / OWN
            )
        except Exception as exc:  # never fails the round: the prototypes are an aid
            self._proto_failed("own prototypes", exc)
            return
        await self._merge_prototypes()

    def _keep_child_prototypes(self, author: str, update_dir: Path) -> None:
        """A kept child update's prototypes (checked when it was verified) as its latest;
        an update without them leaves the child's earlier ones."""
        src = update_dir / PROTOTYPES_FILE
        if not src.exists():
            return
        dest = self._protos / FROM / f"{author}.safetensors"
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, src.read_bytes())  # at most 2 MiB, checked when it arrived

    def ncm_tasks(self, merged: Prototypes | None = None) -> list[str]:
        """The tasks this node answers by nearest prototype (``answer_by = "validated"``):
        where its validation set holds a task, as that set said (``answering.json``); any
        other task as the children holding its data said, by the vote their merge kept
        (:func:`p2phier.learn.prototypes.ncm_vote`): a language node without data of its
        own answers the news topics as the news node found best.  ``merged``: the merged
        prototypes where the caller has read them already (else read here)."""
        from p2phier.learn.prototypes import answering_tasks, load

        if self.plan.answer_by != "validated":
            return []
        decided = self._decided()
        if decided is None:  # unreadable: answer by head (said)
            return []
        try:
            merged = merged if merged is not None else load(self._protos / MERGED)
        except P2PHierError as exc:  # unreadable: answer by head, and say so
            self._proto_failed("answering file", exc)
            return []
        return answering_tasks(decided, merged)

    def _decided(self) -> dict[str, Any] | None:
        """The node's last answering decision (``answering.json``; empty before the first);
        None, and said, where it cannot be read."""
        path = self._protos / ANSWERING
        try:
            return load_json(path, 64 * 1024, "answering file") if path.exists() else {}
        except P2PHierError as exc:
            self._proto_failed("answering file", exc)
            return None

    def _validated_ncm(self) -> list[str]:
        """The tasks the node's validation set last chose to answer by prototype (a choice
        changes only where the set shows the other way better: ``choose_answering``); none
        where the file cannot be read (decided afresh)."""
        chosen = (self._decided() or {}).get("ncm_tasks", [])
        return [t for t in chosen if isinstance(t, str)] if isinstance(chosen, list) else []

    async def _choose_answering(self) -> None:
        """Re-decide, on the node's validation set and its current model, which tasks it
        answers by nearest prototype (plan ``answer_by = "validated"``; a task changes only
        where the set shows the other way better); a parent that does not train then
        measures its own accuracy as it answers."""
        from p2phier.learn import cycle

        protos, flat = self.prototypes_file(), self.state.flat
        if (
            self.plan.answer_by != "validated"
            or self.data is None
            or not self.data.test
            or protos is None
            or flat is None
        ):
            return
        try:
            result = await self._work(
                cycle.choose_answering, self.plan, self._tier_dir(), Path(flat.dir), protos,
                self.data.test, current=self._validated_ncm(),
            )  # fmt: skip
            write_atomic(self._protos / ANSWERING, json.dumps(result).encode())
        except Exception as exc:
            self._proto_failed("answering by prototypes", exc)
            return
        self.proto_info["answering"] = result
        if result["accuracy"] is not None and not self.plan.trains:
            self.state.accuracy_own = result["accuracy"]

    async def _merge_prototypes(self) -> None:
        from p2phier.learn import cycle

        guard = self.node.guard
        now = self.node.clock()
        self._protos.mkdir(parents=True, exist_ok=True)
        senders: dict[str, tuple[Path, float]] = {}
        left_out: dict[str, str] = {}
        for path in sorted((self._protos / FROM).glob("*.safetensors")):
            author = path.name.removesuffix(".safetensors")
            if guard.is_isolated(author) or guard.standing(author) is Standing.DISTRUSTED:
                left_out[author] = "isolated or distrusted"
                continue
            senders[author] = (path, guard.trust.weight(author, now)[0])
        own = self._protos / OWN
        try:
            info = await self._work(
                cycle.merge_prototypes,
                own if own.exists() else None,
                senders,
                self._protos / MERGED,
            )
        except Exception as exc:
            self._proto_failed("prototype merge", exc)
            return
        self.proto_info["merged"] = info
        if left_out:
            self.proto_info["left_out"] = left_out

    def _proto_failed(self, what: str, exc: Exception) -> None:
        msg = f"{what}: {exc}"
        logger.warning("%s", msg)
        self.errors.append(msg)
