"""The devnet scenario model: frozen dataclasses loaded from a TOML file (pure, reads one file).

Owns :class:`Scenario` and :func:`load_scenario` / :func:`parse_scenario`.  A
scenario says everything a devnet run needs before any process starts: the
topology (nodes with their layer, domain path and optional explicit parent),
the model tier of each node, each node's private data shard, the arrival
schedule of new local data per round, the number of rounds, the aggregation
rule, the timing-rule thresholds, faults at given rounds, the training budget,
and ``attackers``: training nodes that run as attackers
(:mod:`p2phier.devnet.attacker`).  ``devnet/README.md`` documents the format key
by key.  The learning settings (``[training]``, ``[aggregation]``, ``[timing]``, ``[wire]``)
are :class:`~p2phier.learnplan.LearnSettings`, declared and checked there: what
the scenario says is what every node's plan holds.

Every scenario file is hostile input: its size is capped before it is read
(:func:`p2phier.fsutil.load_toml`), unknown keys are refused (a typo must not
silently become a default), and every bad value raises :class:`ScenarioError`
naming the field path, e.g. ``nodes[3].domain: 'en/Health' is not a valid domain path: ...``.

The hierarchy is checked with the rules of :mod:`p2phier.records` and
:mod:`p2phier.hierarchy`: one master at the root, each other node has a
possible parent exactly one layer up whose domain is a prefix of its own (the
longest such prefix wins; a tie must be broken by an explicit ``parent``), and
a node's tier is its parent's tier or one derived from it by distillation or
quantisation (updates are aggregated between nodes of one tier lineage).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from p2phier.errors import ConfigError
from p2phier.fields import (
    REQUIRED,
    Check,
    Choice,
    FieldError,
    Int,
    Num,
    Str,
    checked,
    get,
    kind_name,
)
from p2phier.fsutil import load_toml
from p2phier.learnplan import SETTINGS, TABLES, LearnSettings, parse_settings
from p2phier.records import (
    Layer,
    RecordError,
    check_layer_domain,
    domain_depth,
    is_domain_prefix,
)

FORMAT_VERSION = 1
MAX_SCENARIO_BYTES = 1 << 20
MAX_NODES = 256
MAX_ROUNDS = 1000
MAX_LIST = 256
MAX_STEPS = 100_000
MAX_SHARD = 100_000
#: The devnet's defaults where they differ from a node's (every other learning setting's
#: default is LearnSettings'): twelve processes on two cores train slowly, so a parent
#: waits longer for its children's updates.
DEVNET_SETTINGS: Mapping[str, Any] = {"collect_s": 900.0}
#: How often a devnet's nodes collect their garbage (``retention.gc_interval_s``; a node's
#: default is 10 minutes, a devnet lasts minutes): the scenario's ``gc_interval_s``.
DEVNET_GC_INTERVAL_S = 20.0

DATASETS = ("bbc", "drugs")
#: The BBC News topics (dataset ``bbc``: group = topic = label).  Drug-review
#: groups are conditions, checked against the data when shards are built.
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
TIER_KINDS = ("minilm", "student", "int8", "tiny")
ROOT_TIER_KINDS = ("minilm", "tiny")  # built from nothing; the others derive from a teacher
ARRIVAL_ORDERS = ("shuffled", "by_label")
FAULT_ACTIONS = ("kill", "freeze", "restart")
#: poisoning: what a training node sends its parent (p2phier/devnet/attacker.py)
POISONING_BEHAVIOURS = (
    "sign_flip", "scale", "noise", "label_flip", "stale", "free_ride", "alie", "ipm",
    "alie_late", "ipm_late", "proto_lie",
)  # fmt: skip
#: network attacks any node but the master may run (p2phier/devnet/netattack.py)
NETWORK_BEHAVIOURS = (
    "wrong_blocks",
    "withhold",
    "flood",
    "equivocate",
    "slander",
    "fake_master",
    "sybil",
)
ATTACK_BEHAVIOURS = POISONING_BEHAVIOURS + NETWORK_BEHAVIOURS
#: attackers that never take their scenario place (the launcher does not wait for them):
#: an equivocator is isolated on sight, a fake master claims another layer
NOT_JOINING = ("equivocate", "fake_master")
TRAINING_LAYERS = (Layer.SUBDOMAIN, Layer.DEVICE)  # they run local learning cycles

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_GROUP_RE = re.compile(r"[a-z0-9][a-z0-9 ,'()/.-]{0,63}")


class ScenarioError(ConfigError):
    """A scenario file is missing, malformed or describes an impossible devnet."""


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TierSpec:
    """A model tier; ``teacher`` names the tier a student or int8 tier derives from."""

    name: str
    kind: str  # one of TIER_KINDS
    teacher: str | None = None
    layers: tuple[int, ...] = ()  # student: teacher blocks kept; tiny: () (see n_layers)
    max_vocab: int | None = None  # student/tiny: pruned vocabulary size
    distill_steps: int = 0  # student: distillation steps when the node joins
    hidden: int = 64  # tiny only
    n_layers: int = 2  # tiny only (TOML key ``depth``)
    #: ``[tiers.NAME.training]``: [training] settings for this tier's nodes only (a smaller
    #: LoRA rank for small models, say), checked as [training]'s are
    training: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardSpec:
    """A node's private data: ``train`` + ``test`` examples, ``skew`` of them from ``home``."""

    dataset: str  # "bbc" | "drugs"
    home: tuple[str, ...]  # groups the node is skewed towards (BBC topics, drug conditions)
    others: tuple[str, ...]  # groups the rest is drawn from (empty: every other group)
    train: int
    test: int
    skew: float
    seed: int


@dataclass(frozen=True)
class NodeSpec:
    name: str
    layer: Layer
    domain: str
    tier: str
    parent: str | None  # resolved: the parent's name (None only for the master)
    explicit_parent: bool
    shard: ShardSpec | None
    #: Runs local learning cycles on arriving data: sub-domain and device nodes, and any
    #: node without children (in a 3-layer devnet the domain nodes are the leaves).
    trains: bool = False


@dataclass(frozen=True)
class ArrivalSpec:
    """Fraction of each node's training shard that arrives at the start of round i+1."""

    fractions: tuple[float, ...]
    order: str = "shuffled"


@dataclass(frozen=True)
class FaultSpec:
    round: int
    node: str
    action: str  # kill | freeze | restart
    at: str = "start"  # "start" | "end" of the round


@dataclass(frozen=True)
class AttackerSpec:
    """A node of the scenario that runs as an attacker (p2phier/devnet/attacker.py)."""

    node: str
    behaviour: str
    from_round: int = 1
    #: the attack's size (None: its default): a poisoning factor, a flood's announcements
    #: per second, a Sybil cluster's identities
    strength: float | None = None

    @property
    def spec(self) -> str:
        """As the attacker module takes it: ``sign-flip:STRENGTH@FROM_ROUND``."""
        amount = "" if self.strength is None else f":{self.strength:g}"
        return f"{self.behaviour.replace('_', '-')}{amount}@{self.from_round}"

    @property
    def joins(self) -> bool:
        return self.behaviour not in NOT_JOINING


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    seed: int
    rounds: int
    nodes: tuple[NodeSpec, ...]
    tiers: Mapping[str, TierSpec]
    #: every node's learning settings ([training], [aggregation], [timing], [wire]); each node's
    #: plan holds them as they are (p2phier.devnet.runner.node_plan)
    learning: LearnSettings
    arrival: ArrivalSpec
    faults: tuple[FaultSpec, ...] = ()
    attackers: tuple[AttackerSpec, ...] = ()
    gc_interval_s: float = DEVNET_GC_INTERVAL_S
    format: int = FORMAT_VERSION

    # views ------------------------------------------------------------------------------
    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ScenarioError(f"no node named {name!r} in scenario {self.name!r}")

    @property
    def master(self) -> NodeSpec:
        return next(n for n in self.nodes if n.layer is Layer.MASTER)

    def children(self, name: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.parent == name]

    def descendants(self, name: str) -> list[NodeSpec]:
        out: list[NodeSpec] = []
        for child in self.children(name):
            out.append(child)
            out.extend(self.descendants(child.name))
        return out

    def training_nodes(self) -> list[NodeSpec]:
        return [n for n in self.nodes if n.trains]

    def learning_for(self, tier: str) -> LearnSettings:
        """The learning settings of ``tier``'s nodes: the scenario's, with the tier's own
        ``[tiers.NAME.training]`` over them."""
        over = self.tiers[tier].training
        return replace(self.learning, **over) if over else self.learning

    def tier_lineage(self, tier: str) -> list[str]:
        """``tier`` and its teachers, nearest first, ending with a root tier."""
        out = [tier]
        while (teacher := self.tiers[out[-1]].teacher) is not None:
            out.append(teacher)
        return out

    def with_rounds(self, rounds: int) -> Scenario:
        """The scenario with another number of rounds (``devnet up --rounds``), re-checked."""
        if not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise ScenarioError(f"rounds: must be an integer in [1, {MAX_ROUNDS}], got {rounds!r}")
        for i, fault in enumerate(self.faults):
            if fault.round > rounds:
                raise ScenarioError(
                    f"faults[{i}].round: {fault.round} is past the last round ({rounds}); "
                    "ask for more rounds or use a scenario without that fault"
                )
        for i, a in enumerate(self.attackers):
            if a.from_round > rounds:
                raise ScenarioError(
                    f"attackers[{i}].from_round: {a.from_round} is past the last round "
                    f"({rounds}); ask for more rounds"
                )
        return replace(self, rounds=rounds)

    def without_attackers(self) -> Scenario:
        """The same network with every node honest (``devnet up --no-attackers``): the clean
        run an attack run is compared with."""
        return replace(self, attackers=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (layers as labels); what ``report.json`` embeds."""
        data = asdict(self)
        data["tiers"] = {k: asdict(v) for k, v in sorted(self.tiers.items())}
        learning = data.pop("learning")
        for table in TABLES:  # as the scenario file has them
            data[table] = {
                f.name: learning[f.name] for f in SETTINGS if f.metadata["table"] == table
            }
        for node in data["nodes"]:
            node["layer"] = Layer(node["layer"]).label
        return data


# --- reading the file ----------------------------------------------------------------------

_T = TypeVar("_T")


class _Table:
    """A TOML table being read: every access names its path; leftovers are refused.

    Values are checked with :mod:`p2phier.fields` (its FieldError names the path;
    :func:`parse_scenario` turns it into a ScenarioError)."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(
                f"{path or 'the scenario'}: must be a table, got {kind_name(type(data))}"
            )
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def get(self, key: str, check: Check[_T], default: _T | None = None) -> _T:
        self.used.add(key)
        return get(self.data, key, check, self.path, REQUIRED if default is None else default)

    def opt(self, key: str, check: Check[_T]) -> _T | None:
        self.used.add(key)
        return get(self.data, key, check, self.path, None)

    def settings(self, table: str | None = None) -> dict[str, Any]:
        """This table's learning settings (:class:`~p2phier.learnplan.LearnSettings` fields
        whose ``table`` is ``table``, by default this table's name), checked as a plan checks
        them."""
        table = table or self.path
        self.used.update(f.name for f in SETTINGS if f.metadata["table"] == table)
        return parse_settings(self.data, self.path, table)

    def sub(self, key: str, required: bool = False) -> _Table:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise ScenarioError(f"{self.at(key)}: missing (required table)")
            return _Table({}, self.at(key))
        return _Table(self.data[key], self.at(key))

    def array(self, key: str) -> Iterator[_Table]:
        self.used.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise ScenarioError(f"{self.at(key)}: must be an array of tables ([[{key}]])")
        if len(value) > MAX_NODES:
            raise ScenarioError(f"{self.at(key)}: {len(value)} entries, over {MAX_NODES}")
        for i, item in enumerate(value):
            yield _Table(item, f"{self.at(key)}[{i}]")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "none"
            raise ScenarioError(f"{self.at(unknown[0])}: unknown key (known keys here: {known})")


_str = Str()


def _name(value: Any) -> str:
    text = _str(value)
    if not _NAME_RE.fullmatch(text):
        raise FieldError(
            f"{text!r} is not a valid name (1-32 lower-case letters, digits or "
            "inner '-'; it names the node's directory)"
        )
    return text


def _list(check: Check[_T]) -> Check[tuple[_T, ...]]:
    def convert(value: Any) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise FieldError(f"must be an array, got {kind_name(type(value))}")
        if len(value) > MAX_LIST:
            raise FieldError(f"{len(value)} entries, over {MAX_LIST}")
        return tuple(checked(item, check, f"[{i}]") for i, item in enumerate(value))

    return convert


def _group(value: Any) -> str:
    text = _str(value)
    if not _GROUP_RE.fullmatch(text):
        raise FieldError(
            f"{text!r} is not a data group (a BBC topic or a lower-case drug-review "
            "condition such as 'birth control')"
        )
    return text


# --- parsing the parts ---------------------------------------------------------------------


def _parse_tier(name: str, t: _Table) -> TierSpec:
    kind = t.get("kind", Choice(TIER_KINDS))
    teacher = t.opt("teacher", _name)
    if kind in ROOT_TIER_KINDS and teacher is not None:
        raise ScenarioError(f"{t.at('teacher')}: a {kind} tier is built from nothing; remove it")
    if kind not in ROOT_TIER_KINDS and teacher is None:
        raise ScenarioError(f"{t.at('teacher')}: missing (a {kind} tier derives from a teacher)")
    if teacher == name:
        raise ScenarioError(f"{t.at('teacher')}: a tier cannot be its own teacher")
    layers: tuple[int, ...] = ()
    if kind == "student":
        layers = t.get("layers", _list(Int(0, 63)))
        if not layers or len(set(layers)) != len(layers):
            raise ScenarioError(f"{t.at('layers')}: must be distinct block indices, at least one")
    max_vocab = t.opt("max_vocab", Int(64, 250_000)) if kind in ("student", "tiny") else None
    distill = t.get("distill_steps", Int(0, MAX_STEPS), 0) if kind == "student" else 0
    hidden = t.get("hidden", Int(8, 4096), 64) if kind == "tiny" else 64
    n_layers = t.get("depth", Int(1, 48), 2) if kind == "tiny" else 2
    if kind == "tiny" and hidden % 4:
        raise ScenarioError(f"{t.at('hidden')}: must be a multiple of 4 (4 attention heads)")
    tt = t.sub("training")
    training = tt.settings("training")
    tt.done()
    t.done()
    return TierSpec(name, kind, teacher, layers, max_vocab, distill, hidden, n_layers, training)


def _parse_shard(t: _Table) -> ShardSpec:
    dataset = t.get("dataset", Choice(DATASETS))
    home = t.get("home", _list(_group))
    others = t.opt("others", _list(_group)) or ()
    if not home:
        raise ScenarioError(f"{t.at('home')}: name at least one group")
    if dataset == "bbc":
        for key, groups in (("home", home), ("others", others)):
            for i, g in enumerate(groups):
                if g not in BBC_TOPICS:
                    raise ScenarioError(
                        f"{t.at(key)}[{i}]: {g!r} is not a BBC topic ({', '.join(BBC_TOPICS)})"
                    )
    both = sorted(set(home) & set(others))
    if both:
        raise ScenarioError(f"{t.at('others')}: {both[0]!r} is already a home group")
    train = t.get("train", Int(1, MAX_SHARD))
    test = t.get("test", Int(1, MAX_SHARD))
    skew = t.get("skew", Num(0.0, 1.0), 1.0)
    seed = t.get("seed", Int(0, 2**31 - 1), 0)
    t.done()
    return ShardSpec(dataset, home, others, train, test, skew, seed)


def _parse_node(t: _Table) -> tuple[NodeSpec, str]:
    name = t.get("name", _name)
    try:
        layer = Layer.parse(t.get("layer", _str))
    except RecordError as exc:
        raise ScenarioError(f"{t.at('layer')}: {exc}") from None
    domain = t.get("domain", _str, "")
    try:
        check_layer_domain(layer, domain)
    except RecordError as exc:
        raise ScenarioError(
            f"{t.at('domain')}: {domain!r} is not a valid domain path: {exc}"
        ) from None
    tier = t.get("tier", _name)
    parent = t.opt("parent", _name)
    if layer is Layer.MASTER and parent is not None:
        raise ScenarioError(f"{t.at('parent')}: the master has no parent")
    shard = _parse_shard(t.sub("shard")) if t.has("shard") else None
    t.raw("shard")
    t.done()
    return NodeSpec(name, layer, domain, tier, parent, parent is not None, shard), t.path


def _resolve_parents(nodes: list[tuple[NodeSpec, str]]) -> tuple[NodeSpec, ...]:
    by_name = {n.name: n for n, _ in nodes}
    out: list[NodeSpec] = []
    for node, path in nodes:
        if node.layer is Layer.MASTER:
            out.append(node)
            continue
        above = node.layer.above
        assert above is not None
        if node.parent is not None:
            parent = by_name.get(node.parent)
            if parent is None:
                raise ScenarioError(f"{path}.parent: no node is named {node.parent!r}")
            if not _may_parent(parent, node):
                raise ScenarioError(
                    f"{path}.parent: {parent.name!r} ({parent.layer.label} on "
                    f"{parent.domain or 'the root'!r}) cannot be the parent of a "
                    f"{node.layer.label} node on {node.domain!r}: a parent is one layer up "
                    "with a domain that is a prefix of the child's"
                )
            out.append(node)
            continue
        candidates = [c for c, _ in nodes if _may_parent(c, node)]
        if not candidates:
            raise ScenarioError(
                f"{path}: no possible parent for a {node.layer.label} node on {node.domain!r} "
                f"(add a {above.label} node whose domain is a prefix of it, or fix the domain)"
            )
        deepest = max(domain_depth(c.domain) for c in candidates)
        best = sorted(c.name for c in candidates if domain_depth(c.domain) == deepest)
        if len(best) > 1:
            raise ScenarioError(
                f"{path}.parent: ambiguous, {', '.join(repr(b) for b in best)} could all be the "
                'parent; name one with parent = "..."'
            )
        out.append(replace(node, parent=best[0]))
    parents = {n.parent for n in out}
    trained = [replace(n, trains=n.layer in TRAINING_LAYERS or n.name not in parents) for n in out]
    for (_, path), node in zip(nodes, trained, strict=True):
        if node.trains and node.shard is None:
            why = "a leaf" if node.layer not in TRAINING_LAYERS else f"a {node.layer.label} node"
            raise ScenarioError(f"{path}.shard: missing ({why} trains on its own data)")
    return tuple(trained)


def _may_parent(parent: NodeSpec, child: NodeSpec) -> bool:
    """The hierarchy's rule (:func:`p2phier.hierarchy.is_parent_candidate`) on specs."""
    return parent.layer is child.layer.above and is_domain_prefix(parent.domain, child.domain)


def _check_tiers(tiers: Mapping[str, TierSpec]) -> None:
    for name, spec in tiers.items():
        seen = [name]
        current = spec
        while current.teacher is not None:
            if current.teacher not in tiers:
                raise ScenarioError(
                    f"tiers.{current.name}.teacher: no tier is named {current.teacher!r}"
                )
            if current.teacher in seen:
                raise ScenarioError(
                    f"tiers.{name}.teacher: the teachers form a cycle "
                    f"({' -> '.join([*seen, current.teacher])})"
                )
            seen.append(current.teacher)
            current = tiers[current.teacher]
        if spec.kind == "int8" and tiers[spec.teacher or name].kind == "int8":
            raise ScenarioError(f"tiers.{name}.teacher: an int8 tier of an int8 tier is pointless")


def _check_topology(scenario: Scenario, paths: Mapping[str, str]) -> None:
    for node in scenario.nodes:
        path = paths[node.name]
        if node.tier not in scenario.tiers:
            known = ", ".join(sorted(scenario.tiers)) or "none"
            raise ScenarioError(f"{path}.tier: no tier is named {node.tier!r} (tiers: {known})")
        if node.parent is None:
            if scenario.tiers[node.tier].kind not in ROOT_TIER_KINDS:
                raise ScenarioError(
                    f"{path}.tier: the master needs a tier built from nothing "
                    f"({', '.join(ROOT_TIER_KINDS)}), not a {scenario.tiers[node.tier].kind}"
                )
            continue
        parent_tier = scenario.node(node.parent).tier
        if parent_tier not in scenario.tier_lineage(node.tier):
            raise ScenarioError(
                f"{path}.tier: {node.tier!r} is neither the parent's tier {parent_tier!r} nor "
                "derived from it; a child runs its parent's tier or a student/int8 tier of it"
            )


def _check_faults(scenario: Scenario, paths: Mapping[str, str]) -> None:
    state: dict[str, str] = {n.name: "up" for n in scenario.nodes}
    order = sorted(enumerate(scenario.faults), key=lambda f: (f[1].round, f[1].at == "end", f[0]))
    for i, fault in order:
        if fault.node not in state:
            raise ScenarioError(f"faults[{i}].node: no node is named {fault.node!r}")
        if fault.round > scenario.rounds:
            raise ScenarioError(
                f"faults[{i}].round: {fault.round} is past the last round ({scenario.rounds})"
            )
        now = state[fault.node]
        if fault.action in ("kill", "freeze") and now != "up":
            raise ScenarioError(
                f"faults[{i}].action: cannot {fault.action} {fault.node!r} in round "
                f"{fault.round}: it is already {'killed' if now == 'kill' else 'frozen'}"
            )
        if fault.action == "restart" and now == "up":
            raise ScenarioError(
                f"faults[{i}].action: cannot restart {fault.node!r} in round {fault.round}: "
                "it is running (kill or freeze it in an earlier fault)"
            )
        state[fault.node] = "up" if fault.action == "restart" else fault.action


def parse_scenario(data: Mapping[str, Any], *, name: str = "scenario") -> Scenario:
    """Build and validate a :class:`Scenario` from parsed TOML."""
    try:
        return _parse_scenario(data, name)
    except FieldError as exc:
        raise ScenarioError(str(exc)) from None


def _parse_scenario(data: Mapping[str, Any], name: str) -> Scenario:
    root = _Table(dict(data), "")
    fmt = root.get("format", Int(0, 2**31), FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise ScenarioError(
            f"format: scenario format {fmt} is not known to this build (it reads {FORMAT_VERSION})"
        )
    scenario_name = root.get("name", _name, name if _NAME_RE.fullmatch(name) else "scenario")
    description = root.get("description", _str, "")
    seed = root.get("seed", Int(0, 2**31 - 1), 0)
    rounds = root.get("rounds", Int(1, MAX_ROUNDS))
    gc_interval_s = root.get("gc_interval_s", Num(0.5, 3600.0), DEVNET_GC_INTERVAL_S)

    tiers_table = root.sub("tiers", required=True)
    tiers: dict[str, TierSpec] = {}
    for tier_name in sorted(tiers_table.data):
        checked(tier_name, _name, tiers_table.at(tier_name))
        tiers[tier_name] = _parse_tier(tier_name, tiers_table.sub(tier_name))
    if not tiers:
        raise ScenarioError("tiers: define at least one tier")
    _check_tiers(tiers)

    parsed = [_parse_node(t) for t in root.array("nodes")]
    if not parsed:
        raise ScenarioError("nodes: define at least one node ([[nodes]])")
    paths: dict[str, str] = {}
    for node, path in parsed:
        if node.name in paths:
            raise ScenarioError(f"{path}.name: {node.name!r} is already used by {paths[node.name]}")
        paths[node.name] = path
    masters = [path for node, path in parsed if node.layer is Layer.MASTER]
    if len(masters) != 1:
        where = masters[1] + ".layer" if masters else "nodes"
        raise ScenarioError(f"{where}: a scenario has exactly one master, found {len(masters)}")
    nodes = _resolve_parents(parsed)

    settings = dict(DEVNET_SETTINGS)
    for table in TABLES:  # [training], [aggregation], [timing], [wire]: checked as a plan is
        t = root.sub(table)
        settings.update(t.settings())
        t.done()
    learning = LearnSettings(**settings)

    ar = root.sub("arrival")
    fractions = ar.opt("fractions", _list(Num(0.0, 1.0)))
    fractions = (1.0,) if fractions is None else fractions
    if not fractions or abs(sum(fractions) - 1.0) > 1e-6:
        raise ScenarioError(
            f"arrival.fractions: must sum to 1 (all of a shard arrives), got {sum(fractions):.6g}"
        )
    if len(fractions) > rounds:
        raise ScenarioError(
            f"arrival.fractions: {len(fractions)} entries for {rounds} rounds; "
            "data arriving after the last round would never be used"
        )
    arrival = ArrivalSpec(fractions, ar.get("order", Choice(ARRIVAL_ORDERS), "shuffled"))
    ar.done()

    faults = []
    for f in root.array("faults"):
        faults.append(
            FaultSpec(
                round=f.get("round", Int(1, MAX_ROUNDS)),
                node=f.get("node", _name),
                action=f.get("action", Choice(FAULT_ACTIONS)),
                at=f.get("at", Choice(("start", "end")), "start"),
            )
        )
        f.done()

    attackers = []
    for i, at in enumerate(root.array("attackers")):
        attacker = AttackerSpec(
            node=at.get("node", _name),
            behaviour=at.get("behaviour", Choice(ATTACK_BEHAVIOURS)),
            from_round=at.get("from_round", Int(1, MAX_ROUNDS), 1),
            strength=at.opt("strength", Num(0.0, 1e6)),
        )
        at.done()
        if attacker.node not in paths:
            raise ScenarioError(f"attackers[{i}].node: no node is named {attacker.node!r}")
        attackers.append(attacker)
    root.done()

    scenario = Scenario(
        name=scenario_name,
        description=description,
        seed=seed,
        rounds=rounds,
        nodes=nodes,
        tiers=tiers,
        learning=learning,
        arrival=arrival,
        faults=tuple(faults),
        attackers=tuple(attackers),
        gc_interval_s=gc_interval_s,
        format=fmt,
    )
    _check_topology(scenario, paths)
    _check_faults(scenario, paths)
    _check_attackers(scenario)
    return scenario


def _check_attackers(scenario: Scenario) -> None:
    """A poisoner poisons what it sends its parent: it must be a training node; a network
    attacker may be any node but the master.  Each is named once and attacks within the
    run (a network attacker from the start)."""
    trains = {n.name: n.trains for n in scenario.nodes}
    seen: set[str] = set()
    for i, a in enumerate(scenario.attackers):
        if a.node in seen:
            raise ScenarioError(f"attackers[{i}].node: {a.node!r} is already an attacker")
        seen.add(a.node)
        if a.behaviour in NETWORK_BEHAVIOURS:
            if a.node == scenario.master.name:
                raise ScenarioError(f"attackers[{i}].node: the master cannot be an attacker")
            if a.from_round != 1:
                raise ScenarioError(
                    f"attackers[{i}].from_round: a network attack runs from the start"
                )
            if a.strength is not None and not (
                a.behaviour in ("flood", "sybil") and 1 <= a.strength <= 1000
            ):
                raise ScenarioError(
                    f"attackers[{i}].strength: only flood (announcements per second) and "
                    "sybil (identities) take one, from 1 to 1000"
                )
            continue
        if not trains[a.node]:
            raise ScenarioError(
                f"attackers[{i}].node: {a.node!r} does not train (a leaf or a sub-domain or "
                "device node does): it has no update to poison"
            )
        if a.from_round > scenario.rounds:
            raise ScenarioError(
                f"attackers[{i}].from_round: {a.from_round} is past the last round "
                f"({scenario.rounds})"
            )


def load_scenario(path: Path) -> Scenario:
    """Read, size-check, parse and validate a scenario file."""
    path = Path(path)
    data = load_toml(path, MAX_SCENARIO_BYTES, "scenario file", ScenarioError)
    try:
        return parse_scenario(data, name=path.stem)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def scenarios_dir() -> Path:
    """``devnet/scenarios`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "devnet" / "scenarios"
