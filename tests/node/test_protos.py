"""Which tasks a node answers by class prototype, and what it says so with
(p2phier.node.protos): its validation set's choice where it holds a task, its children's
vote (kept in its merged file) for any other, and that choice in the file it sends up."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from p2phier.learn.prototypes import Prototypes, from_file, save
from p2phier.learnplan import LearnSettings
from p2phier.node.protos import ANSWERING, MERGED, PROTOTYPES_DIR, ProtoBook

SPACE = "bafkreihzvvaicl5orubrkophsynigwuuu3mogkwr44mzkmt76yx7kz7hre"


class Book(ProtoBook):
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.plan: Any = replace(LearnSettings(), **settings)
        self.dir = tmp / "learn"
        self.errors: deque[str] = deque()
        self.proto_info: dict[str, Any] = {}


def _merged(book: Book, ncm: set[str]) -> None:
    protos = Prototypes(
        ("s1", "t1"), np.array([[0.0, 1.0], [1.0, 0.0]]), (2.0, 3.0), ("health", "news"), SPACE
    )
    (book.dir / PROTOTYPES_DIR).mkdir(parents=True, exist_ok=True)
    save(protos.answering(ncm), book.dir / PROTOTYPES_DIR / MERGED)


def _answering(book: Book, tasks: dict[str, bool]) -> None:
    decided = {
        "ncm_tasks": sorted(t for t, ncm in tasks.items() if ncm),
        "tasks": {t: {"ncm": float(ncm)} for t, ncm in tasks.items()},
        "accuracy": 0.5,
    }
    (book.dir / PROTOTYPES_DIR / ANSWERING).write_text(json.dumps(decided))


def _sent(book: Book) -> frozenset[str]:
    data = book.prototypes_bytes()
    assert data is not None
    return from_file(data).ncm_tasks


def test_a_node_without_a_validation_set_answers_as_its_children_voted(tmp_path: Path) -> None:
    book = Book(tmp_path, answer_by="validated")
    _merged(book, {"news"})
    assert book.ncm_tasks() == ["news"]
    assert _sent(book) == {"news"}  # and says so to its parent


def test_its_validation_set_decides_the_tasks_it_holds(tmp_path: Path) -> None:
    book = Book(tmp_path, answer_by="validated")
    _merged(book, {"news"})
    _answering(book, {"news": False, "health": True})  # it holds both: the children's vote
    assert book.ncm_tasks() == ["health"]  # counts for neither
    assert _sent(book) == {"health"}
    _answering(book, {"health": False})  # news not in its set: the vote stands there
    assert book.ncm_tasks() == ["news"]


def test_answering_by_head_claims_no_task_and_sends_no_claim(tmp_path: Path) -> None:
    book = Book(tmp_path, answer_by="head")
    _merged(book, {"news"})
    assert book.ncm_tasks() == []
    assert _sent(book) == frozenset()  # the children's vote is not passed on as its own


def test_an_unreadable_answering_file_means_the_head_and_an_error(tmp_path: Path) -> None:
    book = Book(tmp_path, answer_by="validated")
    _merged(book, {"news"})
    (book.dir / PROTOTYPES_DIR / ANSWERING).write_text("{not json")
    assert book.ncm_tasks() == []
    assert book.errors and "answering file" in book.errors[-1]
    (book.dir / PROTOTYPES_DIR / MERGED).write_bytes(b"garbage")
    assert book.prototypes_bytes() is None  # the update goes without them, said why
    assert "prototypes to send" in book.errors[-1]


def test_the_validation_set_decides_from_the_choice_it_made_last(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Re-deciding passes the tasks it answers by prototype now (a choice changes only where
    the set shows the other way better); a missing or unusable file means none."""
    import trio

    from p2phier.learn import cycle

    book = Book(tmp_path, answer_by="validated")
    _merged(book, set())
    assert book._validated_ncm() == []  # nothing decided yet
    _answering(book, {"news": True, "health": False})
    assert book._validated_ncm() == ["news"]
    seen: list[Any] = []

    def choose(*args: Any, current: Any = ()) -> dict[str, Any]:
        seen.append(list(current))
        return {"ncm_tasks": [], "tasks": {"news": {"ncm": 0.0}}, "accuracy": 0.5}

    async def work(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    monkeypatch.setattr(cycle, "choose_answering", choose)
    book.state = SimpleNamespace(flat=SimpleNamespace(dir=str(tmp_path / "flat")))
    book.data = SimpleNamespace(test=["an example"])
    book._tier_dir = lambda: tmp_path / "tier"  # type: ignore[method-assign]
    book._work = work  # type: ignore[method-assign]
    book.state.accuracy_own = None
    book.plan = SimpleNamespace(answer_by="validated", trains=False)
    trio.run(book._choose_answering)
    assert seen == [["news"]]
    assert book.state.accuracy_own == 0.5  # a node that does not train: as it now answers
    assert book._validated_ncm() == []  # the new decision was written
    # a hostile or broken file: decided afresh (from the head), and said
    (book.dir / PROTOTYPES_DIR / ANSWERING).write_text(json.dumps({"ncm_tasks": [1, "news"]}))
    assert book._validated_ncm() == ["news"]
    (book.dir / PROTOTYPES_DIR / ANSWERING).write_text(json.dumps({"ncm_tasks": "news"}))
    assert book._validated_ncm() == []
    (book.dir / PROTOTYPES_DIR / ANSWERING).write_text("[")
    assert book._validated_ncm() == [] and "answering file" in book.errors[-1]
