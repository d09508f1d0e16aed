"""Where a parent's accuracy on its children's data goes: its head, the task, prototypes.

Run ``python bench/routing.py RUN_DIR`` on a devnet run that was kept
(``python bench/devnet.py --keep``, or ``p2phier devnet up``'s directory); ``--json`` ends stdout
with one JSON object.  For every parent node it scores the model the devnet's referee scores
(the parent's last version on its tier) on its descendants' pooled held-out data, five ways:

* ``answered``: the node's model as it answers, the devnet referee's figure
  (``parents_vs_children``): among its answers (its plan's ``labels``: its subtree's tasks;
  every label for the master and the language node), each text routed to a task by the
  class prototypes the node holds (its descendants' merged, travelling up with their
  updates: ``learn/prototypes.py``) where they span several tasks;
* ``held_ncm``: the nearest of the prototypes the node holds, in every task (what
  ``answer_by = "validated"`` answers where the node's validation set prefers prototypes);
* ``union``: its head alone among the same answers (what the referee scored before
  prototypes travelled);
* ``task_given``: each example among the labels of its own task (its dataset), as a
  multi-task model is used when the caller names the task.  The gap to ``union`` is what
  answering across tasks costs;
* ``routed``: the task chosen by the nearest class prototype (:mod:`p2phier.learn.prototypes`),
  then the head among that task's labels;
* ``ncm``: the nearest class prototype's label itself (no head);
* ``route_ok``: how often the nearest prototype names the right task.

For ``routed``, ``ncm`` and ``route_ok`` the prototypes are every descendant's *training* data
(what had arrived by the end) embedded by the parent's model and merged: an upper bound (the
product's travel only from nodes that hold the root tier's encoder: devices send none),
information for the design; ``answered`` is the product's figure.  The children's mean is
their own accuracy on their own held-out data after the last round (the report's).
Nothing here changes the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import load_kept_run, log, parser, print_table

TASKS_KEY = "domain"  # Example.domain: the dataset's task ("news" topics, "health" sentiments)


def _prototypes_of(home: Path) -> str | None:
    """The node's merged prototypes file, where it holds one (node/protos.py)."""
    path = home / "learn" / "prototypes" / "merged.safetensors"
    return str(path) if path.exists() else None


def _descendants(nodes: Sequence[dict[str, Any]], name: str) -> list[str]:
    out: list[str] = []
    for n in nodes:
        if n.get("parent") == name:
            out += [n["name"], *_descendants(nodes, n["name"])]
    return out


def score_parent(
    home: Path, train: Sequence[Any], test: Sequence[Any], max_length: int
) -> dict[str, Any] | None:
    """The six scores of the parent at ``home`` (``None``: it holds no version)."""
    from p2phier.learn.models import load_tier
    from p2phier.learn.prototypes import Prototypes, answering_tasks, load, route
    from p2phier.learn.train import Session
    from p2phier.learnplan import LearnSettings

    learn = home / "learn"
    state = json.loads((learn / "state.json").read_text())
    plan = json.loads((learn / "plan.json").read_text())
    flat, tier_dir = state.get("flat"), (state.get("tier") or {}).get("dir")
    if not flat or not tier_dir:
        return None
    tier = load_tier(Path(tier_dir))
    answers = tuple(plan.get("labels") or ())
    session = Session(tier, adapter=Path(flat["dir"]), answers=answers)
    tasks: dict[str, list[str]] = {}
    for e in [*train, *test]:
        labels = tasks.setdefault(getattr(e, TASKS_KEY), [])
        if e.label not in labels and (not answers or e.label in answers):
            labels.append(e.label)
    texts = [e.text for e in test]
    union = session.accuracy(test, max_length)
    held = load(Path(state_protos)) if (state_protos := _prototypes_of(home)) else None
    answered, held_tasks, held_ncm = union, 0, None
    if held is not None:
        as_node = Session(tier, adapter=Path(flat["dir"]), answers=answers)
        answering = learn / "prototypes" / "answering.json"
        decided = json.loads(answering.read_text()) if answering.exists() else None
        by = plan.get("answer_by", LearnSettings.answer_by)
        # as the node answers (node/protos.py): its validation set's choice, else its
        # children's vote kept in its merged prototypes
        ncm = answering_tasks(decided, held) if by == "validated" else []
        if as_node.use_prototypes(held, ncm):
            answered = as_node.accuracy(test, max_length)
            held_tasks = len(held.task_groups(answers))
            # every task by nearest held prototype: what answer_by = "validated" answers
            # where the node's validation set prefers prototypes for all of its tasks
            as_node.use_prototypes(held, list(held.task_groups(answers)))
            held_ncm = as_node.accuracy(test, max_length)
    logits = session.logits(texts, max_length).numpy()
    column = {label: i for i, label in enumerate(tier.labels)}
    given = 0
    for row, e in zip(logits, test, strict=True):
        cols = [column[m] for m in tasks[getattr(e, TASKS_KEY)]]
        given += tier.labels[max(cols, key=lambda c: row[c])] == e.label
    protos = Prototypes.of(session.embeddings([e.text for e in train], max_length),
                           [e.label for e in train])  # fmt: skip
    emb = session.embeddings(texts, max_length)
    routed = route(logits, emb, protos, tasks, tier.labels)
    near = protos.nearest(emb, answers=tuple(label for ls in tasks.values() for label in ls))
    task_of = {label: t for t, ls in tasks.items() for label in ls}
    n = len(test)
    return {
        "answered": answered,
        "prototype_tasks": held_tasks,
        "held_ncm": held_ncm,
        "union": union,
        "task_given": given / n,
        "routed": sum(p == e.label for p, e in zip(routed, test, strict=True)) / n,
        "ncm": sum(p == e.label for p, e in zip(near, test, strict=True)) / n,
        "route_ok": sum(
            task_of[p] == getattr(e, TASKS_KEY) for p, e in zip(near, test, strict=True)
        )
        / n,
        "examples": n,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0] if __doc__ else "routing")
    p.add_argument("run", type=Path, help="a kept devnet run directory (holds report.json)")
    args = p.parse_args(argv)
    from p2phier.learn.cycle import examples
    from p2phier.learnplan import load_data

    report, homes = load_kept_run(args.run)
    run = report["run"]
    nodes = run["nodes"]
    max_length = int(run["scenario_detail"]["training"]["max_length"])
    last = {n["node"]: n for n in run["rounds"][-1]["nodes"]}
    data = {}
    for name, home in homes.items():
        if (home / "learn" / "data.json").exists():
            d = load_data(home / "learn" / "data.json")
            data[name] = (examples([x for a in d.arrivals for x in a]), examples(d.test))
    results: dict[str, dict[str, Any]] = {}
    for node in nodes:
        below = [c for c in _descendants(nodes, node["name"]) if c in data]
        if not below:
            continue
        log(f"routing: {node['name']} on {len(below)} descendants' data")
        scores = score_parent(
            homes[node["name"]],
            [e for c in below for e in data[c][0]],
            [e for c in below for e in data[c][1]],
            max_length,
        )
        if scores is None:
            continue
        kids = [
            acc for n in nodes if n.get("parent") == node["name"]
            if (acc := (last.get(n["name"]) or {}).get("accuracy_own")) is not None
        ]  # fmt: skip
        scores["children_mean_own"] = sum(kids) / len(kids) if kids else None
        results[node["name"]] = scores
    rows = [
        [name, s["examples"],
         *(f"{s[k]:.3f}" for k in ("answered", "union", "task_given", "routed", "ncm")),
         f"{s['held_ncm']:.3f}" if s["held_ncm"] is not None else "-",
         f"{s['route_ok']:.3f}",
         f"{s['children_mean_own']:.3f}" if s["children_mean_own"] is not None else "-"]
        for name, s in results.items()
    ]  # fmt: skip
    print_table(
        f"Parents on their descendants' pooled held-out data ({args.run})",
        [
            "parent",
            "examples",
            "answered",
            "union",
            "task given",
            "routed",
            "ncm",
            "held ncm",
            "route ok",
            "children",
        ],
        rows,
    )
    if args.json:
        print(json.dumps({"bench": "routing", "run": str(args.run), "parents": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
