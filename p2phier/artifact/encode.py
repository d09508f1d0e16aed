"""Tensor encodings of an update: fp32, fp16, int8 (full or delta), top-k sparse delta.

Owns :class:`Encoding` and the mapping between a dict of float32 tensors (a
full adapter, or a delta ``child - parent``) and the tensors actually stored
in the safetensors payload.  Stored layout, per PEFT tensor ``T``:

=============  ==========================================================
fp32           ``T``: F32, same shape
fp16           ``T``: F16, same shape (values beyond fp16 range refused)
int8-delta     ``T``: I8 in [-127, 127], same shape; ``T::scale``: F32 []
               (symmetric per-tensor scale, decoded q*scale; the encoder's choice:
               max|d| / 127, or coarser, see below)
int8           the same layout, of a full adapter (never with a parent: that is
               int8-delta); what a node's keyframes use
topk-delta     ``T::shape``: I64 [ndim]; ``T::idx``: I32 [k] flat indices,
               strictly increasing; ``T::val``: F32 [k]
=============  ==========================================================

``::`` never occurs in a PEFT module path, so stored names cannot collide.
Error bounds: fp16 relative 2**-11; int8 absolute ``scale / 2`` per entry, which is
``max|d| / 254`` at the finest scale; top-k keeps the k largest-magnitude entries exactly
and drops the rest.

*A coarser int8 step* (``int8_rms_steps = k > 0``): the scale is at least
``rms(T) / k``, where ``T`` is the tensor the receiver rebuilds (for a delta, the full
adapter tensor, not the delta: the error that matters is relative to what is used).
Entries still never clip (the scale is also at least ``max|d| / 127``), and readers
need nothing new: the scale is stored as always.  Fewer distinct values compress
better: at k = 8 an update's payload is about a third smaller after zstd, each
entry's error at most ``rms / 16`` (3.6 % of the RMS on average: ``rms / (k * sqrt(12))``).

Top-k of a dense LoRA delta loses most of it (relative error ~0.7 at 10 %), so
:func:`encode_tensors` offers *error feedback*: pass the ``residual`` returned
by the previous call and the dropped mass is carried into the next update
(``sent + new_residual == delta + old_residual`` exactly).  Packing a delta
against the *materialised* parent (what :func:`p2phier.artifact.pack_adapter`
does) gets the same effect for free, because the parent already lacks what
was dropped.

Decoding treats stored tensors as hostile: missing or extra parts, wrong
dtypes, out-of-range or unsorted indices, non-finite scales and decoded sizes
over a cap all raise :class:`TensorFileError`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from p2phier.artifact.tensors import F32Array, SafeTensors, check_finite
from p2phier.errors import TensorFileError, UsageError

SEP = "::"
FP16_MAX = float(np.finfo(np.float16).max)


class Encoding(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8_DELTA = "int8-delta"
    TOPK_DELTA = "topk-delta"
    INT8 = "int8"

    @property
    def delta_only(self) -> bool:
        """True for encodings that only make sense relative to a parent."""
        return self in (Encoding.INT8_DELTA, Encoding.TOPK_DELTA)

    @property
    def full_only(self) -> bool:
        """True for encodings that store a full adapter only (with a parent the same bytes
        would be another encoding's)."""
        return self is Encoding.INT8

    @property
    def int8(self) -> bool:
        """The int8 layout: ``T`` as I8 and ``T::scale`` as an F32 scalar."""
        return self in (Encoding.INT8, Encoding.INT8_DELTA)

    @classmethod
    def parse(cls, text: str | Encoding) -> Encoding:
        if isinstance(text, Encoding):
            return text
        try:
            return cls(text)
        except ValueError:
            known = ", ".join(e.value for e in cls)
            raise UsageError(f"unknown encoding {text!r}; use one of {known}") from None


@dataclass(frozen=True, slots=True)
class Encoded:
    """Stored tensors plus, for top-k, the error-feedback residual to carry forward."""

    tensors: dict[str, npt.NDArray[Any]]
    residual: dict[str, F32Array] = field(default_factory=dict)


def _as_f32(name: str, arr: npt.ArrayLike) -> F32Array:
    out = np.array(arr, dtype=np.float32, order="C", copy=None)
    check_finite(name, out)
    return out


def encode_tensors(
    tensors: Mapping[str, npt.ArrayLike],
    encoding: Encoding,
    *,
    topk_fraction: float = 0.1,
    residual: Mapping[str, npt.ArrayLike] | None = None,
    int8_rms_steps: float = 0.0,
    reference: Mapping[str, npt.ArrayLike] | None = None,
) -> Encoded:
    """Encode float tensors (weights, or a delta) for storage.

    ``int8_rms_steps`` (int8 encodings; 0: the finest scale): the step is at least each
    tensor's RMS divided by it, the RMS of ``reference[name]`` where given (the full
    tensor a delta rebuilds), else of the tensor itself.
    """
    if not (math.isfinite(int8_rms_steps) and int8_rms_steps >= 0.0):
        raise UsageError(f"int8_rms_steps must be a number >= 0, not {int8_rms_steps}")
    if SEP in "".join(tensors):
        raise UsageError(f"tensor names must not contain {SEP!r}")
    if encoding is Encoding.FP32:
        return Encoded({n: _as_f32(n, t) for n, t in tensors.items()})
    if encoding is Encoding.FP16:
        out16: dict[str, npt.NDArray[Any]] = {}
        for n, t in tensors.items():
            f = _as_f32(n, t)
            if f.size and float(np.abs(f).max()) > FP16_MAX:
                raise UsageError(f"tensor {n!r} has values beyond the fp16 range; use fp32")
            out16[n] = f.astype(np.float16)
        return Encoded(out16)
    if encoding.int8:
        out8: dict[str, npt.NDArray[Any]] = {}
        for n, t in tensors.items():
            f = _as_f32(n, t)
            floor = 0.0
            if int8_rms_steps > 0.0:
                ref = f if reference is None or n not in reference else _as_f32(n, reference[n])
                floor = _rms(ref) / int8_rms_steps
            q, scale = quantise_int8(f, min_step=floor)
            out8[n] = q
            out8[n + SEP + "scale"] = np.array(scale, dtype=np.float32)
        return Encoded(out8)
    if encoding is Encoding.TOPK_DELTA:
        if not 0.0 < topk_fraction <= 1.0:
            raise UsageError(f"topk_fraction must lie in (0, 1], not {topk_fraction}")
        outk: dict[str, npt.NDArray[Any]] = {}
        new_residual: dict[str, F32Array] = {}
        for n, t in tensors.items():
            full = _as_f32(n, t)
            if residual is not None and n in residual:
                carried = _as_f32(n, residual[n])
                if carried.shape != full.shape:
                    raise UsageError(
                        f"residual for {n!r} has shape {carried.shape}, not {full.shape}"
                    )
                full = full + carried
            idx, val, rest = topk(full, topk_fraction)
            outk[n + SEP + "shape"] = np.array(full.shape, dtype=np.int64)
            outk[n + SEP + "idx"] = idx
            outk[n + SEP + "val"] = val
            new_residual[n] = rest
        return Encoded(outk, new_residual)
    raise UsageError(f"unsupported encoding {encoding}")  # pragma: no cover - enum is closed


def _rms(x: F32Array) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def quantise_int8(x: F32Array, *, min_step: float = 0.0) -> tuple[npt.NDArray[np.int8], float]:
    """Symmetric per-tensor int8: ``|x - q*scale| <= scale/2`` with
    ``scale = max(max|x|/127, min_step)`` (never clipped)."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0.0:
        return np.zeros(x.shape, dtype=np.int8), 0.0
    scale = np.float32(max(peak / 127.0, min_step))
    if not math.isfinite(float(scale)) or float(scale) == 0.0:
        # peak so small that peak/127 underflows: the whole tensor rounds to zero
        return np.zeros(x.shape, dtype=np.int8), 0.0
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return q, float(scale)


def topk(x: F32Array, fraction: float) -> tuple[npt.NDArray[np.int32], F32Array, F32Array]:
    """The ``ceil(fraction * n)`` largest-magnitude entries (sorted flat indices), and the rest."""
    flat = x.reshape(-1)
    n = flat.size
    if n >= 2**31:
        raise UsageError("tensor too large for int32 top-k indices")
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    if k == n:
        idx = np.arange(n, dtype=np.int64)
    else:
        # argpartition is O(n); ties are broken by numpy, then sorted for a canonical payload
        idx = np.sort(np.argpartition(np.abs(flat), n - k)[n - k :])
    val = flat[idx].astype(np.float32)
    rest = flat.copy()
    rest[idx] = 0.0
    return idx.astype(np.int32), val, rest.reshape(x.shape)


def _part(st: SafeTensors, name: str, dtype: str, what: str) -> npt.NDArray[Any]:
    info = st.infos.get(name)
    if info is None:
        raise TensorFileError(f"{what}: missing stored tensor {name!r}")
    if info.dtype != dtype:
        raise TensorFileError(f"{what}: stored tensor {name!r} is {info.dtype}, expected {dtype}")
    return st.array(name)


def decode_tensors(st: SafeTensors, encoding: Encoding, *, max_decoded: int) -> dict[str, F32Array]:
    """Decode a validated safetensors payload into float32 tensors (weights or delta).

    ``max_decoded`` bounds the float32 bytes produced; it is checked from the
    shapes before any array is allocated.
    """
    infos = st.infos
    if encoding in (Encoding.FP32, Encoding.FP16):
        want = "F32" if encoding is Encoding.FP32 else "F16"
        total = 0
        for name, info in infos.items():
            if SEP in name:
                raise TensorFileError(f"{encoding.value} payload has an encoded part {name!r}")
            if info.dtype != want:
                raise TensorFileError(
                    f"{encoding.value} payload stores {name!r} as {info.dtype}, expected {want}"
                )
            total += 4 * math.prod(info.shape)
        _check_total(total, max_decoded)
        return {name: st.floats(name) for name in infos}
    bases = sorted({name.split(SEP, 1)[0] for name in infos})
    if encoding.int8:
        expected = {n for b in bases for n in (b, b + SEP + "scale")}
        _check_names(infos.keys(), expected, encoding)
        _check_total(sum(4 * math.prod(infos[b].shape) for b in bases), max_decoded)
        out: dict[str, F32Array] = {}
        for b in bases:
            q = _part(st, b, "I8", b)
            scale_arr = _part(st, b + SEP + "scale", "F32", b)
            if scale_arr.shape != ():
                raise TensorFileError(f"int8 scale of {b!r} must be a scalar")
            scale = float(scale_arr)
            if not math.isfinite(scale) or scale < 0:
                raise TensorFileError(f"int8 scale of {b!r} is {scale}; must be finite and >= 0")
            if q.size and int(q.min()) < -127:
                raise TensorFileError(f"int8 tensor {b!r} uses -128, outside the symmetric range")
            out[b] = q.astype(np.float32)
            out[b] *= np.float32(scale)  # in place: no second float32 copy
            check_finite(b, out[b])
        return out
    if encoding is Encoding.TOPK_DELTA:
        expected = {b + SEP + p for b in bases for p in ("shape", "idx", "val")}
        _check_names(infos.keys(), expected, encoding)
        shapes: dict[str, tuple[int, ...]] = {}
        for b in bases:
            shape_arr = _part(st, b + SEP + "shape", "I64", b)
            if (
                shape_arr.ndim != 1
                or shape_arr.size > 8
                or (shape_arr.size and shape_arr.min() < 0)
            ):
                raise TensorFileError(f"top-k shape of {b!r} must be a list of at most 8 sizes")
            shapes[b] = tuple(int(d) for d in shape_arr)
        _check_total(sum(4 * math.prod(s) for s in shapes.values()), max_decoded)
        out = {}
        for b in bases:
            idx = _part(st, b + SEP + "idx", "I32", b)
            val = _part(st, b + SEP + "val", "F32", b)
            n = math.prod(shapes[b])
            if idx.ndim != 1 or val.shape != idx.shape:
                raise TensorFileError(f"top-k indices and values of {b!r} differ in shape")
            if idx.size > n:
                raise TensorFileError(f"top-k of {b!r} has {idx.size} entries for {n} elements")
            if idx.size and (int(idx[0]) < 0 or int(idx[-1]) >= n):
                raise TensorFileError(f"top-k index of {b!r} out of range 0..{n - 1}")
            if idx.size > 1 and not bool((np.diff(idx) > 0).all()):
                raise TensorFileError(f"top-k indices of {b!r} are not strictly increasing")
            check_finite(b, val)
            dense = np.zeros(n, dtype=np.float32)
            dense[idx] = val
            out[b] = dense.reshape(shapes[b])
        return out
    raise TensorFileError(f"unsupported encoding {encoding}")  # pragma: no cover


def _check_names(found: Any, expected: set[str], encoding: Encoding) -> None:
    found_set = set(found)
    if found_set != expected:
        extra = sorted(found_set - expected)[:3]
        missing = sorted(expected - found_set)[:3]
        raise TensorFileError(
            f"{encoding.value} payload is malformed: unexpected {extra}, missing {missing}"
        )


def _check_total(total: int, max_decoded: int) -> None:
    if total > max_decoded:
        raise TensorFileError(
            f"decoded tensors would take {total} bytes, over the limit of {max_decoded}"
        )
