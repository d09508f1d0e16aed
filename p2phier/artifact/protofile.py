"""The class-prototypes file an artifact may carry (protocol/artifact.md section 10).

What this module owns: the bytes of a node's class prototypes (per label the *mean* of its
training examples' unit-length sentence embeddings and their count, so that a parent merges
its children's exactly; the task each label belongs to; the embedding space they were
computed in), their encoding and their checks.  Pure (numpy): what the prototypes mean and
how they are used is :mod:`p2phier.learn.prototypes`.

The file is a safetensors file, stored uncompressed (about 6 KiB: 8 labels x 384 halves):

* tensors ``means`` (F16, ``[labels, dim]``) and ``counts`` (I64, ``[labels]``);
* metadata ``format`` = :data:`PROTOTYPES_FORMAT`, ``labels`` and ``tasks`` (JSON lists of
  strings, one per row; labels unique and sorted), ``space`` (the weights CID of the encoder
  whose embeddings they are); optionally ``ncm_tasks`` (a JSON list of some of those tasks,
  sorted, unique): the tasks its author answers by nearest prototype, having found that
  better on its validation set (or inherited from its children): a parent without a
  validation set of its own weighs these claims (:mod:`p2phier.learn.prototypes`).

A peer's file is hostile until checked: its size before it is read, the header's, every
name's length and count, every count in ``1..MAX_COUNT``, every mean finite and of norm at
most 1 (a mean of unit vectors is no longer: a longer one was not made by the rule).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.errors import TensorFileError

PROTOTYPES_FORMAT = "p2phier-prototypes-v1"
#: where an adapter directory keeps them (packed beside the adapter, written by materialise)
PROTOTYPES_FILE = "prototypes.safetensors"
MAX_PROTOTYPES_BYTES = 2 * 1024 * 1024
MAX_LABELS = 256
MAX_DIM = 4096
MAX_COUNT = 1_000_000
MAX_NAME = 64
MAX_SPACE = 128
#: half-float rounding of a mean of unit vectors, below which a norm is not "too long"
NORM_SLACK = 2e-3

_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


class PrototypeFileError(TensorFileError):
    """A prototypes file that is malformed or breaks a rule of the format."""


@dataclass(frozen=True, slots=True)
class PrototypeTable:
    """The checked content of a prototypes file."""

    labels: tuple[str, ...]
    tasks: tuple[str, ...]
    space: str
    means: npt.NDArray[np.float16]  # [len(labels), dim]
    counts: npt.NDArray[np.int64]  # [len(labels)]
    ncm_tasks: tuple[str, ...] = ()  # tasks its author answers by nearest prototype

    def __post_init__(self) -> None:
        check_table(self.labels, self.tasks, self.space, self.means, self.counts)
        check_ncm_tasks(self.ncm_tasks, self.tasks)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_LABELS:
        raise PrototypeFileError(f"{what} must be a list of 1-{MAX_LABELS} names")
    for v in value:
        if not isinstance(v, str) or not _NAME_RE.fullmatch(v):
            raise PrototypeFileError(
                f"{what} holds {v!r:.80}: names are 1-{MAX_NAME} printable characters"
            )
    return tuple(value)


def check_table(labels: Any, tasks: Any, space: Any, means: Any, counts: Any) -> None:
    """Every rule of the format (see the module docstring); a :class:`PrototypeFileError`."""
    labels = _names(labels, "labels")
    tasks = _names(tasks, "tasks")
    if list(labels) != sorted(set(labels)):
        raise PrototypeFileError("labels must be sorted and unique")
    if len(tasks) != len(labels):
        raise PrototypeFileError(f"{len(labels)} labels but {len(tasks)} tasks")
    if not isinstance(space, str) or not 1 <= len(space) <= MAX_SPACE or not space.isascii():
        raise PrototypeFileError(f"space must be 1-{MAX_SPACE} ASCII characters (a CID)")
    if not isinstance(means, np.ndarray) or means.dtype != np.float16 or means.ndim != 2:
        raise PrototypeFileError("means must be a float16 matrix")
    if means.shape[0] != len(labels) or not 1 <= means.shape[1] <= MAX_DIM:
        raise PrototypeFileError(
            f"means of shape {list(means.shape)} for {len(labels)} labels (dimension 1-{MAX_DIM})"
        )
    if (
        not isinstance(counts, np.ndarray)
        or counts.dtype != np.int64
        or counts.shape != (len(labels),)
    ):
        raise PrototypeFileError(f"counts must be {len(labels)} int64 values")
    if counts.min() < 1 or counts.max() > MAX_COUNT:
        raise PrototypeFileError(f"every count must lie in 1..{MAX_COUNT}")
    if not np.all(np.isfinite(means)):
        raise PrototypeFileError("prototype means are not finite")
    norms = np.linalg.norm(means.astype(np.float64), axis=1)
    over = norms > 1.0 + NORM_SLACK
    if over.any():
        i = int(np.argmax(over))
        raise PrototypeFileError(
            f"label {labels[i]!r}: its mean has norm {norms[i]:.4g}, longer than 1 "
            "(a mean of unit vectors cannot be)"
        )


def check_ncm_tasks(ncm_tasks: Any, tasks: tuple[str, ...]) -> None:
    """``ncm_tasks``: sorted, unique, each one of the file's tasks."""
    if not isinstance(ncm_tasks, tuple) or any(not isinstance(t, str) for t in ncm_tasks):
        raise PrototypeFileError("ncm_tasks must be a list of task names")
    if list(ncm_tasks) != sorted(set(ncm_tasks)):
        raise PrototypeFileError("ncm_tasks must be sorted and unique")
    unknown = set(ncm_tasks) - set(tasks)
    if unknown:
        raise PrototypeFileError(
            f"ncm_tasks names tasks the file has no label of: {sorted(unknown)}"
        )


def encode_prototypes(table: PrototypeTable) -> bytes:
    """The file's bytes (deterministic; ``ncm_tasks`` written only when there are some)."""
    metadata = {
        "format": PROTOTYPES_FORMAT,
        "labels": json.dumps(list(table.labels), separators=(",", ":")),
        "tasks": json.dumps(list(table.tasks), separators=(",", ":")),
        "space": table.space,
    }
    if table.ncm_tasks:
        metadata["ncm_tasks"] = json.dumps(list(table.ncm_tasks), separators=(",", ":"))
    data = write_safetensors({"counts": table.counts, "means": table.means}, metadata)
    if len(data) > MAX_PROTOTYPES_BYTES:
        raise PrototypeFileError(
            f"prototypes file is {len(data)} bytes, over the limit of {MAX_PROTOTYPES_BYTES}"
        )
    return data


def _json_list(raw: str | None, what: str) -> Any:
    if raw is None or len(raw) > MAX_LABELS * (MAX_NAME * 6 + 4) + 2:
        raise PrototypeFileError(f"prototypes file lacks its {what} or they are too long")
    try:
        return json.loads(raw)
    except ValueError:
        raise PrototypeFileError(f"prototypes file's {what} are not JSON") from None


def decode_prototypes(data: bytes | bytearray | memoryview) -> PrototypeTable:
    """A checked :class:`PrototypeTable` from a file's bytes (a peer's: hostile)."""
    if len(data) > MAX_PROTOTYPES_BYTES:
        raise PrototypeFileError(
            f"prototypes file is {len(data)} bytes, over the limit of {MAX_PROTOTYPES_BYTES}"
        )
    st = parse_safetensors(data, max_header=64 * 1024 + MAX_LABELS * 1024, max_tensors=2)
    if st.metadata.get("format") != PROTOTYPES_FORMAT:
        raise PrototypeFileError(
            f"prototypes file has format {st.metadata.get('format')!r:.40}; "
            f"expected {PROTOTYPES_FORMAT!r}"
        )
    if set(st.infos) != {"means", "counts"}:
        raise PrototypeFileError(f"prototypes file holds {sorted(st.infos)}, not means and counts")
    if st.infos["means"].dtype != "F16" or st.infos["counts"].dtype != "I64":
        raise PrototypeFileError("prototypes file: means must be F16 and counts I64")
    raw_ncm = st.metadata.get("ncm_tasks")
    ncm = () if raw_ncm is None else _names(_json_list(raw_ncm, "ncm_tasks"), "ncm_tasks")
    return PrototypeTable(
        labels=_names(_json_list(st.metadata.get("labels"), "labels"), "labels"),
        tasks=_names(_json_list(st.metadata.get("tasks"), "tasks"), "tasks"),
        space=st.metadata.get("space", ""),
        means=np.array(st.array("means"), dtype=np.float16),
        counts=np.array(st.array("counts"), dtype=np.int64),
        ncm_tasks=ncm,
    )
