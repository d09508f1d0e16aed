"""The devnet's run record and its report: ``report.json``, ``report.md`` and PNG plots.

Owns :class:`RunRecord` (what a devnet run measured, JSON-able; the launcher
writes it as ``DIR/run.json``), :func:`load_run` (a hostile-file reader: size
cap, format version, every field type-checked) and :func:`write_report`, which
regenerates everything ``p2phier devnet report DIR`` shows:

* ``report.json``: the record plus the derived summary (final accuracy per
  node and per tier, bytes on the wire vs full-model exchange, the verdict);
* ``report.md``: the same for people, with the comparison of the hierarchy
  against each node trained alone on its shard (same compute) and one model
  trained centrally on the pooled data, and ONE line saying whether the
  hierarchy helped;
* ``accuracy.png`` (per node per round, and per tier), ``bytes.png`` (wire
  bytes per round vs full models) and ``hierarchy.png`` (the tree, each node
  coloured by its final accuracy), drawn with matplotlib's Agg backend.

matplotlib is imported inside the plotting function, so reading records stays light.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p2phier.devnet.stats import mean_gap_interval
from p2phier.errors import ConfigError
from p2phier.fields import FieldError, Type, checked, get
from p2phier.fsutil import load_json, write_atomic

log = logging.getLogger(__name__)

RUN_FORMAT = 1
RUN_FILE = "run.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("accuracy.png", "bytes.png", "hierarchy.png")
MAX_RUN_BYTES = 64 * 1024 * 1024
LAYERS = ("master", "language", "domain", "subdomain", "device")
#: The hierarchy "helped" when its mean accuracy beats the isolated nodes' by more than this.
HELPED_MARGIN = 0.005


class RunRecordError(ConfigError):
    """A run record (``run.json``) is missing, malformed or from another format version."""


# --- the record -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """A node of the run, as launched."""

    name: str
    layer: str
    domain: str
    parent: str | None
    tier: str
    model_bytes: int  # size of the node's full model (what a full-model exchange sends)
    trains: bool = True
    peer_id: str | None = None
    test_examples: int = 0  # its held-out set (0: not recorded)


@dataclass(frozen=True)
class NodeRound:
    """One node's measurements in one round."""

    node: str
    round: int
    accuracy_own: float | None = None  # on its own held-out data
    accuracy_parent: float | None = None  # on its parent's held-out data
    accuracy_children: float | None = None  # on its children's pooled held-out data
    # Bytes on the wire, from the node's Bitswap ledgers (block payloads), in the round:
    bytes_in: int = 0  # every block received
    bytes_out: int = 0  # every block sent
    update_bytes_in: int = 0  # received fetching its children's updates
    version_bytes_in: int = 0  # received fetching its parent's versions
    tier_bytes_in: int = 0  # received fetching tier bundles (full models)
    update_bytes_out: int = 0  # its own updates, as its parent's fetches received them
    updates_sent: int = 0  # model updates sent (up or down); a full exchange sends model_bytes
    head_cid: str | None = None
    decision: str | None = None  # timing rule: "published" | "held" | None (not a parent)
    decision_reason: str | None = None
    train_s: float | None = None
    aggregate_s: float | None = None
    propagation_s: float | None = None  # parent's announce -> applied here
    up: bool = True  # False while killed or frozen
    isolated: int = 0  # peers this node had isolated (trust) at the round's end
    # What the node holds at the round's end (0: not measured, or the node was down):
    store_bytes: int = 0  # its store directory (blocks, index, pins)
    disk_files: int = 0  # files under its home (store, learning dirs, state)
    rss_bytes: int = 0  # its process's resident memory
    #: those peers, by node name (a peer that is no scenario node: its peer id)
    isolated_peers: tuple[str, ...] = ()
    #: peers this node's global view distrusted at the round's end, likewise
    distrusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoundInfo:
    round: int
    wall_s: float
    nodes: tuple[NodeRound, ...]


@dataclass(frozen=True)
class Baselines:
    """Accuracy of each training node's model on its own held-out data, same compute."""

    isolated: Mapping[str, float]  # node trained alone on its shard
    central: Mapping[str, float]  # one model trained on the pooled shards, per node's test set
    isolated_steps: int = 0  # per node
    central_steps: int = 0
    notes: str = ""


@dataclass(frozen=True)
class RunRecord:
    scenario: str
    started: float  # Unix seconds
    nodes: tuple[NodeInfo, ...]
    rounds: tuple[RoundInfo, ...]
    baselines: Baselines | None = None
    setup_s: float = 0.0
    scenario_detail: Mapping[str, Any] = field(default_factory=dict)
    #: measured by the launcher: "rss_max_mib" per node, "hop_delays_s" (parent's announcement
    #: -> child fetched and verified it), "chain_s" per round (master's version -> last node)
    resources: Mapping[str, Any] = field(default_factory=dict)
    format: int = RUN_FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / RUN_FILE
        write_atomic(path, _dumps(self.to_json()))
        return path

    @classmethod
    def from_json(cls, data: object) -> RunRecord:
        return _parse_run(data)

    # views ----------------------------------------------------------------------------------
    def node(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise RunRecordError(f"the run has no node named {name!r}")

    def final(self, name: str) -> NodeRound | None:
        """The node's last round with an own-data accuracy."""
        for rnd in reversed(self.rounds):
            for nr in rnd.nodes:
                if nr.node == name and nr.accuracy_own is not None:
                    return nr
        return None


def _dumps(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


# --- reading a record (hostile input) ---------------------------------------------------------


def _need(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], path: str) -> Any:
    try:
        return get(data, key, Type(kinds), path)
    except FieldError as exc:
        raise RunRecordError(str(exc)) from None


def _check(value: Any, kinds: type | tuple[type, ...], path: str) -> Any:
    """``value`` if it is of ``kinds`` (p2phier.fields: never a boolean for a number, numbers
    finite), else a RunRecordError naming ``path``."""
    try:
        return checked(value, Type(kinds), path)
    except FieldError as exc:
        raise RunRecordError(str(exc)) from None


_NUM = (int, float)
MAX_PEER_NAMES = 4096  # isolated or distrusted peers a node round may name
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))


def _fields(data: Any, cls: type, path: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    data = _check(data, dict, path)
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise RunRecordError(f"{path}.{unknown[0]}: unknown field")
    out: dict[str, Any] = {}
    for key, (kinds, required) in spec.items():
        if key in data:
            out[key] = _check(data[key], kinds, f"{path}.{key}")
        elif required:
            raise RunRecordError(f"{path}.{key}: missing")
    return out


_NODE_INFO = {
    "name": (str, True),
    "layer": (str, True),
    "domain": (str, True),
    "parent": (_OPT_STR, True),
    "tier": (str, True),
    "model_bytes": (int, True),
    "trains": (bool, False),
    "peer_id": (_OPT_STR, False),
    "test_examples": (int, False),
}
_NODE_ROUND = {
    "node": (str, True),
    "round": (int, True),
    "accuracy_own": (_OPT_NUM, False),
    "accuracy_parent": (_OPT_NUM, False),
    "accuracy_children": (_OPT_NUM, False),
    "bytes_in": (int, False),
    "bytes_out": (int, False),
    "update_bytes_in": (int, False),
    "version_bytes_in": (int, False),
    "tier_bytes_in": (int, False),
    "update_bytes_out": (int, False),
    "updates_sent": (int, False),
    "head_cid": (_OPT_STR, False),
    "decision": (_OPT_STR, False),
    "decision_reason": (_OPT_STR, False),
    "train_s": (_OPT_NUM, False),
    "aggregate_s": (_OPT_NUM, False),
    "propagation_s": (_OPT_NUM, False),
    "up": (bool, False),
    "isolated": (int, False),
    "store_bytes": (int, False),
    "disk_files": (int, False),
    "rss_bytes": (int, False),
    "isolated_peers": (list, False),
    "distrusted": (list, False),
}


def accuracy(value: Any, path: str) -> float:
    """A checked accuracy: a finite number in [0, 1] (RunRecordError naming ``path``)."""
    acc = float(_check(value, _NUM, path))
    if not 0.0 <= acc <= 1.0:
        raise RunRecordError(f"{path}: accuracy {acc} is outside [0, 1]")
    return acc


def accuracy_map(data: Any, path: str) -> dict[str, float]:
    """A checked ``{name: accuracy}`` object."""
    data = _check(data, dict, path)
    return {str(key): accuracy(value, f"{path}.{key}") for key, value in data.items()}


def _parse_run(data: object) -> RunRecord:
    top = _check(data, dict, "run")
    fmt = _need(top, "format", int, "run")
    if fmt != RUN_FORMAT:
        raise RunRecordError(
            f"run.format: {fmt} is not known to this build (it reads {RUN_FORMAT})"
        )
    nodes = tuple(
        NodeInfo(**_fields(n, NodeInfo, f"run.nodes[{i}]", _NODE_INFO))
        for i, n in enumerate(_need(top, "nodes", list, "run"))
    )
    names = {n.name for n in nodes}
    if len(names) != len(nodes):
        raise RunRecordError("run.nodes: node names must be unique")
    for i, n in enumerate(nodes):
        if n.layer not in LAYERS:
            raise RunRecordError(f"run.nodes[{i}].layer: {n.layer!r} is not one of {LAYERS}")
        if n.parent is not None and n.parent not in names:
            raise RunRecordError(f"run.nodes[{i}].parent: no node is named {n.parent!r}")
    rounds = []
    for i, r in enumerate(_need(top, "rounds", list, "run")):
        path = f"run.rounds[{i}]"
        r = _check(r, dict, path)
        unknown = sorted(set(r) - {"round", "wall_s", "nodes"})
        if unknown:
            raise RunRecordError(f"{path}.{unknown[0]}: unknown field")
        entries = []
        for j, nr in enumerate(_need(r, "nodes", list, path)):
            fields = _fields(nr, NodeRound, f"{path}.nodes[{j}]", _NODE_ROUND)
            for key in ("isolated_peers", "distrusted"):
                names_ = fields.get(key, [])
                if len(names_) > MAX_PEER_NAMES or not all(isinstance(x, str) for x in names_):
                    raise RunRecordError(f"{path}.nodes[{j}].{key}: not a list of names")
                fields[key] = tuple(names_)
            entry = NodeRound(**fields)
            if entry.node not in names:
                raise RunRecordError(f"{path}.nodes[{j}].node: no node is named {entry.node!r}")
            for key in ("accuracy_own", "accuracy_parent", "accuracy_children"):
                value = getattr(entry, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise RunRecordError(f"{path}.nodes[{j}].{key}: {value} is outside [0, 1]")
            entries.append(entry)
        rounds.append(
            RoundInfo(
                _need(r, "round", int, path), float(_need(r, "wall_s", _NUM, path)), tuple(entries)
            )
        )
    baselines = None
    if top.get("baselines") is not None:
        baselines = baselines_from_json(top["baselines"], "run.baselines")
    detail = top.get("scenario_detail", {})
    return RunRecord(
        scenario=_need(top, "scenario", str, "run"),
        started=float(_need(top, "started", _NUM, "run")),
        nodes=nodes,
        rounds=tuple(rounds),
        baselines=baselines,
        setup_s=float(_check(top.get("setup_s", 0.0), _NUM, "run.setup_s")),
        scenario_detail=_check(detail, dict, "run.scenario_detail"),
        resources=_check(top.get("resources", {}), dict, "run.resources"),
        format=fmt,
    )


def baselines_from_json(value: Any, path: str = "baselines") -> Baselines:
    """Check and build :class:`Baselines` from its JSON form (``asdict``)."""
    b = _check(value, dict, path)
    return Baselines(
        isolated=accuracy_map(b.get("isolated", {}), f"{path}.isolated"),
        central=accuracy_map(b.get("central", {}), f"{path}.central"),
        isolated_steps=int(_check(b.get("isolated_steps", 0), int, f"{path}.isolated_steps")),
        central_steps=int(_check(b.get("central_steps", 0), int, f"{path}.central_steps")),
        notes=str(_check(b.get("notes", ""), str, f"{path}.notes")),
    )


def load_run(directory: Path) -> RunRecord:
    """Read ``DIR/run.json`` (size-capped, checked field by field)."""
    path = Path(directory) / RUN_FILE
    if not os.path.lexists(path):
        raise RunRecordError(
            f"{path} does not exist: {directory} is not a devnet run directory "
            "(a run directory holds the run.json a devnet run writes)"
        )
    data = load_json(path, MAX_RUN_BYTES, "run record", RunRecordError)
    try:
        return _parse_run(data)
    except (RunRecordError, FieldError) as exc:
        raise RunRecordError(f"{path}: {exc}") from None


# --- the summary ------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(run: RunRecord) -> dict[str, Any]:
    """The derived numbers report.json and report.md show (JSON-able)."""
    final = {
        n.name: fr.accuracy_own
        for n in run.nodes
        if (fr := run.final(n.name)) is not None and fr.accuracy_own is not None
    }
    per_tier: dict[str, list[float]] = {}
    per_layer: dict[str, list[float]] = {}
    for n in run.nodes:
        if n.name in final:
            per_tier.setdefault(n.tier, []).append(final[n.name])
            per_layer.setdefault(n.layer, []).append(final[n.name])
    model_bytes = {n.name: n.model_bytes for n in run.nodes}
    rounds = []
    for rnd in run.rounds:
        # model bytes moved: updates up and versions down (tier downloads reported apart)
        wire = sum(nr.update_bytes_in + nr.version_bytes_in for nr in rnd.nodes)
        full = sum(nr.updates_sent * model_bytes[nr.node] for nr in rnd.nodes)
        props = [nr.propagation_s for nr in rnd.nodes if nr.propagation_s is not None]
        update_pcts = [
            100.0 * nr.update_bytes_out / model_bytes[nr.node]
            for nr in rnd.nodes
            if nr.update_bytes_out > 0 and model_bytes[nr.node] > 0
        ]
        rounds.append(
            {
                "round": rnd.round,
                "wall_s": rnd.wall_s,
                "wire_bytes": wire,
                "update_bytes": sum(nr.update_bytes_in for nr in rnd.nodes),
                "version_bytes": sum(nr.version_bytes_in for nr in rnd.nodes),
                "tier_bytes": sum(nr.tier_bytes_in for nr in rnd.nodes),
                "all_block_bytes": sum(nr.bytes_in for nr in rnd.nodes),
                "full_model_bytes": full,
                "pct_of_full": 100.0 * wire / full if full else None,
                # per node that sent an update: its update's bytes as % of its full model
                "update_pct_of_full": _mean(update_pcts) if update_pcts else None,
                "published": sorted(nr.node for nr in rnd.nodes if nr.decision == "published"),
                "held": sorted(nr.node for nr in rnd.nodes if nr.decision == "held"),
                "propagation_max_s": max(props) if props else None,
            }
        )
    compare = _compare(run, final)
    parents = parents_vs_children(run)
    return {
        "parents_vs_children_acc_pts": parents,
        "scenario": run.scenario,
        "final_accuracy": final,
        "final_accuracy_per_tier": {k: _mean(v) for k, v in sorted(per_tier.items())},
        "final_accuracy_per_layer": {k: _mean(per_layer[k]) for k in LAYERS if k in per_layer},
        "rounds": rounds,
        "comparison": compare,
        "verdict": verdict(compare),
    }


def parents_vs_children(run: RunRecord) -> dict[str, dict[str, float | None]]:
    """Per parent with a referee score: its model's accuracy on its children's pooled
    held-out data after round 1 and after the last round, and how far the last lies above
    its children's mean accuracy on their own held-out data (unweighted), in points."""
    if not run.rounds:
        return {}
    one = [r for r in run.rounds if r.round == 1]
    first = {nr.node: nr for nr in one[0].nodes} if one else {}
    last = {nr.node: nr for nr in run.rounds[-1].nodes}
    out: dict[str, dict[str, float | None]] = {}
    for n in run.nodes:
        nr = last.get(n.name)
        if nr is None or nr.accuracy_children is None:
            continue
        kids = [
            acc
            for c in run.nodes
            if c.parent == n.name
            and (acc := getattr(last.get(c.name), "accuracy_own", None)) is not None
        ]
        mean_kids = _mean(kids)
        out[n.name] = {
            "after_round_1": getattr(first.get(n.name), "accuracy_children", None),
            "after_last": nr.accuracy_children,
            "children_mean_own": mean_kids,
            "vs_children_pts": None
            if mean_kids is None
            else 100.0 * (nr.accuracy_children - mean_kids),
        }
    return out


def _compare(run: RunRecord, final: Mapping[str, float]) -> dict[str, Any]:
    """Hierarchy vs baselines over the training nodes present in both."""
    b = run.baselines
    if b is None:
        return {"nodes": [], "hierarchy": None, "isolated": None, "central": None}
    names = [n.name for n in run.nodes if n.name in final and n.name in b.isolated]
    rows = [
        {
            "node": name,
            "hierarchy": final[name],
            "isolated": b.isolated[name],
            "central": b.central.get(name),
        }
        for name in names
    ]
    central = [b.central[n] for n in names if n in b.central]
    sizes = {n.name: n.test_examples for n in run.nodes}
    known = bool(names) and all(sizes.get(n, 0) > 0 for n in names)
    return {
        "nodes": rows,
        "hierarchy": _mean([final[n] for n in names]),
        "isolated": _mean([b.isolated[n] for n in names]),
        "central": _mean(central) if len(central) == len(names) else None,
        # 95% half-widths of the gaps, in points (None: held-out sizes not recorded)
        "vs_isolated_ci_pts": mean_gap_interval(
            [(final[n], b.isolated[n], sizes[n]) for n in names]
        )
        if known
        else None,
        "vs_central_ci_pts": mean_gap_interval([(final[n], b.central[n], sizes[n]) for n in names])
        if known and len(central) == len(names)
        else None,
        "isolated_steps": b.isolated_steps,
        "central_steps": b.central_steps,
        "notes": b.notes,
    }


def verdict(compare: Mapping[str, Any]) -> str:
    """ONE line: did the hierarchy help (vs the nodes alone), and how it stands vs central."""
    hier, alone, central = compare.get("hierarchy"), compare.get("isolated"), compare.get("central")
    if hier is None or alone is None:
        return "Verdict: unknown: the run has no baselines to compare with."
    gain = 100.0 * (hier - alone)
    if hier - alone > HELPED_MARGIN:
        head = "the hierarchy helped"
    elif alone - hier > HELPED_MARGIN:
        head = "the hierarchy did NOT help (worse than training alone)"
    else:
        head = "the hierarchy did NOT help (no better than training alone)"
    ci_alone, ci_central = compare.get("vs_isolated_ci_pts"), compare.get("vs_central_ci_pts")
    line = f"Verdict: {head}: mean accuracy {hier:.3f} vs {alone:.3f} alone ({gain:+.1f}"
    line += f" ± {ci_alone:.1f} pts)" if ci_alone is not None else " pts)"
    if central is not None:
        line += f", {central:.3f} central ({100.0 * (hier - central):+.1f}"
        line += f" ± {ci_central:.1f} pts)" if ci_central is not None else " pts)"
    if ci_alone is not None:
        line += " (95% intervals from the held-out set sizes)"
    return line + "."


# --- writing ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # unreachable


def render_markdown(run: RunRecord, summary: Mapping[str, Any]) -> str:
    compare = summary["comparison"]
    out = [
        f"# Devnet report: {run.scenario}",
        "",
        summary["verdict"],
        "",
        f"{len(run.nodes)} nodes, {len(run.rounds)} rounds, set-up {run.setup_s:.1f} s, "
        f"rounds {sum(r.wall_s for r in run.rounds):.1f} s.",
        "",
        "## Hierarchy vs baselines (accuracy on each node's own held-out data)",
        "",
        "Isolated: each node trained alone on its shard with the same compute "
        f"({compare.get('isolated_steps', 0)} steps); central: one model trained on the "
        f"pooled shards ({compare.get('central_steps', 0)} steps).",
        "",
        "| node | hierarchy | alone | central |",
        "|---|---|---|---|",
    ]
    for row in compare["nodes"]:
        out.append(
            f"| {row['node']} | {_fmt(row['hierarchy'])} | {_fmt(row['isolated'])} | "
            f"{_fmt(row['central'])} |"
        )
    out.append(
        f"| **mean** | **{_fmt(compare['hierarchy'])}** | **{_fmt(compare['isolated'])}** | "
        f"**{_fmt(compare['central'])}** |"
    )
    if compare.get("notes"):
        out += ["", str(compare["notes"])]
    out += ["", "## Final accuracy per tier", "", "| tier | mean accuracy |", "|---|---|"]
    out += [f"| {t} | {_fmt(a)} |" for t, a in summary["final_accuracy_per_tier"].items()]
    out += ["", "## Nodes", "", "| node | layer | domain | parent | tier | final accuracy |"]
    out.append("|---|---|---|---|---|---|")
    final = summary["final_accuracy"]
    for n in run.nodes:
        out.append(
            f"| {n.name} | {n.layer} | {n.domain or '(root)'} | {n.parent or '-'} | {n.tier} | "
            f"{_fmt(final.get(n.name))} |"
        )
    out += [
        "",
        "## Rounds",
        "",
        "Bytes are block payloads received over Bitswap, from every node's ledgers: updates "
        "(children to parents) and versions (parents to children), against what sending full "
        "models for the same transfers would cost; tier downloads (full models a node fetched "
        "to build or map its tier) apart.",
        "",
        "| round | wall s | updates + versions | full models would send | % of full | "
        "update % of full (mean) | tier downloads | published |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rounds"]:
        out.append(
            f"| {r['round']} | {r['wall_s']:.1f} | {_bytes(r['wire_bytes'])} | "
            f"{_bytes(r['full_model_bytes'])} | {_fmt(r['pct_of_full'], 2)} | "
            f"{_fmt(r.get('update_pct_of_full'), 3)} | {_bytes(r.get('tier_bytes', 0))} | "
            f"{', '.join(r['published']) or '-'} |"
        )
    out += ["", "## Timing-rule decisions", ""]
    decisions = [
        f"- round {rnd.round}, {nr.node}: {nr.decision}"
        + (f" ({nr.decision_reason})" if nr.decision_reason else "")
        for rnd in run.rounds
        for nr in rnd.nodes
        if nr.decision
    ]
    out += decisions or ["(none recorded)"]
    out += ["", "## Trust (isolated and distrusted peers at each round's end)", ""]
    trust = [
        f"- round {rnd.round}, {nr.node}: isolated {', '.join(nr.isolated_peers) or '-'}; "
        f"distrusted {', '.join(nr.distrusted) or '-'}"
        for rnd in run.rounds
        for nr in rnd.nodes
        if nr.isolated_peers or nr.distrusted
    ]
    out += trust or ["(nobody isolated or distrusted anyone)"]
    out += ["", "## Plots", ""]
    out += [f"![{p[:-4]}]({p})" for p in PLOTS]
    return "\n".join(out) + "\n"


def write_report(run: RunRecord, directory: Path) -> list[Path]:
    """Write report.json, report.md and the PNG plots into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    paths = [directory / REPORT_JSON, directory / REPORT_MD]
    write_atomic(paths[0], _dumps({"summary": summary, "run": run.to_json()}))
    write_atomic(paths[1], render_markdown(run, summary).encode())
    paths += plot(run, summary, directory)
    log.info("devnet report written to %s", directory)
    return paths


# --- plots --------------------------------------------------------------------------------------

_LAYER_COLOURS = {
    "master": "#4c72b0",
    "language": "#8172b2",
    "domain": "#55a868",
    "subdomain": "#dd8452",
    "device": "#c44e52",
}


def plot(run: RunRecord, summary: Mapping[str, Any], directory: Path) -> list[Path]:
    """The three PNG plots (matplotlib, Agg backend: no display needed)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [directory / name for name in PLOTS]
    try:
        _plot_accuracy(plt, run, paths[0])
        _plot_bytes(plt, summary, paths[1])
        _plot_hierarchy(plt, run, summary, paths[2])
    finally:
        plt.close("all")
    return paths


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    with open(tmp, "rb") as fh:
        data = fh.read()
    tmp.unlink()
    write_atomic(path, data)


def _plot_accuracy(plt: Any, run: RunRecord, path: Path) -> None:
    fig, (ax_nodes, ax_tiers) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_nodes.set_prop_cycle(color=[plt.get_cmap("tab20")(i % 20) for i in range(len(run.nodes))])
    ticks = [r.round for r in run.rounds]
    ax_nodes.set_xticks(ticks)
    ax_tiers.set_xticks(ticks)
    tiers: dict[str, dict[int, list[float]]] = {}
    for node in run.nodes:
        xs, ys = [], []
        for rnd in run.rounds:
            for nr in rnd.nodes:
                if nr.node == node.name and nr.accuracy_own is not None:
                    xs.append(rnd.round)
                    ys.append(nr.accuracy_own)
                    tiers.setdefault(node.tier, {}).setdefault(rnd.round, []).append(
                        nr.accuracy_own
                    )
        if xs:
            # one colour per node, one line style per layer: nodes of a layer stay apart
            style = ("-", "--", "-.", ":", (0, (5, 1)))[LAYERS.index(node.layer)]
            ax_nodes.plot(xs, ys, marker="o", ls=style, label=f"{node.name} ({node.layer})")
    ax_nodes.set(title="Accuracy per node (own data)", xlabel="round", ylabel="accuracy")
    ax_nodes.set_ylim(0, 1.02)
    if ax_nodes.lines:
        ax_nodes.legend(fontsize=7, ncol=2)
    for tier, by_round in sorted(tiers.items()):
        rounds = sorted(by_round)
        ax_tiers.plot(
            rounds, [sum(by_round[r]) / len(by_round[r]) for r in rounds], marker="s", label=tier
        )
    b = run.baselines
    if b is not None and b.isolated:
        ax_tiers.axhline(
            sum(b.isolated.values()) / len(b.isolated), ls="--", color="grey", label="alone"
        )
    if b is not None and b.central:
        ax_tiers.axhline(
            sum(b.central.values()) / len(b.central), ls=":", color="black", label="central"
        )
    ax_tiers.set(title="Mean accuracy per tier", xlabel="round", ylabel="accuracy")
    ax_tiers.set_ylim(0, 1.02)
    if ax_tiers.lines:
        ax_tiers.legend(fontsize=8)
    _save(fig, path)


def _plot_bytes(plt: Any, summary: Mapping[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rounds = summary["rounds"]
    xs = [r["round"] for r in rounds]
    wire = [max(r["wire_bytes"], 1) for r in rounds]
    full = [max(r["full_model_bytes"], 1) for r in rounds]
    width = 0.38
    ax.bar([x - width / 2 for x in xs], wire, width, label="on the wire", color="#4c72b0")
    ax.bar([x + width / 2 for x in xs], full, width, label="full models", color="#c7c7c7")
    for x, r in zip(xs, rounds, strict=True):
        if r["pct_of_full"] is not None:
            ax.annotate(
                f"{r['pct_of_full']:.2f}%",
                (x - width / 2, max(r["wire_bytes"], 1)),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_yscale("log")
    ax.set(title="Bytes per round: deltas vs full models", xlabel="round", ylabel="bytes")
    ax.set_xticks(xs)
    ax.legend()
    _save(fig, path)


def tree_layout(run: RunRecord) -> dict[str, tuple[float, float]]:
    """A layered tree layout: y = layer, leaves spaced evenly, parents centred over children."""
    children: dict[str | None, list[str]] = {}
    for n in run.nodes:
        children.setdefault(n.parent, []).append(n.name)
    depth = {n.name: LAYERS.index(n.layer) for n in run.nodes}
    pos: dict[str, tuple[float, float]] = {}
    next_x = [0.0]

    def place(name: str) -> float:
        kids = children.get(name, [])
        if kids:
            x = sum(place(k) for k in kids) / len(kids)
        else:
            x = next_x[0]
            next_x[0] += 1.0
        pos[name] = (x, -float(depth[name]))
        return x

    for root in children.get(None, []):
        place(root)
    for n in run.nodes:  # a parent outside the record: place it on its own
        if n.name not in pos:
            place(n.name)
    return pos


def _plot_hierarchy(plt: Any, run: RunRecord, summary: Mapping[str, Any], path: Path) -> None:
    pos = tree_layout(run)
    final = summary["final_accuracy"]
    width = max(6.0, 1.3 * (max((x for x, _ in pos.values()), default=0.0) + 1))
    fig, ax = plt.subplots(figsize=(width, 5))
    cmap = plt.get_cmap("RdYlGn")
    for n in run.nodes:
        if n.parent is not None and n.parent in pos:
            (x0, y0), (x1, y1) = pos[n.parent], pos[n.name]
            ax.plot([x0, x1], [y0, y1], color="#999999", zorder=1)
    for n in run.nodes:
        x, y = pos[n.name]
        acc = final.get(n.name)
        colour = cmap(acc) if acc is not None else "#dddddd"
        ax.scatter([x], [y], s=900, color=colour, edgecolors="black", zorder=2)
        ax.annotate(
            f"{n.name}\n{n.tier}\n{_fmt(acc)}",
            (x, y),
            ha="center",
            va="center",
            fontsize=6,
            zorder=3,
        )
    ax.set_yticks([-i for i in range(len(LAYERS))], list(LAYERS))
    ax.set_xticks([])
    ax.set_ylim(-len(LAYERS) + 0.4, 0.6)
    xs = [x for x, _ in pos.values()]
    ax.set_xlim(min(xs, default=0) - 0.7, max(xs, default=0) + 0.7)
    ax.set_title("The hierarchy, each node's final accuracy (grey: no own data)")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    _save(fig, path)
