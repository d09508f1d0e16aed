"""A node's learning plan: which tier it runs, where its private data is, how it trains.

Owns :class:`LearnPlan` and :func:`load_plan`.  The plan is a JSON file in the
node's home (``learn/plan.json`` unless ``learn.plan`` says otherwise) written
by the operator or by the devnet launcher; the node's daemon reads it when
``learn.enabled`` is true; ``p2phier node run`` checks it and its data file with
:func:`check_plan` before it starts anything.  Both are hostile input like any
file: size-capped, every field type- and range-checked, and every error is one
:class:`PlanError` that names the file, the example and the field (the formats
are documented in ``node/NODE.md``).

Pure data: no torch, no trio; the node and the devnet launcher share it.
:mod:`p2phier.learn.cycle` turns it into
training configs in the worker thread.

Tier sources (``tier.source``):

* ``dir``: a tier directory already on disk (``tier.dir``), checked against
  ``tier.weights_cid`` when loaded: a root tier built locally and
  deterministically (the devnet builds the master tier once and shares it);
* ``distil``: a student distilled on this node's own data from its parent's
  base tier (``tier.teacher_dir`` if the teacher is on disk, else fetched from
  the parent by the CID its versions name), keeping ``tier.layers``;
* ``int8``: the parent's tier with int8 weights (fetched from the parent by CID).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2phier.errors import ConfigError

MAX_PLAN_BYTES = 1 << 20
MAX_DATA_BYTES = 256 << 20
TIER_SOURCES = ("dir", "distil", "int8")
RULES = ("fedavg", "median", "trimmed_mean", "norm_clip", "probe_scored")
CONTINUAL = ("naive", "replay", "ewc", "replay+ewc")
RECORD_FIELDS = ("uid", "text", "label", "domain", "subdomain")
MAX_FIELD_CHARS = 1 << 20
MAX_VOCAB = 1 << 24


class PlanError(ConfigError):
    """A learning plan or data file is missing or malformed."""


@dataclass(frozen=True)
class TierPlan:
    source: str
    tier_id: str
    dir: Path | None = None
    weights_cid: str | None = None
    teacher_dir: Path | None = None
    teacher_weights_cid: str | None = None
    layers: tuple[int, ...] = ()
    max_vocab: int | None = None
    distill_steps: int = 30


@dataclass(frozen=True)
class LearnPlan:
    tier: TierPlan
    data: Path | None  # the node's private data (JSON); None: no data at all
    train: bool = False  # runs local cycles on its arrivals (else: data is a validation set)
    parent: bool = True  # aggregates children and publishes versions (False: a leaf)
    steps_per_cycle: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    max_length: int = 64
    continual: str = "replay"
    replay_per_label: int = 8
    lora_r: int = 4
    threads: int = 1
    rule: str = "fedavg"
    trim_ratio: float = 0.2
    clip_norm: float | None = None
    margin: float = 0.005
    tolerance: float = 0.01
    min_updates: int = 1
    collect_s: float = 60.0  # longest wait for children's updates after the round starts
    seed: int = 0
    personal_head_steps: int = 5  # head fine-tune on own data after a rebase (0: off)
    version_rank: int = 16  # most LoRA rank a published version keeps (bytes on the wire)
    train_pooler: bool = False  # LoRA + task head only (PEFT's default): small updates
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.train and self.data is not None


_KIND_NAMES = {dict: "an object", str: "a string", int: "an integer", bool: "true or false"}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return "a number" if isinstance(kind, tuple) else _KIND_NAMES.get(kind, kind.__name__)


def _shown(value: Any) -> str:
    # The wrong value itself, unless it is big: a plan is small, but the message is one line.
    text = repr(value)
    return text if len(text) <= 80 else f"{type(value).__name__} of {len(text)} characters"


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in data:
        raise PlanError(f"{path}.{key}: missing (expected {_kind_name(kind)})")
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise PlanError(f"{path}.{key}: expected {_kind_name(kind)}, got {_shown(value)}")
    return value


def _opt(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    return None if data.get(key) is None else _get(data, key, kind, path)


def _num(
    data: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *, path: str = "plan"
) -> float:
    if key not in data:
        return default
    value = _get(data, key, (int, float), path)
    # The range first: math.isfinite overflows on an integer too large for a float.
    if not (lo <= value <= hi and math.isfinite(value)):
        raise PlanError(f"{path}.{key}: {_shown(value)} is outside [{lo}, {hi}]")
    return float(value)


def _int(
    data: Mapping[str, Any], key: str, default: int, lo: int, hi: int, *, path: str = "plan"
) -> int:
    if key not in data:
        return default
    value = _get(data, key, int, path)
    if not lo <= value <= hi:
        raise PlanError(f"{path}.{key}: {_shown(value)} is outside [{lo}, {hi}]")
    return int(value)


def _choice(data: Mapping[str, Any], key: str, default: str, options: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if value not in options:
        raise PlanError(f"plan.{key}: {_shown(value)} is not one of {', '.join(options)}")
    return str(value)


def _path(value: Any, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PlanError(f"{what}: expected a path, got {_shown(value)}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def parse_plan(data: object, base: Path) -> LearnPlan:
    """Validate a decoded plan; relative paths are relative to ``base``."""
    if not isinstance(data, dict):
        raise PlanError("plan: expected a JSON object")
    tier_data = _get(data, "tier", dict, "plan")
    source = tier_data.get("source")
    if source not in TIER_SOURCES:
        raise PlanError(
            f"plan.tier.source: {_shown(source)} is not one of {', '.join(TIER_SOURCES)}"
        )
    tier_id = _get(tier_data, "tier_id", str, "plan.tier")
    layers = tier_data.get("layers", [])
    if not isinstance(layers, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 256 for i in layers
    ):
        raise PlanError(
            f"plan.tier.layers: expected a list of block indices 0..255, got {_shown(layers)}"
        )
    tier = TierPlan(
        source=source,
        tier_id=tier_id,
        dir=_path(tier_data["dir"], base, "plan.tier.dir") if tier_data.get("dir") else None,
        weights_cid=_opt(tier_data, "weights_cid", str, "plan.tier"),
        teacher_dir=(
            _path(tier_data["teacher_dir"], base, "plan.tier.teacher_dir")
            if tier_data.get("teacher_dir")
            else None
        ),
        teacher_weights_cid=_opt(tier_data, "teacher_weights_cid", str, "plan.tier"),
        layers=tuple(layers),
        max_vocab=(
            None
            if tier_data.get("max_vocab") is None
            else _int(tier_data, "max_vocab", 0, 1, MAX_VOCAB, path="plan.tier")
        ),
        distill_steps=_int(tier_data, "distill_steps", 30, 0, 100_000, path="plan.tier"),
    )
    if source == "dir" and (tier.dir is None or not tier.weights_cid):
        raise PlanError("plan.tier: source 'dir' needs dir and weights_cid")
    if source == "distil" and not layers:
        raise PlanError("plan.tier: source 'distil' needs layers (the teacher blocks kept)")
    clip = data.get("clip_norm")
    if clip is not None and not (
        isinstance(clip, int | float) and not isinstance(clip, bool) and clip > 0
    ):
        raise PlanError(f"plan.clip_norm: expected a positive number or null, got {_shown(clip)}")
    return LearnPlan(
        tier=tier,
        data=_path(data["data"], base, "plan.data") if data.get("data") else None,
        train=bool(_opt(data, "train", bool, "plan")),
        parent=bool(
            data.get("parent", True)
            if isinstance(data.get("parent", True), bool)
            else _get(data, "parent", bool, "plan")
        ),
        steps_per_cycle=_int(data, "steps_per_cycle", 8, 0, 100_000),
        batch_size=_int(data, "batch_size", 8, 1, 4096),
        lr=_num(data, "lr", 1e-3, 1e-8, 10.0),
        max_length=_int(data, "max_length", 64, 2, 4096),
        continual=_choice(data, "continual", "replay", CONTINUAL),
        replay_per_label=_int(data, "replay_per_label", 8, 0, 100_000),
        lora_r=_int(data, "lora_r", 4, 1, 256),
        threads=_int(data, "threads", 1, 1, 256),
        rule=_choice(data, "rule", "fedavg", RULES),
        trim_ratio=_num(data, "trim_ratio", 0.2, 0.0, 0.49),
        clip_norm=float(clip) if clip is not None else None,
        margin=_num(data, "margin", 0.005, 0.0, 1e6),
        tolerance=_num(data, "tolerance", 0.01, 0.0, 1e6),
        min_updates=_int(data, "min_updates", 1, 0, 100_000),
        collect_s=_num(data, "collect_s", 60.0, 0.0, 86_400.0),
        seed=_int(data, "seed", 0, 0, 2**31 - 1),
        personal_head_steps=_int(data, "personal_head_steps", 5, 0, 100_000),
        version_rank=_int(data, "version_rank", 16, 1, 256),
        train_pooler=bool(_opt(data, "train_pooler", bool, "plan")),
    )


@contextmanager
def _file(what: str, path: Path) -> Iterator[None]:
    """Every failure to read or check ``path``: one PlanError that names the file first."""
    try:
        yield
    except PlanError as exc:
        raise PlanError(f"{what} {path}: {exc}") from None
    except OSError as exc:
        raise PlanError(f"{what} {path}: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # A value no check above foresaw (or JSON nested past the parser's depth): still the
        # file's fault, so still a PlanError (exit 2) naming it, never an internal error.
        raise PlanError(f"{what} {path}: unusable ({type(exc).__name__}: {exc})") from exc


def _read_json(path: Path, limit: int) -> object:
    """A JSON file read as hostile input: size checked before reading (under :func:`_file`)."""
    size = path.stat().st_size
    if size > limit:
        raise PlanError(f"{size} bytes, over {limit}")
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:  # UnicodeDecodeError too
        raise PlanError(f"not JSON: {exc}") from None


def load_plan(path: Path) -> LearnPlan:
    """The plan at ``path``, checked field by field; any problem is a :class:`PlanError`."""
    path = Path(path)
    with _file("learning plan", path):
        return parse_plan(_read_json(path, MAX_PLAN_BYTES), path.parent)


def check_plan(path: Path) -> LearnPlan:
    """The plan at ``path`` and its data file (if it names one), both loaded and checked.

    What ``node run`` calls before it opens anything: a bad plan or data file is a
    :class:`PlanError` (exit 2) before the node starts, not a learner that dies after it.
    """
    plan = load_plan(path)
    if plan.data is not None:
        load_data(plan.data)  # the learner loads it again in its worker thread
    return plan


# --- the node's private data ---------------------------------------------------------------


@dataclass(frozen=True)
class DataRecord:
    """One example as the data file stores it (mirrors p2phier.learn.data.Example)."""

    uid: str
    text: str
    label: str
    domain: str
    subdomain: str


@dataclass(frozen=True)
class NodeData:
    """``arrivals[i]``: training examples new at round i+1; ``test``: held-out."""

    arrivals: tuple[tuple[DataRecord, ...], ...]
    test: tuple[DataRecord, ...]


def _records(items: object, path: str) -> tuple[DataRecord, ...]:
    if not isinstance(items, list):
        raise PlanError(f"{path}: expected a list of examples, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise PlanError(
                f"{path}[{i}]: expected an example (an object), got {type(item).__name__}"
            )
        fields = {}
        for key in RECORD_FIELDS:
            if key not in item:
                raise PlanError(
                    f"{path}[{i}].{key}: missing (every example needs the strings "
                    f"{', '.join(RECORD_FIELDS)})"
                )
            value = item[key]
            # Types and sizes only, never the value: this is the node's private data.
            if not isinstance(value, str):
                raise PlanError(f"{path}[{i}].{key}: expected a string, got {type(value).__name__}")
            if len(value) > MAX_FIELD_CHARS:
                raise PlanError(
                    f"{path}[{i}].{key}: {len(value)} characters, over {MAX_FIELD_CHARS}"
                )
            fields[key] = value
        out.append(DataRecord(**fields))
    return tuple(out)


def load_data(path: Path) -> NodeData:
    """The data file at ``path``, every example checked; any problem is a :class:`PlanError`."""
    path = Path(path)
    with _file("data file", path):
        data = _read_json(path, MAX_DATA_BYTES)
        if not isinstance(data, dict) or not isinstance(data.get("arrivals"), list):
            raise PlanError("expected an object with 'arrivals' (a list of lists) and 'test'")
        arrivals = tuple(_records(a, f"arrivals[{i}]") for i, a in enumerate(data["arrivals"]))
        return NodeData(arrivals, _records(data.get("test", []), "test"))


def dump_data(arrivals: list[list[Any]], test: list[Any]) -> bytes:
    """Serialise examples (anything with the five string attributes) as a data file."""

    def rec(e: Any) -> dict[str, str]:
        return {k: getattr(e, k) for k in ("uid", "text", "label", "domain", "subdomain")}

    return json.dumps(
        {"arrivals": [[rec(e) for e in a] for a in arrivals], "test": [rec(e) for e in test]},
        sort_keys=True,
    ).encode()
