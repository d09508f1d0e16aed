"""The retention policy on its own: which held artifacts stay, which owned files go."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from p2phier.node.retention import Held, Verdict, retain

ME, PARENT, CHILD, GONE = "me", "parent", "child", "gone"
NOW = 10_000_000
IDLE = 3_600_000
CONFIG = "config"  # one adapter config, shared by every artifact


def held(author: str, topic: str, round_: int, *, at_ms: int = NOW, tag: str = "") -> Held:
    cid = f"{author}-{topic}-{round_}{tag}"
    return Held(cid, author, topic, round_, at_ms, frozenset({cid, f"{cid}.payload", CONFIG}))


def run(
    items: list[Held],
    *,
    owned: Collection[str] | None = None,
    needed: Collection[str] = (),
    live: Collection[str] = (ME, PARENT, CHILD),
    keep: int = 2,
) -> Verdict:
    if owned is None:  # the node made every pin
        owned = {f for h in items for f in h.files}
    return retain(
        items, owned=owned, needed=needed, live_authors=live, keep=keep, now_ms=NOW, idle_ms=IDLE
    )


def test_keeps_the_newest_k_per_author_and_topic_and_unpins_the_rest() -> None:
    ups = [held(CHILD, "up", r) for r in range(1, 6)]
    downs = [held(PARENT, "down", r) for r in range(1, 4)]
    mine = [held(ME, "down", r) for r in (3, 1, 2)]  # order of arrival does not matter
    v = run(ups + downs + mine)
    assert v.kept == {
        "child-up-5", "child-up-4", "parent-down-3", "parent-down-2", "me-down-3", "me-down-2"
    }  # fmt: skip
    assert v.dropped == {"child-up-1", "child-up-2", "child-up-3", "parent-down-1", "me-down-1"}
    gone = {"child-up-1", "child-up-2", "child-up-3", "parent-down-1", "me-down-1"}
    assert v.unpin == gone | {f"{c}.payload" for c in gone}
    assert CONFIG not in v.unpin  # kept artifacts still name it


def test_a_newer_round_wins_over_a_later_arrival() -> None:
    v = run([held(CHILD, "up", 7, at_ms=NOW - 50), held(CHILD, "up", 6, at_ms=NOW)], keep=1)
    assert v.kept == {"child-up-7"}


def test_keeps_everything_declared_needed_with_its_files() -> None:
    ups = [held(CHILD, "up", r) for r in range(1, 6)]
    v = run(ups, needed={"child-up-1", "tier-bundle"})
    assert "child-up-1" in v.kept
    assert "child-up-1.payload" not in v.unpin
    assert v.unpin == {"child-up-2", "child-up-2.payload", "child-up-3", "child-up-3.payload"}


def test_a_needed_file_is_never_unpinned_even_when_its_artifact_goes() -> None:
    ups = [held(CHILD, "up", r) for r in range(1, 4)]
    v = run(ups, needed={"child-up-1.payload"}, keep=1)
    assert "child-up-1" in v.dropped
    assert v.unpin == {"child-up-1", "child-up-2", "child-up-2.payload"}


def test_never_unpins_what_the_node_does_not_own() -> None:
    ups = [held(CHILD, "up", r) for r in range(1, 5)]
    operator = {"child-up-1", "child-up-2.payload"}  # pinned by hand, or pinned before the node
    owned = {f for h in ups for f in h.files} - operator
    v = run(ups, owned=owned)
    assert v.dropped == {"child-up-1", "child-up-2"}
    assert v.unpin == {"child-up-1.payload", "child-up-2"}
    assert not v.unpin & operator


def test_a_file_shared_with_a_kept_artifact_stays() -> None:
    old, new = held(CHILD, "up", 1), held(CHILD, "up", 2)
    lineage = Held(new.cid, CHILD, "up", 2, NOW, new.files | {"child-up-1.payload"})
    v = run([old, lineage], keep=1)
    assert v.dropped == {"child-up-1"}
    assert v.unpin == {"child-up-1"}  # its payload is the kept delta's lineage


def test_an_author_that_left_keeps_its_newest_until_idle_then_none() -> None:
    recent = [held(GONE, "up", r, at_ms=NOW - IDLE + 1) for r in (1, 2, 3)]
    assert run(recent).kept == {"gone-up-3", "gone-up-2"}
    idle = [held(GONE, "up", r, at_ms=NOW - IDLE) for r in (1, 2, 3)]
    v = run(idle)
    assert v.kept == frozenset()
    assert v.unpin == {f for h in idle for f in h.files}  # the config too: nothing names it


def test_nothing_held_nothing_to_do() -> None:
    assert run([]) == Verdict(frozenset(), frozenset(), frozenset())


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        run([held(CHILD, "up", 1)], keep=0)
