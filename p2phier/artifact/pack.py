"""Building signed artifacts from PEFT adapter directories (or tensors) into a store.

Owns :func:`pack_adapter` and :func:`pack_tensors`.  Packing:

1. reads ``adapter_config.json`` and ``adapter_model.safetensors`` with the
   same hostile-input checks used on a peer's payload (a pickled
   ``adapter_model.bin`` is refused, never loaded; a FIFO, device or other
   non-regular file is refused without being read);
2. for a delta, verifies and materialises the parent chain from the store and
   subtracts it (so the delta is relative to what readers will reconstruct:
   quantisation or top-k error of earlier updates is corrected, not compounded);
   a parent whose lineage is already ``max_chain`` long is refused;
3. encodes, writes a deterministic safetensors payload, compresses it with
   zstd level 3;
4. stores the canonical config JSON (base model named by id, never by a local
   path), the payload and last the signed envelope, each a UnixFS file with
   index metadata, and only then pins all three.  The envelope's CID is the
   artifact's CID.

All fields are validated before anything is written, so a bad argument leaves
the store untouched.  A failure while storing (disk full) leaves nothing
pinned: the blocks already written go at the next GC.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from p2phier.artifact.adapter import (
    AdapterConfig,
    canonical_config_bytes,
    check_adapter_tensors,
    parse_adapter_config,
)
from p2phier.artifact.compress import compress, compress_into_store
from p2phier.artifact.encode import Encoding, encode_tensors
from p2phier.artifact.limits import DEFAULT_LIMITS, Limits
from p2phier.artifact.manifest import ContentRef, Manifest, metrics_from_mapping, sign_manifest
from p2phier.artifact.protofile import MAX_PROTOTYPES_BYTES, PROTOTYPES_FILE, decode_prototypes
from p2phier.artifact.tensors import (
    F32Array,
    check_finite,
    parse_safetensors,
    write_safetensors,
)
from p2phier.artifact.verify import (
    META_ENCODING,
    META_FORMAT,
    PAYLOAD_FORMAT,
    Artifact,
    BlockSource,
    artifact_files,
    resolve,
)
from p2phier.cid import CID
from p2phier.errors import LineageError, P2PHierError, TensorFileError, UsageError
from p2phier.fsutil import open_regular
from p2phier.identity import Identity
from p2phier.store.base import ContentStore, MetaSpec, block_key

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"

KIND_ARTIFACT = "artifact"
KIND_CONFIG = "adapter-config"
KIND_TENSORS = "adapter-tensors"
KIND_PROTOTYPES = "prototypes"


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        # Never a plain open(): on a FIFO it would wait for a writer for ever.
        with open(open_regular(path, what), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise UsageError(f"{what} {path} is {size} bytes, over the limit of {limit}")
            return fh.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_adapter_dir(
    adapter_dir: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[AdapterConfig, dict[str, F32Array]]:
    """Load and validate a PEFT LoRA adapter directory as float32 tensors."""
    root = Path(adapter_dir)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory (expected a PEFT adapter directory)")
    weights_path = root / ADAPTER_WEIGHTS
    if not weights_path.exists() and (root / PICKLED_WEIGHTS).exists():
        raise TensorFileError(
            f"{root} holds only pickled weights ({PICKLED_WEIGHTS}); they are never loaded. "
            "Save the adapter with save_pretrained(..., safe_serialization=True)"
        )
    config = parse_adapter_config(
        _read_bounded(root / ADAPTER_CONFIG, limits.max_config, "adapter config"),
        max_size=limits.max_config,
    )
    data = _read_bounded(weights_path, limits.max_decompressed, "adapter weights")
    st = parse_safetensors(data, max_header=limits.max_header, max_tensors=limits.max_tensors)
    tensors = {name: st.floats(name) for name in sorted(st.infos)}
    check_adapter_tensors(config, {n: t.shape for n, t in tensors.items()})
    return config, tensors


def pack_adapter(
    store: ContentStore,
    adapter_dir: str | os.PathLike[str],
    identity: Identity,
    *,
    layer: str,
    domain: str,
    base_model_id: str,
    base_model_cid: CID | str | None = None,
    parent: CID | str | None = None,
    encoding: Encoding | str | None = None,
    round: int = 0,
    metrics: Mapping[str, float] | None = None,
    topk_fraction: float = 0.1,
    now: float,
    limits: Limits = DEFAULT_LIMITS,
    base_version: CID | str | None = None,
    prototypes: bytes | None = None,
    int8_rms_steps: float = 0.0,
    keyframe: Encoding | str | None = None,
) -> Artifact:
    """Pack a PEFT adapter directory as a signed artifact (a delta if ``parent`` is given).

    ``encoding`` defaults to fp32 for a full adapter and int8-delta for a delta.
    ``prototypes``: the prototypes file to carry; ``None``: the directory's
    ``prototypes.safetensors``, where it has one.  ``int8_rms_steps`` and ``keyframe``:
    see :func:`pack_tensors`.
    """
    config, tensors = read_adapter_dir(adapter_dir, limits=limits)
    protos = Path(adapter_dir) / PROTOTYPES_FILE
    if prototypes is None and protos.exists():
        prototypes = _read_bounded(protos, MAX_PROTOTYPES_BYTES, "prototypes")
    return pack_tensors(
        store,
        config,
        tensors,
        identity,
        layer=layer,
        domain=domain,
        base_model_id=base_model_id,
        base_model_cid=base_model_cid,
        parent=parent,
        encoding=encoding,
        round=round,
        metrics=metrics,
        topk_fraction=topk_fraction,
        now=now,
        limits=limits,
        base_version=base_version,
        prototypes=prototypes,
        int8_rms_steps=int8_rms_steps,
        keyframe=keyframe,
    )


def pack_tensors(
    store: ContentStore,
    config: AdapterConfig,
    tensors: Mapping[str, npt.ArrayLike],
    identity: Identity,
    *,
    layer: str,
    domain: str,
    base_model_id: str,
    base_model_cid: CID | str | None = None,
    parent: CID | str | None = None,
    encoding: Encoding | str | None = None,
    round: int = 0,
    metrics: Mapping[str, float] | None = None,
    topk_fraction: float = 0.1,
    now: float,
    limits: Limits = DEFAULT_LIMITS,
    base_version: CID | str | None = None,
    prototypes: bytes | None = None,
    int8_rms_steps: float = 0.0,
    keyframe: Encoding | str | None = None,
) -> Artifact:
    """Pack adapter tensors (PEFT names, full weights) with their config.

    ``prototypes``: a prototypes file (:mod:`p2phier.artifact.protofile`) to carry, checked
    here as a reader will check it; never a delta.

    The in-memory twin of :func:`pack_adapter` for callers that hold tensors.
    ``base_version`` names the parent node's version the adapter was trained on
    (recorded in the manifest; unlike ``parent`` it is not a delta base).

    ``int8_rms_steps``: an int8 encoding's step is at least each tensor's RMS over this
    (0: the finest step; :func:`~p2phier.artifact.encode.encode_tensors`), the RMS of the
    full tensor also for a delta.  ``keyframe`` (with ``parent``): the full adapter in
    this encoding is packed instead of the delta where its compressed payload is smaller
    (an adapter trained afresh after a rebase is no closer to its predecessor than to
    zero, and at a coarse step the delta's wider spread costs more bits).
    """
    parent_cid = CID.parse(parent) if parent is not None else None
    version_cid = CID.parse(base_version) if base_version is not None else None
    base_cid = CID.parse(base_model_cid) if base_model_cid is not None else None
    enc = Encoding.parse(encoding) if encoding is not None else None
    if enc is None:
        enc = Encoding.INT8_DELTA if parent_cid is not None else Encoding.FP32
    key_enc = Encoding.parse(keyframe) if keyframe is not None else None
    if key_enc is not None and key_enc.delta_only:
        raise UsageError(f"a keyframe is a full adapter, not {key_enc.value}")
    if enc.delta_only and parent_cid is None:
        raise UsageError(f"encoding {enc.value} stores a delta: give the parent update")
    if enc.full_only and parent_cid is not None:
        raise UsageError(f"encoding {enc.value} stores a full adapter: a delta is int8-delta")
    if not isinstance(now, int | float) or now < 0:
        raise UsageError(f"now must be a Unix time in seconds, not {now!r}")
    metric_list = metrics_from_mapping(metrics or {})
    created_ms = round_ms(now)
    # Validate every manifest field before writing anything (placeholder content refs).
    placeholder = ContentRef(CID.raw(b""), 0)
    checked = Manifest(
        base_model_id=base_model_id,
        base_model_cid=base_cid,
        parent=parent_cid,
        layer=layer,
        domain=domain,
        round=round,
        encoding=enc,
        metrics=metric_list,
        author=identity.peer_id,
        created_ms=created_ms,
        config=placeholder,
        tensors=placeholder,
        tensors_raw_size=0,
        base_version=version_cid,
    )
    weights = {name: _f32(name, t) for name, t in tensors.items()}
    check_adapter_tensors(config, {n: t.shape for n, t in weights.items()})

    def payload(values: Mapping[str, F32Array], encoding: Encoding) -> bytes:
        encoded = encode_tensors(
            values, encoding, topk_fraction=topk_fraction, int8_rms_steps=int8_rms_steps,
            reference=weights,
        )  # fmt: skip
        return write_safetensors(
            encoded.tensors, {META_FORMAT: PAYLOAD_FORMAT, META_ENCODING: encoding.value}
        )

    if parent_cid is not None:
        resolved = resolve(
            BlockSource(store).get_block,
            parent_cid,
            limits=limits,
            expected_base_model=base_model_id,
        )
        check_room_for_child(resolved.chain, limits=limits)
        payload_raw = payload(_subtract(weights, resolved.tensors, parent_cid), enc)
        if key_enc is not None:
            key_raw = payload(weights, key_enc)
            if len(compress(key_raw)) < len(compress(payload_raw)):
                payload_raw, enc, parent_cid = key_raw, key_enc, None
                checked = dataclasses.replace(checked, parent=None, encoding=enc)
    else:
        payload_raw = payload(weights, enc)
    if len(payload_raw) > limits.max_decompressed:
        raise UsageError(
            f"the encoded payload is {len(payload_raw)} bytes, over the limit of "
            f"{limits.max_decompressed} that readers accept"
        )
    if prototypes is not None:
        decode_prototypes(prototypes)  # what every reader checks, before anything is stored
    config_bytes = canonical_config_bytes(config, base_model_id)
    if len(config_bytes) > limits.max_config:
        raise UsageError(f"adapter config is {len(config_bytes)} bytes, over {limits.max_config}")

    author = str(identity.peer_id)
    parent_str = str(parent_cid) if parent_cid else None
    common = {"layer": layer, "domain": domain, "author": author, "parent": parent_str}
    # Nothing is pinned until all three files are stored: a pack that fails half way must not
    # leave a pinned config or payload that no artifact names (GC could never reclaim it).
    # The ingest makes GC wait, so the unpinned files cannot be collected before the pins.
    with store.ingest():
        config_cid = store.add_bytes(config_bytes, MetaSpec(kind=KIND_CONFIG, **common), pin=False)
        # Compressed in a worker thread while this one chunks, hashes and writes the frame.
        tensors_cid, payload_size = compress_into_store(
            store, payload_raw, meta=MetaSpec(kind=KIND_TENSORS, **common), pin=False
        )
        protos_ref = None
        if prototypes is not None:
            protos_cid = store.add_bytes(
                prototypes, MetaSpec(kind=KIND_PROTOTYPES, **common), pin=False
            )
            protos_ref = ContentRef(protos_cid, len(prototypes))
        art = _store_envelope(
            store,
            identity,
            dataclasses.replace(
                checked,
                config=ContentRef(config_cid, len(config_bytes)),
                tensors=ContentRef(tensors_cid, payload_size),
                tensors_raw_size=len(payload_raw),
                prototypes=protos_ref,
            ),
            MetaSpec(kind=KIND_ARTIFACT, **common),
        )
        _pin_all(store, (*art.manifest.files, art.cid))
    log.info(
        "packed %s (%s, %d tensors, payload %d -> %d bytes)",
        art.cid,
        enc.value,
        len(weights),
        len(payload_raw),
        payload_size,
    )
    return art


def check_room_for_child(chain: Sequence[Artifact], *, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a parent whose lineage (``chain``, leaf first) has no room for one more update.

    A child of a chain already ``max_chain`` long could be signed and stored, but no
    reader (the same limit in :func:`~p2phier.artifact.verify.walk_lineage`) would
    ever accept it.
    """
    if len(chain) >= limits.max_chain:
        raise LineageError(
            f"parent {chain[0].cid} already has a lineage of {len(chain)} updates, the limit of "
            f"{limits.max_chain}: a child of it would never verify; pack a full adapter "
            "(without --parent) instead"
        )


def _store_envelope(
    store: ContentStore, identity: Identity, manifest: Manifest, meta: MetaSpec
) -> Artifact:
    envelope = sign_manifest(manifest, identity)
    cid = store.add_bytes(envelope.to_bytes(), meta, pin=False)
    return Artifact(cid, manifest, envelope.manifest_bytes, envelope.signature)


def pin_artifact(store: ContentStore, cid: CID | str) -> tuple[CID, ...]:
    """Pin every file artifact ``cid`` needs (:func:`~p2phier.artifact.verify.artifact_files`:
    envelope, config and payload of it and its lineage), all or none; return them.

    An envelope names its config and payload only inside its manifest, not as DAG links,
    so a pin of the envelope alone would leave them to GC.
    """
    files = artifact_files(store.get_block, CID.parse(cid) if isinstance(cid, str) else cid)
    _pin_all(store, files)
    return files


def _pin_all(store: ContentStore, cids: Sequence[CID]) -> None:
    """Pin every one of ``cids``, or (when a pin fails) none that this call pinned."""
    before = store.pins()
    done: list[CID] = []
    try:
        for cid in cids:
            store.pin(cid)
            done.append(cid)
    except BaseException:
        for cid in done:
            # A file another artifact already pinned (an identical config) keeps its pin.
            if block_key(cid) not in before:
                try:
                    store.unpin(cid)
                except P2PHierError as exc:  # the pack's own error is the one raised
                    log.warning("could not undo the pin of %s after a failed pack: %s", cid, exc)
        raise


def round_ms(now: float) -> int:
    """Unix seconds -> integer milliseconds (the manifest's clock resolution)."""
    return round(float(now) * 1000.0)


def _f32(name: str, t: npt.ArrayLike) -> F32Array:
    arr = np.array(t, dtype=np.float32, order="C", copy=None)
    check_finite(name, arr)
    return arr


def _subtract(
    child: Mapping[str, F32Array], parent: Mapping[str, F32Array], parent_cid: CID
) -> dict[str, F32Array]:
    if set(child) != set(parent):
        extra = sorted(set(child) - set(parent))[:3]
        missing = sorted(set(parent) - set(child))[:3]
        raise LineageError(
            f"adapter does not have the tensors of parent {parent_cid} "
            f"(extra {extra}, missing {missing}); pack it as a full adapter instead"
        )
    out: dict[str, F32Array] = {}
    for name, c in child.items():
        p = parent[name]
        if c.shape != p.shape:
            raise LineageError(
                f"tensor {name!r} has shape {list(c.shape)} but parent {parent_cid} has "
                f"{list(p.shape)}; pack it as a full adapter instead"
            )
        out[name] = c - p
    return out
