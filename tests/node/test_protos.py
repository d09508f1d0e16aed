"""Which tasks a node answers by class prototype, and what it says so with
(p2phier.node.protos): its validation set's choice where it holds a task, its children's
vote (kept in its merged file) for any other, and that choice in the file it sends up."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import replace
from pathlib import Path
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
