"""Adapters that adapt nothing are refused: target_modules against the tensors (and the base).

Issue 13: with ``target_modules=["key"]`` but tensors for query/value, pack,
verify and unpack all succeeded and PEFT loaded an adapter equal to the base
model; with ``["nonexistent"]`` or ``[]`` the artifact verified and
``PeftModel.from_pretrained`` then raised.  The matching rules are PEFT's
``check_target_module_exists`` (peft 0.21).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from p2phier.artifact.adapter import (
    check_adapter_tensors,
    module_names_from_weights,
    parse_adapter_config,
)
from p2phier.errors import TensorFileError

from .conftest import adapter_config

Q = "encoder.layer.{}.attention.self.query"
V = "encoder.layer.{}.attention.self.value"
K = "encoder.layer.{}.attention.self.key"


def _cfg(**extra: Any) -> Any:
    return parse_adapter_config(json.dumps(adapter_config(**extra)).encode(), max_size=65536)


def _lora(*modules: str, r: int = 4) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for m in modules:
        out[f"base_model.model.{m}.lora_A.weight"] = (r, 16)
        out[f"base_model.model.{m}.lora_B.weight"] = (16, r)
    return out


def _base(layers: int = 2) -> set[str]:
    """Module names of a 2-layer BERT-like base, as its weights file shows them."""
    names = []
    for i in range(layers):
        for m in (Q, K, V):
            names += [m.format(i) + ".weight", m.format(i) + ".bias"]
        names.append(f"encoder.layer.{i}.output.dense.weight")
    names += ["embeddings.word_embeddings.weight", "classifier.weight"]
    return module_names_from_weights(names)


def test_an_adapter_for_its_targets_is_accepted() -> None:
    shapes = _lora(Q.format(0), V.format(0), Q.format(1), V.format(1))
    check_adapter_tensors(_cfg(), shapes)
    check_adapter_tensors(_cfg(), shapes, base_modules=_base())


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["key"], r"LoRA tensors for 'encoder.layer.0.attention.self.query'.*does not select"),
        (["nonexistent"], "does not select"),
        (["query"], r"'encoder.layer.0.attention.self.value'.*does not select"),
        (["query", "value", "key"], r"names 'key' but the adapter has no LoRA tensors"),
    ],
    ids=["key-for-query-value", "nonexistent", "one-unselected", "target-without-tensors"],
)
def test_tensors_and_targets_must_agree(targets: list[str], message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        check_adapter_tensors(_cfg(target_modules=targets), _lora(Q.format(0), V.format(0)))


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([], "is empty: the adapter adapts nothing"),
        (None, "must be a list"),
        (".*query", "regular expression"),
        (["a b"], "must be a list of dotted module names"),
        (["x"] * 10_001, "must be a list"),
    ],
    ids=["empty", "null", "regex", "bad-name", "too-many"],
)
def test_target_modules_must_be_a_list_of_names(targets: Any, message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        _cfg(target_modules=targets)


def test_other_targeting_fields_are_checked() -> None:
    with pytest.raises(TensorFileError, match="target_parameters"):
        _cfg(target_parameters=["experts.gate_up_proj"])
    with pytest.raises(TensorFileError, match="exclude_modules is a string"):
        _cfg(exclude_modules=".*key")
    with pytest.raises(TensorFileError, match="layers_to_transform"):
        _cfg(layers_to_transform=["0"])
    with pytest.raises(TensorFileError, match="layers_pattern"):
        _cfg(layers_to_transform=[0], layers_pattern="(a+)+")


def test_layers_to_transform_follows_peft() -> None:
    cfg = _cfg(layers_to_transform=[1], layers_pattern="layer")
    assert cfg.targets(Q.format(1)) and not cfg.targets(Q.format(0))
    check_adapter_tensors(cfg, _lora(Q.format(1), V.format(1)), base_modules=_base())
    with pytest.raises(TensorFileError, match="does not select"):
        check_adapter_tensors(cfg, _lora(Q.format(0), V.format(0), Q.format(1), V.format(1)))
    # without a pattern PEFT takes the first numbered segment
    assert _cfg(layers_to_transform=0).targets(Q.format(0))


def test_exclude_modules_and_modules_to_save_are_not_targets() -> None:
    cfg = _cfg(exclude_modules=["encoder.layer.1.attention.self.query"])
    assert not cfg.targets(Q.format(1)) and cfg.targets(Q.format(0))
    with pytest.raises(TensorFileError, match="does not select"):
        check_adapter_tensors(cfg, _lora(Q.format(0), V.format(0), Q.format(1)))
    assert not _cfg(target_modules=["classifier"], modules_to_save=["classifier"]).targets(
        "classifier"
    )


def test_against_the_base_model() -> None:
    cfg = _cfg()
    # a targeted base module without tensors: PEFT would add an untrained layer there
    with pytest.raises(TensorFileError, match=r"selects \['encoder.layer.1.attention.self"):
        check_adapter_tensors(cfg, _lora(Q.format(0), V.format(0)), base_modules=_base())
    # a module the base model does not have
    with pytest.raises(TensorFileError, match="which the base model does not have"):
        check_adapter_tensors(
            cfg,
            _lora(Q.format(0), V.format(0), Q.format(1), V.format(1), Q.format(7)),
            base_modules=_base(),
        )


def test_module_names_from_weights() -> None:
    names = module_names_from_weights(["a.b.weight", "a.c.bias", "d"])
    assert names == {"a", "a.b", "a.c"}
    assert np.all([n != "a.b.weight" for n in names])
