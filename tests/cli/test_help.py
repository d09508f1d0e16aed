"""Every help page, as rendered: rich markup must not eat the text (``[learn]`` is no style).

Run in-process with typer's CliRunner (one subprocess per page would be slow); the root
callback configures the ``p2phier`` logger, which the fixture puts back afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from p2phier.cli.main import app

#: a section name in square brackets as the source writes it, escaped (``\[learn]``) or not
BRACKETED = re.compile(r"\\?\[([a-z][\w.-]*)\]")


def _tree() -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every group and command of the app, with its path (the root is ``()``)."""
    root = typer.main.get_command(app)

    def walk(path: tuple[str, ...], cmd: Any, parent: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
        yield path, cmd
        if hasattr(cmd, "list_commands"):
            ctx = typer.Context(cmd, info_name=path[-1] if path else "p2phier", parent=parent)
            for name in cmd.list_commands(ctx):
                yield from walk((*path, name), cmd.get_command(ctx, name), ctx)

    yield from walk((), root, None)


PAGES = dict(_tree())


def _raw_texts(cmd: Any) -> list[str]:
    """What the page shows from the source: its help, its options' help, its commands' lines."""
    texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
    if hasattr(cmd, "list_commands"):
        ctx = typer.Context(cmd, info_name="x")
        subs = [cmd.get_command(ctx, name) for name in cmd.list_commands(ctx)]
        texts += [(sub.help or "").split("\n\n")[0] for sub in subs]
    return texts


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[CliRunner, dict[str, str]]]:
    logger = logging.getLogger("p2phier")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    env = {"P2PHIER_HOME": str(tmp_path), "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    yield CliRunner(), env
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.mark.parametrize("path", list(PAGES), ids=lambda p: " ".join(p) or "p2phier")
def test_bracketed_words_survive_rich_markup(
    runner: tuple[CliRunner, dict[str, str]], path: tuple[str, ...]
) -> None:
    cli, env = runner
    result = cli.invoke(app, [*path, "--help"], env=env)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    for text in _raw_texts(PAGES[path]):
        for word in BRACKETED.findall(text):
            assert f"[{word}]" in shown, f"[{word}] is missing from `{' '.join(path)} --help`"


def test_node_round_says_what_it_needs(runner: tuple[CliRunner, dict[str, str]]) -> None:
    cli, env = runner
    for args in (["node", "--help"], ["node", "round", "--help"]):
        shown = cli.invoke(app, args, env=env).output
        assert "(needs [learn] enabled)" in shown
        assert "needs  enabled" not in shown


def test_every_command_that_uses_the_home_takes_home_and_config_after_its_name() -> None:
    # demo works in its own directory and devnet in its run directory: neither uses the home.
    for path, cmd in PAGES.items():
        if hasattr(cmd, "list_commands") or path[0] in ("demo", "devnet"):
            continue
        opts = {opt for param in cmd.params for opt in param.opts}
        assert {"--home", "--config"} <= opts, f"`{' '.join(path)}` lacks --home/--config"
