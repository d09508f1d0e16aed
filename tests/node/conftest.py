"""Keep the node tests that share one network in one xdist worker.

``tests/node/test_network.py`` starts five node processes per module and its
tests build on each other's state, so it is marked ``xdist_group``.  With
pytest 9.2 and pytest-xdist 3.8 that marker does nothing: xdist tags a grouped
test by rewriting ``item._nodeid``, but pytest 9.2 derives ``item.nodeid`` from
``item._id``, so ``--dist loadgroup`` silently degrades to ``--dist load`` (each
worker then started its own network and ran a random subset of the tests).
This hook applies the same ``<nodeid>@<group>`` tag through ``_id``, for the
tests under this directory only; it does nothing once xdist's own tag works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set by xdist on its workers
        return
    for item in items:
        if not item.path.resolve().is_relative_to(HERE) or "@" in item.nodeid:
            continue
        groups = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        node_id = getattr(item, "_id", None)
        if groups and node_id is not None:
            item._id = type(node_id).parse(f"{item.nodeid}@{'_'.join(groups)}")
