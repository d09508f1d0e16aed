"""Packing, verifying, materialising and archiving artifacts (synthetic PEFT adapters)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from p2phier.artifact import (
    Artifact,
    Encoding,
    Limits,
    artifact_files,
    export_car,
    import_car,
    inspect,
    load_tensors,
    materialise,
    pack_adapter,
    pin_artifact,
    verify_artifact,
)
from p2phier.errors import (
    BaseModelMismatchError,
    LineageError,
    ManifestError,
    MissingBlocksError,
    TensorFileError,
    UsageError,
)
from p2phier.identity import Identity
from p2phier.store import DiskStore, MemoryStore
from p2phier.unixfs import iter_dag

from .conftest import BASE_MODEL, adapter_config, adapter_tensors, write_adapter

NOW = 1_767_225_600.25


def snapshot(store: MemoryStore | DiskStore) -> tuple[object, ...]:
    return (set(store.iter_block_cids()), store.pins(), store.query())


def pack(
    store: MemoryStore | DiskStore, directory: Path, author: Identity, **kw: object
) -> Artifact:
    args: dict[str, object] = {
        "layer": "device",
        "domain": "en/healthcare/cardiology",
        "base_model_id": BASE_MODEL,
        "now": NOW,
    }
    args.update(kw)
    return pack_adapter(store, directory, author, **args)  # type: ignore[arg-type]


def load(directory: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(directory / "adapter_model.safetensors"))


def test_full_adapter_round_trip(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    tensors = adapter_tensors()
    art = pack(
        store, write_adapter(tmp_path / "a", tensors), author, metrics={"val_acc": 0.8, "loss": 1.5}
    )
    m = art.manifest
    assert (m.layer, m.domain, m.base_model_id, m.parent) == (
        "device",
        "en/healthcare/cardiology",
        BASE_MODEL,
        None,
    )
    assert m.encoding is Encoding.FP32
    assert m.author == author.peer_id
    assert m.created_ms == 1_767_225_600_250
    assert [x.name for x in m.metrics] == ["loss", "val_acc"]
    assert verify_artifact(store, art.cid) == art
    assert verify_artifact(store, str(art.cid), expected_base_model=BASE_MODEL) == art
    # three pinned objects, indexed by kind
    assert {art.cid, m.config.cid, m.tensors.cid} <= set(store.pins())
    meta = store.get_meta(art.cid)
    assert meta is not None and meta.kind == "artifact" and meta.author == str(author.peer_id)
    assert art.stored_bytes == len(art.envelope_bytes) + m.config.size + m.tensors.size
    # the stored config names the base model by id, never the packer's local path
    config = store.get_bytes(m.config.cid)
    assert b"/home/someone" not in config
    assert json.loads(config)["base_model_name_or_path"] == BASE_MODEL
    out = materialise(store, art.cid, tmp_path / "out")
    loaded = load(out)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)


def test_packing_is_deterministic(author: Identity, tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "a")
    with MemoryStore() as s1, MemoryStore() as s2:
        assert pack(s1, directory, author).cid == pack(s2, directory, author).cid
        assert pack(s1, directory, author, now=NOW + 1).cid != pack(s2, directory, author).cid


@pytest.mark.parametrize(
    ("encoding", "tolerance"),
    [
        (Encoding.FP32, 1e-6),
        (Encoding.FP16, 2e-5),
        (Encoding.INT8_DELTA, None),  # per-tensor bound computed below
    ],
)
def test_delta_materialises_to_the_child(
    store: MemoryStore,
    author: Identity,
    tmp_path: Path,
    encoding: Encoding,
    tolerance: float | None,
) -> None:
    parent_t = adapter_tensors(seed=1)
    child_t = {n: t + adapter_tensors(seed=2, scale=0.01)[n] for n, t in parent_t.items()}
    parent = pack(store, write_adapter(tmp_path / "p", parent_t), author)
    child = pack(
        store, write_adapter(tmp_path / "c", child_t), author, parent=parent.cid, encoding=encoding
    )
    assert child.manifest.parent == parent.cid
    assert verify_artifact(store, child.cid) == child
    delta = load_tensors(store, child)  # the decoded delta, not the weights
    out = load(materialise(store, child.cid, tmp_path / "out"))
    for name, want in child_t.items():
        d = want - parent_t[name]
        bound = tolerance if tolerance is not None else float(np.abs(d).max()) / 254 * 1.001
        assert float(np.abs(delta[name] - d).max()) <= bound
        assert float(np.abs(out[name] - want).max()) <= bound + 1e-7


def test_int8_is_the_default_delta_and_is_smaller(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    base = adapter_tensors(seed=1)
    parent = pack(store, write_adapter(tmp_path / "p", base), author)
    child_t = {n: t + 0.01 for n, t in base.items()}
    child = pack(store, write_adapter(tmp_path / "c", child_t), author, parent=parent.cid)
    assert child.manifest.encoding is Encoding.INT8_DELTA
    # 1 byte per value instead of 4 (the safetensors header weighs a lot at this tiny size)
    assert child.manifest.tensors.size < parent.manifest.tensors.size


def test_chain_errors_do_not_compound(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    """Each delta is taken against the *materialised* parent, so after many lossy steps
    the result is within one step's quantisation error of the newest checkpoint."""
    rng = np.random.default_rng(5)
    current = adapter_tensors(seed=3)
    art = pack(store, write_adapter(tmp_path / "0", current), author)
    for step in range(1, 6):
        current = {
            n: (t + rng.standard_normal(t.shape) * 0.02).astype(np.float32)
            for n, t in current.items()
        }
        art = pack(
            store,
            write_adapter(tmp_path / str(step), current),
            author,
            parent=art.cid,
            encoding=Encoding.INT8_DELTA,
            round=step,
        )
    info = inspect(store, art.cid)
    assert info["depth"] == 5 and len(info["lineage"]) == 6  # type: ignore[arg-type]
    out = load(materialise(store, art.cid, tmp_path / "out"))
    for name, want in current.items():
        # one int8 step of a ~0.06-peak delta: error ~ 0.06/254, far below 5 steps' worth
        assert float(np.abs(out[name] - want).max()) < 0.001


def test_topk_chain_has_implicit_error_feedback(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    base = adapter_tensors(seed=4)
    drift = adapter_tensors(seed=5, scale=0.01)
    art = pack(store, write_adapter(tmp_path / "0", base), author)
    current = base
    errors = []
    for step in range(1, 16):
        current = {n: t + drift[n] for n, t in current.items()}
        art = pack(
            store,
            write_adapter(tmp_path / str(step), current),
            author,
            parent=art.cid,
            encoding=Encoding.TOPK_DELTA,
            topk_fraction=0.25,
        )
        out = load(materialise(store, art.cid, tmp_path / f"o{step}"))
        total = sum(float(np.linalg.norm(current[n] - base[n])) for n in current)
        errors.append(sum(float(np.linalg.norm(out[n] - current[n])) for n in current) / total)
    # without feedback the relative error would stay near 1 - (share of mass in the top 25 %);
    # with it, what was dropped is sent later and the error shrinks
    assert errors[-1] < 0.2
    assert errors[-1] < errors[0] / 2


def test_inspect_summary(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    art = pack(store, write_adapter(tmp_path / "a"), author, metrics={"acc": 0.5}, round=7)
    info = inspect(store, art.cid)
    assert info["cid"] == str(art.cid)
    assert info["verified"] is True
    assert info["delta"] is False and info["depth"] == 0
    assert info["tensors"] == 4 and info["parameters"] == 4 * 4 * 16
    assert info["manifest"]["round"] == 7  # type: ignore[index]
    assert info["manifest"]["metrics"] == {"acc": 0.5}  # type: ignore[index]
    assert info["bytes"]["stored"] == art.stored_bytes  # type: ignore[index]
    json.dumps(info)  # JSON-able


def test_car_round_trip(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    parent = pack(store, write_adapter(tmp_path / "p", adapter_tensors(seed=1)), author)
    child = pack(
        store, write_adapter(tmp_path / "c", adapter_tensors(seed=2)), author, parent=parent.cid
    )
    car = export_car(store, child.cid, tmp_path / "child.car")
    assert car.read_bytes()[:1] != b""
    with MemoryStore() as other:
        assert import_car(other, car) == child.cid
        assert verify_artifact(other, child.cid) == child
        assert verify_artifact(other, parent.cid) == parent
        for art in (parent, child):
            m = art.manifest
            assert {art.cid, m.config.cid, m.tensors.cid} <= set(other.pins())
        meta = other.get_meta(child.cid)
        assert meta is not None and meta.kind == "artifact" and meta.parent == str(parent.cid)
        before = snapshot(other)
        assert import_car(other, car) == child.cid  # idempotent
        assert snapshot(other) == before
        np.testing.assert_array_equal(
            load(materialise(other, child.cid, tmp_path / "o1"))[next(iter(adapter_tensors()))],
            load(materialise(store, child.cid, tmp_path / "o2"))[next(iter(adapter_tensors()))],
        )


def test_multi_block_payload(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    """A payload over one 256 KiB chunk is a dag-pb file; every path must follow its links."""
    big = adapter_tensors(r=16, hidden=1400)  # ~360 KB of nearly incompressible floats
    art = pack(store, write_adapter(tmp_path / "a", big, config=adapter_config(r=16)), author)
    assert art.manifest.tensors.size > 262144
    assert art.manifest.tensors.cid.codec_name == "dag-pb"
    assert verify_artifact(store, art.cid) == art
    car = export_car(store, art.cid, tmp_path / "big.car")
    with MemoryStore() as other:
        assert import_car(other, car) == art.cid
        assert len(list(other.iter_block_cids())) >= 5  # envelope, config, root + 2 leaves
        out = load(materialise(other, art.cid, tmp_path / "out"))
    for name, value in big.items():
        np.testing.assert_array_equal(out[name], value)
    # a store holding everything but the payload's last leaf reports missing blocks
    blocks = list(iter_dag(art.manifest.tensors.cid, store.get_block))
    with MemoryStore() as partial:
        for obj in (art.cid, art.manifest.config.cid):
            for cid, block in iter_dag(obj, store.get_block):
                partial.put_block(cid, block)
        for cid, block in blocks[:-1]:
            partial.put_block(cid, block)
        with pytest.raises(MissingBlocksError, match=r"tensor payload .* not complete"):
            verify_artifact(partial, art.cid)


def test_disk_store(author: Identity, tmp_path: Path) -> None:
    with DiskStore(tmp_path / "repo") as disk:
        art = pack(disk, write_adapter(tmp_path / "a"), author)
    with DiskStore(tmp_path / "repo") as disk:
        assert verify_artifact(disk, art.cid) == art


def test_materialise_into_existing_directory(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    art = pack(store, write_adapter(tmp_path / "a"), author)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"old")
    (out / "keep.txt").write_text("x")
    materialise(store, art.cid, out)
    assert load(out).keys() == adapter_tensors().keys()
    assert (out / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "keep.txt",
    ]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        materialise(store, art.cid, tmp_path / "file")
    assert not list(tmp_path.glob(".*tmp*"))


# --- packing refuses bad input before writing anything ------------------------------------------


def test_bad_domain_writes_nothing(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    before = snapshot(store)
    with pytest.raises(ManifestError, match="domain"):
        pack(store, write_adapter(tmp_path / "a"), author, domain="EN/Health")
    assert snapshot(store) == before


def test_delta_encoding_needs_a_parent(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="give the parent"):
        pack(store, write_adapter(tmp_path / "a"), author, encoding="int8-delta")
    assert not list(store.iter_block_cids())


def test_int8_full_adapter_refuses_a_parent(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    """``int8`` is a keyframe's encoding; a delta in int8 is ``int8-delta``."""
    full = pack(store, write_adapter(tmp_path / "a"), author, encoding="int8")
    assert full.manifest.encoding.value == "int8" and full.manifest.parent is None
    out = materialise(store, full.cid, tmp_path / "out")
    got = safetensors.numpy.load_file(str(out / "adapter_model.safetensors"))
    want = adapter_tensors()
    assert got.keys() == want.keys()
    for name, w in want.items():  # per tensor within half a step of max|w| / 127
        assert float(np.abs(got[name] - w).max()) <= float(np.abs(w).max()) / 254 * 1.0001
    before = snapshot(store)
    with pytest.raises(UsageError, match="full adapter"):
        pack(store, write_adapter(tmp_path / "b"), author, encoding="int8", parent=full.cid)
    assert snapshot(store) == before


def test_a_keyframe_goes_instead_of_a_delta_only_where_smaller(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    """``keyframe``: the whole adapter where it compresses smaller than the delta (an adapter
    unrelated to its parent), the delta where that is smaller (a small step from it); a
    keyframe is never a delta encoding."""
    base = pack(store, write_adapter(tmp_path / "a"), author, encoding="int8")
    rng = np.random.default_rng(3)
    near = {k: v + 0.001 * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in adapter_tensors().items()}  # fmt: skip
    far = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in near.items()}
    kw = {"parent": base.cid, "keyframe": "int8", "int8_rms_steps": 8.0}
    small = pack(store, write_adapter(tmp_path / "near", tensors=near), author, **kw)
    assert small.manifest.parent == base.cid and small.manifest.encoding.value == "int8-delta"
    whole = pack(store, write_adapter(tmp_path / "far", tensors=far), author, **kw)
    assert whole.manifest.parent is None and whole.manifest.encoding.value == "int8"
    got = load(materialise(store, whole.cid, tmp_path / "out"))
    for name, w in far.items():  # within half a step: max(max|w| / 127, rms(w) / 8)
        step = max(float(np.abs(w).max()) / 127, float(np.sqrt(np.mean(w**2))) / 8)
        assert float(np.abs(got[name] - w).max()) <= step / 2 * 1.0001
    before = snapshot(store)
    with pytest.raises(UsageError, match="keyframe is a full adapter"):
        pack(store, write_adapter(tmp_path / "c"), author, parent=base.cid, keyframe="int8-delta")
    assert snapshot(store) == before


def test_parent_with_other_shapes(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    parent = pack(store, write_adapter(tmp_path / "p"), author)
    before = snapshot(store)
    other = write_adapter(tmp_path / "c", adapter_tensors(r=8), config=adapter_config(r=8))
    with pytest.raises(LineageError, match="full adapter instead"):
        pack(store, other, author, parent=parent.cid)
    assert snapshot(store) == before


def test_parent_on_another_base_model(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    parent = pack(store, write_adapter(tmp_path / "p"), author, base_model_id="other/model")
    with pytest.raises(BaseModelMismatchError, match="other/model"):
        pack(store, write_adapter(tmp_path / "c"), author, parent=parent.cid)


def test_pickled_adapter_is_never_loaded(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    d = tmp_path / "a"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(adapter_config()))
    (d / "adapter_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(TensorFileError, match="pickled weights"):
        pack(store, d, author)
    with pytest.raises(UsageError, match="not a directory"):
        pack(store, tmp_path / "missing", author)


def test_oversized_local_files(store: MemoryStore, author: Identity, tmp_path: Path) -> None:
    d = write_adapter(tmp_path / "a")
    with pytest.raises(UsageError, match="over the limit"):
        pack(store, d, author, limits=Limits(max_decompressed=100))


@pytest.mark.parametrize("bad", [{"max_chain": 0}, {"max_envelope": -1}, {"max_window_log": 40}])
def test_limits_are_validated(bad: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="max_"):
        Limits(**bad)


def test_parent_at_the_chain_limit_is_refused_before_writing(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    limits = Limits(max_chain=3)
    parent = pack(store, write_adapter(tmp_path / "a0", adapter_tensors(0)), author, limits=limits)
    for i in (1, 2):
        d = write_adapter(tmp_path / f"a{i}", adapter_tensors(i))
        parent = pack(store, d, author, parent=parent.cid, limits=limits)
    verify_artifact(store, parent.cid, limits=limits)  # a chain of exactly max_chain is fine
    before = snapshot(store)
    # A child would make a lineage of 4 that no reader with these limits accepts.
    with pytest.raises(LineageError, match="limit of 3"):
        pack(
            store,
            write_adapter(tmp_path / "a3", adapter_tensors(3)),
            author,
            parent=parent.cid,
            limits=limits,
        )
    assert snapshot(store) == before


@pytest.mark.timeout(30)  # before the fix, open() of a FIFO blocked for ever
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_fifo_in_the_adapter_is_refused_without_blocking(
    store: MemoryStore, author: Identity, tmp_path: Path, name: str
) -> None:
    d = write_adapter(tmp_path / "a")
    (d / name).unlink()
    os.mkfifo(d / name)
    with pytest.raises(UsageError, match="not a regular file"):
        pack(store, d, author)
    assert not list(store.iter_block_cids())


def test_failed_pack_pins_nothing_and_gc_removes_what_it_stored(
    author: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import p2phier.artifact.pack as pack_module
    from p2phier.errors import StoreIOError

    real = pack_module.compress_into_store

    def refused(*args: object, **kw: object) -> tuple[object, int]:
        real(*args, **kw)  # type: ignore[arg-type]  # the payload's blocks are written...
        raise StoreIOError("no space left on device")  # ...and then the add fails

    with DiskStore(tmp_path / "store") as store:
        kept = pack(store, write_adapter(tmp_path / "kept", adapter_tensors(0)), author)
        before = snapshot(store)
        monkeypatch.setattr(pack_module, "compress_into_store", refused)
        # Same config as ``kept`` (already pinned by it) and a new one.
        for d in (
            write_adapter(tmp_path / "same", adapter_tensors(1)),
            write_adapter(
                tmp_path / "new", adapter_tensors(2), config=adapter_config(lora_alpha=16)
            ),
        ):
            with pytest.raises(StoreIOError):
                pack(store, d, author)
            assert store.pins() == before[1]
        store.gc()
        assert snapshot(store) == before
        verify_artifact(store, kept.cid)


def test_pin_artifact_pins_every_file_of_a_delta_and_its_lineage(
    store: MemoryStore, author: Identity, tmp_path: Path
) -> None:
    """An envelope names its config and payload only in its manifest: GC kept the envelope
    of an accepted update and took the rest."""
    base = adapter_tensors(seed=1)
    parent = pack(store, write_adapter(tmp_path / "p", base), author)
    child_t = {n: t + 0.01 for n, t in base.items()}
    child = pack(store, write_adapter(tmp_path / "c", child_t), author, parent=parent.cid)
    for cid in list(store.pins()):
        store.unpin(cid)
    files = artifact_files(store.get_block, child.cid)
    m, pm = child.manifest, parent.manifest
    assert files == tuple(
        dict.fromkeys(
            [child.cid, m.config.cid, m.tensors.cid, parent.cid, pm.config.cid, pm.tensors.cid]
        )
    )
    assert pin_artifact(store, str(child.cid)) == files
    assert set(store.pins()) == set(files)
    store.gc()
    verify_artifact(store, child.cid, expected_base_model=BASE_MODEL)
