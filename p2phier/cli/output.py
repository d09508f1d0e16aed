"""What the CLI prints, and how failures become exit codes.

Owns the two output modes of every command and the error contract:

* ``--json``: exactly one JSON object on stdout (the result, or ``{"error", "type"}`` on failure),
  so scripts can parse stdout without looking at exit codes first;
* human mode: plain lines or rich tables on stdout, the error as ONE line on stderr.

Exit codes: a :class:`~p2phier.errors.P2PHierError` exits with its family's ``exit_code``
(2 usage/config, 3 identity, 4 CID/UnixFS, 5 store, 6 artifact, 7 network, 8 learning); an
``OSError`` on a user-named path exits 74 (``EX_IOERR``); Ctrl-C exits 130; anything unexpected
exits 70 (``EX_SOFTWARE``) with one line.  A failure that reaches the boundary wrapped in
exception groups of one (trio's nurseries wrap what fails inside them) is reported as the one
exception inside.  A traceback is shown only with ``--debug`` or ``P2PHIER_DEBUG=1``.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from p2phier.errors import P2PHierError, UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNEXPECTED = 70
EXIT_IO = 74
EXIT_INTERRUPTED = 130
MAX_ERROR_CHARS = 2000


@dataclass(slots=True)
class _State:
    """Process-wide output mode: set by the root callback and by each command."""

    json: bool = False
    debug: bool = False


STATE = _State()


def set_json(enabled: bool) -> None:
    if enabled:
        STATE.json = True


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def console(stderr: bool = False) -> Console:
    from rich.console import Console  # imported lazily: keeps `--help` fast

    # soft_wrap: never break long CIDs or paths across lines when output is piped; and a pipe
    # has no width, so give tables room for a full CID instead of rich's 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, soft_wrap=True, highlight=False, width=width)


def emit(data: Mapping[str, Any], human: str | RenderableType | None = None) -> None:
    """Print a command's result: the JSON object, or its human form."""
    if STATE.json:
        sys.stdout.write(json.dumps(data, default=str) + "\n")
        sys.stdout.flush()
        return
    if human is None:
        for key, value in data.items():
            sys.stdout.write(f"{key}: {value}\n")
    elif isinstance(human, str):
        sys.stdout.write(human if human.endswith("\n") else human + "\n")
    else:
        console().print(human)
    sys.stdout.flush()


def note(message: str) -> None:
    """An informational line for a person (stderr, so stdout stays parseable)."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


class InputFileError(UsageError):
    """A file or directory named on the command line is missing or of the wrong kind."""


def input_file(path: Path) -> Path:
    """``path`` if it is an existing regular file, else a clear usage error (exit 2)."""
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputFileError(f"{path}: not a regular file")
    return path


def input_dir(path: Path) -> Path:
    if not path.exists():
        raise InputFileError(f"{path}: no such directory")
    if not path.is_dir():
        raise InputFileError(f"{path}: not a directory")
    return path


# --- errors ----------------------------------------------------------------------


def one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[: MAX_ERROR_CHARS - 3] + "..."


def innermost(exc: BaseException) -> BaseException:
    """The exception inside nested groups of one (``exc`` itself otherwise).

    A node's failure arrives wrapped once per nursery it crossed; the user needs the
    failure, with its own message and exit code, not "ExceptionGroup".  A group of several
    stays a group: no one of them is the cause.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, P2PHierError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        return EXIT_IO
    return EXIT_UNEXPECTED


def message_for(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and not isinstance(exc, P2PHierError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return one_line(f"{where}{exc.strerror}")
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, P2PHierError | OSError):
        # An unexpected failure: name it, since the message alone may be meaningless.
        text = f"internal error ({type(exc).__name__}): {text} (rerun with --debug for details)"
    return one_line(text)


def report_error(exc: BaseException, *, stream: IO[str] | None = None) -> int:
    """Print ``exc`` the way the current mode wants; return the exit code."""
    cause = innermost(exc)
    code = exit_code_for(cause)
    msg = message_for(cause)
    if STATE.debug:
        traceback.print_exception(exc, file=sys.stderr)
    if STATE.json:
        out = stream or sys.stdout
        out.write(json.dumps({"error": msg, "type": type(cause).__name__}) + "\n")
        out.flush()
    else:
        err = stream or sys.stderr
        err.write(f"error: {msg}\n")
        err.flush()
    return code


def report_usage_error(message: str, type_name: str = "UsageError") -> int:
    """A command-line usage error found by the parser (exit 2)."""
    msg = one_line(message)
    if STATE.json:
        sys.stdout.write(json.dumps({"error": msg, "type": type_name}) + "\n")
        sys.stdout.flush()
    else:
        sys.stderr.write(f"error: {msg}\n")
        sys.stderr.flush()
    return EXIT_USAGE


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
