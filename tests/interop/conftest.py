"""Fixtures of the interop tests: one work folder and one p2phier node process per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier.devnet.procs import NodeProc

from .common import start_node


@pytest.fixture(scope="module")
def root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def node(root: Path) -> Iterator[NodeProc]:
    """A real ``p2phier node run`` (master layer, knows nobody) shared by a module's tests."""
    node = start_node(root, "p2phier")
    try:
        yield node
    finally:
        assert node.stop() == 0, node.log_tail()
