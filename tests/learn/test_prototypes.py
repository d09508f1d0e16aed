"""Class prototypes: exact merging (a property), nearest class mean, task routing, embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2phier.learn.prototypes import (
    NCM_ALPHA,
    PrototypeError,
    Prototypes,
    answer,
    from_file,
    merge_senders,
    ncm_where_better,
    route,
    sign_test_p,
    to_file,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    cut=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_merging_shards_gives_the_prototypes_of_the_pooled_examples(
    n: int, cut: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    emb = _unit(rng.normal(size=(n, 6)))
    labels = [("a", "b", "c")[i] for i in rng.integers(0, 3, size=n)]
    k = int(cut * n)
    pooled = Prototypes.of(emb, labels)
    parts = [
        Prototypes.of(emb[s], labels[s]) for s in (slice(0, k), slice(k, n)) if s.stop > s.start
    ]
    merged = parts[0].merge(*parts[1:])
    assert merged.labels == pooled.labels and merged.counts == pooled.counts
    np.testing.assert_allclose(merged.sums, pooled.sums, rtol=1e-12, atol=1e-12)
    names, means = merged.means()
    _, direct = pooled.means()
    np.testing.assert_allclose(means, direct, atol=1e-12)
    assert np.allclose(np.linalg.norm(means, axis=1), 1.0)
    assert names == pooled.labels


def test_nearest_class_mean_among_the_answers() -> None:
    protos = Prototypes.of(np.eye(3), ["x", "y", "z"])
    q = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.0, 0.6]])
    assert protos.nearest(q) == ["x", "z", "z"]
    # restricted to the answers, the third query's nearest allowed label is x
    assert protos.nearest(q, answers=("x", "y")) == ["x", "y", "x"]
    with pytest.raises(PrototypeError, match="no prototype"):
        protos.nearest(q, answers=("w",))
    with pytest.raises(PrototypeError, match="shape"):
        protos.nearest(np.ones((2, 4)))


def test_route_answers_with_the_head_inside_the_task_the_prototypes_pick() -> None:
    # two tasks in a 4-label head: topics (t1, t2) and sentiments (s1, s2)
    labels = ("s1", "s2", "t1", "t2")
    protos = Prototypes.of(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), labels)
    tasks = {"news": ["t1", "t2"], "health": ["s1", "s2"]}
    emb = np.array([[0.05, 1.0], [1.0, 0.02]])  # a news text, a review
    # the head prefers a sentiment for the news text (its logits are not comparable across
    # tasks) and, inside the topics, t2
    logits = np.array([[5.0, 4.0, 1.0, 2.0], [0.0, 3.0, 9.0, 1.0]])
    assert route(logits, emb, protos, tasks, labels) == ["t2", "s2"]
    # the union head alone would have answered s1 and t1: both wrong tasks
    assert [labels[i] for i in logits.argmax(axis=1)] == ["s1", "t1"]
    with pytest.raises(PrototypeError, match="in tasks"):
        route(logits, emb, protos, {"a": ["t1"], "b": ["t1"]}, labels)
    with pytest.raises(PrototypeError, match="not among the head"):
        route(logits, emb, protos, {"a": ["q"]}, labels)


def test_bad_prototypes_are_refused() -> None:
    with pytest.raises(PrototypeError, match="duplicate"):
        Prototypes(("a", "a"), np.zeros((2, 3)), (1, 1))
    with pytest.raises(PrototypeError, match="positive count"):
        Prototypes(("a",), np.zeros((1, 3)), (0,))
    with pytest.raises(PrototypeError, match="finite"):
        Prototypes(("a",), np.full((1, 3), np.nan), (1,))
    with pytest.raises(PrototypeError, match="sums of shape"):
        Prototypes(("a", "b"), np.zeros((1, 3)), (1, 1))
    with pytest.raises(PrototypeError, match="dimension"):
        Prototypes.of(np.eye(2), ["a", "b"]).merge(Prototypes.of(np.eye(3), ["a", "b", "c"]))
    with pytest.raises(PrototypeError, match="labels for embeddings"):
        Prototypes.of(np.eye(2), ["a"])


@pytest.mark.ml
@pytest.mark.xdist_group("learn-ml")
@pytest.mark.usefixtures("torch_ready")
def test_session_embeddings_are_unit_mean_pooled_and_separate_the_datasets(
    master_dir: Path, bbc: list, drugs: list
) -> None:
    """Under the master tier a news article lies nearer the news prototypes than a drug
    review's: the routing the language node lacks (bench/routing.py) is there to be had."""
    from p2phier.learn.data import sample_per_label
    from p2phier.learn.models import load_tier
    from p2phier.learn.train import Session

    session = Session(load_tier(master_dir))
    train = sample_per_label(bbc, 6, seed=0) + sample_per_label(drugs, 6, seed=0)
    seen = {e.uid for e in train}
    test = [e for e in sample_per_label(bbc, 8, seed=1) + sample_per_label(drugs, 8, seed=1)
            if e.uid not in seen]  # fmt: skip
    emb = session.embeddings([e.text for e in train], max_length=64)
    assert emb.dtype == np.float32 and emb.shape == (len(train), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # padding does not change an embedding: alone or in a batch with longer texts
    alone = session.embeddings([train[0].text], max_length=64)
    np.testing.assert_allclose(alone[0], emb[0], atol=1e-5)
    protos = Prototypes.of(emb, [e.domain for e in train])
    test_emb = session.embeddings([e.text for e in test], max_length=64)
    right = sum(p == e.domain for p, e in zip(protos.nearest(test_emb), test, strict=True))
    # the default devnet's language node: 230 of 233 (bench/routing.py)
    assert len(test) >= 50 and right >= 0.9 * len(test), (right, len(test))


# --- what a node does with them: files, merges of senders, answers ------------------------------


def _rows(rows: list[list[float]]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    out: np.ndarray = a / np.linalg.norm(a, axis=1, keepdims=True)
    return out


SPACE = "bafkreihzvvaicl5orubrkophsynigwuuu3mogkwr44mzkmt76yx7kz7hre"
TASKS = {"t1": "news", "t2": "news", "s1": "health", "s2": "health"}


def _protos(rows: list[list[float]], labels: list[str], space: str = SPACE) -> Prototypes:
    return Prototypes.of(_rows(rows), labels, TASKS, space)


def test_prototypes_survive_their_file_with_means_and_counts() -> None:
    p = _protos([[1, 0, 0], [0.8, 0.2, 0], [0, 1, 0], [0, 0, 1]], ["t1", "t1", "s1", "s2"])
    back = from_file(to_file(p))
    assert back.labels == p.labels and back.tasks == p.tasks and back.space == SPACE
    assert back.counts == (1.0, 1.0, 2.0)
    np.testing.assert_allclose(back.sums, p.sums, atol=2e-3)
    with pytest.raises(PrototypeError, match="tasks and space"):
        to_file(Prototypes.of(np.eye(2), ["a", "b"]))


def test_a_sender_counts_at_most_the_median_contributor_and_its_trust_weight() -> None:
    own = _protos([[1, 0, 0]], ["t1"])
    liar = Prototypes(("t1",), np.array([[0.0, 1e6, 0.0]]), (1e6,), ("news",), SPACE)
    merged, skipped = merge_senders(own, {"liar": (liar, 1.0)})
    assert skipped == {}
    assert merged is not None and merged.counts == (2.0,)  # its million counts as 1
    mean = merged.means()[1][0]
    np.testing.assert_allclose(mean, _rows([[1, 1, 0]])[0])
    half, _ = merge_senders(own, {"liar": (liar, 0.5)})
    assert half is not None and half.counts == (1.5,)
    none, skipped = merge_senders(own, {"zero": (liar, 0.0)})
    assert none is own and skipped == {"zero": "weight 0"}

    def sender(counts: dict[str, float]) -> tuple[Prototypes, float]:
        names = sorted(counts)
        sums = np.array([[counts[n], 0.0, 0.0] for n in names])
        tasks = tuple("news" for _ in names)
        return Prototypes(tuple(names), sums, tuple(counts[n] for n in names), tasks, SPACE), 1.0

    # non-IID honest senders (each mostly its own topic, 20 examples) merge exactly; the
    # liar's million per label count as one median sender's 20 in all, in its proportions
    honest = {
        "a": sender({"t1": 18, "t2": 2}),
        "b": sender({"t1": 1, "t2": 19}),
        "c": sender({"t1": 10, "t2": 10}),
    }
    lie = sender({"t1": 1e6, "t2": 1e6})
    merged, _ = merge_senders(None, {**honest, "liar": lie})
    assert merged is not None and merged.counts == (39.0, 41.0)
    clean, _ = merge_senders(None, honest)
    assert clean is not None and clean.counts == (29.0, 31.0)
    # a sole sender is capped only at SENDER_CAP per label
    alone, _ = merge_senders(None, {"liar": (liar, 1.0)})
    assert alone is not None and alone.counts == (1000.0,)


def test_senders_of_another_space_or_task_are_left_out_with_the_reason() -> None:
    own = _protos([[1, 0, 0]], ["t1"])
    other_space = _protos([[0, 1, 0]], ["s1"], space="bafkother")
    other_task = Prototypes(("t1",), np.array([[0.0, 1.0, 0.0]]), (1.0,), ("health",), SPACE)
    merged, skipped = merge_senders(own, {"a": (other_space, 1.0), "b": (other_task, 1.0)})
    assert merged == own
    assert "spaces" in skipped["a"] and "task" in skipped["b"]


def test_a_parent_answers_a_task_by_prototype_where_the_senders_holding_it_do() -> None:
    """``ncm_tasks`` travels in the file; a merge keeps the tasks whose senders answering
    them by prototype hold more than half the task's (weighed, bounded) examples."""
    news = _protos([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.2, 0]], ["t1", "t1", "t2"])
    health = _protos([[0, 1, 0], [0, 0.9, 0.1]], ["s1", "s2"])
    news_says = from_file(to_file(news.answering({"news"})))
    assert news_says.ncm_tasks == {"news"}
    merged, _ = merge_senders(None, {"news": (news_says, 1.0), "health": (health, 1.0)})
    assert merged is not None and merged.ncm_tasks == {"news"}
    # a sender that does not hold a task's data cannot vote for it: its claim is dropped
    assert health.answering({"news"}).ncm_tasks == frozenset()
    # two senders of one task, one of each mind: the larger (after its bound) decides;
    # a tie is no majority
    other = _protos([[1, 0, 0], [0.7, 0.3, 0]], ["t1", "t2"])
    tie, _ = merge_senders(None, {"a": (news_says, 1.0), "b": (other, 1.0)})
    assert tie is not None and tie.ncm_tasks == frozenset()  # 2 of 4 weighed examples
    lighter, _ = merge_senders(None, {"a": (news_says, 1.0), "b": (other, 0.5)})
    assert lighter is not None and lighter.ncm_tasks == {"news"}  # 2 of 3
    # the node's own data counts in the task and never says "by prototype"
    mine = _protos([[1, 0, 0], [0.95, 0.05, 0], [0.9, 0.1, 0]], ["t1", "t2", "t2"])
    outvoted, _ = merge_senders(mine, {"news": (news_says, 1.0)})
    assert outvoted is not None and outvoted.ncm_tasks == frozenset()
    with pytest.raises(PrototypeError, match="not all tasks"):
        Prototypes(("t1",), np.eye(1), (1.0,), ("news",), SPACE, frozenset({"health"}))


def test_a_node_answers_within_the_task_of_the_nearest_prototype() -> None:
    labels = ["t1", "t2", "s1", "s2"]
    protos = _protos([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], labels)
    # the head prefers a sentiment for a news text; the prototypes send it to news
    logits = np.array([[0.0, 1.0, 5.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    emb = _rows([[1, 0.05, 0], [0.05, 1, 0]])
    assert answer(logits, emb, protos, labels) == ["t2", "s2"]
    # among the answers of one task there is nothing to route: the head decides
    assert answer(logits, emb, protos, labels, answers=["t1", "t2"]) == ["t2", "t1"]
    assert answer(logits, emb, None, labels) == ["s1", "s2"]
    # a label with no prototype competes in every task
    only_news = _protos([[1, 0, 0], [0, 1, 0]], ["t1", "s1"])
    logits = np.array([[0.0, 9.0, 0.0, 0.0], [0.0, 9.0, 1.0, 0.0]])
    assert answer(logits, emb, only_news, labels) == ["t2", "t2"]


def test_the_sign_test_is_the_exact_one_sided_binomial_tail() -> None:
    assert sign_test_p(0, 0) == 1.0  # never disagreeing is no evidence
    assert sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(0, 3) == 1.0
    assert sign_test_p(3, 1) == 5 / 16
    # the health node's 20 reviews: 13 right by prototype, 11 by its head, so at best 2 wins
    # to none where they disagree: far from enough; 15 wins to 5 is enough, 14 to 6 not
    assert sign_test_p(2, 0) == 0.25
    assert sign_test_p(15, 5) < NCM_ALPHA < sign_test_p(14, 6)
    with pytest.raises(ValueError):
        sign_test_p(-1, 2)


def test_a_task_the_validation_set_prefers_by_prototype_is_answered_by_prototype() -> None:
    labels = ["t1", "t2", "s1", "s2"]
    protos = _protos([[1, 0, 0], [0.6, 0, 0.8], [0, 1, 0], [0, 0.9, 0.1]], labels)
    # the head is wrong about news (t1 for a text near t2's prototype), right about health
    logits = np.array([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    emb = _rows([[0.6, 0.05, 0.8], [0.05, 1, 0]])
    truth = ["t2", "s2"]
    assert answer(logits, emb, protos, labels) == ["t1", "s2"]
    assert answer(logits, emb, protos, labels, ncm_tasks={"news"}) == ["t2", "s2"]
    # health by prototype would answer s1 (the nearest of its prototypes): worse there
    assert answer(logits, emb, protos, labels, ncm_tasks={"news", "health"}) == ["t2", "s1"]
    # one example each is no evidence: the prototypes win it, but a coin would as often
    once = ncm_where_better(logits, emb, protos, labels, truth)
    assert once["news"] == {"examples": 1.0, "head": 0.0, "nearest": 1.0, "wins": 1.0,
                            "losses": 0.0, "p": 0.5, "p_head": 1.0, "ncm": 0.0}  # fmt: skip
    # five such news texts are (1/32 <= 0.05); the health texts still prefer the head
    chosen = ncm_where_better(
        np.tile(logits, (5, 1)), np.tile(emb, (5, 1)), protos, labels, truth * 5
    )
    assert chosen["news"] == {"examples": 5.0, "head": 0.0, "nearest": 1.0, "wins": 5.0,
                              "losses": 0.0, "p": 1 / 32, "p_head": 1.0,
                              "ncm": 1.0}  # fmt: skip
    assert chosen["health"] == {"examples": 5.0, "head": 1.0, "nearest": 0.0, "wins": 0.0,
                                "losses": 5.0, "p": 1.0, "p_head": 1 / 32,
                                "ncm": 0.0}  # fmt: skip
    # one task among the answers: no routing, the same choice within it
    only_news = answer(logits, emb, protos, labels, answers=["t1", "t2"], ncm_tasks={"news"})
    assert only_news == ["t2", "t1"]


def test_a_way_of_answering_changes_only_where_the_other_is_shown_better() -> None:
    """A task answered by prototype keeps them until the head wins beyond chance, and one
    answered by head keeps it until the prototypes do: no switching on an example or two."""
    labels = ["t1", "t2", "s1", "s2"]
    protos = _protos([[1, 0, 0], [0.6, 0, 0.8], [0, 1, 0], [0, 0.9, 0.1]], labels)
    # news text 0: the head right (t1), its nearest prototype wrong (t2); text 1: the reverse
    logits = np.array([[5.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    emb = _rows([[0.6, 0.05, 0.8], [0.6, 0.05, 0.8]])
    truth = ["t1", "t2"]

    def choice(head_wins: int, proto_wins: int, current: set[str]) -> dict[str, float]:
        rows = [0] * head_wins + [1] * proto_wins
        return ncm_where_better(
            logits[rows], emb[rows], protos, labels, [truth[i] for i in rows], current=current
        )["news"]

    # the head right 2 more often (3 to 5: p_head = 0.36): by prototype now, it stays so
    kept = choice(5, 3, {"news"})
    assert (kept["wins"], kept["losses"], kept["ncm"]) == (3.0, 5.0, 1.0)
    assert kept["p_head"] == pytest.approx(0.363, abs=1e-3)
    # ...and by head now, it stays by head
    assert choice(5, 3, set())["ncm"] == 0.0
    # the head right on 5 where the prototypes are on none (p_head = 1/32): it goes back
    back = choice(5, 0, {"news"})
    assert (back["p_head"], back["ncm"]) == (1 / 32, 0.0)
    # the prototypes ahead but not beyond chance (14 to 6 is not; 15 to 5 is)
    assert choice(6, 14, set())["ncm"] == 0.0
    assert choice(5, 15, set())["ncm"] == 1.0
    assert choice(6, 14, {"news"})["ncm"] == 1.0


@pytest.mark.ml
@pytest.mark.xdist_group("learn-ml")
@pytest.mark.usefixtures("torch_ready")
def test_a_node_makes_prototypes_of_its_data_and_answers_with_them(
    master_dir: Path, bbc: list, drugs: list, tmp_path: Path
) -> None:
    """The product's path: prototypes of a node's examples in the master tier's base space
    (api.class_prototypes), a file a model is then scored with (api.evaluate), the choice of
    answering a task by nearest prototype on a validation set (api.validate_ncm)."""
    from p2phier.learn import api
    from p2phier.learn.data import sample_per_label
    from p2phier.learn.models import load_tier

    train = sample_per_label(bbc, 6, seed=0) + sample_per_label(drugs, 6, seed=0)
    seen = {e.uid for e in train}
    test = [e for e in sample_per_label(bbc, 6, seed=2) + sample_per_label(drugs, 6, seed=2)
            if e.uid not in seen]  # fmt: skip
    path = tmp_path / "prototypes.safetensors"
    info = api.class_prototypes(master_dir, train, path, max_length=64)
    assert info["space"] == load_tier(master_dir).info.weights_cid
    protos = from_file(path.read_bytes())
    assert set(protos.tasks) == {"news", "health"} and sum(protos.counts) == len(train)
    flat = api.init_version(master_dir, tmp_path / "flat")  # an untrained head
    sets = {"test": test}
    head = api.evaluate(master_dir, sets, adapter=flat)["accuracy.test"]
    both = api.evaluate(master_dir, sets, adapter=flat, prototypes=path,
                        ncm_tasks=["news", "health"])["accuracy.test"]  # fmt: skip
    assert both > head and both >= 0.5, (both, head)
    chosen = api.validate_ncm(master_dir, flat, path, test)
    heads = set(load_tier(master_dir).labels)  # a task is answered where the head has labels
    answerable = [e for e in test if e.label in heads]
    assert set(chosen) == {e.domain for e in answerable}
    assert sum(v["examples"] for v in chosen.values()) == len(answerable)
    assert chosen["news"]["ncm"] == 1.0, chosen  # an untrained head loses to the prototypes
