"""Attacker nodes: real ``p2phier node run`` processes with one behaviour changed.

``python -m p2phier.devnet.attacker ATTACK node run [the usual flags]`` runs the
node command with the daemon class of ``ATTACK`` instead of
:class:`~p2phier.node.daemon.NodeDaemon`.  Everything else (identity, store,
transport, gossip, Bitswap, control socket) is the real node's, so what a test
or a devnet scenario measures is what the honest nodes' defences do against a
peer that speaks every protocol correctly and lies where it matters.  Each
attack is the smallest override that reproduces what an attacker would do; none
of this code runs in an honest node.

Attacks:

``foreign-artifact``
    publishes artifacts it did not sign, for any layer and domain, as its own
    updates (``node publish`` skips the honest node's own-update check).
``claims-uptime``
    its signed node record claims it started 23 hours ago (self-reported
    uptime once decided parent choice while every latency was unknown).
``malformed-artifact``
    announces whatever artifact it is told to without verifying it (an honest
    node verifies what it publishes): a manifest that breaks the format's rules,
    a payload a reader must refuse; what it announces comes from the envelope's
    raw protobuf, unchecked.

Poisoning (a training node's updates to its parent; ``ATTACK[:STRENGTH][@ROUND]``
sets the strength, default 1, and the first round it attacks in, default 1):

``sign-flip``
    sends its honest update negated (times the strength);
``scale``
    sends its honest update times the strength (model replacement boosts by the
    number of children; 10 unless given);
``noise``
    sends Gaussian noise of its honest update's norm (times the strength);
``free-ride``
    sends back the version it was given (no work, a zero update);
``stale``
    sends its first update again every round (no new work);
``label-flip``
    trains honestly on its data with every label replaced by its mirror in the
    sorted label set (data poisoning: the update itself is well-formed).

``proto-lie``
    sends its honest update with class prototypes that lie as far as the format lets them:
    every label's mean negated (it points away from the label's examples), every count
    a million (the format's limit), and every task claimed as answered by them.

``alie``
    "a little is enough" (Baruch et al. 2019): waits for its siblings' updates of
    the round (their records name their heads; updates are published by hash, so
    anyone may fetch them), and sends their mean minus STRENGTH (z, default 1)
    times their standard deviation, coordinate-wise;
``ipm``
    inner-product manipulation (Xie et al. 2020): likewise, and sends minus
    STRENGTH (default 0.5) times their mean;
``alie-late``, ``ipm-late``
    the same, sent only once the parent has published its version of the round
    (a colluder slower than the round, as the real ones on MiniLM are): the
    parent must screen an update that comes after its round.

Both craft where the parent aggregates: on the merged LoRA deltas (``B @ A``)
and head differences, and send the result as a LoRA adapter again.  If no
sibling's update arrives within ``SIBLING_WAIT_S``, the node sends its honest
update.

Network attacks (``wrong-blocks``, ``withhold``, ``flood[:RATE]``, ``equivocate``, ``slander``,
``fake-master``, ``sybil[:COUNT]``) live in :mod:`p2phier.devnet.netattack`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from p2phier.artifact import Artifact
from p2phier.cid import CID
from p2phier.errors import P2PHierError
from p2phier.learnplan import NodeData
from p2phier.node.daemon import NodeDaemon, Publishable
from p2phier.node.learner import Learner

logger = logging.getLogger("p2phier.devnet.attacker")  # also when run as __main__

LORA_B = ".lora_B.weight"
LORA_A = ".lora_A.weight"


class ForeignArtifactDaemon(NodeDaemon):
    """Announces whatever artifact it is told to, signed by anyone, as its own update."""

    def _check_publishable(self, cid: CID, art: Artifact) -> None:
        return None


class ClaimsUptimeDaemon(NodeDaemon):
    """Claims in its record to have been up for 23 hours."""

    CLAIMED_UPTIME_S = 23 * 3600

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_ms -= self.CLAIMED_UPTIME_S * 1000


class MalformedArtifactDaemon(NodeDaemon):
    """Announces an artifact in its store as it is, verified by nobody."""

    async def _publishable(self, cid: CID) -> Publishable:
        from p2phier.wire import p2phier_pb2 as pb

        envelope = self.store.get_block(cid)  # the test stores a single-block envelope
        signed = pb.SignedManifest.FromString(envelope)
        m = pb.Manifest.FromString(signed.manifest)
        files = [cid, *(CID.from_bytes(r.cid) for r in (m.config, m.tensors) if r.cid)]
        for f in files:
            self.store.pin(f)
        parent = CID.from_bytes(m.parent) if m.parent else None
        size = len(envelope) + m.config.size + m.tensors.size
        return Publishable(parent, m.round, (), size, tuple(files))


def poison(
    behaviour: str, strength: float, adapter: Path, version: Path, *, out: Path, seed: int
) -> Path:
    """A poisoned copy of ``adapter`` (trained on ``version``) in ``out`` (blocking)."""
    from p2phier.learn.train import read_adapter, write_adapter

    mine, base = read_adapter(adapter), read_adapter(version)
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for key, value in mine.state.items():
        if key.endswith(LORA_A):
            state[key] = value
            continue
        # the update: B (its product with A is the LoRA delta) or a head's difference
        ref = np.zeros_like(value) if key.endswith(LORA_B) else base.state.get(key)
        if ref is None or ref.shape != value.shape:
            ref = np.zeros_like(value)
        diff = value.astype(np.float64) - ref
        if behaviour == "sign-flip":
            diff = -strength * diff
        elif behaviour == "scale":
            diff = strength * diff
        elif behaviour == "noise":
            noise = rng.normal(size=diff.shape)
            size = float(np.linalg.norm(noise)) or 1.0
            diff = strength * noise * (float(np.linalg.norm(diff)) / size)
        elif behaviour == "free-ride":
            diff = np.zeros_like(diff)
        state[key] = (ref + diff).astype(np.float32)
    return write_adapter(out, state, mine.config)


class PoisoningLearner(Learner):
    """The node's learner, with its updates to the parent (or its data) poisoned."""

    behaviour = "sign-flip"
    strength = 1.0
    from_round = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._first: Path | None = None

    def _arrived(self, round_: int) -> list[Any]:
        arrived = super()._arrived(round_)
        if self.behaviour == "label-flip" and self.requested_round >= self.from_round:
            return _flip_labels(arrived, self.data)
        return arrived

    def prototypes_bytes(self) -> bytes | None:
        honest = super().prototypes_bytes()
        if self.behaviour != "proto-lie" or honest is None:
            return honest
        if self.requested_round < self.from_round:
            return honest
        return lying_prototypes(honest)

    def _kept_paths(self) -> list[Path]:
        # the stale attacker re-sends its first adapter: its directory must survive the sweep
        return [*super()._kept_paths(), *([self._first] if self._first else [])]

    async def _pack(
        self,
        adapter: Path,
        *,
        base_version: str | None,
        round_: int,
        metrics: Any = None,
        stream: str = "up",
    ) -> Artifact:
        if stream != "up":  # only what it sends its parent is poisoned
            return await super()._pack(
                adapter, base_version=base_version, round_=round_, metrics=metrics, stream=stream
            )
        local = self.state.local
        leaf = self.state.flat is None and local is not None and bool(local.on)
        # a leaf's update: the model it was trained on, where the poison is computed against
        on = Path(local.on) if leaf and local is not None else None
        colluder, _, late = self.behaviour.partition("-")
        if on is not None and round_ >= self.from_round and colluder in ("alie", "ipm"):
            honest = await self._siblings(round_, base_version)
            if not honest:
                logger.warning("%s: no sibling's update in %.0f s", self.behaviour, SIBLING_WAIT_S)
            else:
                adapter = await self._work(
                    collude, colluder, self.strength, [adapter, *honest],
                    on, out=self._new_dir("poisoned"),
                )  # fmt: skip
            if late:
                await self._round_closed(round_)
        elif on is not None and round_ >= self.from_round and self.behaviour not in HONEST_UPDATES:
            if self.behaviour == "stale":
                self._first = self._first or adapter
                adapter = self._first
            else:
                adapter = await self._work(
                    poison, self.behaviour, self.strength, adapter, on,
                    out=self._new_dir("poisoned"), seed=self.plan.seed + round_,
                )  # fmt: skip
        return await super()._pack(
            adapter, base_version=base_version, round_=round_, metrics=metrics
        )

    async def _round_closed(self, round_: int) -> None:
        """Wait (up to :data:`LATE_WAIT_S`) until the parent published its version of round
        ``round_``: a colluder slower than its round, whose update comes after it (a parent
        that waits for this child, as in a network's first round where every child is a
        newcomer, gets it after the wait)."""
        import trio

        deadline = time.monotonic() + LATE_WAIT_S
        while time.monotonic() < deadline:
            parent = self.node.hierarchy.parent
            seen = self.core.versions.get(str(parent)) if parent is not None else None
            if seen is not None and seen.round >= round_:
                return
            await trio.sleep(0.5)
        logger.warning("%s: the parent published no version of round %d", self.behaviour, round_)

    async def _siblings(self, round_: int, base_version: str | None) -> list[Path]:
        """The adapters of the siblings' updates of this round on the same version, as
        their records' heads name them (waits up to ``SIBLING_WAIT_S``)."""
        import trio

        from p2phier.artifact import read_artifact, verify_artifact

        node = self.node
        parent_domain = node.config.domain.rpartition("/")[0]
        tier = self._tier_dir()
        found: dict[str, Path] = {}
        tried: set[str] = set()
        deadline = time.monotonic() + SIBLING_WAIT_S
        while time.monotonic() < deadline:
            siblings = [
                r
                for r in node.book.query(now=node.clock())
                if r.peer_id != node.peer
                and r.layer == node.config.layer
                and r.domain.rpartition("/")[0] == parent_domain
            ]
            for record in siblings:
                head = str(record.head) if record.head else None
                if head is None or head in tried or str(record.peer_id) in found:
                    continue
                tried.add(head)
                try:
                    providers = [str(record.peer_id)]
                    # the signed envelope, then its content (attack traffic: "other")
                    await node.fetch_object(head, providers, purpose="other")
                    env = await self._work(read_artifact, node.store.get_block, CID.parse(head))
                    for ref in env.manifest.files:
                        await node.fetch_object(str(ref), providers, purpose="other")
                    art = await self._work(verify_artifact, node.store, head)
                    m = art.manifest
                    if m.round != round_ or str(m.base_version) != str(base_version):
                        continue  # an older update: its record will name the newer one
                    out = self._new_dir("sibling")
                    await self._work(self._unpack, head, out, tier)
                    found[str(record.peer_id)] = out
                except P2PHierError as exc:
                    # asked again on the next pass: under load a fetch can fail once (a
                    # connection dropped), and a colluder that gave up on one sibling waited
                    # out SIBLING_WAIT_S and sent nothing for the rest of the run (seen in CI)
                    tried.discard(head)
                    logger.warning("sibling update %s: %s", head, exc)
            if siblings and len(found) >= len(siblings):
                break
            await trio.sleep(1.0)
        return list(found.values())


#: the highest LoRA rank a colluder's crafted update is written with (ALIE's deviation
#: term is not low-rank: it is truncated here)
COLLUDE_MAX_RANK = 64


def collude(
    behaviour: str, strength: float, adapters: list[Path], version: Path, *, out: Path
) -> Path:
    """ALIE or IPM from honest updates (``adapters[0]``: the attacker's own honest one),
    crafted where the parent aggregates them: each update's merged LoRA deltas and head
    differences against ``version`` (:func:`p2phier.learn.api.child_update`), written back
    as a LoRA adapter of the rank that keeps it (at most :data:`COLLUDE_MAX_RANK`)."""
    from p2phier.learn.aggregate import DELTA_SUFFIX, effective_to_lora, lossless_rank
    from p2phier.learn.api import child_update
    from p2phier.learn.train import read_adapter, write_adapter

    updates = [child_update(path, version) for path in adapters]
    keys = sorted(set.intersection(*(set(u) for u in updates)))
    heads = read_adapter(version).effective()
    crafted: dict[str, np.ndarray] = {}
    for key in keys:
        diffs = np.stack([u[key].astype(np.float64) for u in updates])
        mean, std = diffs.mean(axis=0), diffs.std(axis=0)
        value = mean - strength * std if behaviour == "alie" else -strength * mean
        if not key.endswith(DELTA_SUFFIX):
            value = value + heads[key]  # a head is sent whole: the version's plus the change
        crafted[key] = value.astype(np.float32)
    mine = read_adapter(adapters[0])
    deltas = {k: v for k, v in crafted.items() if k.endswith(DELTA_SUFFIX)}
    rank = lossless_rank(deltas, COLLUDE_MAX_RANK)
    ratio = float(mine.config["lora_alpha"]) / float(mine.config["r"])
    lora = effective_to_lora(crafted, rank, ratio * rank)
    config = dict(mine.config)
    config.update(r=rank, lora_alpha=ratio * rank, rank_pattern={}, alpha_pattern={})
    logger.info("%s from %d honest update(s), rank %d", behaviour, len(updates), rank)
    return write_adapter(out, lora.state, config)


def lying_prototypes(honest: bytes) -> bytes:
    """``honest`` prototypes with every mean negated and every count at the format's limit,
    claiming to answer every task by them (a parent's vote on how to answer)."""
    from p2phier.artifact.protofile import MAX_COUNT
    from p2phier.learn.prototypes import Prototypes, from_file, to_file

    p = from_file(honest)
    counts = tuple(float(MAX_COUNT) for _ in p.labels)
    means = -p.sums / np.asarray(p.counts)[:, None]
    lie = Prototypes(p.labels, means * MAX_COUNT, counts, p.tasks, p.space, frozenset(p.tasks))
    return to_file(lie)


def _flip_labels(records: list[Any], data: NodeData | None) -> list[Any]:
    """Every label replaced by its mirror in the sorted set of the node's labels (its
    held-out data stays true: it measures what the poisoned model does)."""
    if data is None:
        return records
    labels = sorted({r.label for a in data.arrivals for r in a} | {r.label for r in data.test})
    mirror = dict(zip(labels, reversed(labels), strict=True))
    return [dataclasses.replace(r, label=mirror.get(r.label, r.label)) for r in records]


POISONING = ("sign-flip", "scale", "noise", "free-ride", "stale", "label-flip", "alie", "ipm",
             "alie-late", "ipm-late", "proto-lie")  # fmt: skip
#: updates an attack leaves honest (it lies elsewhere)
HONEST_UPDATES = ("label-flip", "proto-lie")
#: what knowing the round's honest updates takes: their publication, seconds at most
SIBLING_WAIT_S = 120.0
#: the longest a late colluder waits for its parent's version of the round
LATE_WAIT_S = 30.0


def poisoning_daemon(behaviour: str, strength: float, from_round: int = 1) -> type[NodeDaemon]:
    """A daemon class whose learner is :class:`PoisoningLearner` with this behaviour."""
    learner = type(
        "Poisoning",
        (PoisoningLearner,),
        {"behaviour": behaviour, "strength": strength, "from_round": from_round},
    )

    class PoisoningDaemon(NodeDaemon):
        learner_class = learner

    return PoisoningDaemon


ATTACKS: dict[str, type[NodeDaemon]] = {
    "foreign-artifact": ForeignArtifactDaemon,
    "claims-uptime": ClaimsUptimeDaemon,
    "malformed-artifact": MalformedArtifactDaemon,
}

#: a behaviour's strength when none is given (``scale``: model replacement among 10)
DEFAULT_STRENGTH = {"scale": 10.0, "ipm": 0.5}  # a "-late" colluder: its colluder's


def daemon_class(attack: str) -> type[NodeDaemon]:
    """``ATTACK[:STRENGTH][@ROUND]`` -> the daemon class (``ValueError`` if unknown)."""
    from p2phier.devnet.netattack import NETWORK, network_daemon

    head, _, first = attack.partition("@")
    name, _, strength = head.partition(":")
    if name in ATTACKS and not strength and not first:
        return ATTACKS[name]
    if name in NETWORK and first in ("", "1"):
        try:
            amount = float(strength) if strength else None
        except ValueError:
            amount = -1.0
        if amount is None or (np.isfinite(amount) and 1 <= amount <= 1000):
            return network_daemon(name, amount)
    if name in POISONING:
        try:
            value = (
                float(strength)
                if strength
                else DEFAULT_STRENGTH.get(name.removesuffix("-late"), 1.0)
            )
            from_round = int(first) if first else 1
        except ValueError:
            value, from_round = -1.0, 0
        if np.isfinite(value) and value >= 0 and from_round >= 1:
            return poisoning_daemon(name, value, from_round)
    raise ValueError(f"unknown attack {attack!r}; one of {[*ATTACKS, *POISONING, *NETWORK]}")


def main(argv: list[str]) -> None:
    try:
        cls = daemon_class(argv[0] if argv else "")
    except ValueError as exc:
        sys.stderr.write(f"usage: attacker ATTACK[:STRENGTH] node run [flags]: {exc}\n")
        raise SystemExit(2) from exc
    from p2phier.cli import node as node_cli
    from p2phier.cli.main import app

    node_cli.DAEMON_CLASS = cls
    sys.stderr.write(f"attacker: {argv[0]}\n")
    app(argv[1:], prog_name="p2phier")


if __name__ == "__main__":
    main(sys.argv[1:])
