"""safetensors read and written by hand, treating every file as hostile; PEFT adapter checks.

Owns the safetensors codec (``u64 LE header length || JSON header || data``,
see huggingface/safetensors ``README.md``), the parsed PEFT ``adapter_config.json``
(:class:`AdapterConfig`) and the checks that tie the two together.

Nothing here imports torch or runs code from a file: tensors are numpy views
over the bytes.  The parser refuses, each with a :class:`TensorFileError` that
names the problem:

* a pickle or zip (``torch.save``) file renamed ``.safetensors`` (recognised by
  its magic, never unpickled);
* a header length over ``max_header`` or past the end of the file, checked
  from the first 8 bytes before the header is sliced;
* a header that is not UTF-8 JSON, not an object, has duplicate keys, NaN
  literals or nesting deep enough to blow the parser's stack;
* an unknown dtype, a malformed shape, offsets that overlap, leave a hole, run
  past the data or do not match ``dtype x shape``;
* more than ``max_tensors`` entries;
* (``floats()``) NaN or infinite values.

The writer is deterministic (names sorted, compact sorted JSON, header padded
with spaces to 8 bytes as the reference implementation does), so equal tensors
always give equal bytes and equal CIDs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from p2phier.errors import TensorFileError

F32Array = npt.NDArray[np.float32]

# safetensors dtype -> little-endian numpy dtype (BF16 has none: read as uint16).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_NUMPY_TO_DTYPE = {
    np.dtype("?"): "BOOL",
    np.dtype("u1"): "U8",
    np.dtype("i1"): "I8",
    np.dtype("<u2"): "U16",
    np.dtype("<i2"): "I16",
    np.dtype("<f2"): "F16",
    np.dtype("<u4"): "U32",
    np.dtype("<i4"): "I32",
    np.dtype("<f4"): "F32",
    np.dtype("<u8"): "U64",
    np.dtype("<i8"): "I64",
    np.dtype("<f8"): "F64",
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
MAX_NDIM = 8
MAX_NAME = 512
_PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One header entry: where a tensor lies in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class SafeTensors:
    """A parsed, validated safetensors file (tensors are views over ``data``)."""

    infos: dict[str, TensorInfo]
    metadata: dict[str, str]
    data: memoryview  # the data section only

    def array(self, name: str) -> npt.NDArray[Any]:
        """The tensor as stored (BF16 comes back as its raw uint16 bits)."""
        info = self.infos[name]
        dt = DTYPES[info.dtype]
        count = (info.end - info.begin) // dt.itemsize
        arr = np.frombuffer(self.data, dtype=dt, count=count, offset=info.begin)
        return arr.reshape(info.shape)

    def floats(self, name: str) -> F32Array:
        """The tensor as float32; refuses non-float dtypes and NaN/Inf values."""
        info = self.infos[name]
        if info.dtype not in FLOAT_DTYPES:
            raise TensorFileError(f"tensor {name!r} has dtype {info.dtype}, expected a float type")
        raw = self.array(name)
        if info.dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)
        check_finite(name, out)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.infos.items()}


_FINITE_CHUNK = 1 << 22  # elements checked at a time: a 4 MiB scratch, not one the array's size


def check_finite(name: str, arr: npt.NDArray[Any]) -> None:
    """Refuse NaN and infinities (they poison every aggregate they touch)."""
    if arr.dtype.kind != "f" or not arr.size:
        return
    flat = arr.reshape(-1) if arr.flags.c_contiguous else np.ravel(arr)
    bad = any(
        not bool(np.isfinite(flat[i : i + _FINITE_CHUNK]).all())
        for i in range(0, flat.size, _FINITE_CHUNK)
    )
    if bad:
        nans = int(np.isnan(arr).sum())
        infs = int(np.isinf(arr).sum())
        raise TensorFileError(
            f"tensor {name!r} contains {nans} NaN and {infs} infinite values; refused"
        )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TensorFileError(f"JSON has a duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constants(token: str) -> Any:
    raise TensorFileError(f"JSON contains the non-standard constant {token}")


def strict_json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    """Parse UTF-8 JSON that must be an object, with no duplicate keys, NaN or deep nesting."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise TensorFileError(f"{what} is not valid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise TensorFileError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise TensorFileError(f"{what} is not JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(value, dict):
        raise TensorFileError(f"{what} is not a JSON object")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TensorFileError(f"{what} must be a non-negative integer, not {value!r:.60}")
    return value


def parse_safetensors(
    data: bytes | bytearray | memoryview, *, max_header: int, max_tensors: int
) -> SafeTensors:
    """Validate a whole safetensors file; return views over its tensors."""
    buf = memoryview(data)
    if len(buf) < 8:
        raise TensorFileError(f"safetensors file is {len(buf)} bytes, shorter than its header")
    head = bytes(buf[:4])
    if bytes(buf[:2]) in _PICKLE_PROTOCOLS or head == _ZIP_MAGIC:
        raise TensorFileError(
            "file is a pickle / torch.save archive renamed as safetensors; "
            "refused without unpickling it"
        )
    header_len = int.from_bytes(buf[:8], "little")
    if header_len > max_header:
        raise TensorFileError(
            f"safetensors header length {header_len} exceeds the limit of {max_header} bytes"
        )
    if 8 + header_len > len(buf):
        raise TensorFileError(
            f"safetensors header length {header_len} runs past the end of the {len(buf)}-byte file"
        )
    header_bytes = buf[8 : 8 + header_len]
    if header_len < 2 or header_bytes[0] != ord("{"):
        raise TensorFileError("safetensors header does not start with a JSON object")
    header = strict_json_object(header_bytes, "safetensors header")
    metadata: dict[str, str] = {}
    raw_meta = header.pop("__metadata__", None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_meta.items()
        ):
            raise TensorFileError("safetensors __metadata__ must map strings to strings")
        metadata = raw_meta
    if len(header) > max_tensors:
        raise TensorFileError(
            f"safetensors file lists {len(header)} tensors, over the limit of {max_tensors}"
        )
    data_section = buf[8 + header_len :]
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        infos[name] = _tensor_info(name, entry)
    _check_layout(infos, len(data_section))
    return SafeTensors(infos, metadata, data_section)


def _tensor_info(name: str, entry: Any) -> TensorInfo:
    if not name or len(name) > MAX_NAME:
        raise TensorFileError(f"tensor name of {len(name)} characters is empty or too long")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise TensorFileError(
            f"tensor {name!r} entry must hold exactly dtype, shape and data_offsets"
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise TensorFileError(f"tensor {name!r} has unknown dtype {dtype!r:.40}")
    shape_raw = entry["shape"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_NDIM:
        raise TensorFileError(f"tensor {name!r} shape must be a list of at most {MAX_NDIM} ints")
    shape = tuple(_int(d, f"tensor {name!r} dimension") for d in shape_raw)
    offsets = entry["data_offsets"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise TensorFileError(f"tensor {name!r} data_offsets must be [begin, end]")
    begin = _int(offsets[0], f"tensor {name!r} begin offset")
    end = _int(offsets[1], f"tensor {name!r} end offset")
    if end < begin:
        raise TensorFileError(f"tensor {name!r} ends ({end}) before it begins ({begin})")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise TensorFileError(
            f"tensor {name!r} is {dtype} {list(shape)} = {expected} bytes but its offsets "
            f"span {end - begin} bytes"
        )
    return TensorInfo(name, dtype, shape, begin, end)


def _check_layout(infos: Mapping[str, TensorInfo], data_len: int) -> None:
    """Tensors must tile the data section exactly: no overlap, no hole, nothing past the end."""
    cursor = 0
    for info in sorted(infos.values(), key=lambda i: (i.begin, i.end)):
        if info.begin < cursor:
            raise TensorFileError(
                f"tensor {info.name!r} at bytes {info.begin}..{info.end} overlaps another tensor"
            )
        if info.begin > cursor:
            raise TensorFileError(
                f"safetensors data has a hole at bytes {cursor}..{info.begin} "
                f"(before tensor {info.name!r})"
            )
        cursor = info.end
    if cursor > data_len:
        raise TensorFileError(
            f"tensor offsets reach byte {cursor} but the data section has only {data_len} bytes"
        )
    if cursor < data_len:
        raise TensorFileError(
            f"safetensors data has {data_len - cursor} trailing bytes no tensor covers"
        )


def _as_stored(arr: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], str]:
    arr = np.array(arr, order="C", copy=None)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(dt, copy=False)
    try:
        return arr, _NUMPY_TO_DTYPE[dt]
    except KeyError:
        raise TensorFileError(f"cannot store numpy dtype {arr.dtype} in safetensors") from None


def iter_safetensors(
    tensors: Mapping[str, npt.NDArray[Any]], metadata: Mapping[str, str] | None = None
) -> Iterator[bytes | memoryview]:
    """The bytes of :func:`write_safetensors`, piece by piece: the header, then each tensor.

    Each tensor is yielded as a view of its own memory (a copy only where it is
    not little-endian and C-ordered), so writing a file this way never holds
    a second copy of the tensors.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    names = sorted(tensors)
    for name in names:
        arr, dtype = _as_stored(tensors[name])
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = text.encode("utf-8")
    raw += b" " * ((-len(raw)) % 8)
    yield len(raw).to_bytes(8, "little") + raw
    for name in names:
        arr, _ = _as_stored(tensors[name])
        if arr.nbytes:
            yield arr.data.cast("B")


def write_safetensors(
    tensors: Mapping[str, npt.NDArray[Any]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Deterministic safetensors bytes (tensors in name order, sorted compact JSON)."""
    return b"".join(iter_safetensors(tensors, metadata))
