"""Pure parts of the node's learning steps (no model needed)."""

from __future__ import annotations

from p2phier.learn.cycle import MIN_HELD_EXAMPLES, held_domains
from p2phier.learn.data import Example


def _ex(n: int, sub: str) -> list[Example]:
    return [Example(f"{sub}{i}", "t", "l", "news", sub) for i in range(n)]


def test_held_domains_judge_only_groups_big_enough_to_measure() -> None:
    big, small = _ex(MIN_HELD_EXAMPLES, "tech"), _ex(3, "sports")
    held = held_domains(big + small)
    # a 3-example group alone would swing by 33 points per example: it joins the big one
    assert set(held) == {"tech"} and len(held["tech"]) == MIN_HELD_EXAMPLES + 3
    many_small = _ex(6, "a") + _ex(6, "b")
    assert set(held_domains(many_small)) == {"other"}  # pooled: 12 examples, judged together
    assert held_domains(_ex(4, "a")) == {"other": _ex(4, "a")}  # nothing bigger: all together
    both = held_domains(_ex(12, "a") + _ex(11, "b"))
    assert {k: len(v) for k, v in both.items()} == {"a": 12, "b": 11}
