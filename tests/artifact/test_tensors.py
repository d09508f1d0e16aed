"""The hand-written safetensors codec (interop with the reference library, hostile headers)
and the PEFT adapter checks (names, ranks, pairs, modules_to_save)."""

from __future__ import annotations

import json
import pickle
import struct
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2phier.artifact.adapter import (
    canonical_config_bytes,
    check_adapter_tensors,
    parse_adapter_config,
)
from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.errors import TensorFileError

from .conftest import adapter_config, adapter_tensors

LIMITS = {"max_header": 1 << 20, "max_tensors": 100}

names = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)
dtypes = st.sampled_from([np.float32, np.float16, np.int8, np.int64, np.uint8, np.float64])
tensor_dicts = st.dictionaries(
    names,
    dtypes.flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    ),
    max_size=5,
)


def raw_file(header: Any, data: bytes = b"", *, header_bytes: bytes | None = None) -> bytes:
    hb = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data


@given(tensor_dicts)
def test_our_files_load_in_the_reference_library(tensors: dict[str, np.ndarray]) -> None:
    data = write_safetensors(tensors, {"k": "v"})
    loaded = safetensors.numpy.load(data)
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr)
        assert loaded[name].dtype == arr.dtype
    assert write_safetensors(tensors, {"k": "v"}) == data  # deterministic


@given(tensor_dicts)
def test_reference_files_parse_here(tensors: dict[str, np.ndarray]) -> None:
    data = safetensors.numpy.save(tensors, metadata={"format": "np"})
    st_file = parse_safetensors(data, **LIMITS)
    assert st_file.metadata == {"format": "np"}
    assert set(st_file.infos) == set(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(st_file.array(name), arr)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_tensor_file_error(data: bytes) -> None:
    try:
        parsed = parse_safetensors(data, **LIMITS)
    except TensorFileError:
        return
    assert sum(i.end - i.begin for i in parsed.infos.values()) == len(parsed.data)


@given(st.data())
def test_mutated_files_raise_only_tensor_file_error(data: st.DataObject) -> None:
    good = bytearray(write_safetensors(adapter_tensors()))
    pos = data.draw(st.integers(0, len(good) - 1))
    good[pos] ^= data.draw(st.integers(1, 255))
    try:
        parsed = parse_safetensors(bytes(good), **LIMITS)
        for name in parsed.infos:
            parsed.floats(name)
    except TensorFileError:
        pass


def test_bf16_is_widened_exactly() -> None:
    bits = np.array([0x3F80, 0xC000, 0x0000], dtype="<u2")  # 1.0, -2.0, 0.0
    data = raw_file({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, bits.tobytes())
    np.testing.assert_array_equal(parse_safetensors(data, **LIMITS).floats("t"), [1.0, -2.0, 0.0])


def _entry(
    dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None
) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape or [2], "data_offsets": offsets or [0, 8]}


PICKLED = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 7, "shorter than its header"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header length 1099511627776 exceeds"),
        (struct.pack("<Q", 100) + b"{}", "runs past the end"),
        (PICKLED, "pickle"),
        (b"PK\x03\x04" + b"\x00" * 40, "pickle"),
        (raw_file(None, header_bytes=b"[1,2]   "), "does not start with a JSON object"),
        (raw_file(None, header_bytes=b"{nope}  "), "not JSON"),
        (raw_file(None, header_bytes=b'{"a": 1}\xff'), "UTF-8"),
        (raw_file(None, header_bytes=b'{"t": 1, "t": 2}'), "duplicate key"),
        (raw_file(None, header_bytes=b'{"t": NaN}'), "non-standard constant"),
        (raw_file(None, header_bytes=b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}"), "nested"),
        (raw_file({"t": _entry("F8")}, b"\x00" * 8), "unknown dtype"),
        (raw_file({"t": _entry(shape=[-2])}, b"\x00" * 8), "non-negative integer"),
        (raw_file({"t": _entry(shape=[True, 2])}, b"\x00" * 8), "non-negative integer"),
        (raw_file({"t": _entry(shape=[1] * 9)}, b"\x00" * 8), "at most 8"),
        (raw_file({"t": {**_entry(), "extra": 1}}, b"\x00" * 8), "exactly dtype"),
        (raw_file({"t": _entry(offsets=[8, 0])}, b"\x00" * 8), "ends"),
        (raw_file({"t": _entry(offsets=[0, 12])}, b"\x00" * 12), "span 12 bytes"),
        (raw_file({"t": _entry(shape=[3], offsets=[0, 12])}, b"\x00" * 8), "reach byte 12"),
        (
            raw_file({"a": _entry(), "b": _entry(offsets=[4, 12])}, b"\x00" * 12),
            "overlaps",
        ),
        (raw_file({"a": _entry(offsets=[4, 12])}, b"\x00" * 12), "hole at bytes 0..4"),
        (raw_file({"a": _entry()}, b"\x00" * 12), "4 trailing bytes"),
        (raw_file({"__metadata__": {"a": 1}}), "__metadata__"),
        (raw_file({"": _entry()}, b"\x00" * 8), "empty or too long"),
        (
            raw_file({f"t{i}": _entry(shape=[0], offsets=[0, 0]) for i in range(101)}),
            "over the limit of 100",
        ),
    ],
    ids=[
        "too-short",
        "header-2^40",
        "header-past-end",
        "pickle",
        "torch-zip",
        "not-object",
        "not-json",
        "not-utf8",
        "duplicate-keys",
        "nan-literal",
        "deep-nesting",
        "unknown-dtype",
        "negative-dim",
        "bool-dim",
        "too-many-dims",
        "extra-entry-key",
        "reversed-offsets",
        "size-mismatch",
        "past-data-end",
        "overlap",
        "hole",
        "trailing-data",
        "bad-metadata",
        "empty-name",
        "too-many-tensors",
    ],
)
def test_hostile_safetensors(data: bytes, message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        parse_safetensors(data, **LIMITS)


@pytest.mark.parametrize(("value", "word"), [(np.nan, "1 NaN"), (np.inf, "1 infinite")])
def test_non_finite_values(value: float, word: str) -> None:
    data = write_safetensors({"t": np.array([1.0, value], dtype=np.float32)})
    with pytest.raises(TensorFileError, match=word):
        parse_safetensors(data, **LIMITS).floats("t")


def test_integer_tensor_is_not_a_float() -> None:
    data = write_safetensors({"t": np.array([1, 2], dtype=np.int8)})
    with pytest.raises(TensorFileError, match="expected a float"):
        parse_safetensors(data, **LIMITS).floats("t")


# --- PEFT config and tensor layout ---------------------------------------------------------------


def _cfg(**extra: Any) -> bytes:
    return json.dumps(adapter_config(**extra)).encode()


def _shapes(tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {n: t.shape for n, t in tensors.items()}


def test_adapter_config_and_tensors_accepted() -> None:
    cfg = parse_adapter_config(_cfg(), max_size=65536)
    assert cfg.r == 4
    check_adapter_tensors(cfg, _shapes(adapter_tensors()))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"peft_type": "IA3"}, "only LORA"),
        ({"use_dora": True}, "DoRA"),
        ({"r": 0}, "r must be"),
        ({"r": True}, "r must be"),
        ({"r": 10**6}, "r must be"),
        ({"rank_pattern": {"(a+)+$": 2}}, "plain dotted module name"),
        ({"rank_pattern": {"query": 0}}, "rank_pattern"),
        ({"rank_pattern": [1]}, "must be an object"),
        ({"modules_to_save": ["../x"]}, "modules_to_save"),
        ({"base_model_name_or_path": 3}, "base_model_name_or_path"),
    ],
)
def test_bad_adapter_configs(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(TensorFileError, match=message):
        parse_adapter_config(_cfg(**extra), max_size=65536)


def test_adapter_config_size_and_shape() -> None:
    with pytest.raises(TensorFileError, match="over the limit"):
        parse_adapter_config(_cfg(), max_size=10)
    with pytest.raises(TensorFileError, match="not a JSON object"):
        parse_adapter_config(b"[]", max_size=100)


def test_rank_pattern_is_resolved_like_peft() -> None:
    cfg = parse_adapter_config(
        _cfg(rank_pattern={"layer.0.attention.self.query": 2}), max_size=65536
    )
    tensors = adapter_tensors()
    q = "base_model.model.encoder.layer.0.attention.self.query"
    with pytest.raises(TensorFileError, match="rank 2"):
        check_adapter_tensors(cfg, _shapes(tensors))
    tensors[f"{q}.lora_A.weight"] = np.zeros((2, 16), dtype=np.float32)
    tensors[f"{q}.lora_B.weight"] = np.zeros((16, 2), dtype=np.float32)
    check_adapter_tensors(cfg, _shapes(tensors))


def test_modules_to_save_tensors() -> None:
    tensors = adapter_tensors()
    tensors["base_model.model.classifier.weight"] = np.zeros((3, 16), dtype=np.float32)
    tensors["base_model.model.classifier.bias"] = np.zeros((3,), dtype=np.float32)
    with pytest.raises(TensorFileError, match="neither a LoRA"):
        check_adapter_tensors(parse_adapter_config(_cfg(), max_size=65536), _shapes(tensors))
    cfg = parse_adapter_config(_cfg(modules_to_save=["classifier"]), max_size=65536)
    check_adapter_tensors(cfg, _shapes(tensors))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop(next(n for n in t if "lora_B" in n)), "no lora_B"),
        (lambda t: t.update({"model.x.lora_A.weight": np.zeros((4, 16))}), "PEFT naming"),
        (lambda t: t.update({"base_model.model.a b.lora_A.weight": np.zeros((4, 16))}), "invalid"),
        (
            lambda t: t.update({"base_model.model.m.lora_A.weight": np.zeros((4, 16, 1))}),
            "3 dimensions",
        ),
        (
            lambda t: t.update({"base_model.model.m.lora_A.weight": np.zeros((5, 16))}),
            "rank 4",
        ),
        (lambda t: t.clear(), "no tensors"),
    ],
    ids=["missing-B", "bad-prefix", "bad-module", "3d", "wrong-rank", "empty"],
)
def test_bad_adapter_tensors(change: Any, message: str) -> None:
    tensors = adapter_tensors()
    change(tensors)
    with pytest.raises(TensorFileError, match=message):
        check_adapter_tensors(parse_adapter_config(_cfg(), max_size=65536), _shapes(tensors))


def test_canonical_config_names_the_base_model_not_a_path() -> None:
    cfg = parse_adapter_config(_cfg(), max_size=65536)
    data = canonical_config_bytes(cfg, "org/model")
    assert b"/home/someone" not in data
    assert json.loads(data)["base_model_name_or_path"] == "org/model"
    assert canonical_config_bytes(parse_adapter_config(data, max_size=65536), "org/model") == data
