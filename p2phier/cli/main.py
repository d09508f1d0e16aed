"""The ``p2phier`` command: the typer app, its global options and the error boundary.

Owns the root of the command tree (``id``, ``store``, ``artifact``, ``demo``, ``config``), the
global flags (``--home``, ``--config``, ``-v``, ``--debug``; ``--home`` and ``--config`` are
declared in :mod:`p2phier.cli.config`, and the commands that use the home take them too), the
only place where logging handlers are configured, and :func:`main`, which turns every failure
into one line and a distinct exit code (see :mod:`p2phier.cli.output`).  Heavy modules (store,
artifact, torch) are imported inside the commands, so ``p2phier --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer
from typer.exceptions import Abort, TyperException

from p2phier import __version__
from p2phier.cli import output
from p2phier.cli.artifact import artifact_app
from p2phier.cli.config import CLIContext, ConfigOption, HomeOption, debug_enabled
from p2phier.cli.demo import demo_command
from p2phier.cli.devnet import devnet_app
from p2phier.cli.id import id_app
from p2phier.cli.node import (
    fetch_command,
    node_app,
    peers_command,
    publish_command,
    trust_command,
)
from p2phier.cli.store import store_app

log = logging.getLogger(__name__)

app = typer.Typer(
    name="p2phier",
    help="Peer-to-peer hierarchical model sharing: signed LoRA adapter deltas, content-addressed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show the resolved configuration.", no_args_is_help=True)

app.add_typer(id_app, name="id")
app.add_typer(store_app, name="store")
app.add_typer(artifact_app, name="artifact")
app.add_typer(config_app, name="config")
app.command("demo")(demo_command)
app.add_typer(node_app, name="node")
app.command("peers")(peers_command)
app.command("trust")(trust_command)
app.command("publish")(publish_command)
app.command("fetch")(fetch_command)
app.add_typer(devnet_app, name="devnet")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"p2phier {__version__}\n")
        raise typer.Exit(0)


def _configure_logging(level: int) -> None:
    root = logging.getLogger("p2phier")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@app.callback()
def root(
    ctx: typer.Context,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
    verbose: Annotated[
        int,
        typer.Option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug)."),
    ] = 0,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks (also P2PHIER_DEBUG=1).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Peer-to-peer hierarchical model sharing."""
    if debug:
        output.STATE.debug = True
    # --home and --config have already been stored by their callbacks (HomeOption).
    cli = ctx.ensure_object(CLIContext)
    cli.verbose = verbose
    _configure_logging(cli.log_level())


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    *,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Print every setting and where it came from (default, config or env)."""
    output.set_json(json_out)
    cli = ctx.find_object(CLIContext)
    assert cli is not None, "the root callback sets the context"
    data = cli.settings().as_dict()
    sources = data.pop("sources")
    lines = [f"{k} = {v}" + (f"  ({sources[k]})" if k in sources else "") for k, v in data.items()]
    output.emit({**data, "sources": sources}, "\n".join(lines))


def _wants_json(args: list[str]) -> bool:
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _click_error_line(exc: TyperException) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, map every failure to one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    output.STATE.json = _wants_json(args)
    output.STATE.debug = debug_enabled() or "--debug" in args
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="p2phier", standalone_mode=False)
    except Abort:
        return output.report_error(KeyboardInterrupt())
    except TyperException as exc:
        # typer vendors click; its parser errors (bad option, missing argument...) land here.
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(exc.format_message())
            return output.EXIT_USAGE
        if output.STATE.debug:
            traceback.print_exception(exc, file=sys.stderr)
        output.report_usage_error(_click_error_line(exc), type(exc).__name__)
        return output.EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`p2phier store cat X | head`): stop quietly with 1, as typer
        # does when the pipe breaks inside a command.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (Exception, KeyboardInterrupt) as exc:
        return output.report_error(exc)
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
