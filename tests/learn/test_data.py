"""Corpora, splits and non-IID shards (no torch)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.learn.data import (
    BBC_TOPICS,
    DataError,
    Example,
    class_incremental,
    counts,
    find_leaked_text,
    load_bbc,
    load_drug_reviews,
    make_shards,
    sample_per_label,
    stratified_split,
)


def test_bbc_has_all_five_topics_with_stable_ids(bbc: list[Example]) -> None:
    assert counts(bbc) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert bbc[0].uid == "bbc/business/001" and bbc[0].domain == "news"
    assert bbc == sorted(bbc, key=lambda e: e.uid)
    assert len({e.uid for e in bbc}) == len(bbc)


def test_drug_reviews_are_cleaned_and_labelled(drugs: list[Example]) -> None:
    assert counts(drugs) == {"negative": 256, "neutral": 90, "positive": 633}
    assert all(e.domain == "health" for e in drugs)
    assert counts(drugs, "subdomain")["birth control"] == 193
    assert not any("&#039;" in e.text or e.text.startswith('"') for e in drugs)
    assert len(load_drug_reviews(split="test")) == 379


def test_missing_and_oversized_corpus_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="topic folder"):
        load_bbc(tmp_path)
    (tmp_path / "tech").mkdir()
    (tmp_path / "tech" / "001.txt").write_bytes(b"x" * (70 * 1024))
    with pytest.raises(DataError, match="not an article"):
        load_bbc(tmp_path, topics=("tech",))
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read drug reviews"):
        load_drug_reviews(bad_zip)
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr("drugsComTrain.tsv", "a\tb\n1\t2\n")
    with pytest.raises(DataError, match="unexpected header"):
        load_drug_reviews(wrong, split="train")


def test_stratified_split_is_seeded_disjoint_and_proportional(bbc: list[Example]) -> None:
    a1, b1 = stratified_split(bbc, [0.8, 0.2], seed=3)
    a2, b2 = stratified_split(bbc, [0.8, 0.2], seed=3)
    a3, _ = stratified_split(bbc, [0.8, 0.2], seed=4)
    assert a1 == a2 and b1 == b2 and a1 != a3
    assert not {e.uid for e in a1} & {e.uid for e in b1}
    assert len(a1) + len(b1) == len(bbc)
    assert counts(b1)["sports"] == round(511 * 0.2)
    with pytest.raises(DataError, match="sum to 1"):
        stratified_split(bbc, [0.5, 0.4], seed=0)


def test_class_incremental_stages(bbc: list[Example]) -> None:
    a, b = class_incremental(bbc, [("business", "sports"), ("tech",)])
    assert {e.label for e in a} == {"business", "sports"} and {e.label for e in b} == {"tech"}
    with pytest.raises(DataError, match="more than one stage"):
        class_incremental(bbc, [("tech",), ("tech",)])
    with pytest.raises(DataError, match="do not occur"):
        class_incremental(bbc, [("weather",)])


def test_shards_with_skew_concentrate_each_node_on_its_home(bbc: list[Example]) -> None:
    iid = make_shards(bbc, 5, skew=0.0, seed=1)
    skewed = make_shards(bbc, 5, skew=0.9, seed=1)
    for shard in iid:
        share = max(shard.counts().values()) / len(shard.examples)
        assert share < 0.3  # roughly uniform over 5 topics
    for shard in skewed:
        (home,) = shard.home
        assert shard.counts()[home] / len(shard.examples) > 0.85
    assert make_shards(bbc, 5, skew=0.9, seed=1) == skewed
    assert make_shards(bbc, 5, skew=0.9, seed=2) != skewed


@given(n=st.integers(1, 9), skew=st.floats(0, 1), seed=st.integers(0, 1000))
def test_every_example_lands_on_exactly_one_node(n: int, skew: float, seed: int) -> None:
    examples = [
        Example(f"u{i:03d}", f"text {i}", BBC_TOPICS[i % 3], "news", BBC_TOPICS[i % 4])
        for i in range(60)
    ]
    shards = make_shards(examples, n, skew=skew, seed=seed, group_by="subdomain")
    uids = [e.uid for s in shards for e in s.examples]
    assert sorted(uids) == sorted(e.uid for e in examples)
    assert all(s.home for s in shards)


def test_shard_arguments_are_checked(bbc: list[Example]) -> None:
    with pytest.raises(DataError, match="skew"):
        make_shards(bbc, 2, skew=1.5, seed=0)
    with pytest.raises(DataError, match="n_nodes"):
        make_shards(bbc, 0, skew=0.5, seed=0)


def test_sample_per_label_is_balanced_and_seeded(bbc: list[Example]) -> None:
    sample = sample_per_label(bbc, 7, seed=1)
    assert counts(sample) == dict.fromkeys(BBC_TOPICS, 7)
    assert sample == sample_per_label(bbc, 7, seed=1)


def test_leak_finder_finds_copied_text_and_nothing_else(bbc: list[Example]) -> None:
    victim = bbc[10]
    blobs = {
        "clean": b"\x00\x01 weights and numbers 0.123 accuracy",
        "leaky": b"header" + victim.text[200:260].encode() + b"\x00tail",
    }
    leaks = find_leaked_text(blobs, bbc[:50])
    assert leaks == [("leaky", victim.uid)]
