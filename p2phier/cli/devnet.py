"""``p2phier devnet``: the whole hierarchy on one machine.

``devnet up`` prepares a scenario, starts every node as its own process on
127.0.0.1, waits for the hierarchy, runs the rounds with a live view, stops
and reaps every node, runs the baselines and writes the report.  ``status``,
``logs`` and ``down`` work on a run directory from another terminal (``down``
also after the launcher crashed).  ``report`` regenerates the report from
``DIR/run.json``.  torch and matplotlib are imported only by the commands
that need them.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from p2phier.cli import output
from p2phier.errors import P2PHierError, UsageError

DEFAULT_SCENARIO = Path("devnet/scenarios/default.toml")
DEFAULT_DIR = Path("devnet/runs")
DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="Run directory (default: the latest run started from here)."),
]

devnet_app = typer.Typer(
    help="A whole hierarchy on one machine: scenarios, runs and their reports.",
    no_args_is_help=True,
)


@devnet_app.command("report")
def devnet_report(
    directory: Annotated[
        Path, typer.Argument(help="A devnet run directory (holds run.json).", show_default=False)
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Regenerate report.json, report.md and the PNG plots from DIR/run.json."""
    output.set_json(json_out)
    from p2phier.devnet.report import load_run, summarise, write_report

    run = load_run(directory)
    paths = write_report(run, directory)
    verdict = summarise(run)["verdict"]
    output.emit(
        {"dir": str(directory), "files": [str(p) for p in paths], "verdict": verdict},
        "\n".join([verdict, f"report: {directory / 'report.md'}"] + [f"  {p}" for p in paths]),
    )


LATEST = DEFAULT_DIR / "LATEST"


def _new_run_dir(directory: Path | None, name: str) -> Path:
    """``--dir``, or a fresh ``devnet/runs/<name>-<time>`` remembered as the latest run."""
    if directory is not None:
        return directory.resolve()
    run_dir = (DEFAULT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    LATEST.write_text(str(run_dir) + "\n")
    return run_dir


def _run_dir(directory: Path | None, name: str | None = None) -> Path:
    """``--dir``, or the latest run ``devnet up`` started from this directory."""
    if directory is not None:
        return directory.resolve()
    try:
        return Path(LATEST.read_text().strip())
    except OSError:
        raise UsageError(
            f"no devnet run recorded in {LATEST}; give --dir (the run directory)"
        ) from None


def _short(cid: object) -> str:
    return f"…{str(cid)[-8:]}" if cid else "-"


def node_rows(
    st: Mapping[str, dict[str, Any] | None], names: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One row per node for the live view and ``devnet status``."""
    rows = []
    for name, s in st.items():
        learn = (s or {}).get("learn") or {}
        accepted = (s or {}).get("accepted", [])
        rows.append(
            {
                "node": name,
                "up": s is not None,
                "layer": (s or {}).get("layer"),
                "domain": (s or {}).get("domain"),
                "parent": names.get((s or {}).get("parent") or "", (s or {}).get("parent")),
                "round": learn.get("round"),
                "busy": learn.get("busy"),
                "head": (learn.get("flat") or {}).get("cid") or (s or {}).get("head"),
                "accuracy": learn.get("accuracy_own"),
                "bytes_in": ((s or {}).get("bitswap") or {}).get("bytes_received", 0),
                "bytes_out": ((s or {}).get("bitswap") or {}).get("bytes_sent", 0),
                "updates_accepted": len(accepted),
                "errors": len(learn.get("errors", [])),
                # peers this node isolated (trust), by name where the devnet knows them
                "isolated": [names.get(p, p[-8:]) for p in (s or {}).get("isolated", [])],
            }
        )
    return rows


def render(phase: str, rows: list[dict[str, Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"p2phier devnet: {escape(phase)}", expand=False)
    cols = ("node", "layer", "domain", "parent", "round", "head", "accuracy", "in", "out", "doing")
    for col in cols:
        table.add_column(col, no_wrap=col in ("node", "head", "in", "out"))
    for r in rows:
        acc = f"{r['accuracy']:.3f}" if isinstance(r["accuracy"], float) else "-"
        # Cells are rich markup: names and domains from the scenario file are text.
        table.add_row(
            escape(r["node"]) if r["up"] else f"[red]{escape(r['node'])} (down)[/red]",
            escape(r["layer"] or "-"),
            escape(r["domain"] or "-"),
            escape(r["parent"] or "-"),
            str(r["round"] if r["round"] is not None else "-"),
            _short(r["head"]),
            acc,
            f"{r['bytes_in'] / 1e6:.1f}M",
            f"{r['bytes_out'] / 1e6:.1f}M",
            escape(r["busy"] or "idle")
            + (f" [red]{r['errors']} err[/red]" if r["errors"] else "")
            + (f" [red]isolated {escape(', '.join(r['isolated']))}[/red]" if r["isolated"] else ""),
        )
    return table


@devnet_app.command("up")
def devnet_up(  # noqa: PLR0917 - typer options
    scenario: Annotated[
        Path, typer.Option("--scenario", help="Scenario TOML file.")
    ] = DEFAULT_SCENARIO,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Override the rounds.")] = None,
    directory: DirOpt = None,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip the isolated/central baselines.")
    ] = False,
    no_attackers: Annotated[
        bool,
        typer.Option("--no-attackers", help="Run the scenario's attackers as honest nodes."),
    ] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Live terminal view.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Launch every node of SCENARIO, run the rounds, stop everything, write the report."""
    output.set_json(json_out)
    from p2phier.devnet.report import summarise, write_report
    from p2phier.devnet.runner import run_devnet
    from p2phier.devnet.scenario import load_scenario

    sc = load_scenario(scenario)
    if rounds is not None:
        sc = sc.with_rounds(rounds)
    if no_attackers:
        sc = sc.without_attackers()
    run_dir = _new_run_dir(directory, sc.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"{run_dir} is not empty: give another --dir or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    view: Any = None
    names: dict[str, str] = {}
    if live and not json_out and sys.stdout.isatty():
        from rich.live import Live

        view = Live(render("starting", []), console=output.console(), refresh_per_second=2)
        view.start()

    last: list[Any] = ["", 0.0]
    shown: list[dict[str, Any]] = []

    def on_poll(phase: str, st: Mapping[str, dict[str, Any] | None]) -> None:
        for name, s in st.items():
            if s is not None:
                names[s["peer_id"]] = name
        if view is not None:
            if st:
                shown[:] = node_rows(st, names)
                view.update(render(phase, shown))
            else:  # after the rounds: the nodes are stopped; keep their last row
                view.update(render(f"{phase} (nodes stopped; waiting for the baselines)", shown))
            return
        # No terminal (CI, a pipe): a line when the phase changes, else every 30 s.
        now = time.monotonic()
        if not json_out and (phase != last[0] or now - last[1] >= 30.0):
            last[:] = [phase, now]
            if not st:  # after the rounds: the nodes are stopped
                msg = f"[{phase}] nodes stopped; waiting for the baselines"
                output.console(stderr=True).print(msg, markup=False)
                return
            rows = node_rows(st, names)
            rounds = sorted({r["round"] for r in rows if r["round"] is not None})
            output.console(stderr=True).print(
                f"[{phase}] {sum(r['up'] for r in rows)}/{len(rows)} nodes up, "
                f"rounds done {rounds}, busy: {sorted(r['node'] for r in rows if r['busy'])}",
                markup=False,  # "[rounds] ..." is text, not a rich style
            )

    # Ctrl-C or SIGTERM: the runner's finally-blocks stop and reap every node.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        record = run_devnet(sc, run_dir, on_poll=on_poll, baselines=not no_baselines)
    finally:
        if view is not None:
            view.stop()
    paths = write_report(record, run_dir)
    summary = summarise(record)
    output.emit(
        {"dir": str(run_dir), "report": str(run_dir / "report.md"), "verdict": summary["verdict"],
         "files": [str(p) for p in paths], "rounds": summary["rounds"]},
        "\n".join([summary["verdict"], f"report: {run_dir / 'report.md'}"]),
    )  # fmt: skip


@devnet_app.command("status")
def devnet_status(
    directory: DirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Ask every node of a running devnet for its status."""
    output.set_json(json_out)
    from p2phier.devnet.runner import DevnetError, load_state
    from p2phier.node.controlwire import call

    run_dir = _run_dir(directory)
    try:
        state = load_state(run_dir)
    except DevnetError as exc:
        raise UsageError(f"{run_dir}: no devnet there ({exc})") from None
    st: dict[str, dict[str, Any] | None] = {}
    for node, info in state.get("nodes", {}).items():
        try:
            st[node] = call(Path(info["socket"]), "status", {}, timeout=10.0)
        except (P2PHierError, OSError):  # a stopped or frozen node: shown as down
            st[node] = None
    names = {s["peer_id"]: n for n, s in st.items() if s}
    rows = node_rows(st, names)
    output.emit({"dir": str(run_dir), "nodes": rows}, render(str(run_dir), rows))


@devnet_app.command("logs")
def devnet_logs(
    node: Annotated[str, typer.Argument(help="Node name from the scenario.")],
    directory: DirOpt = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines from the end.")] = 100,
) -> None:
    """Print the end of one node's log."""
    from p2phier.devnet.runner import DevnetError, load_state

    run_dir = _run_dir(directory)
    try:
        log_path = Path(load_state(run_dir)["nodes"][node]["log"])
    except (DevnetError, KeyError, TypeError) as exc:
        raise UsageError(f"{run_dir}: no node {node!r} there ({exc})") from None
    text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    typer.echo("\n".join(text[-lines:]))


@devnet_app.command("down")
def devnet_down(
    directory: DirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Stop and reap every node of a devnet (also after the launcher crashed)."""
    output.set_json(json_out)
    from p2phier.devnet.runner import down

    run_dir = _run_dir(directory)
    done = down(run_dir)
    output.emit({"dir": str(run_dir), "stopped": done}, "\n".join(done) or "nothing was running")
