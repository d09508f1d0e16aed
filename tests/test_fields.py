"""The one field-check helper: typed values, ranges, choices, optional, and the field's path."""

from __future__ import annotations

from typing import Any

import pytest

from p2phier.errors import UsageError
from p2phier.fields import (
    Bool,
    Choice,
    FieldError,
    Int,
    Num,
    Optional,
    Str,
    Type,
    checked,
    get,
    kind_name,
)


@pytest.mark.parametrize(
    ("check", "value", "problem"),
    [
        (Int(0, 5), True, "must be an integer, got True"),
        (Int(0, 5), 2.0, "must be an integer, got 2.0"),
        (Int(0, 5), 6, "6 is outside [0, 5]"),
        (Num(0.0, 1.0), "0.5", "must be a number, got '0.5'"),
        (Num(0.0, 1.0), 1.5, "1.5 is outside [0.0, 1.0]"),
        (Num(0.0, 1.0, open_lo=True), 0, "0 is outside (0.0, 1.0]"),
        (Num(0.0, 1.0), float("nan"), "nan is outside [0.0, 1.0]"),
        (Num(0.0, 1.0), 10**400, "is outside [0.0, 1.0]"),  # no overflow in isfinite
        (Choice(("a", "b")), "c", "'c' is not one of a, b"),
        (Choice(("a", "b")), 1, "1 is not one of a, b"),
        (Bool(), "yes", "must be true or false, got 'yes'"),
        (Bool(), None, "must be true or false, got None"),
        (Str(3), "abcd", "longer than 3 characters"),
        (Type((int, float)), float("inf"), "must be a finite number, got inf"),
        (Type((int, float, type(None))), "x", "must be a number or null, got 'x'"),
        (Type(dict), [], "must be an object, got []"),
        (Optional(Int(0, 1)), 2, "2 is outside [0, 1]"),
    ],
)
def test_a_bad_value_says_what_is_wrong(check: Any, value: Any, problem: str) -> None:
    with pytest.raises(FieldError) as info:
        check(value)
    assert problem in info.value.problem and info.value.where == ""


def test_good_values_come_back_typed() -> None:
    assert Num(0.0, 10.0)(3) == 3.0 and isinstance(Num(0.0, 10.0)(3), float)
    assert Int(0, 5)(5) == 5
    assert Optional(Int(0, 5))(None) is None
    assert Bool(null_is_false=True)(None) is False
    assert Choice(("a",))("a") == "a"
    assert kind_name((int, float, type(None))) == "a number or null"


def test_get_and_checked_name_the_field() -> None:
    data = {"lr": 20, "tier": {"layers": [1, "x"]}}
    with pytest.raises(FieldError, match=r"^training\.lr: 20 is outside \[1e-08, 10\.0\]$"):
        get(data, "lr", Num(1e-8, 10.0), "training")
    with pytest.raises(FieldError, match=r"^plan\.rule: missing \(required\)$"):
        get(data, "rule", Choice(("fedavg",)), "plan")
    assert get(data, "rule", Choice(("fedavg",)), "plan", "fedavg") == "fedavg"
    assert get(data, "lr", Int(0, 100)) == 20

    def items(value: Any) -> list[int]:
        return [checked(v, Int(0, 9), f"[{i}]") for i, v in enumerate(value)]

    with pytest.raises(FieldError) as info:
        get(data["tier"], "layers", items, "plan.tier")
    assert str(info.value) == "plan.tier.layers[1]: must be an integer, got 'x'"
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
