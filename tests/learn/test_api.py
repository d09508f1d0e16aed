"""The node's interface: a full cycle (train, pack, aggregate, publish, rebase) on real data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from p2phier.artifact import materialise, verify_artifact
from p2phier.errors import BaseModelMismatchError
from p2phier.identity import Identity
from p2phier.learn import api
from p2phier.learn.aggregate import AggregationConfig, Rule
from p2phier.learn.data import (
    Example,
    find_leaked_text,
    make_shards,
    sample_per_label,
    stratified_split,
)
from p2phier.learn.models import ModelError, load_tier, read_tier_info, tier_module_names
from p2phier.learn.pareto import select_tier
from p2phier.learn.timing import TimingPolicy
from p2phier.learn.train import LoraSettings, Session, TrainConfig, read_adapter
from p2phier.store import MemoryStore
from p2phier.trust.quality import QualityConfig

from .conftest import ML

pytestmark = ML

CHILD_TRAIN = TrainConfig(steps=40, batch_size=8, lr=5e-3, max_length=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_full_cycle_on_a_tiny_causal_lm_improves_every_child(
    tmp_path: Path, lm_dir: Path, bbc: list[Example]
) -> None:
    """Three sports-news nodes under one parent: train, pack, verify, unpack,
    aggregate (FedAvg of merged products), publish by the timing rule, rebase.
    Perplexity is the metric; raw text never appears in anything produced."""
    tier = read_tier_info(lm_dir)
    sports = [e for e in bbc if e.label == "sports"]
    shards = make_shards(sports[:200], 3, skew=0.0, seed=0)
    kids = [stratified_split(list(s.examples)[:60], [0.7, 0.3], seed=1) for s in shards]
    parent_validation = sports[200:230]
    store = MemoryStore()
    v0 = api.init_version(lm_dir, tmp_path / "v0", lora=LoraSettings(r=8, alpha=16))

    unpacked: dict[str, tuple[Path, float]] = {}
    records: dict[str, bytes] = {}
    own: dict[str, Path] = {}
    for i, (train, val) in enumerate(kids):
        child = f"child{i}"
        result = api.train_cycle(
            lm_dir,
            tmp_path / child,
            train,
            parents=[v0],
            train=CHILD_TRAIN,
            eval_sets={"own": val},
            seed=i,
        )
        assert set(result.metrics.scores) == {"perplexity.own"}
        own[child] = result.adapter_dir
        identity = Identity.from_seed(bytes([i + 1]) * 32)
        artifact = api.pack(
            store,
            result.adapter_dir,
            identity,
            tier,
            layer="subdomain",
            domain="news/sports",
            now=1000.0 + i,
            round=1,
            metrics=result.metrics,
        )
        verified = verify_artifact(store, artifact.cid, expected_base_model=tier.tier_id)
        assert verified.manifest.metrics_dict["perplexity.own"] == pytest.approx(
            result.metrics.scores["perplexity.own"]
        )
        records[child + ".envelope"] = artifact.envelope_bytes
        records[child + ".metrics"] = json.dumps(asdict(result.metrics)).encode()
        unpacked[child] = (
            api.unpack(store, artifact.cid, tmp_path / f"in-{child}", tier),
            float(len(train)),
        )

    round_ = api.aggregate_round(
        lm_dir, v0, unpacked, tmp_path / "v1", rule=AggregationConfig(Rule.FEDAVG)
    )
    assert round_.rank == 24  # three rank-8 updates, kept without truncation
    assert round_.refactor_error < 1e-4
    assert [c.weight for c in round_.aggregation.children] == pytest.approx([1 / 3] * 3)

    decision = api.decide_publish(
        lm_dir,
        v0,
        round_.candidate_dir,
        validation=parent_validation,
        held={},
        policy=TimingPolicy(margin=1.0, higher_is_better=False),
        now=2000.0,
        round=1,
        n_updates=3,
    )
    assert decision.publish, decision.reason
    assert decision.validation_after < decision.validation_before - 1.0
    records["decision"] = decision.to_json().encode()

    for i, (_, val) in enumerate(kids):
        child = f"child{i}"
        rebased = api.rebase(
            lm_dir,
            own[child],
            v0,
            round_.candidate_dir,
            tmp_path / f"rebased-{child}",
            eval_sets={"own": val},
        )
        # the parent's version, built from all three, beats the child's own adapter
        assert rebased.change["perplexity.own"] < -2.0, rebased

    blobs = {**_files(tmp_path), **records}
    blobs.update({str(c): store.get_block(c) for c in store.iter_block_cids()})
    everything_trained_on = [e for train, _ in kids for e in train]
    assert find_leaked_text(blobs, everything_trained_on) == []
    # the check itself works: the children's text is there to find in the corpus
    assert find_leaked_text(
        {"corpus": everything_trained_on[0].text.encode()}, everything_trained_on[:1]
    )

    with pytest.raises(ModelError, match="perplexity"):
        api.decide_publish(
            lm_dir,
            v0,
            round_.candidate_dir,
            validation=parent_validation,
            held={},
            policy=TimingPolicy(),
            now=0.0,
            round=1,
            n_updates=3,
        )


def test_artifact_round_trip_predicts_like_the_in_memory_model(
    tmp_path: Path, tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    tier = load_tier(tiny_cls_dir)
    session = Session(tier)
    session.train_classifier(
        sample_per_label(bbc_split[0], 6, 0), TrainConfig(steps=4, batch_size=8, max_length=32)
    )
    texts = [e.text for e in bbc_split[1][:16]]
    expected = session.logits(texts, 32)
    adapter = session.save(tmp_path / "adapter")
    store = MemoryStore()
    identity = Identity.from_seed(b"\x07" * 32)
    exact = api.pack(
        store,
        adapter,
        identity,
        tier.info,
        layer="device",
        domain="news",
        now=1.0,
        metrics={"accuracy": 0.5},
    )
    half = api.pack(
        store, adapter, identity, tier.info, layer="device", domain="news", now=2.0, encoding="fp16"
    )
    back = api.unpack(store, exact.cid, tmp_path / "back", tier.info)
    torch.testing.assert_close(Session(tier, adapter=back).logits(texts, 32), expected)
    # a node checks a fetched update against the modules of the tier it names (its
    # weights file's header): the session's adapter targets exactly those
    modules = tier_module_names(tiny_cls_dir)
    assert {n for n, _ in tier.model.named_modules() if n} >= {
        m for m in modules if ".weight" not in m
    }
    materialise(store, exact.cid, tmp_path / "checked", base_modules=modules)
    merged = Session(tier, parents=[back]).logits(texts, 32)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)
    fp16 = Session(tier, adapter=api.unpack(store, half.cid, tmp_path / "half", tier.info))
    torch.testing.assert_close(fp16.logits(texts, 32), expected, atol=2e-2, rtol=2e-2)
    assert fp16.predict(texts, 32) == session.predict(texts, 32)
    other = read_tier_info(tiny_cls_dir)
    other = type(other)(**{**asdict(other), "tier_id": "another/tier"})
    with pytest.raises(BaseModelMismatchError):
        api.unpack(store, exact.cid, tmp_path / "wrong", other)


def test_classifier_cycle_reports_accuracy_and_tiers_are_chosen_by_measurement(
    tmp_path: Path, tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    train = sample_per_label(bbc_split[0], 8, 0)
    test = sample_per_label(bbc_split[1], 6, 0)
    result = api.train_cycle(
        tiny_cls_dir,
        tmp_path / "a",
        train,
        train=TrainConfig(steps=3, max_length=32),
        eval_sets={"test": test, "train": train},
    )
    manifest_metrics = result.metrics.for_manifest()
    assert set(manifest_metrics) == {"accuracy.test", "accuracy.train", "loss", "n-train"}
    assert 0.0 <= manifest_metrics["accuracy.test"] <= 1.0
    score = api.evaluate(tiny_cls_dir, {"test": test}, adapter=result.adapter_dir, max_length=32)
    assert score["accuracy.test"] == pytest.approx(result.metrics.scores["accuracy.test"])
    candidate = api.measure_tier(tiny_cls_dir, test, adapter=result.adapter_dir, max_length=32)
    assert candidate.accuracy == pytest.approx(score["accuracy.test"])
    assert select_tier([candidate], max_size_bytes=candidate.size_bytes) == candidate
    summary = api.tier_summary(tiny_cls_dir)
    assert summary["cid"] == read_tier_info(tiny_cls_dir).weights_cid


def test_rebase_keeps_the_personal_head_and_can_personalise_it(
    tmp_path: Path, tiny_cls_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    quick = TrainConfig(steps=3, batch_size=8, max_length=32)
    own_data = sample_per_label([e for e in bbc_split[0] if e.label in ("sports", "tech")], 6, 0)
    v0 = api.init_version(tiny_cls_dir, tmp_path / "v0")
    child = api.train_cycle(tiny_cls_dir, tmp_path / "child", own_data, parents=[v0], train=quick)
    v1 = api.aggregate_round(
        tiny_cls_dir, v0, {"child": (child.adapter_dir, 1.0)}, tmp_path / "v1"
    ).candidate_dir
    evals = {"own": own_data}
    child_state = read_adapter(child.adapter_dir).state

    def heads(state: dict) -> dict:
        return {k: v for k, v in state.items() if "lora_" not in k}

    reset = api.rebase(tiny_cls_dir, child.adapter_dir, v0, v1, tmp_path / "reset", eval_sets=evals)
    state = read_adapter(reset.adapter_dir).state
    assert all(not v.any() for k, v in state.items() if "lora_B" in k)  # fresh LoRA
    for key, value in heads(child_state).items():
        np.testing.assert_array_equal(state[key], value)  # the personal head is kept
    assert set(reset.before) == set(reset.after) == {"accuracy.own"}

    keep = api.rebase(
        tiny_cls_dir, child.adapter_dir, v0, v1, tmp_path / "keep", eval_sets=evals, mode="keep"
    )
    kept = read_adapter(keep.adapter_dir).state
    assert all(np.array_equal(kept[k], v) for k, v in child_state.items())

    personal = api.rebase(
        tiny_cls_dir,
        child.adapter_dir,
        v0,
        v1,
        tmp_path / "personal",
        eval_sets=evals,
        personal_examples=own_data,
        head_train=quick,
    )
    tuned = read_adapter(personal.adapter_dir).state
    assert all(not v.any() for k, v in tuned.items() if "lora_B" in k)  # backbone untouched
    assert any(
        not np.array_equal(tuned[k], v) for k, v in heads(child_state).items()
    )  # head adapted to the child's own labels
    with pytest.raises(ModelError, match="mode"):
        api.rebase(
            tiny_cls_dir, child.adapter_dir, v0, v1, tmp_path / "x", eval_sets=evals, mode="merge"
        )  # type: ignore[arg-type]


@pytest.mark.slow
def test_the_trusted_set_tells_a_label_flipper_from_honest_children(
    tmp_path: Path, master_dir: Path, bbc_split: tuple[list[Example], list[Example]]
) -> None:
    """Six children train on version 0; one of them on its data with every label mirrored.
    Applied alone, its adapter makes the parent's held-out set (which no child sees)
    worse, the honest ones hardly: the round's screen (``trusted_loss``) flags the
    flipper as harmful, and only it, and leaves it out; and, with the screen's defaults,
    as moving one label's examples to another (``mislabels``)."""
    train, test = bbc_split
    labels = sorted({e.label for e in train})
    mirror = dict(zip(labels, reversed(labels), strict=True))
    quick = TrainConfig(steps=12, batch_size=8, lr=5e-3, max_length=48)
    v0 = api.init_version(master_dir, tmp_path / "v0")
    children: dict[str, tuple[Path, float]] = {}
    for i in range(6):
        data = sample_per_label(train, 8, seed=10 + i)
        if i == 0:
            data = [dataclasses.replace(e, label=mirror[e.label]) for e in data]
        out = api.train_cycle(master_dir, tmp_path / f"c{i}", data, parents=[v0], train=quick)
        children[f"c{i}"] = (out.adapter_dir, 1.0)
    trusted = sample_per_label(test, 8, seed=99)
    result = api.aggregate_round(
        master_dir, v0, children, tmp_path / "v1", trusted_examples=trusted, max_length=48,
        quality=QualityConfig(harm_ratio=0.15),  # off by default (trust/quality.py says why)
    )  # fmt: skip
    harm = {a: v.harm for a, v in result.verdicts.items()}
    assert all(h is not None for h in harm.values())
    assert harm["c0"] > 2 * max(h for a, h in harm.items() if a != "c0"), harm
    harmful = {a for a, v in result.verdicts.items() if "harmful" in v.flags}
    assert harmful == {"c0"}, {a: v.reason() for a, v in result.verdicts.items()}
    # where its probability goes: the flipper moves each label's examples to the mirrored
    # label, which honest children never do (on by default; the harmful check is not)
    moved = {a: v.mislabel for a, v in result.verdicts.items()}
    assert all(m is not None for m in moved.values()), moved
    assert {a for a, v in result.verdicts.items() if "mislabels" in v.flags} == {"c0"}, moved
    default = api.aggregate_round(
        master_dir, v0, children, tmp_path / "v1-default", trusted_examples=trusted,
        max_length=48,
    )  # fmt: skip
    assert {a for a, v in default.verdicts.items() if not v.ok} == {"c0"}, moved
    assert default.verdicts["c0"].flags == ("mislabels",)
    assert "c0" not in {c.child for c in result.aggregation.children}


# --- the screen alone, for an update that came after its round ----------------------------------

_MOD = "base_model.model.encoder.layer.0.attention.self.query"
_HEAD = "base_model.model.classifier.weight"
_LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}


def _toy(path: Path, a: np.ndarray, b: np.ndarray, head: np.ndarray) -> Path:
    from p2phier.learn.train import write_adapter

    state = {_MOD + ".lora_A.weight": a, _MOD + ".lora_B.weight": b, _HEAD: head}
    return write_adapter(path, {k: v.astype(np.float32) for k, v in state.items()}, _LORA)


def _toy_round(
    tmp_path: Path, rng: np.random.Generator
) -> tuple[Path, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A toy round's version (zero LoRA B, a random head), its head, and the direction
    (LoRA A, LoRA B, head) its honest updates share, drawn from ``rng`` in that order."""
    head = rng.normal(size=(3, 5))
    version = _toy(tmp_path / "version", rng.normal(size=(2, 6)), np.zeros((5, 2)), head)
    return (
        version,
        head,
        (rng.normal(size=(2, 6)), rng.normal(size=(5, 2)), rng.normal(size=(3, 5))),
    )


def test_screen_updates_judges_a_late_update_against_the_rounds_updates(tmp_path: Path) -> None:
    """What a parent runs on an update that came after its round (an IPM colluder, which
    waited for the honest updates, always does): the same verdicts as the round's screen,
    the parent's own update the trusted reference."""
    from p2phier.devnet.attacker import collude
    from p2phier.learn.aggregate import OWN_UPDATE

    rng = np.random.default_rng(0)
    version, head, (common_a, common_b, common_h) = _toy_round(tmp_path, rng)
    # honest updates share a direction (they learn the same task), each with its own noise
    children: dict[str, tuple[Path, float]] = {}
    for i, name in enumerate(["a", "b", "c", "d", "e", OWN_UPDATE]):
        path = _toy(
            tmp_path / f"h{i}",
            common_a + 0.3 * rng.normal(size=(2, 6)),
            common_b + 0.3 * rng.normal(size=(5, 2)),
            head + common_h + 0.3 * rng.normal(size=(3, 5)),
        )
        children[name] = (path, 1.0)
    honest = [p for name, (p, _) in children.items() if name != OWN_UPDATE]
    late = collude("ipm", 0.5, honest, version, out=tmp_path / "ipm")
    verdicts = api.screen_updates(version, {**children, "late": (late, 1.0)})
    assert OWN_UPDATE not in verdicts  # the trusted reference is not judged
    assert verdicts["late"].flags and "opposes" in verdicts["late"].flags
    assert verdicts["late"].penalty >= 0.5
    assert all(verdicts[n].ok for n in "abcde"), {n: verdicts[n].reason() for n in "abcde"}
    # an honest late update is judged ok
    again = _toy(tmp_path / "h-late", common_a + 0.3 * rng.normal(size=(2, 6)),
                 common_b + 0.3 * rng.normal(size=(5, 2)),
                 head + common_h + 0.3 * rng.normal(size=(3, 5)))  # fmt: skip
    assert api.screen_updates(version, {**children, "late": (again, 1.0)})["late"].ok


def test_a_late_update_is_judged_with_the_rounds_probe_where_the_parent_sent_no_update(
    tmp_path: Path,
) -> None:
    """A parent that does not train sends no own update: its round's screen took its probe
    as the trusted direction, and so does the late screen (it had none: a CI run let an IPM
    colluder's late update pass as ``ok`` that its round-1 screen had flagged ``opposes``
    with the probe)."""
    from p2phier.devnet.attacker import collude

    rng = np.random.default_rng(0)
    version, head, (common_a, common_b, common_h) = _toy_round(tmp_path, rng)
    # honest updates nearly orthogonal to each other (one topic each), all with a part along
    # the parent's probe (what its training data teaches)

    def honest(path: Path, share: float) -> Path:
        return _toy(path, share * common_a + rng.normal(size=(2, 6)),
                    share * common_b + rng.normal(size=(5, 2)),
                    head + share * common_h + rng.normal(size=(3, 5)))  # fmt: skip

    children = {name: (honest(tmp_path / name, 0.3), 1.0) for name in "abcde"}
    probe = api.child_update(honest(tmp_path / "probe", 1.5), version)
    late = collude("ipm", 0.5, [p for p, _ in children.values()], version, out=tmp_path / "ipm")
    everyone = {**children, "late": (late, 1.0)}
    # (without the probe this very screen judges the late update ok: its consensus cosine,
    # -0.75, is within the honest updates' spread)
    with_probe = api.screen_updates(version, everyone, probe=probe)
    assert "opposes" in with_probe["late"].flags, with_probe["late"].reason()
    assert all(with_probe[n].ok for n in "abcde"), {n: with_probe[n].reason() for n in "abcde"}
    # through the node's step, as the learner calls it for a late update
    from p2phier.learn import cycle

    assert cycle.screen_late(version, everyone, probe)["late"]["reason"].startswith("opposes")


def test_a_cycle_keeps_every_continual_setting_but_the_training_budget() -> None:
    """train_cycle gives the continual learner its own TrainConfig; every other setting is
    the caller's (a copy field by field once dropped ``ace``: the method silently ran as
    ``replay+logits``)."""
    from p2phier.learn.continual import ContinualConfig

    config = ContinualConfig(
        train=TrainConfig(steps=1), replay_per_label=3, replay_fraction=0.25, ewc_lambda=2.0,
        ewc_samples=5, logit_replay_weight=0.5, ace=True,
    )  # fmt: skip
    defaults = ContinualConfig()
    got = api._with_train(config, TrainConfig(steps=7))
    assert got.train == TrainConfig(steps=7)
    for f in dataclasses.fields(ContinualConfig):
        if f.name != "train":
            assert getattr(got, f.name) == getattr(config, f.name) != getattr(defaults, f.name)
