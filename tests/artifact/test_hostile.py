"""Hostile artifacts, one table row per attack (reliability matrix rows 5, 7, 9-13).

Each row builds what an attacker (or bit rot) would produce, then runs the
path a node uses on it: most rows import a CAR archive forged with real
signatures into a *victim* store (the path of `p2phier artifact verify FILE`
and of anything fetched from a peer); a few verify objects already in the
victim store.  Every row asserts

* the specific error class,
* a message that names the problem,
* and that the victim store (its blocks, pins and index) is unchanged
  afterwards.  The one exception is the corrupted-block row: the store moves a
  block that fails its hash check to quarantine by design, so that row asserts
  that exactly that block left and everything else is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2phier.artifact import (
    SIGNING_DOMAIN,
    Artifact,
    ContentRef,
    Encoding,
    Envelope,
    Limits,
    Manifest,
    import_car,
    pack_adapter,
    verify_artifact,
    walk_lineage,
)
from p2phier.artifact.car import encode_car
from p2phier.artifact.compress import MAGIC, compress
from p2phier.artifact.tensors import write_safetensors
from p2phier.cid import CID
from p2phier.errors import (
    AuthorMismatchError,
    BaseModelMismatchError,
    CorruptBlockError,
    DecompressionError,
    FormatVersionError,
    HashMismatchError,
    LineageError,
    ManifestError,
    MissingBlocksError,
    SignatureError,
    TensorFileError,
)
from p2phier.identity import Identity
from p2phier.store import DiskStore, MemoryStore
from p2phier.store.base import ContentStore
from p2phier.unixfs import iter_dag
from p2phier.wire import p2phier_pb2 as pb

from .conftest import BASE_MODEL, adapter_config, adapter_tensors, write_adapter

KiB = 1024
MiB = 1024 * KiB


# --- the attacker's workshop ------------------------------------------------------------------


@dataclass
class Forged:
    cid: CID
    objects: list[CID]  # envelope, config, payload (plus any ancestors' objects)


@dataclass
class Ctx:
    victim: ContentStore
    scratch: MemoryStore
    tmp: Path
    author: Identity
    rogue: Identity
    limits: Limits = field(default_factory=Limits)
    quarantined: set[CID] = field(default_factory=set)  # blocks a row expects the store to move


def rle_frame(total: int, *, window_log: int = 17, content_size: int | None = None) -> bytes:
    """A zstd frame of 128 KiB RLE blocks (RFC 8878), declaring ``content_size`` if given."""
    fhd = (3 << 6) if content_size is not None else 0
    out = MAGIC + bytes([fhd, (window_log - 10) << 3])
    if content_size is not None:
        out += content_size.to_bytes(8, "little")
    block = min(total, 128 * KiB)
    n = max(1, total // block)
    for i in range(n):
        header = int(i == n - 1) | (1 << 1) | (block << 3)
        out += header.to_bytes(3, "little") + b"\x00"
    return out


def payload(tensors: dict[str, np.ndarray] | None = None, encoding: str = "fp32") -> bytes:
    meta = {"p2phier.format": "1", "p2phier.encoding": encoding}
    return write_safetensors(tensors if tensors is not None else adapter_tensors(), meta)


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    header = {"__metadata__": {"p2phier.format": "1", "p2phier.encoding": "fp32"}, **header}
    hb = json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data


def forge(
    ctx: Ctx,
    *,
    tensors: dict[str, np.ndarray] | None = None,
    payload_raw: bytes | None = None,
    payload_z: bytes | None = None,
    raw_size: int | None = None,
    config: dict[str, Any] | None = None,
    config_size: int | None = None,
    encoding: Encoding = Encoding.FP32,
    parent: Forged | None = None,
    base_model_id: str = BASE_MODEL,
    signer: Identity | None = None,
    manifest_bytes: Callable[[Manifest], bytes] = Manifest.to_bytes,
    envelope: Callable[[Envelope], Envelope] = lambda e: e,
    envelope_bytes: bytes | None = None,
) -> Forged:
    """Build and store (in the scratch store) an artifact with whatever flaw the row needs."""
    s = ctx.scratch
    cfg = {**adapter_config(), "base_model_name_or_path": base_model_id, **(config or {})}
    config_bytes = json.dumps(cfg, sort_keys=True).encode()
    if payload_raw is None and payload_z is None:
        payload_raw = payload(tensors, encoding.value)
    z = payload_z if payload_z is not None else compress(payload_raw or b"")
    config_cid = s.add_bytes(config_bytes, pin=False)
    tensors_cid = s.add_bytes(z, pin=False)
    manifest = Manifest(
        base_model_id=base_model_id,
        base_model_cid=None,
        parent=parent.cid if parent else None,
        layer="device",
        domain="en/news",
        round=1,
        encoding=encoding,
        metrics=(),
        author=ctx.author.peer_id,
        created_ms=1_700_000_000_000,
        config=ContentRef(
            config_cid, config_size if config_size is not None else len(config_bytes)
        ),
        tensors=ContentRef(tensors_cid, len(z)),
        tensors_raw_size=raw_size if raw_size is not None else len(payload_raw or b""),
    )
    key = signer or ctx.author
    data = manifest_bytes(manifest)
    env = envelope(Envelope(data, key.sign(SIGNING_DOMAIN, data), key.peer_id.multihash_bytes))
    env_cid = s.add_bytes(
        envelope_bytes if envelope_bytes is not None else env.to_bytes(), pin=False
    )
    objects = [env_cid, config_cid, tensors_cid] + (parent.objects if parent else [])
    return Forged(env_cid, objects)


def car_file(
    ctx: Ctx,
    forged: Forged,
    *,
    drop: set[CID] = frozenset(),  # type: ignore[assignment]
    replace: dict[CID, bytes] | None = None,
) -> Path:
    """The forged artifact as a CAR file, blocks optionally dropped or swapped for others."""
    seen: set[CID] = set()

    def blocks() -> Iterator[tuple[CID, bytes]]:
        for obj in forged.objects:
            if obj in drop:
                continue
            for cid, block in iter_dag(obj, ctx.scratch.get_block):
                if cid not in seen:
                    seen.add(cid)
                    yield cid, (replace or {}).get(cid, block)

    path = ctx.tmp / f"forged-{len(list(ctx.tmp.iterdir()))}.car"
    path.write_bytes(b"".join(encode_car([forged.cid], blocks())))
    return path


def imports(**forge_args: Any) -> Callable[[Ctx], Callable[[], object]]:
    """Row builder: forge an artifact with ``forge_args``, then import its CAR into the victim."""

    def build(ctx: Ctx) -> Callable[[], object]:
        path = car_file(ctx, forge(ctx, **forge_args))
        return lambda: import_car(ctx.victim, path, ctx.limits)

    return build


A0 = next(iter(adapter_tensors()))  # a lora_A name


def with_value(value: float) -> dict[str, np.ndarray]:
    tensors = adapter_tensors()
    tensors[A0] = tensors[A0].copy()
    tensors[A0][0, 0] = value
    return tensors


# --- rows that need more than a forged import ---------------------------------------------------


def _pack_into_victim(ctx: Ctx, name: str = "a", **kw: Any) -> Artifact:
    args: dict[str, Any] = {
        "layer": "device",
        "domain": "en/news",
        "base_model_id": BASE_MODEL,
        "now": 1_700_000_000.0,
    }
    args.update(kw)
    return pack_adapter(
        ctx.victim,
        write_adapter(ctx.tmp / name, adapter_tensors(seed=len(name))),
        ctx.author,
        **args,
    )


def row_missing_content(ctx: Ctx) -> Callable[[], object]:
    forged = forge(ctx, tensors=adapter_tensors(seed=3))  # content the victim does not hold
    path = car_file(ctx, forged, drop={forged.objects[2]})
    return lambda: import_car(ctx.victim, path, ctx.limits)


def row_missing_parent(ctx: Ctx) -> Callable[[], object]:
    parent = forge(ctx)
    child = forge(ctx, tensors=adapter_tensors(seed=9), encoding=Encoding.FP16, parent=parent)
    path = car_file(ctx, child, drop=set(parent.objects))
    return lambda: import_car(ctx.victim, path, ctx.limits)


def row_delta_tensors_differ(ctx: Ctx) -> Callable[[], object]:
    parent = forge(ctx)
    delta = adapter_tensors()
    delta.pop(A0)
    delta[A0.replace("query", "key")] = adapter_tensors()[A0]
    child = forge(ctx, tensors=delta, encoding=Encoding.FP32, parent=parent)
    path = car_file(ctx, child)
    return lambda: import_car(ctx.victim, path, ctx.limits)


def row_bad_car_block(ctx: Ctx) -> Callable[[], object]:
    forged = forge(ctx)
    config_cid = forged.objects[1]
    path = car_file(ctx, forged, replace={config_cid: b'{"peft_type": "LORA", "r": 64}'})
    return lambda: import_car(ctx.victim, path, ctx.limits)


def row_expected_base_model(ctx: Ctx) -> Callable[[], object]:
    art = _pack_into_victim(ctx)
    return lambda: verify_artifact(ctx.victim, art.cid, expected_base_model="other/model")


def row_chain_too_long(ctx: Ctx) -> Callable[[], object]:
    a = _pack_into_victim(ctx, "a")
    b = _pack_into_victim(ctx, "bb", parent=a.cid)
    c = _pack_into_victim(ctx, "ccc", parent=b.cid)
    return lambda: verify_artifact(ctx.victim, c.cid, limits=Limits(max_chain=2))


def row_pack_adapts_nothing(ctx: Ctx) -> Callable[[], object]:
    """issue 13: packed, verified and unpacked, and PEFT loaded it as the base model."""
    src = write_adapter(ctx.tmp / "keys", adapter_tensors(), adapter_config(target_modules=["key"]))
    return lambda: pack_adapter(
        ctx.victim,
        src,
        ctx.author,
        layer="device",
        domain="en/news",
        base_model_id=BASE_MODEL,
        now=1_700_000_000.0,
    )


def row_cyclic_lineage(ctx: Ctx) -> Callable[[], object]:
    """With sha-256 content addressing a real cycle needs a hash collision; a reader that
    serves artifacts under CIDs they do not hash to (a lying source) is the only way to
    present one, so the walk is fed such a reader directly."""
    x, y = CID.raw(b"x"), CID.raw(b"y")

    def signed(parent: CID) -> Artifact:
        m = Manifest(
            base_model_id=BASE_MODEL,
            base_model_cid=None,
            parent=parent,
            layer="device",
            domain="en",
            round=0,
            encoding=Encoding.INT8_DELTA,
            metrics=(),
            author=ctx.author.peer_id,
            created_ms=0,
            config=ContentRef(CID.raw(b"c"), 1),
            tensors=ContentRef(CID.raw(b"t"), 1),
            tensors_raw_size=1,
        )
        data = m.to_bytes()
        return Artifact(parent, m, data, ctx.author.sign(SIGNING_DOMAIN, data))

    lying = {x: signed(y), y: signed(x)}
    return lambda: walk_lineage(x, lying.__getitem__, max_chain=64)


def row_corrupt_block(ctx: Ctx) -> Callable[[], object]:
    art = _pack_into_victim(ctx)
    assert isinstance(ctx.victim, DiskStore)
    target = art.manifest.tensors.cid
    ctx.quarantined.add(target)
    (path,) = ctx.victim.root.glob(f"blocks/*/{target}")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return lambda: verify_artifact(ctx.victim, art.cid)


def row_tampered(ctx: Ctx) -> Callable[[], object]:
    box: dict[str, Manifest] = {}

    def capture(m: Manifest) -> bytes:
        box["m"] = m
        return m.to_bytes()

    def tamper(e: Envelope) -> Envelope:
        return dataclasses.replace(
            e, manifest_bytes=dataclasses.replace(box["m"], round=99).to_bytes()
        )

    path = car_file(ctx, forge(ctx, manifest_bytes=capture, envelope=tamper))
    return lambda: import_car(ctx.victim, path, ctx.limits)


def _version_2(m: Manifest) -> bytes:
    msg = pb.Manifest()
    msg.ParseFromString(m.to_bytes())
    msg.format_version = 2
    return msg.SerializeToString(deterministic=True)


def _set_limits(
    build: Callable[[Ctx], Callable[[], object]], limits: Limits
) -> Callable[[Ctx], Callable[[], object]]:
    def wrapped(ctx: Ctx) -> Callable[[], object]:
        ctx.limits = limits
        return build(ctx)

    return wrapped


OVERLAP = raw_safetensors(
    {
        A0: {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]},
        "x": {"dtype": "F32", "shape": [4, 16], "data_offsets": [128, 384]},
    },
    b"\x00" * 384,
)
HOLE = raw_safetensors(
    {A0: {"dtype": "F32", "shape": [4, 16], "data_offsets": [64, 320]}}, b"\x00" * 320
)
UNKNOWN_DTYPE = raw_safetensors(
    {A0: {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, b"\x00" * 4
)
DUPLICATE = struct.pack("<Q", 49) + b'{"a": {"dtype": "F32"}, "a": {"dtype": "F32"}}   '

# id, build, error class, message pattern, disk victim?
ROWS: list[tuple[str, Callable[[Ctx], Callable[[], object]], type[Exception], str, bool]] = [
    (
        "zstd-declares-4GiB",
        imports(payload_z=rle_frame(128 * KiB, content_size=4 << 30), raw_size=4 << 30),
        DecompressionError,
        r"declares 4294967296 bytes",
        False,
    ),
    (
        # issue 13: decompressed to the cap although the signed manifest said 1,000 bytes
        "zstd-no-size-past-manifest-size",
        _set_limits(
            imports(payload_z=rle_frame(64 * MiB), raw_size=1000), Limits(max_decompressed=1 * MiB)
        ),
        DecompressionError,
        "expands past the size the manifest declares of 1000 bytes",
        False,
    ),
    (
        "zstd-windowlog-31",
        imports(payload_z=rle_frame(16, window_log=31), raw_size=16),
        DecompressionError,
        r"2147483648-byte window",
        False,
    ),
    (
        "safetensors-header-2^40",
        imports(payload_raw=struct.pack("<Q", 1 << 40) + b"{}"),
        TensorFileError,
        "header length 1099511627776 exceeds",
        False,
    ),
    (
        "overlapping-offsets",
        imports(payload_raw=OVERLAP),
        TensorFileError,
        "overlaps another tensor",
        False,
    ),
    ("hole-in-offsets", imports(payload_raw=HOLE), TensorFileError, "hole at bytes 0..64", False),
    (
        "duplicate-header-keys",
        imports(payload_raw=DUPLICATE),
        TensorFileError,
        "duplicate key 'a'",
        False,
    ),
    (
        "unknown-dtype",
        imports(payload_raw=UNKNOWN_DTYPE),
        TensorFileError,
        "unknown dtype 'Q4'",
        False,
    ),
    ("nan", imports(tensors=with_value(float("nan"))), TensorFileError, "1 NaN", False),
    ("inf", imports(tensors=with_value(float("inf"))), TensorFileError, "1 infinite", False),
    (
        "shape-vs-config-rank",
        imports(tensors=adapter_tensors(r=8)),
        TensorFileError,
        "config gives module .* rank 4",
        False,
    ),
    (
        "lora-A-without-B",
        imports(
            tensors={
                k: v for k, v in adapter_tensors().items() if k != A0.replace("lora_A", "lora_B")
            }
        ),
        TensorFileError,
        "has no lora_B",
        False,
    ),
    (
        "pickle-renamed",
        imports(payload_raw=pickle.dumps({"w": [1.0]}, protocol=4)),
        TensorFileError,
        "pickle",
        False,
    ),
    (
        "payload-encoding-lies",
        imports(payload_raw=payload(encoding="fp16")),
        TensorFileError,
        "says encoding 'fp16' but the manifest says 'fp32'",
        False,
    ),
    ("tampered-after-signing", row_tampered, SignatureError, "changed after signing", False),
    (
        "signed-by-unlisted-key",
        lambda ctx: imports(signer=ctx.rogue)(ctx),
        AuthorMismatchError,
        "not the author's",
        False,
    ),
    (
        "rogue-key-claims-author",
        lambda ctx: imports(
            signer=ctx.rogue,
            envelope=lambda e: dataclasses.replace(e, signer=ctx.author.peer_id.multihash_bytes),
        )(ctx),
        SignatureError,
        "does not verify",
        False,
    ),
    (
        "truncated-signature",
        imports(envelope=lambda e: dataclasses.replace(e, signature=e.signature[:40])),
        SignatureError,
        "40 bytes; an Ed25519 signature is 64",
        False,
    ),
    (
        "missing-signature",
        imports(envelope=lambda e: dataclasses.replace(e, signature=b"")),
        SignatureError,
        "not signed",
        False,
    ),
    (
        "unknown-format-version",
        imports(manifest_bytes=_version_2),
        FormatVersionError,
        "format version 2 is not supported",
        False,
    ),
    (
        "garbage-envelope",
        imports(envelope_bytes=b"\xff" * 100),
        ManifestError,
        "envelope is not a valid protobuf",
        False,
    ),
    (
        "oversize-envelope",
        imports(envelope_bytes=b"\x00" * (70 * KiB)),
        ManifestError,
        "envelope .* 71680 bytes, over the limit of 65536",
        False,
    ),
    ("config-size-lies", imports(config_size=10), ManifestError, "the manifest says 10", False),
    (
        "config-names-other-base-model",
        imports(config={"base_model_name_or_path": "evil/model"}),
        BaseModelMismatchError,
        "evil/model",
        False,
    ),
    (
        "missing-content-block",
        row_missing_content,
        MissingBlocksError,
        "tensor payload .* fetch it first",
        False,
    ),
    ("missing-parent", row_missing_parent, MissingBlocksError, "parent .* is not available", False),
    (
        "delta-tensors-differ-from-parent",
        row_delta_tensors_differ,
        LineageError,
        "does not match its parent",
        False,
    ),
    (
        "car-block-hash-mismatch",
        row_bad_car_block,
        HashMismatchError,
        "does not hash to its CID",
        False,
    ),
    (
        "expected-base-model-mismatch",
        row_expected_base_model,
        BaseModelMismatchError,
        "not 'other/model'",
        False,
    ),
    # issue 13: adapters that adapt nothing (PEFT ignores tensors it does not target)
    (
        "target-modules-miss-the-tensors",
        imports(config={"target_modules": ["key"]}),
        TensorFileError,
        "which target_modules \\['key'\\] does not select",
        False,
    ),
    (
        "target-modules-nonexistent",
        imports(config={"target_modules": ["nonexistent"]}),
        TensorFileError,
        "does not select",
        False,
    ),
    (
        "target-modules-empty",
        imports(config={"target_modules": []}),
        TensorFileError,
        "target_modules is empty: the adapter adapts nothing",
        False,
    ),
    (
        "target-modules-without-tensors",
        imports(config={"target_modules": ["query", "value", "key"]}),
        TensorFileError,
        "names 'key' but the adapter has no LoRA tensors",
        False,
    ),
    ("pack-adapts-nothing", row_pack_adapts_nothing, TensorFileError, "does not select", False),
    ("lineage-too-long", row_chain_too_long, LineageError, "longer than the limit of 2", False),
    ("cyclic-lineage", row_cyclic_lineage, LineageError, "cyclic", False),
    (
        "corrupted-stored-block",
        row_corrupt_block,
        CorruptBlockError,
        "no longer matches its hash",
        True,
    ),
]


def snapshot(store: ContentStore) -> tuple[set[CID], dict[CID, str], list[Any]]:
    return set(store.iter_block_cids()), store.pins(), store.query()


@pytest.mark.parametrize(
    ("build", "error", "message", "disk"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_hostile_input(
    build: Callable[[Ctx], Callable[[], object]],
    error: type[Exception],
    message: str,
    disk: bool,
    tmp_path: Path,
    author: Identity,
    rogue: Identity,
) -> None:
    victim: ContentStore = DiskStore(tmp_path / "victim") if disk else MemoryStore()
    work = tmp_path / "work"
    work.mkdir()
    with victim, MemoryStore() as scratch:
        ctx = Ctx(victim, scratch, work, author, rogue)
        # the victim already holds an honest artifact that must survive every attack
        honest = pack_adapter(
            victim,
            write_adapter(tmp_path / "honest"),
            author,
            layer="domain",
            domain="en",
            base_model_id=BASE_MODEL,
            now=1.0,
        )
        action = build(ctx)
        before = snapshot(victim)
        with pytest.raises(error, match=message) as info:
            action()
        assert type(info.value) is error  # the specific class, not just a family member
        after = snapshot(victim)
        # blocks only ever leave by quarantine (the store's answer to rot), pins and index never
        assert ctx.quarantined <= before[0]
        assert after[0] == before[0] - ctx.quarantined
        assert after[1:] == before[1:]
        assert verify_artifact(victim, honest.cid) == honest


def test_table_is_large_enough() -> None:
    assert len(ROWS) >= 15
    assert len({row[0] for row in ROWS}) == len(ROWS)
