"""``p2phier devnet``: the whole hierarchy on one machine.

Now: ``devnet report DIR`` regenerates ``report.json``, ``report.md`` and the
PNG plots from ``DIR/run.json``.  The launcher commands (``up``, ``status``,
``logs``, ``down``) come with the node daemon; they are not offered before
they work.  matplotlib is imported only when the report is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from p2phier.cli import output

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
