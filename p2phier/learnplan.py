"""A node's learning plan: which tier it runs, where its private data is, how it trains.

Owns :class:`LearnPlan` and :func:`load_plan`.  The plan is a JSON file in the
node's home (``learn/plan.json`` unless ``learn.plan`` says otherwise) written
by the operator or by the devnet launcher; the node's daemon reads it when
``learn.enabled`` is true; ``p2phier node run`` checks it and its data file with
:func:`check_plan` before it starts anything.  Both are hostile input like any
file: size-capped, every field type- and range-checked, and every error is one
:class:`PlanError` that names the file, the example and the field (the formats
are documented in ``node/NODE.md``).

The learning settings (training budget, aggregation and timing rules) are
:class:`LearnSettings`, declared once with each field's default, check and
scenario table: a plan holds them at its top level, a devnet scenario in its
``[training]``, ``[aggregation]``, ``[timing]`` and ``[wire]`` tables (:func:`parse_settings`
checks both), and the devnet launcher copies them into every node's plan with
:func:`settings_json`, never field by field.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from p2phier.errors import ConfigError
from p2phier.fields import (
    Bool,
    Check,
    Choice,
    FieldError,
    Int,
    Num,
    Optional,
    Str,
    Type,
    checked,
    get,
    shown,
)
from p2phier.fsutil import load_json

MAX_PLAN_BYTES = 1 << 20
MAX_DATA_BYTES = 256 << 20
TIER_SOURCES = ("dir", "distil", "int8")
RULES = ("fedavg", "median", "trimmed_mean", "norm_clip", "probe_scored")
#: the continual-learning methods a node can run; what each turns on, with which parameters,
#: is :func:`p2phier.learn.cycle.continual_config` (the one mapping, the bench's too)
CONTINUAL = ("naive", "replay", "ewc", "replay+ewc", "replay+logits", "replay+ace",
             "replay+logits+ace")  # fmt: skip
RECORD_FIELDS = ("uid", "text", "label", "domain", "subdomain")
MAX_FIELD_CHARS = 1 << 20
MAX_VOCAB = 1 << 24
MAX_LABELS = 4096
MAX_LABEL_CHARS = 256
#: the tables of a devnet scenario that hold learning settings (``table`` of each setting)
TABLES = ("training", "aggregation", "timing", "wire")
#: how a node's updates and versions travel: ``int8-delta`` (against the artifact the
#: receiver already holds, a full fp16 keyframe when it holds none), or ``fp16`` (a full
#: adapter every time: the comparison run of ``bench/devnet.py --compare-wire``)
WIRE_ENCODINGS = ("int8-delta", "fp16")
#: what a node's own adapter does on a rebase (``LearnSettings.rebase``)
REBASE_MODES = ("keep", "reset")
#: how a node with class prototypes answers within a task (LearnSettings.answer_by)
ANSWER_BY = ("head", "validated")

_T = TypeVar("_T")


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


def _setting(default: _T, check: Check[_T], table: str) -> _T:
    """A learning setting: its default, its check and the scenario table that holds it."""
    return field(default=default, metadata={"check": check, "table": table})


@dataclass(frozen=True)
class LearnSettings:
    """How a node trains, aggregates and publishes: declared once, here.

    A plan holds these at its top level; a devnet scenario gives every node the same in
    its ``[training]``, ``[aggregation]``, ``[timing]`` and ``[wire]`` tables (each
    field's ``table``), checked by the same checks, and the launcher writes them into
    each node's plan as they are (:func:`settings_json`).  A new field here is a new key
    of both formats.
    """

    steps_per_cycle: int = _setting(8, Int(0, 100_000), "training")
    batch_size: int = _setting(8, Int(1, 4096), "training")
    lr: float = _setting(1e-3, Num(1e-8, 10.0), "training")
    max_length: int = _setting(64, Int(2, 4096), "training")  # tokens per example
    #: the method that forgot least in bench/learn.py with these defaults (3.4 pts against
    #: replay's 4.3; a cycle barely learns at this budget).  ``replay+logits+ace`` forgets
    #: 1.7 with the devnet's 16 steps at lr 5e-3, but as the default (with that budget) a
    #: newcomer of two topics ended a round below its first on its own held-out data in 3 of 5
    #: runs (tests/devnet/test_join.py, 0.95 against 1.0: the rebase cost it one article and
    #: its next round did not win it back): not the default until that is solved
    continual: str = _setting("replay+logits", Choice(CONTINUAL), "training")
    replay_per_label: int = _setting(8, Int(0, 100_000), "training")
    #: ``replay+logits``: weight of the pull of replayed examples towards the logits they had
    #: when buffered (DER-style; MSE).  bench/learn.py's former 40-step stages: 0.1 forgot 2.2
    #: pts, 0.3 0.4 pts, 1.0 hurt the new classes
    logit_replay_weight: float = _setting(0.3, Num(0.0, 100.0, open_lo=True), "training")
    lora_r: int = _setting(4, Int(1, 256), "training")
    threads: int = _setting(1, Int(1, 256), "training")  # torch threads of the worker
    #: head fine-tune on own data after a rebase (0: off)
    personal_head_steps: int = _setting(5, Int(0, 100_000), "training")
    #: what a training node's own adapter does when its parent's new version arrives:
    #: ``reset`` (a fresh LoRA; the personal head is kept and fine-tuned), ``keep`` (it
    #: stays on top of the new version, and its next update is what it learned since: a
    #: LoRA of twice the rank).  In the default devnet (seed 0) ``keep`` sent 1.6x the
    #: update bytes (0.73% of the model against 0.43-0.49%) for no measurable accuracy
    #: (0.650 against 0.640, each +-10 pts): ``reset`` is the default
    rebase: str = _setting("reset", Choice(REBASE_MODES), "training")
    #: a version from a distilled tier's parent is fitted to this tier first: this many steps
    #: on the node's own examples towards the parent's outputs and its labels (0: off; see
    #: p2phier.learn.calibrate)
    calibrate_steps: int = _setting(10, Int(0, 100_000), "training")
    calibrate_lr: float = _setting(1e-3, Num(1e-8, 10.0), "training")
    #: LoRA + task head only (PEFT's default): small updates; null in a plan: false
    train_pooler: bool = _setting(False, Bool(null_is_false=True), "training")
    rule: str = _setting("fedavg", Choice(RULES), "aggregation")
    trim_ratio: float = _setting(0.2, Num(0.0, 0.49), "aggregation")
    clip_norm: float | None = _setting(None, Optional(Num(0.0, 1e6, open_lo=True)), "aggregation")
    #: a parent that does not train (its version is its only model) but has a validation set
    #: keeps what it published of its own since its last base on top of its parent's next
    #: version, where its validation set says that serves its domain better than the version
    #: alone (the grandparent averaged the node's update with its siblings': a news update
    #: with a health one)
    keep_domain: bool = _setting(True, Bool(), "aggregation")
    #: how a node holding class prototypes (learn/prototypes.py) answers within a task:
    #: ``head`` (its model's head), or ``validated``: by nearest prototype for each task its
    #: validation set (the plan's held-out data) answers better that way beyond chance,
    #: re-decided after each aggregation and parent version; a task outside that set as its
    #: children holding the task's data said.  Without a validation set nor such children
    #: it is the head: the default costs nothing where it cannot help
    answer_by: str = _setting("validated", Choice(ANSWER_BY), "aggregation")
    #: the most LoRA rank a published version keeps (bytes on the wire)
    version_rank: int = _setting(16, Int(1, 256), "aggregation")
    margin: float = _setting(0.005, Num(0.0, 1e6), "timing")
    tolerance: float = _setting(0.01, Num(0.0, 1e6), "timing")
    min_updates: int = _setting(1, Int(0, 100_000), "timing")
    #: longest wait for children's updates after the round starts
    collect_s: float = _setting(60.0, Num(0.0, 86_400.0), "timing")
    #: once every known child's update is in (a child whose updates were used before), the
    #: least a round still waits for its newcomers' (p2phier.node.collect)
    newcomer_min_s: float = _setting(10.0, Num(0.0, 86_400.0), "timing")
    wire_encoding: str = _setting("int8-delta", Choice(WIRE_ENCODINGS), "wire")
    #: a full (fp16) adapter at least every this many artifacts of a stream (1: every time),
    #: so that a newcomer's fetch and every reader's verification walk at most this many
    #: deltas (the artifact limit ``max_chain`` is 64)
    keyframe_every: int = _setting(8, Int(1, 64), "wire")
    #: an update's int8 step is at least each tensor's RMS over this (0: the finest step,
    #: max|x|/127): coarser steps compress better and an update is averaged with its
    #: siblings' at the parent; a version (the whole model its children train on) always
    #: travels at the finest step.  Where the full update then compresses smaller than the
    #: delta on the previous one (a LoRA trained afresh after a rebase), the full one goes
    update_rms_steps: float = _setting(8.0, Num(0.0, 1024.0), "wire")


#: every learning setting, in declaration order
SETTINGS: tuple[Field[Any], ...] = fields(LearnSettings)


def parse_settings(data: Mapping[str, Any], path: str, table: str | None = None) -> dict[str, Any]:
    """The learning settings present in ``data`` (only scenario table ``table``'s if given),
    each checked (:class:`~p2phier.fields.FieldError` naming ``path.key``)."""
    out: dict[str, Any] = {}
    for f in SETTINGS:
        if f.name in data and (table is None or f.metadata["table"] == table):
            out[f.name] = checked(data[f.name], f.metadata["check"], f"{path}.{f.name}")
    return out


def settings_json(settings: LearnSettings) -> dict[str, Any]:
    """Every learning setting of ``settings`` as a plan's JSON holds it."""
    return {f.name: getattr(settings, f.name) for f in SETTINGS}


@dataclass(frozen=True, kw_only=True)
class LearnPlan(LearnSettings):
    """A node's plan: its tier, its data and role, and its :class:`LearnSettings`."""

    tier: TierPlan
    data: Path | None  # the node's private data (JSON); None: no data at all
    train: bool = False  # runs local cycles on its arrivals (else: data is a validation set)
    parent: bool = True  # aggregates children and publishes versions (False: a leaf)
    seed: int = 0
    #: the labels this node's model answers with: its domain's task (a news node's topics,
    #: never a drug review's sentiment, though the tier's head holds both); empty: every label
    #: of the tier.  Accuracies, the timing rule's included, are measured among these.
    labels: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.train and self.data is not None


def _path(data: Mapping[str, Any], key: str, where: str, base: Path) -> Path | None:
    """``data[key]`` as a path relative to ``base``; absent, null or "": None."""

    def check(value: Any) -> Path:
        if not isinstance(value, str) or "\x00" in value:
            raise FieldError(f"must be a path, got {shown(value)}")
        path = Path(value)
        return path if path.is_absolute() else base / path

    return get(data, key, check, where, None) if data.get(key) else None


def _layers(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 256 for i in value
    ):
        raise FieldError(f"must be a list of block indices 0..255, got {shown(value)}")
    return tuple(value)


def _labels(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_LABELS
        or not all(isinstance(x, str) and 0 < len(x) <= MAX_LABEL_CHARS for x in value)
        or len(set(value)) != len(value)
    ):
        raise FieldError(
            f"must be a list of at most {MAX_LABELS} distinct label names "
            f"(1-{MAX_LABEL_CHARS} characters), got {shown(value)}"
        )
    return tuple(value)


def parse_plan(data: object, base: Path) -> LearnPlan:
    """Validate a decoded plan; relative paths are relative to ``base``."""
    try:
        return _parse_plan(data, base)
    except FieldError as exc:
        raise PlanError(str(exc)) from None


def _parse_plan(data: object, base: Path) -> LearnPlan:
    if not isinstance(data, dict):
        raise PlanError(f"plan: must be a JSON object, got {shown(data)}")
    t = get(data, "tier", Type(dict), "plan")
    source = get(t, "source", Choice(TIER_SOURCES), "plan.tier")
    tier = TierPlan(
        source=source,
        tier_id=get(t, "tier_id", Str(), "plan.tier"),
        dir=_path(t, "dir", "plan.tier", base),
        weights_cid=get(t, "weights_cid", Optional(Str()), "plan.tier", None),
        teacher_dir=_path(t, "teacher_dir", "plan.tier", base),
        teacher_weights_cid=get(t, "teacher_weights_cid", Optional(Str()), "plan.tier", None),
        layers=get(t, "layers", _layers, "plan.tier", ()),
        max_vocab=get(t, "max_vocab", Optional(Int(1, MAX_VOCAB)), "plan.tier", None),
        distill_steps=get(t, "distill_steps", Int(0, 100_000), "plan.tier", 30),
    )
    if source == "dir" and (tier.dir is None or not tier.weights_cid):
        raise PlanError("plan.tier: source 'dir' needs dir and weights_cid")
    if source == "distil" and not tier.layers:
        raise PlanError("plan.tier: source 'distil' needs layers (the teacher blocks kept)")
    return LearnPlan(
        tier=tier,
        data=_path(data, "data", "plan", base),
        train=get(data, "train", Bool(null_is_false=True), "plan", False),
        parent=get(data, "parent", Bool(), "plan", True),
        seed=get(data, "seed", Int(0, 2**31 - 1), "plan", 0),
        labels=get(data, "labels", _labels, "plan", ()),
        **parse_settings(data, "plan"),
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


def load_plan(path: Path) -> LearnPlan:
    """The plan at ``path``, checked field by field; any problem is a :class:`PlanError`."""
    path = Path(path)
    data = load_json(path, MAX_PLAN_BYTES, "learning plan", PlanError)
    with _file("learning plan", path):
        return parse_plan(data, path.parent)


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
    data = load_json(path, MAX_DATA_BYTES, "data file", PlanError)
    with _file("data file", path):
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
