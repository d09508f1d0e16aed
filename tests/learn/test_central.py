"""The one central baseline: its data split, compute, learning rates and choice."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.errors import UsageError
from p2phier.learn import central


@given(st.lists(st.integers(), max_size=200, unique=True))
def test_split_holds_back_every_tenth_example_and_keeps_the_rest(pooled: list[int]) -> None:
    fit, valid = central.split(pooled)
    assert valid == pooled[:: central.VALID_EVERY]
    assert not set(fit) & set(valid)
    assert sorted(fit + valid) == sorted(pooled)
    assert fit == [e for e in pooled if e not in set(valid)]  # order kept


def test_rates_start_with_the_nodes_rate_and_steps_are_the_nodes_summed() -> None:
    assert central.rates(0.004) == (0.004, 0.001)
    assert central.steps(24, 8) == 192
    with pytest.raises(UsageError):
        central.steps(24, 0)


def test_best_is_the_highest_validation_accuracy_and_the_first_on_a_tie() -> None:
    a = central.Candidate(0.004, 0.70, Path("a"))
    b = central.Candidate(0.001, 0.75, Path("b"))
    c = central.Candidate(0.0005, 0.75, Path("c"))
    assert central.best([a, b, c]) is b
    assert central.best([a]) is a
    assert central.best([b, a]) is b
    with pytest.raises(UsageError, match="no central candidate"):
        central.best([])


def test_train_refuses_too_few_examples_for_a_validation_split(tmp_path: Path) -> None:
    from p2phier.learn.train import LoraSettings

    with pytest.raises(UsageError, match="at least 10 pooled"):
        central.train(
            tmp_path / "tier", tmp_path / "out", ["one"] * 5,  # type: ignore[list-item]
            lr=1e-3, steps=1, batch_size=1, max_length=8, lora=LoraSettings(),
        )  # fmt: skip
