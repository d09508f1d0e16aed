"""Node data shards and the isolated/centralised baselines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from p2phier.devnet.baselines import answer_labels, build_node_data, labels_of, run_baselines
from p2phier.devnet.scenario import ScenarioError, load_scenario, scenarios_dir


def test_shards_are_disjoint_skewed_deterministic_and_arrive_as_scheduled() -> None:
    s = load_scenario(scenarios_dir() / "default.toml")
    data = build_node_data(s)
    assert set(data) == {n.name for n in s.nodes if n.shard is not None}
    uids = [e.uid for d in data.values() for e in (*d.train, *d.test)]
    assert len(uids) == len(set(uids))  # no example goes to two nodes, or to train and test
    for node in s.nodes:
        if node.shard is None:
            continue
        d = data[node.name]
        assert (len(d.train), len(d.test)) == (node.shard.train, node.shard.test)
        for fraction, arrived in zip(s.arrival.fractions, d.arrivals, strict=True):
            assert abs(len(arrived) - fraction * node.shard.train) < 1
        assert sum(len(a) for a in d.arrivals) == len(d.train)
        key = "label" if node.shard.dataset == "bbc" else "subdomain"
        home = sum(getattr(e, key) in node.shard.home for e in (*d.train, *d.test))
        assert home >= round(node.shard.skew * (node.shard.train + node.shard.test))
    assert build_node_data(s) == data
    assert len(labels_of(data)) == 8  # 5 BBC topics + 3 sentiments share one head


def test_each_node_answers_with_the_labels_of_its_domain() -> None:
    s = load_scenario(scenarios_dir() / "default.toml")
    data = build_node_data(s)
    topics = ("business", "entertainment", "politics", "sports", "tech")
    sentiments = ("negative", "neutral", "positive")
    assert answer_labels(s, data, "master") == answer_labels(s, data, "en") == ()  # all 8
    for name in ("news", "news-tech", "dev-business"):
        assert answer_labels(s, data, name) == topics
    for name in ("healthcare", "health-depression", "dev-contraception"):
        assert answer_labels(s, data, name) == sentiments


def test_asking_for_more_data_than_exists_names_the_node() -> None:
    s = load_scenario(scenarios_dir() / "default.toml")
    index = next(i for i, n in enumerate(s.nodes) if n.name == "dev-depression")
    node = s.nodes[index]
    assert node.shard is not None
    greedy = replace(node, shard=replace(node.shard, train=500, skew=1.0))
    s2 = replace(s, nodes=(*s.nodes[:index], greedy, *s.nodes[index + 1 :]))
    with pytest.raises(ScenarioError, match=rf"nodes\[{index}\]\.shard: asks for \d+ examples"):
        build_node_data(s2)


@pytest.mark.slow
@pytest.mark.ml
def test_baselines_on_the_ci_scenario_score_every_training_node(tmp_path: Path) -> None:
    s = load_scenario(scenarios_dir() / "ci.toml")
    s = replace(s, learning=replace(s.learning, steps_per_cycle=2))
    result = run_baselines(s, tmp_path)
    trainers = {n.name for n in s.training_nodes()}
    assert set(result.isolated) == trainers and set(result.central) == trainers
    assert all(0.0 <= v <= 1.0 for v in [*result.isolated.values(), *result.central.values()])
    assert result.isolated_steps == 2 * s.rounds
    assert result.central_steps == 2 * s.rounds * len(trainers)
    assert (tmp_path / "central" / "adapter_model.safetensors").is_file()
    again = run_baselines(s, tmp_path / "again")
    assert again == result  # seeded: the same numbers every run
