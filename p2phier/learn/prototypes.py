"""Class prototypes: each label's mean sentence embedding under a model (nearest class mean).

What this module owns:

* :class:`Prototypes`, per label the *sum* of its examples' unit-length embeddings and their
  count.  Sums, not means, so that merging is exact: the merge of two shards' prototypes is
  the prototypes of the pooled shards (to float rounding), whatever the split.  That is what
  makes them a candidate for the upward path (FedNCM, Legate et al. 2023; FedProto): a
  parent holding its descendants' merged prototypes holds the central ones, and no text
  leaves a node, only one mean vector per label;
* nearest-class-mean prediction among a node's answers, and *task routing*: the task (label
  group) of the nearest prototype picks which labels the model's head answers among.

Why routing: a parent whose subtree holds several tasks (the language node over news topics
and drug-review sentiments) answers among the union of their labels, but no node ever
trains its head on a mix of the tasks, so the tasks' logits are not comparable: in the
default devnet the language node gave every news article a sentiment (0 of 120 right) while
its head, told the task, got 73% of them (bench/routing.py).

Embeddings are mean-pooled last hidden states (the sentence-transformers pooling of the
master tier, all-MiniLM-L6-v2), each scaled to unit length; computing them is
:meth:`p2phier.learn.train.Session.embeddings`.  Pure numpy here.

A node's prototypes travel with its artifacts (``prototypes.safetensors``, checked by
:mod:`p2phier.artifact.protofile`; :func:`to_file`, :func:`from_file`), computed in one
space for the whole tree: the root tier's base encoder, without adapters (what every
MiniLM node holds, and every student as its teacher), so that a parent merges its
children's exactly; :func:`answer` is the prediction a node whose answers span several
tasks makes with them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from p2phier.artifact.protofile import (
    MAX_PROTOTYPES_BYTES,
    PrototypeTable,
    decode_prototypes,
    encode_prototypes,
)
from p2phier.errors import LearnError
from p2phier.fsutil import read_capped, write_atomic


class PrototypeError(LearnError, ValueError):
    """Prototypes that cannot be built, merged or used (shapes, labels, counts)."""


@dataclass(frozen=True)
class Prototypes:
    """Per label the sum of its examples' unit embeddings (``sums[i]``) and their count."""

    labels: tuple[str, ...]
    sums: NDArray[np.float64]  # [len(labels), dim]
    counts: tuple[float, ...]  # examples (a merge may weigh a sender's below 1 each)
    #: the task (label group: a dataset's labels) of each label; empty: one task
    tasks: tuple[str, ...] = ()
    #: the weights CID of the encoder whose embeddings these are ("": unnamed)
    space: str = ""
    #: the tasks their holder answers by nearest prototype (chosen on its validation set,
    #: or by its senders' vote: :func:`merge_senders`); travels with the file
    ncm_tasks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(set(self.labels)) != n:
            raise PrototypeError(f"duplicate labels in {self.labels}")
        if self.sums.ndim != 2 or self.sums.shape[0] != n or len(self.counts) != n:
            raise PrototypeError(
                f"{n} labels but sums of shape {self.sums.shape} and {len(self.counts)} counts"
            )
        if self.tasks and len(self.tasks) != n:
            raise PrototypeError(f"{n} labels but {len(self.tasks)} tasks")
        if not self.ncm_tasks <= set(self.tasks):
            raise PrototypeError(f"ncm tasks {sorted(self.ncm_tasks)} are not all tasks here")
        if any(not c > 0 for c in self.counts):
            raise PrototypeError(f"every label needs a positive count: {self.counts}")
        if not np.all(np.isfinite(self.sums)):
            raise PrototypeError("prototype sums are not finite")

    def task_of(self, label: str) -> str:
        return self.tasks[self.labels.index(label)] if self.tasks else ""

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    @classmethod
    def of(
        cls,
        embeddings: NDArray[np.floating],
        labels: Sequence[str],
        tasks: Mapping[str, str] | None = None,
        space: str = "",
    ) -> Prototypes:
        """The prototypes of examples with these (unit) ``embeddings`` and ``labels``
        (``tasks``: each label's task, where known)."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(labels) or emb.shape[0] == 0:
            raise PrototypeError(f"{len(labels)} labels for embeddings of shape {emb.shape}")
        names = tuple(sorted(set(labels)))
        index = {name: i for i, name in enumerate(names)}
        sums = np.zeros((len(names), emb.shape[1]), dtype=np.float64)
        counts = [0] * len(names)
        for row, label in zip(emb, labels, strict=True):
            sums[index[label]] += row
            counts[index[label]] += 1
        task_names = tuple(tasks[n] for n in names) if tasks else ()
        return cls(names, sums, tuple(float(c) for c in counts), task_names, space)

    def merge(self, *others: Prototypes) -> Prototypes:
        """These and ``others`` pooled: per label, sums and counts added.  All must share one
        space and give a label the same task.  The pool answers no task by prototype
        (``ncm_tasks`` is a holder's choice, not a property of the data)."""
        sums: dict[str, NDArray[np.float64]] = {}
        counts: dict[str, float] = {}
        tasks: dict[str, str] = {}
        for p in (self, *others):
            if p.dim != self.dim:
                raise PrototypeError(f"cannot merge prototypes of dimension {p.dim} and {self.dim}")
            if p.space != self.space:
                raise PrototypeError(
                    f"cannot merge prototypes of spaces {p.space} and {self.space}"
                )
            for label, row, count in zip(p.labels, p.sums, p.counts, strict=True):
                task = p.task_of(label)
                if tasks.setdefault(label, task) != task:
                    raise PrototypeError(
                        f"label {label!r} is in task {tasks[label]!r} and in task {task!r}"
                    )
                sums[label] = sums[label] + row if label in sums else row.copy()
                counts[label] = counts.get(label, 0.0) + count
        names = tuple(sorted(sums))
        keep_tasks = any(p.tasks for p in (self, *others))
        return Prototypes(
            names,
            np.stack([sums[n] for n in names]),
            tuple(counts[n] for n in names),
            tuple(tasks[n] for n in names) if keep_tasks else (),
            self.space,
        )

    def weighed(self, weight: float, cap: float) -> Prototypes:
        """Each label's count capped at ``cap`` and then times ``weight`` (its mean kept):
        what one sender's prototypes count for in a merge."""
        if not 0.0 < weight <= 1.0 or not cap > 0:
            raise PrototypeError(f"weight {weight} must lie in (0, 1] and cap {cap} above 0")
        scale = np.asarray([weight * min(1.0, cap / c) for c in self.counts])
        return Prototypes(
            self.labels,
            self.sums * scale[:, None],
            tuple(float(c * f) for c, f in zip(self.counts, scale, strict=True)),
            self.tasks,
            self.space,
            self.ncm_tasks,
        )

    def task_counts(self) -> dict[str, float]:
        """Task -> the examples its labels count."""
        out: dict[str, float] = {}
        for label, count in zip(self.labels, self.counts, strict=True):
            out[self.task_of(label)] = out.get(self.task_of(label), 0.0) + count
        return out

    def answering(self, ncm_tasks: Collection[str]) -> Prototypes:
        """The same prototypes, answering ``ncm_tasks`` (those among its tasks) by them."""
        return dataclasses.replace(self, ncm_tasks=frozenset(ncm_tasks) & set(self.tasks))

    def task_groups(self, answers: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
        """Task -> its labels among ``answers`` (empty: all) that have a prototype."""
        groups: dict[str, list[str]] = {}
        for label in self.labels:
            if not answers or label in answers:
                groups.setdefault(self.task_of(label), []).append(label)
        return {t: tuple(v) for t, v in sorted(groups.items())}

    def means(self, answers: Sequence[str] = ()) -> tuple[tuple[str, ...], NDArray[np.float64]]:
        """The labels among ``answers`` (empty: all) and their unit-length mean embeddings."""
        keep = [i for i, label in enumerate(self.labels) if not answers or label in answers]
        if not keep:
            raise PrototypeError(f"no prototype for any of the answers {sorted(answers)}")
        rows = self.sums[keep] / np.asarray([self.counts[i] for i in keep])[:, None]
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return tuple(self.labels[i] for i in keep), rows / np.maximum(norms, 1e-12)

    def nearest(self, embeddings: NDArray[np.floating], answers: Sequence[str] = ()) -> list[str]:
        """Nearest class mean (cosine) of each embedding among ``answers`` (empty: all)."""
        names, means = self.means(answers)
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise PrototypeError(f"embeddings of shape {emb.shape}; prototypes have {self.dim}")
        return [names[i] for i in (emb @ means.T).argmax(axis=1).tolist()]


def route(
    logits: NDArray[np.floating],
    embeddings: NDArray[np.floating],
    prototypes: Prototypes,
    tasks: Mapping[str, Sequence[str]],
    labels: Sequence[str],
) -> list[str]:
    """Each example's answer by its head among the labels of the task its nearest prototype
    belongs to.  ``tasks``: task name -> its labels (disjoint); ``labels``: the head's label
    of each logit column."""
    task_of: dict[str, str] = {}
    for task, members in tasks.items():
        for label in members:
            if label in task_of:
                raise PrototypeError(f"label {label!r} is in tasks {task_of[label]!r} and {task!r}")
            task_of[label] = task
    column = {label: i for i, label in enumerate(labels)}
    missing = sorted(set(task_of) - set(column))
    if missing:
        raise PrototypeError(f"task labels {missing} are not among the head's {list(labels)}")
    lg = np.asarray(logits, dtype=np.float64)
    if lg.ndim != 2 or lg.shape[1] != len(labels) or lg.shape[0] != len(embeddings):
        raise PrototypeError(f"logits of shape {lg.shape} for {len(embeddings)} embeddings")
    near = prototypes.nearest(embeddings, answers=tuple(task_of))
    out = []
    for row, label in zip(lg, near, strict=True):
        cols = [column[m] for m in tasks[task_of[label]]]
        out.append(labels[cols[int(np.argmax(row[cols]))]])
    return out


def answer(
    logits: NDArray[np.floating],
    embeddings: NDArray[np.floating] | None,
    prototypes: Prototypes | None,
    labels: Sequence[str],
    *,
    answers: Sequence[str] = (),
    ncm_tasks: Collection[str] = (),
) -> list[str]:
    """Each example's label among ``answers`` (empty: every label of the head).

    Where the answers span two or more tasks that have prototypes, each example goes to the
    task of its nearest prototype (labels with no prototype compete in every task: nothing
    says where they belong); otherwise all examples are in the one task.  Within its task
    the head answers, or, for a task in ``ncm_tasks`` (where the node's validation set said
    so), the nearest prototype among the task's labels.  ``labels``: the head's label of
    each logit column."""
    allowed = [label for label in labels if not answers or label in answers]
    lg = np.asarray(logits, dtype=np.float64)
    groups = prototypes.task_groups(allowed) if prototypes is not None else {}
    if prototypes is None or embeddings is None or not groups:
        cols = [labels.index(label) for label in allowed]
        return [allowed[int(np.argmax(row[cols]))] for row in lg]
    covered = tuple(label for members in groups.values() for label in members)
    free = [label for label in allowed if label not in covered]
    tasks = {task: (*members, *free) for task, members in groups.items()}
    if len(groups) >= 2:
        routed = [prototypes.task_of(n) for n in prototypes.nearest(embeddings, covered)]
    else:
        routed = [next(iter(groups))] * len(lg)
    column = {label: i for i, label in enumerate(labels)}
    out: list[str] = [""] * len(lg)
    for task in set(routed):
        rows = [i for i, t in enumerate(routed) if t == task]
        if task in ncm_tasks:
            near = prototypes.nearest(np.asarray(embeddings)[rows], groups[task])
            for i, label in zip(rows, near, strict=True):
                out[i] = label
            continue
        members = tasks[task]
        cols = [column[m] for m in members]
        for i in rows:
            out[i] = members[int(np.argmax(lg[i][cols]))]
    return out


#: how sure a validation set must be before a node answers a task by nearest prototype: the
#: exact one-sided McNemar (sign) test on the examples where only one of the two is right
NCM_ALPHA: float = 0.05


def sign_test_p(wins: int, losses: int) -> float:
    """P(at least ``wins`` of ``wins + losses`` fair coin flips): how likely the nearest
    prototype wins that often where it and the head disagree, were neither better (the
    exact McNemar test; 1.0 when they never disagree)."""
    n = wins + losses
    if wins < 0 or losses < 0:
        raise ValueError("counts cannot be negative")
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n)


def ncm_where_better(
    logits: NDArray[np.floating],
    embeddings: NDArray[np.floating],
    prototypes: Prototypes,
    labels: Sequence[str],
    truth: Sequence[str],
    *,
    answers: Sequence[str] = (),
    current: Collection[str] = (),
) -> dict[str, dict[str, float]]:
    """Per task of the validation examples (``truth``: their labels), the accuracy of the
    head and of the nearest prototype within the task, routed as :func:`answer` routes,
    and ``ncm`` 1.0 where the task is answered by nearest prototype from now on.

    A way of answering changes only where the validation set shows the other is better
    beyond chance: where head and prototypes disagree (``wins``: the prototype right and
    the head wrong; ``losses``: the reverse), the other is right so much more often that a
    tie would do so with probability at most :data:`NCM_ALPHA` (``p`` for the prototypes,
    ``p_head`` for the head).  A task answers by head until then; one in ``current`` (the
    tasks the node answers by prototype now) keeps its prototypes until the head is shown
    better.  Why a small set must not decide on an example or two: in a default devnet run
    the health node's 20 reviews had 13 right by prototype and 11 by its head (at best 2
    wins to none, p = 0.25; chosen then by "more right"), and on its children's data the
    prototypes were far worse, 0.34 against its head's 0.62.  Why a choice stays until
    shown wrong (and not: the head unless the prototypes are shown better, every time):
    in another run the news node answered its children's data at 0.975 after round 1 (its
    head then right on 7 of its own 20 articles: the prototypes answered); by round 3 its
    head was right on 14, the prototypes on 17 (p = 0.19), so it answered by head, and on
    its children's data fell to 0.775."""
    head = answer(logits, embeddings, prototypes, labels, answers=answers)
    groups = prototypes.task_groups([a for a in labels if not answers or a in answers])
    out: dict[str, dict[str, float]] = {}
    for task in groups:
        ncm = answer(logits, embeddings, prototypes, labels, answers=answers, ncm_tasks={task})
        rows = [i for i, t in enumerate(truth) if t in groups[task]]
        if not rows:
            continue
        h_right = [head[i] == truth[i] for i in rows]
        n_right = [ncm[i] == truth[i] for i in rows]
        wins = sum(n and not h for h, n in zip(h_right, n_right, strict=True))
        losses = sum(h and not n for h, n in zip(h_right, n_right, strict=True))
        p, p_head = sign_test_p(wins, losses), sign_test_p(losses, wins)
        if task in current:
            by_prototype = not (losses > wins and p_head <= NCM_ALPHA)
        else:
            by_prototype = wins > losses and p <= NCM_ALPHA
        out[task] = {
            "examples": float(len(rows)),
            "head": sum(h_right) / len(rows),
            "nearest": sum(n_right) / len(rows),
            "wins": float(wins),
            "losses": float(losses),
            "p": p,
            "p_head": p_head,
            "ncm": float(by_prototype),
        }
    return out


def answering_tasks(decided: Mapping[str, Any] | None, held: Prototypes | None) -> list[str]:
    """The tasks a node (``answer_by = "validated"``) answers by nearest prototype: where its
    validation set holds a task, as that set decided (``decided``: its ``answering.json``,
    :func:`p2phier.learn.cycle.choose_answering`); any other task as its senders' vote kept
    in its merged prototypes (``held``, :func:`ncm_vote`)."""
    decided = decided or {}
    validated = set(decided.get("tasks", {}))
    inherited = set(held.ncm_tasks) if held is not None else set()
    return sorted(set(decided.get("ncm_tasks", [])) | (inherited - validated))


# --- the file an artifact carries (p2phier.artifact.protofile) ----------------------------------


def to_file(prototypes: Prototypes) -> bytes:
    """The prototypes file's bytes: each mean (norm at most 1) as half floats, each count
    rounded (at least 1)."""
    if not prototypes.tasks or not prototypes.space:
        raise PrototypeError("prototypes need their tasks and space to be sent")
    counts = np.asarray(prototypes.counts, dtype=np.float64)
    means = prototypes.sums / counts[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    means = means / np.maximum(norms, 1.0)  # float error only: a mean of unit vectors
    return encode_prototypes(
        PrototypeTable(
            prototypes.labels,
            prototypes.tasks,
            prototypes.space,
            means.astype(np.float16),
            np.maximum(1, np.rint(counts)).astype(np.int64),
            tuple(sorted(prototypes.ncm_tasks)),
        )
    )


def from_file(data: bytes) -> Prototypes:
    """Checked prototypes from a file's bytes (a peer's: hostile; see protofile)."""
    t = decode_prototypes(data)
    counts = t.counts.astype(np.float64)
    return Prototypes(
        t.labels,
        t.means.astype(np.float64) * counts[:, None],
        tuple(float(c) for c in counts),
        t.tasks,
        t.space,
        frozenset(t.ncm_tasks),
    )


def load(path: Path) -> Prototypes | None:
    """The prototypes in ``path`` (``None``: there is no such file)."""
    if not path.exists():
        return None
    return from_file(read_capped(path, MAX_PROTOTYPES_BYTES, "prototypes file", PrototypeError))


def save(prototypes: Prototypes, path: Path) -> Path:
    write_atomic(path, to_file(prototypes))
    return path


#: what one sender's prototypes count for at most, per label, in examples: a child that
#: claims a million examples of a label counts as this many (the devnet's shards hold 20-80)
SENDER_CAP = 1000.0


def merge_senders(
    own: Prototypes | None,
    senders: Mapping[str, tuple[Prototypes, float]],
    *,
    cap: float = SENDER_CAP,
) -> tuple[Prototypes | None, dict[str, str]]:
    """A node's prototypes: its own and each sender's (``name -> (prototypes, weight)``).

    Each sender counts for at most as many examples in all as the median contributor (the
    lower median of every contributor's total count, the node itself included): a sender
    claiming more is scaled down as a whole (its labels keep their proportions), each label
    then capped at ``cap``, and weighed by its trust ``weight``.  So a liar claiming a
    million examples counts as one median sender's data, wherever it puts them; honest
    senders are merged exactly while none holds more than the median.  Counts cannot be
    proven; the bound is what is left.

    Senders of weight 0, of another space than the node's (its own, else the first
    sender's) or that give a label another task than the rest are left out, each with its
    reason."""
    skipped: dict[str, str] = {}
    accepted: dict[str, tuple[Prototypes, float]] = {}
    probe = own
    for name, (protos, weight) in sorted(senders.items()):
        if not weight > 0:
            skipped[name] = "weight 0"
            continue
        try:
            probe = protos if probe is None else probe.merge(protos)
        except PrototypeError as exc:
            skipped[name] = str(exc)
            continue
        accepted[name] = (protos, weight)
    totals = sorted(
        sum(p.counts)
        for p in [*([own] if own is not None else []), *(p for p, _ in accepted.values())]
    )
    median = totals[(len(totals) - 1) // 2] if totals else 0.0
    merged = own
    parts: list[Prototypes] = []
    for protos, weight in accepted.values():
        share = min(1.0, weight) * min(1.0, median / sum(protos.counts))
        part = protos.weighed(share, cap / share)  # the cap applies after the share
        parts.append(part)
        merged = part if merged is None else merged.merge(part)
    if merged is not None and parts:
        merged = merged.answering(ncm_vote(merged, parts))
    return merged, skipped


def ncm_vote(merged: Prototypes, parts: Sequence[Prototypes]) -> set[str]:
    """The tasks of ``merged`` answered by nearest prototype on its senders' word: those
    where senders answering the task by prototype hold more than half its (weighed)
    examples.  The senders that hold a task's data validated that choice on their own
    models and sets; a parent without a validation set of its own follows them.  A
    sender's vote weighs what its data counts for in the merge: bounded as its counts are."""
    totals = merged.task_counts()
    yes: dict[str, float] = {}
    for part in parts:
        for task, count in part.task_counts().items():
            if task in part.ncm_tasks:
                yes[task] = yes.get(task, 0.0) + count
    # (a share's float rounding must not turn a tie into a majority)
    return {t for t, n in yes.items() if n > totals.get(t, 0.0) * (0.5 + 1e-9)}
