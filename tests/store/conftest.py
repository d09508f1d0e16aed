"""Fixtures for the store tests: one ``impl`` per ContentStore implementation.

The conformance suite asks for ``store`` (or ``impl`` to open stores itself)
and runs once per implementation with identical assertions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p2phier.store import ContentStore
from tests.store.helpers import IMPLS, Impl


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> Impl:
    return IMPLS[request.param]


@pytest.fixture
def store(impl: Impl, tmp_path: Path) -> Iterator[ContentStore]:
    s = impl.open(tmp_path)
    try:
        yield s
    finally:
        s.close()
