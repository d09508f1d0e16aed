"""Checks of one field of a hostile document: the one helper every settings reader uses.

The node's configuration (:mod:`p2phier.config`), the learning plan
(:mod:`p2phier.learnplan`), the devnet scenario (:mod:`p2phier.devnet.scenario`)
and the run record (:mod:`p2phier.devnet.report`) check their values with these:

* checks: small frozen objects called with a value, returning it typed or raising
  :class:`FieldError` with the problem alone: :class:`Int` and :class:`Num` (in a
  range), :class:`Choice`, :class:`Bool`, :class:`Str`, :class:`Type` (any of some
  JSON types), :class:`Optional` (null allowed);
* :func:`get` (a key of a mapping, checked, missing ones required or defaulted) and
  :func:`checked` (a value) add the field's path to the error.

A reader turns a :class:`FieldError` into its own error class (``ConfigError``,
``PlanError``, ``ScenarioError``...) with the same message: ``str(error)`` is
``"<path>: <problem>"``, e.g. ``training.lr: 20 is outside [1e-08, 10.0]``.
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from p2phier.errors import UsageError

T = TypeVar("T")

Check = Callable[[Any], T]
"""A check: the value in, the value typed out, or :class:`FieldError`."""

#: what a check's default means when a key is absent: the key is required
REQUIRED: Any = object()


class FieldError(UsageError):
    """A value is unusable: ``problem`` says why, ``where`` names the field (may be empty)."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.problem = problem
        self.where = where

    def at(self, path: str) -> FieldError:
        """The same problem, its field's path prefixed with ``path`` (``a.b`` + ``[0]``)."""
        return FieldError(self.problem, path + self.where)


def shown(value: Any) -> str:
    """The wrong value itself for a one-line message, unless it is big."""
    text = repr(value)
    return text if len(text) <= 80 else f"{type(value).__name__} of {len(text)} characters"


_KIND_NAMES: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def kind_name(kinds: type | tuple[type, ...]) -> str:
    """``(int, float, NoneType)`` -> ``"a number or null"``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = [_KIND_NAMES.get(k, k.__name__) for k in kinds if k is not int or float not in kinds]
    return " or ".join(dict.fromkeys(names))


def checked(value: Any, check: Check[T], path: str) -> T:
    """``check(value)``; its :class:`FieldError` names ``path``."""
    try:
        return check(value)
    except FieldError as exc:
        raise exc.at(path) from None


def get(
    data: Mapping[str, Any], key: str, check: Check[T], path: str = "", default: Any = REQUIRED
) -> T:
    """``data[key]`` checked; absent: ``default``, or "missing" if it is :data:`REQUIRED`.

    ``path`` names ``data`` in messages (``plan.tier`` + ``.tier_id``).
    """
    where = f"{path}.{key}" if path else key
    if key not in data:
        if default is REQUIRED:
            raise FieldError("missing (required)", where)
        return default  # type: ignore[no-any-return]
    return checked(data[key], check, where)


# --- the checks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Type:
    """Any of ``kinds`` (JSON types; true/false never counts as a number; numbers are finite)."""

    kinds: type | tuple[type, ...]

    def __call__(self, value: Any) -> Any:
        kinds = self.kinds if isinstance(self.kinds, tuple) else (self.kinds,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise FieldError(f"must be {kind_name(kinds)}, got {shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(f"must be a finite number, got {shown(value)}")
        return value


@dataclass(frozen=True, slots=True)
class Int:
    """An integer in ``[lo, hi]``."""

    lo: int
    hi: int

    def __call__(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(f"must be an integer, got {shown(value)}")
        if not self.lo <= value <= self.hi:
            raise FieldError(f"{shown(value)} is outside [{self.lo}, {self.hi}]")
        return value


@dataclass(frozen=True, slots=True)
class Num:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``), returned as a float."""

    lo: float
    hi: float
    open_lo: bool = False

    def __call__(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(f"must be a number, got {shown(value)}")
        # The range first: math.isfinite overflows on an integer too large for a float.
        above = value > self.lo if self.open_lo else value >= self.lo
        if not (above and value <= self.hi and math.isfinite(value)):
            interval = f"{'(' if self.open_lo else '['}{self.lo}, {self.hi}]"
            raise FieldError(f"{shown(value)} is outside {interval}")
        return float(value)


@dataclass(frozen=True, slots=True)
class Choice:
    """One of ``options`` (strings)."""

    options: tuple[str, ...]

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise FieldError(f"{shown(value)} is not one of {', '.join(self.options)}")
        return value


@dataclass(frozen=True, slots=True)
class Bool:
    """true or false (with ``null_is_false``, null too: false)."""

    null_is_false: bool = False

    def __call__(self, value: Any) -> bool:
        if value is None and self.null_is_false:
            return False
        if not isinstance(value, bool):
            raise FieldError(f"must be true or false, got {shown(value)}")
        return value


@dataclass(frozen=True, slots=True)
class Str:
    """A string of at most ``max_chars`` characters."""

    max_chars: int = 4096

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(f"must be a string, got {shown(value)}")
        if len(value) > self.max_chars:
            raise FieldError(f"longer than {self.max_chars} characters")
        return value


@dataclass(frozen=True, slots=True)
class Optional(Generic[T]):
    """null (None), or what ``check`` accepts."""

    check: Check[T]

    def __call__(self, value: Any) -> T | None:
        return None if value is None else self.check(value)
