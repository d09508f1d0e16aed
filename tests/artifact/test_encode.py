"""fp32 / fp16 / int8 / int8-delta / top-k-delta encodings: error bounds, error feedback,
hostile parts.

Every property test goes through the stored form (safetensors bytes, parsed
back with the hostile parser), so it tests what a peer actually receives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2phier.artifact.encode import Encoding, decode_tensors, encode_tensors, topk
from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.errors import TensorFileError, UsageError

NAME = "base_model.model.layer.lora_A.weight"

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12)
floats32 = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_nan=False, allow_infinity=False)
arrays = hnp.arrays(np.float32, shapes, elements=floats32)


def through_storage(encoded: dict[str, np.ndarray], encoding: Encoding) -> dict[str, np.ndarray]:
    st_file = parse_safetensors(write_safetensors(encoded), max_header=1 << 20, max_tensors=1000)
    return decode_tensors(st_file, encoding, max_decoded=1 << 30)


@given(arrays)
def test_fp32_is_exact(x: np.ndarray) -> None:
    out = through_storage(encode_tensors({NAME: x}, Encoding.FP32).tensors, Encoding.FP32)
    np.testing.assert_array_equal(out[NAME], x)


@given(arrays)
def test_fp16_error_bound(x: np.ndarray) -> None:
    out = through_storage(encode_tensors({NAME: x}, Encoding.FP16).tensors, Encoding.FP16)[NAME]
    assert out.dtype == np.float32 and out.shape == x.shape
    # half precision: 11 significant bits; absolute 2**-25 below the normal range
    bound = np.abs(x).astype(np.float64) * 2.0**-11 + 2.0**-24
    assert (np.abs(out.astype(np.float64) - x) <= bound).all()


@pytest.mark.parametrize("encoding", [Encoding.INT8, Encoding.INT8_DELTA])
@given(x=arrays)
def test_int8_error_bound(encoding: Encoding, x: np.ndarray) -> None:
    encoded = encode_tensors({NAME: x}, encoding).tensors
    assert encoded[NAME].dtype == np.int8
    assert int(encoded[NAME].min(initial=0)) >= -127
    out = through_storage(encoded, encoding)[NAME]
    peak = float(np.abs(x).max())
    scale = peak / 127.0
    err = float(np.abs(out.astype(np.float64) - x).max())
    assert err <= scale / 2 * (1 + 1e-5) + 1e-37


@given(x=arrays, ref=arrays, k=st.sampled_from([0.5, 2.0, 8.0, 100.0]))
def test_int8_at_a_coarser_step_never_clips_and_errs_at_most_half_a_step(
    x: np.ndarray, ref: np.ndarray, k: float
) -> None:
    """The step is max(max|x|/127, rms(reference)/k): what the decoder reads is the scale it
    always read, no entry is clipped, each is off by at most half a step."""
    encoded = encode_tensors(
        {NAME: x}, Encoding.INT8_DELTA, int8_rms_steps=k, reference={NAME: ref}
    ).tensors
    assert int(encoded[NAME].min(initial=0)) >= -127
    out = through_storage(encoded, Encoding.INT8_DELTA)[NAME]
    rms = float(np.sqrt(np.mean(np.square(ref.astype(np.float64)))))
    step = max(float(np.abs(x).max()) / 127.0, rms / k)
    assert float(np.abs(out.astype(np.float64) - x).max()) <= step / 2 * (1 + 1e-5) + 1e-37
    if np.abs(x).max() > 0 and step > 1e-30:  # (zeros, or under float32: scale 0)
        assert float(encoded[NAME + "::scale"]) >= step * (1 - 1e-6)


def test_a_coarser_step_compresses_a_gaussian_tensor_better() -> None:
    from p2phier.artifact.compress import compress

    x = np.random.default_rng(0).standard_normal(20_000).astype(np.float32)
    sizes = [
        len(
            compress(
                write_safetensors(
                    encode_tensors({NAME: x}, Encoding.INT8, int8_rms_steps=k).tensors
                )
            )
        )
        for k in (0.0, 8.0, 4.0)
    ]
    assert sizes[1] < 0.8 * sizes[0] and sizes[2] < sizes[1]


@pytest.mark.parametrize("k", [-1.0, math.nan, math.inf])
def test_a_coarser_step_must_be_a_number_from_zero(k: float) -> None:
    with pytest.raises(UsageError, match="int8_rms_steps"):
        encode_tensors({NAME: np.ones(3, np.float32)}, Encoding.INT8, int8_rms_steps=k)


@given(arrays, st.floats(min_value=0.01, max_value=1.0))
def test_topk_keeps_the_largest_entries_exactly(x: np.ndarray, fraction: float) -> None:
    result = encode_tensors({NAME: x}, Encoding.TOPK_DELTA, topk_fraction=fraction)
    out = through_storage(result.tensors, Encoding.TOPK_DELTA)[NAME]
    k = min(x.size, max(1, math.ceil(fraction * x.size)))
    kept = out != 0
    assert (
        int(np.count_nonzero(result.tensors[NAME + "::val"] == result.tensors[NAME + "::val"])) == k
    )
    np.testing.assert_array_equal(out[kept], x[kept])  # sent values are exact
    dropped = np.abs(x[~kept & (x != 0)])
    sent = np.abs(result.tensors[NAME + "::val"])
    if dropped.size and sent.size:
        assert dropped.max() <= sent.min()
    # what was sent plus the residual is exactly the input
    np.testing.assert_array_equal(out + result.residual[NAME], x)


@given(arrays, arrays)
def test_error_feedback_identity(x: np.ndarray, r: np.ndarray) -> None:
    if r.shape != x.shape:
        r = np.resize(r, x.shape)
    result = encode_tensors({NAME: x}, Encoding.TOPK_DELTA, topk_fraction=0.2, residual={NAME: r})
    sent = through_storage(result.tensors, Encoding.TOPK_DELTA)[NAME]
    np.testing.assert_allclose(sent + result.residual[NAME], x + r, rtol=0, atol=0)


def test_error_feedback_makes_sparse_updates_converge() -> None:
    # A dense per-round delta sent at 10 %: without error feedback 90 % of it is lost
    # every round; with it the cumulative sum catches up (the residual stays bounded).
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((32, 32)).astype(np.float32)
    rounds = 30
    sent_plain = np.zeros_like(delta)
    sent_ef = np.zeros_like(delta)
    residual: dict[str, Any] | None = None
    for _ in range(rounds):
        plain = encode_tensors({NAME: delta}, Encoding.TOPK_DELTA, topk_fraction=0.1)
        sent_plain += through_storage(plain.tensors, Encoding.TOPK_DELTA)[NAME]
        ef = encode_tensors(
            {NAME: delta}, Encoding.TOPK_DELTA, topk_fraction=0.1, residual=residual
        )
        sent_ef += through_storage(ef.tensors, Encoding.TOPK_DELTA)[NAME]
        residual = ef.residual
    target = rounds * delta
    rel_plain = np.linalg.norm(target - sent_plain) / np.linalg.norm(target)
    rel_ef = np.linalg.norm(target - sent_ef) / np.linalg.norm(target)
    assert rel_plain > 0.6
    assert rel_ef < 0.25
    assert rel_ef < rel_plain / 3


def test_topk_ties_and_sizes() -> None:
    idx, _val, rest = topk(np.ones((3, 3), dtype=np.float32), 0.34)
    assert idx.size == 4 and list(idx) == sorted(idx)
    assert float(rest.sum()) == 5.0
    idx0, _val0, rest0 = topk(np.zeros((0,), dtype=np.float32), 0.5)
    assert idx0.size == 0 and rest0.shape == (0,)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_non_finite_input_is_refused(encoding: Encoding) -> None:
    with pytest.raises(TensorFileError, match="NaN"):
        encode_tensors({NAME: np.array([1.0, np.nan], dtype=np.float32)}, encoding)


def test_fp16_overflow_is_refused() -> None:
    with pytest.raises(UsageError, match="fp16 range"):
        encode_tensors({NAME: np.array([70000.0], dtype=np.float32)}, Encoding.FP16)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="topk_fraction"):
        encode_tensors({NAME: np.ones(3, dtype=np.float32)}, Encoding.TOPK_DELTA, topk_fraction=0)
    with pytest.raises(UsageError, match="must not contain"):
        encode_tensors({"a::b": np.ones(3, dtype=np.float32)}, Encoding.FP32)
    with pytest.raises(UsageError, match="unknown encoding 'int4'"):
        Encoding.parse("int4")
    assert Encoding.parse("topk-delta") is Encoding.TOPK_DELTA


# --- hostile stored parts ---------------------------------------------------------------------

i32 = np.int32
f32 = np.float32


def _topk_parts(**override: Any) -> dict[str, np.ndarray]:
    parts: dict[str, np.ndarray] = {
        NAME + "::shape": np.array([2, 3], dtype=np.int64),
        NAME + "::idx": np.array([0, 4], dtype=i32),
        NAME + "::val": np.array([1.0, 2.0], dtype=f32),
    }
    for key, value in override.items():
        full = NAME + "::" + key
        if value is None:
            del parts[full]
        else:
            parts[full] = value
    return parts


@pytest.mark.parametrize(
    ("parts", "encoding", "message"),
    [
        (_topk_parts(idx=np.array([4, 0], dtype=i32)), Encoding.TOPK_DELTA, "strictly increasing"),
        (_topk_parts(idx=np.array([0, 0], dtype=i32)), Encoding.TOPK_DELTA, "strictly increasing"),
        (_topk_parts(idx=np.array([0, 6], dtype=i32)), Encoding.TOPK_DELTA, "out of range"),
        (_topk_parts(idx=np.array([-1, 2], dtype=i32)), Encoding.TOPK_DELTA, "out of range"),
        (_topk_parts(idx=np.array([0, 4], dtype=np.int64)), Encoding.TOPK_DELTA, "expected I32"),
        (_topk_parts(val=np.array([1.0], dtype=f32)), Encoding.TOPK_DELTA, "differ in shape"),
        (_topk_parts(val=np.array([1.0, np.inf], dtype=f32)), Encoding.TOPK_DELTA, "infinite"),
        (_topk_parts(val=None), Encoding.TOPK_DELTA, "missing"),
        (
            _topk_parts(shape=np.array([1 << 20, 1 << 20], dtype=np.int64)),
            Encoding.TOPK_DELTA,
            "decoded tensors would take",
        ),
        (
            _topk_parts(shape=np.array([-1, 3], dtype=np.int64)),
            Encoding.TOPK_DELTA,
            "top-k shape",
        ),
        (
            {NAME: np.array([-128, 1], dtype=np.int8), NAME + "::scale": np.array(1.0, dtype=f32)},
            Encoding.INT8_DELTA,
            "-128",
        ),
        (
            {NAME: np.array([1, 1], dtype=np.int8), NAME + "::scale": np.array(np.nan, dtype=f32)},
            Encoding.INT8_DELTA,
            "finite",
        ),
        (
            {NAME: np.array([1, 1], dtype=np.int8), NAME + "::scale": np.array(-1.0, dtype=f32)},
            Encoding.INT8_DELTA,
            ">= 0",
        ),
        (
            {NAME: np.array([1, 1], dtype=np.int8), NAME + "::scale": np.ones(2, dtype=f32)},
            Encoding.INT8_DELTA,
            "scalar",
        ),
        ({NAME: np.array([1, 1], dtype=np.int8)}, Encoding.INT8_DELTA, "missing"),
        ({NAME: np.ones(2, dtype=np.float16)}, Encoding.FP32, "expected F32"),
        ({NAME + "::val": np.ones(2, dtype=f32)}, Encoding.FP32, "encoded part"),
        ({NAME: np.ones(2, dtype=f32)}, Encoding.FP16, "expected F16"),
    ],
    ids=[
        "unsorted",
        "duplicate-index",
        "index-past-end",
        "negative-index",
        "index-dtype",
        "values-count",
        "inf-value",
        "missing-values",
        "huge-shape",
        "negative-shape",
        "int8-minus-128",
        "nan-scale",
        "negative-scale",
        "vector-scale",
        "missing-scale",
        "fp32-wrong-dtype",
        "fp32-with-parts",
        "fp16-wrong-dtype",
    ],
)
def test_hostile_encoded_parts(
    parts: dict[str, np.ndarray], encoding: Encoding, message: str
) -> None:
    with pytest.raises(TensorFileError, match=message):
        through_storage(parts, encoding)
    if encoding is Encoding.INT8_DELTA:  # the full adapter's int8 reads the same parts
        with pytest.raises(TensorFileError, match=message):
            through_storage(parts, Encoding.INT8)


def test_int8_full_and_delta_share_a_layout_not_a_meaning() -> None:
    """``int8`` is a full adapter only: it needs no parent and refuses one."""
    assert Encoding.INT8.full_only and not Encoding.INT8.delta_only
    assert Encoding.INT8_DELTA.delta_only and not Encoding.INT8_DELTA.full_only
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    full, delta = (
        encode_tensors({NAME: x}, e).tensors for e in (Encoding.INT8, Encoding.INT8_DELTA)
    )
    assert {k: v.tobytes() for k, v in full.items()} == {k: v.tobytes() for k, v in delta.items()}
