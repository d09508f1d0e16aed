"""Pure parts of the node's learning steps (no model needed)."""

from __future__ import annotations

from pathlib import Path

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


def test_siblings_start_their_lora_from_one_seed_drawn_from_their_version(tmp_path: Path) -> None:
    """Every child of a parent derives its fresh LoRA's seed from the version it trains on
    (the same bytes at every child), so its ``A`` matrices, and so its update's row space,
    are its siblings'; another version gives another seed; no version, the node's own."""
    import numpy as np

    from p2phier.learn.cycle import shared_init_seed
    from p2phier.learn.train import write_adapter

    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}
    state = {
        "base_model.model.q.lora_A.weight": np.ones((2, 3), np.float32),
        "base_model.model.q.lora_B.weight": np.zeros((3, 2), np.float32),
    }
    at_a = write_adapter(tmp_path / "child-a" / "v1", state, config)
    at_b = write_adapter(tmp_path / "child-b" / "v1", state, config)  # the same version
    state["base_model.model.q.lora_B.weight"] += 1.0
    other = write_adapter(tmp_path / "child-a" / "v2", state, config)
    seed = shared_init_seed([at_a], fallback=7)
    assert seed == shared_init_seed([at_b], fallback=8) != 7
    assert shared_init_seed([other], fallback=7) != seed
    assert shared_init_seed([], fallback=7) == 7
    assert 0 <= seed < 2**31


def test_every_continual_method_maps_to_one_config_from_the_plan() -> None:
    """``continual_config`` is the one mapping of a method name to its mechanisms and
    parameters (the node's cycle and bench/learn.py's forgetting part both use it)."""
    from dataclasses import replace

    from p2phier.learn.continual import ContinualConfig
    from p2phier.learn.cycle import EWC_LAMBDA, continual_config
    from p2phier.learnplan import CONTINUAL, LearnSettings

    plan = LearnSettings()
    configs = {m: continual_config(replace(plan, continual=m), seed=3) for m in CONTINUAL}
    assert configs["naive"] is None
    for method, config in configs.items():
        if config is None:
            continue
        assert isinstance(config, ContinualConfig) and config.strategy == method
        assert config.train.steps == plan.steps_per_cycle and config.train.seed == 3
        assert config.train.batch_size == plan.batch_size and config.train.lr == plan.lr
    logits, replay = configs["replay+logits"], configs["replay"]
    assert logits is not None and replay is not None
    assert logits.logit_replay_weight == plan.logit_replay_weight > 0
    assert logits.replay_per_label == replay.replay_per_label == plan.replay_per_label
    assert replay.logit_replay_weight == 0.0 and replay.ewc_lambda == 0.0
    assert all(c.ewc_lambda == EWC_LAMBDA for m, c in configs.items() if c and "ewc" in m)
    assert all(c.ace == ("ace" in m) for m, c in configs.items() if c)
    weighted = replace(plan, continual="replay+logits", logit_replay_weight=2.0)
    assert (c := continual_config(weighted, seed=0)) and c.logit_replay_weight == 2.0
    # no buffer, nothing to pull to its logits: plain fine-tuning's config, not an error
    for method in CONTINUAL:
        config = continual_config(replace(plan, continual=method, replay_per_label=0), seed=0)
        assert config is None or (config.replay_per_label == 0 == config.logit_replay_weight)
