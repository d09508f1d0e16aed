"""The prototypes file an artifact may carry: its codec, its checks, and its trip through
pack, verify, pin, CAR and materialise (protocol/artifact.md section 10)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2phier.artifact import (
    Artifact,
    artifact_files,
    export_car,
    import_car,
    materialise,
    pack_adapter,
    verify_artifact,
)
from p2phier.artifact.protofile import (
    MAX_COUNT,
    MAX_PROTOTYPES_BYTES,
    PROTOTYPES_FILE,
    PROTOTYPES_FORMAT,
    PrototypeFileError,
    PrototypeTable,
    decode_prototypes,
    encode_prototypes,
)
from p2phier.artifact.tensors import write_safetensors
from p2phier.errors import HashMismatchError, P2PHierError
from p2phier.identity import Identity
from p2phier.store import MemoryStore
from p2phier.store.base import block_key

from .conftest import BASE_MODEL, write_adapter

NOW = 1_767_225_600.0
SPACE = "bafkreihzvvaicl5orubrkophsynigwuuu3mogkwr44mzkmt76yx7kz7hre"


def table(seed: int = 0, labels: tuple[str, ...] = ("a", "b", "c"), dim: int = 8) -> PrototypeTable:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 50, size=len(labels)).astype(np.int64)
    rows = []
    for n in counts:
        v = rng.standard_normal((int(n), dim))
        rows.append((v / np.linalg.norm(v, axis=1, keepdims=True)).mean(axis=0))
    means = np.stack(rows).astype(np.float16)
    return PrototypeTable(labels, tuple("t" + str(i % 2) for i in range(len(labels))), SPACE,
                          means, counts)  # fmt: skip


def raw_file(means: np.ndarray, counts: np.ndarray, meta: dict[str, str] | None = None) -> bytes:
    metadata = {
        "format": PROTOTYPES_FORMAT,
        "labels": json.dumps(["a", "b"]),
        "tasks": json.dumps(["x", "x"]),
        "space": SPACE,
    }
    metadata.update(meta or {})
    return write_safetensors({"means": means, "counts": counts}, metadata)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 12),
    dim=st.integers(1, 64),
    ncm=st.booleans(),
)
def test_a_table_survives_encoding_exactly(seed: int, n: int, dim: int, ncm: bool) -> None:
    labels = tuple(sorted(f"label-{i}" for i in range(n)))
    t = table(seed, labels, dim)
    if ncm:  # the tasks its author answers by prototype, where it says so
        t = dataclasses.replace(t, ncm_tasks=tuple(sorted(set(t.tasks)))[:1])
    back = decode_prototypes(encode_prototypes(t))
    assert back.labels == t.labels and back.tasks == t.tasks and back.space == t.space
    assert back.ncm_tasks == t.ncm_tasks
    np.testing.assert_array_equal(back.means, t.means)
    np.testing.assert_array_equal(back.counts, t.counts)
    assert encode_prototypes(back) == encode_prototypes(t)  # one byte form


GOOD_MEANS = np.array([[0.5, 0.5], [1.0, 0.0]], dtype=np.float16)
GOOD_COUNTS = np.array([1, 2], dtype=np.int64)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (raw_file(np.array([[1.1, 0.0], [1.0, 0.0]], np.float16), GOOD_COUNTS), "longer than"),
        (raw_file(GOOD_MEANS, np.array([0, 2], np.int64)), "every count"),
        (raw_file(GOOD_MEANS, np.array([1, MAX_COUNT + 1], np.int64)), "every count"),
        (raw_file(np.array([[np.nan, 0], [1, 0]], np.float16), GOOD_COUNTS), "not finite"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"format": "other"}), "format"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"labels": '["b","a"]'}), "sorted"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"labels": '["a","a"]'}), "sorted"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"labels": '{"a":1,"b":2}'}), "list"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"labels": "not json"}), "JSON"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"tasks": '["x"]'}), "tasks"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"space": ""}), "space"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"ncm_tasks": '["y"]'}), "no label of"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"ncm_tasks": '["x","x"]'}), "sorted and unique"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"ncm_tasks": "[]"}), "list of 1-"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS, {"ncm_tasks": '"x"'}), "list of 1-"),
        (raw_file(GOOD_MEANS.astype(np.float32), GOOD_COUNTS), "F16"),
        (raw_file(GOOD_MEANS, GOOD_COUNTS.astype(np.int32)), "I64"),
        (raw_file(GOOD_MEANS[:1], GOOD_COUNTS), "shape"),
        (b"\x00" * (MAX_PROTOTYPES_BYTES + 1), "over the limit"),
        (b"\x80\x04garbage-pickle", "pickle"),
    ],
)
def test_a_hostile_file_is_refused_with_the_reason(data: bytes, needle: str) -> None:
    with pytest.raises(P2PHierError, match=needle):
        decode_prototypes(data)


def test_a_file_without_ncm_tasks_answers_no_task_by_prototype() -> None:
    assert decode_prototypes(raw_file(GOOD_MEANS, GOOD_COUNTS)).ncm_tasks == ()
    said = decode_prototypes(raw_file(GOOD_MEANS, GOOD_COUNTS, {"ncm_tasks": '["x"]'}))
    assert said.ncm_tasks == ("x",)
    # none is written as no key: the files of version 1 without the field are unchanged
    assert b"ncm_tasks" not in encode_prototypes(table())


def test_a_refused_file_is_a_prototype_file_error() -> None:
    with pytest.raises(PrototypeFileError):
        decode_prototypes(raw_file(GOOD_MEANS, np.array([0, 2], np.int64)))


def _pack(store: MemoryStore, directory: Path, author: Identity, **kw: object) -> Artifact:
    return pack_adapter(
        store, directory, author, layer="domain", domain="en/news", base_model_id=BASE_MODEL,
        now=NOW, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_prototypes_travel_with_the_artifact_and_its_delta(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    one, two = encode_prototypes(table(1)), encode_prototypes(table(2))
    a = write_adapter(tmp_path / "a")
    (a / PROTOTYPES_FILE).write_bytes(one)
    full = _pack(store, a, author)
    m = full.manifest
    assert m.prototypes is not None and m.prototypes.size == len(one)
    assert m.prototypes.cid in store.pins()
    assert full.stored_bytes == len(full.envelope_bytes) + m.config.size + m.tensors.size + len(one)
    (a / PROTOTYPES_FILE).write_bytes(two)
    delta = _pack(store, a, author, parent=full.cid)
    files = artifact_files(store.get_block, delta.cid)
    leaf = delta.manifest.prototypes
    assert leaf is not None and leaf.cid in files and m.prototypes.cid in files
    out = materialise(store, delta.cid, tmp_path / "out")
    assert (out / PROTOTYPES_FILE).read_bytes() == two  # the leaf's, never a delta
    # an artifact without prototypes, materialised into that directory, leaves none behind
    (a / PROTOTYPES_FILE).unlink()
    bare = _pack(store, a, author)
    assert bare.manifest.prototypes is None
    materialise(store, bare.cid, out)
    assert not (out / PROTOTYPES_FILE).exists()
    # a CAR carries them to another store
    car = tmp_path / "x.car"
    export_car(store, delta.cid, car)
    with MemoryStore() as other:
        import_car(other, car)
        again = materialise(other, delta.cid, tmp_path / "again")
        assert (again / PROTOTYPES_FILE).read_bytes() == two


def test_a_packer_cannot_sign_prototypes_a_reader_would_refuse(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    a = write_adapter(tmp_path / "a")
    too_long = np.array([[3.0, 0], [1, 0]], np.float16)
    (a / PROTOTYPES_FILE).write_bytes(raw_file(too_long, GOOD_COUNTS))
    before = set(store.iter_block_cids())
    with pytest.raises(PrototypeFileError, match="longer than"):
        _pack(store, a, author)
    assert set(store.iter_block_cids()) == before


def test_swapped_prototype_bytes_fail_verification(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    """A store (or peer) that serves other bytes under the prototypes' CID: the hash check
    refuses them before they are decoded."""
    a = write_adapter(tmp_path / "a")
    (a / PROTOTYPES_FILE).write_bytes(encode_prototypes(table(1)))
    art = _pack(store, a, author)
    ref = art.manifest.prototypes
    assert ref is not None
    store._blocks[block_key(ref.cid)] = encode_prototypes(table(2))
    with pytest.raises((HashMismatchError, P2PHierError)):
        verify_artifact(store, art.cid)
