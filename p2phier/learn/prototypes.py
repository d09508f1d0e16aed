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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from p2phier.errors import LearnError


class PrototypeError(LearnError, ValueError):
    """Prototypes that cannot be built, merged or used (shapes, labels, counts)."""


@dataclass(frozen=True)
class Prototypes:
    """Per label the sum of its examples' unit embeddings (``sums[i]``) and their count."""

    labels: tuple[str, ...]
    sums: NDArray[np.float64]  # [len(labels), dim]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(set(self.labels)) != n:
            raise PrototypeError(f"duplicate labels in {self.labels}")
        if self.sums.ndim != 2 or self.sums.shape[0] != n or len(self.counts) != n:
            raise PrototypeError(
                f"{n} labels but sums of shape {self.sums.shape} and {len(self.counts)} counts"
            )
        if any(c <= 0 for c in self.counts):
            raise PrototypeError(f"every label needs a positive count: {self.counts}")
        if not np.all(np.isfinite(self.sums)):
            raise PrototypeError("prototype sums are not finite")

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    @classmethod
    def of(cls, embeddings: NDArray[np.floating], labels: Sequence[str]) -> Prototypes:
        """The prototypes of examples with these (unit) ``embeddings`` and ``labels``."""
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
        return cls(names, sums, tuple(counts))

    def merge(self, *others: Prototypes) -> Prototypes:
        """These and ``others`` pooled: per label, sums and counts added."""
        sums: dict[str, NDArray[np.float64]] = {}
        counts: dict[str, int] = {}
        for p in (self, *others):
            if p.dim != self.dim:
                raise PrototypeError(f"cannot merge prototypes of dimension {p.dim} and {self.dim}")
            for label, row, count in zip(p.labels, p.sums, p.counts, strict=True):
                sums[label] = sums[label] + row if label in sums else row.copy()
                counts[label] = counts.get(label, 0) + count
        names = tuple(sorted(sums))
        return Prototypes(
            names, np.stack([sums[n] for n in names]), tuple(counts[n] for n in names)
        )

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
