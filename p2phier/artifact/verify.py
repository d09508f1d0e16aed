"""Reading and fully verifying artifacts and their lineage from any block source.

Owns :class:`Artifact` (a verified envelope), the lineage walk and the forward
pass that checks (and, for :mod:`~p2phier.artifact.materialise`, accumulates)
every update of a chain.  Verification of an artifact means, in this order:

1. its envelope is read within ``max_envelope`` (:class:`MissingBlocksError`
   if a block is absent, the store's :class:`CorruptBlockError` if one rots);
2. the envelope and manifest parse strictly (:class:`ManifestError`,
   :class:`FormatVersionError`) and the signature verifies over the exact
   manifest bytes under the author's key (:class:`SignatureError`,
   :class:`AuthorMismatchError`);
3. the lineage is walked to its full adapter: bounded by ``max_chain``,
   cycles refused, every ancestor verified the same way, one base model along
   the chain (:class:`LineageError`, :class:`BaseModelMismatchError`);
4. then from the root forward, each update's config and payload are read
   (sizes must match the manifest), the payload decompressed under the caps
   (:class:`DecompressionError`), parsed as hostile safetensors and decoded
   (:class:`TensorFileError`), and applied: a delta must cover exactly the
   parent's tensors with the same shapes, and the result must fit the
   update's own adapter config.

Nothing here writes: a failed verification leaves the store as it was (a
store may move a block that fails its hash check to quarantine; that is the
store's own policy).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass

import numpy as np

from p2phier.artifact.adapter import AdapterConfig, check_adapter_tensors, parse_adapter_config
from p2phier.artifact.compress import decompress
from p2phier.artifact.encode import decode_tensors
from p2phier.artifact.limits import DEFAULT_LIMITS, Limits
from p2phier.artifact.manifest import Envelope, Manifest, open_envelope
from p2phier.artifact.protofile import MAX_PROTOTYPES_BYTES, decode_prototypes
from p2phier.artifact.tensors import F32Array, check_finite, parse_safetensors
from p2phier.cid import CID
from p2phier.errors import (
    BaseModelMismatchError,
    BlockNotFoundError,
    LineageError,
    ManifestError,
    MissingBlocksError,
    TensorFileError,
)
from p2phier.store.base import ContentStore, block_key
from p2phier.unixfs import file_size, read_file

BlockGetter = Callable[[CID], bytes]

#: safetensors ``__metadata__`` keys of a p2phier payload
META_FORMAT = "p2phier.format"
META_ENCODING = "p2phier.encoding"
PAYLOAD_FORMAT = "1"


@dataclass(frozen=True, slots=True)
class Artifact:
    """A verified signed manifest and the CID it is stored under."""

    cid: CID
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes

    @property
    def envelope_bytes(self) -> bytes:
        """The stored envelope (signer == author once verified, so it is rebuilt exactly)."""
        return Envelope(
            self.manifest_bytes, self.signature, self.manifest.author.multihash_bytes
        ).to_bytes()

    @property
    def stored_bytes(self) -> int:
        """Bytes of the files this artifact stores (envelope, config, payload, prototypes)."""
        m = self.manifest
        protos = m.prototypes.size if m.prototypes is not None else 0
        return len(self.envelope_bytes) + m.config.size + m.tensors.size + protos


@dataclass(frozen=True, slots=True)
class Content:
    """An artifact's verified content: its config and its decoded tensors (delta or full)."""

    config: AdapterConfig
    config_bytes: bytes
    tensors: dict[str, F32Array]
    #: the artifact's prototypes file, checked (``None``: it carries none)
    prototypes: bytes | None = None


class BlockSource:
    """Where verification reads blocks: a store, optionally overlaid by blocks not yet stored.

    The overlay holds blocks already hash-checked by the caller (a CAR being
    imported); the store re-hashes on every read.  A block in neither raises
    :class:`BlockNotFoundError`.
    """

    def __init__(self, store: ContentStore, overlay: Mapping[CID, bytes] | None = None) -> None:
        self.store = store
        self.overlay = overlay or {}

    def get_block(self, cid: CID) -> bytes:
        key = block_key(cid)
        data = self.overlay.get(key)
        if data is not None:
            return data
        return self.store.get_block(key)


def read_object(get_block: BlockGetter, cid: CID, *, max_size: int, what: str) -> bytearray:
    """A whole UnixFS file, refused before reading if its root claims more than ``max_size``.

    The buffer is allocated once at the size the root declares (the reader
    checks every block against it), so reading never holds the file twice.
    """
    try:
        size = file_size(cid, get_block)
        if size > max_size:
            raise ManifestError(f"{what} {cid} is {size} bytes, over the limit of {max_size}")
        out = bytearray(size)
        view = memoryview(out)
        pos = 0
        for piece in read_file(cid, get_block, max_size=max_size):
            view[pos : pos + len(piece)] = piece
            pos += len(piece)
        view.release()
        return out
    except BlockNotFoundError as exc:
        raise MissingBlocksError(
            f"{what} {cid} is not complete in the store ({exc}); fetch it first"
        ) from None


def read_artifact(get_block: BlockGetter, cid: CID, *, limits: Limits = DEFAULT_LIMITS) -> Artifact:
    """Read one envelope and check its manifest and signature (not its content or lineage)."""
    data = bytes(
        read_object(get_block, cid, max_size=limits.max_envelope, what="artifact envelope")
    )
    envelope = Envelope.from_bytes(data, max_size=limits.max_envelope)
    manifest = open_envelope(envelope)
    return Artifact(cid, manifest, envelope.manifest_bytes, envelope.signature)


def walk_lineage(cid: CID, read: Callable[[CID], Artifact], *, max_chain: int) -> list[Artifact]:
    """The artifact and its ancestors, leaf first, ending at a full adapter.

    ``read`` returns a signature-checked artifact (see :func:`read_artifact`).
    Refuses chains longer than ``max_chain``, cycles, and ancestors on another
    base model.
    """
    chain: list[Artifact] = []
    seen: set[CID] = set()
    current: CID | None = cid
    while current is not None:
        key = block_key(current)
        if key in seen:
            raise LineageError(f"lineage of {cid} is cyclic: {current} appears twice")
        if len(chain) >= max_chain:
            raise LineageError(
                f"lineage of {cid} is longer than the limit of {max_chain} updates; "
                "rebase it onto a full adapter"
            )
        seen.add(key)
        try:
            art = read(current)
        except MissingBlocksError as exc:
            if not chain:
                raise
            raise MissingBlocksError(
                f"parent {current} of {chain[-1].cid} is not available: {exc}"
            ) from None
        if chain:
            child = chain[-1].manifest
            if art.manifest.base_model_id != child.base_model_id:
                raise BaseModelMismatchError(
                    f"{chain[-1].cid} targets base model {child.base_model_id!r} but its parent "
                    f"{current} targets {art.manifest.base_model_id!r}"
                )
        chain.append(art)
        current = art.manifest.parent
    return chain


def artifact_files(
    get_block: BlockGetter, cid: CID, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[CID, ...]:
    """Every file ``cid`` needs to be read: for it and each ancestor in its lineage, the
    envelope, the adapter config and the payload (in that order, leaf first, each once).

    Reads only the envelopes (signature-checked); the caller pins what this names.
    """
    chain = walk_lineage(
        cid, lambda c: read_artifact(get_block, c, limits=limits), max_chain=limits.max_chain
    )
    files = (f for art in chain for f in (art.cid, *art.manifest.files))
    return tuple(dict.fromkeys(block_key(f) for f in files))


def read_content(
    get_block: BlockGetter,
    artifact: Artifact,
    *,
    limits: Limits = DEFAULT_LIMITS,
    base_modules: Collection[str] | None = None,
) -> Content:
    """Read, decompress, parse and decode one artifact's config and tensor payload.

    Peak memory: the compressed payload and its decompressed form while
    decompressing, then the decompressed form and the decoded tensors while
    decoding; each is freed as soon as the next exists.
    """
    m = artifact.manifest
    config_bytes = bytes(
        read_object(get_block, m.config.cid, max_size=limits.max_config, what="adapter config")
    )
    if len(config_bytes) != m.config.size:
        raise ManifestError(
            f"adapter config {m.config.cid} is {len(config_bytes)} bytes; the manifest says "
            f"{m.config.size}"
        )
    config = parse_adapter_config(config_bytes, max_size=limits.max_config)
    if config.base_model_name_or_path != m.base_model_id:
        raise BaseModelMismatchError(
            f"adapter config names base model {config.base_model_name_or_path!r} but the "
            f"manifest says {m.base_model_id!r}"
        )
    payload = read_object(
        get_block, m.tensors.cid, max_size=limits.max_compressed, what="tensor payload"
    )
    if len(payload) != m.tensors.size:
        raise ManifestError(
            f"tensor payload {m.tensors.cid} is {len(payload)} bytes; the manifest says "
            f"{m.tensors.size}"
        )
    raw = decompress(
        payload,
        max_output=limits.max_decompressed,
        max_window_log=limits.max_window_log,
        expected_size=m.tensors_raw_size,
    )
    del payload
    st = parse_safetensors(raw, max_header=limits.max_header, max_tensors=limits.max_tensors)
    if st.metadata.get(META_FORMAT) != PAYLOAD_FORMAT:
        raise TensorFileError(
            f"tensor payload has format {st.metadata.get(META_FORMAT)!r}; expected "
            f"{PAYLOAD_FORMAT!r} (a p2phier payload)"
        )
    if st.metadata.get(META_ENCODING) != m.encoding.value:
        raise TensorFileError(
            f"tensor payload says encoding {st.metadata.get(META_ENCODING)!r} but the manifest "
            f"says {m.encoding.value!r}"
        )
    tensors = decode_tensors(st, m.encoding, max_decoded=limits.max_decoded)
    del st, raw  # the decoded tensors own their memory (decoding copies)
    if m.parent is None:
        check_adapter_tensors(
            config, {n: t.shape for n, t in tensors.items()}, base_modules=base_modules
        )
    return Content(config, config_bytes, tensors, read_prototypes(get_block, m))


def read_prototypes(get_block: BlockGetter, m: Manifest) -> bytes | None:
    """The manifest's prototypes file, read within its size limit and checked."""
    if m.prototypes is None:
        return None
    data = bytes(
        read_object(get_block, m.prototypes.cid, max_size=MAX_PROTOTYPES_BYTES, what="prototypes")
    )
    if len(data) != m.prototypes.size:
        raise ManifestError(
            f"prototypes file {m.prototypes.cid} is {len(data)} bytes; the manifest says "
            f"{m.prototypes.size}"
        )
    decode_prototypes(data)
    return data


def apply_delta(
    acc: MutableMapping[str, F32Array], delta: MutableMapping[str, F32Array], *, what: str
) -> None:
    """``acc += delta`` in place, each delta tensor dropped once added.

    Same tensor names and shapes required (checked before anything is added),
    result finite.  In place, so a chain never holds more than the running sum
    and one update's tensors.  On an error ``acc`` may be half-updated: the
    chain is refused anyway.
    """
    if set(acc) != set(delta):
        extra = sorted(set(delta) - set(acc))[:3]
        missing = sorted(set(acc) - set(delta))[:3]
        raise LineageError(
            f"{what} does not match its parent's tensors (extra {extra}, missing {missing})"
        )
    for name, b in acc.items():
        d = delta[name]
        if d.shape != b.shape:
            raise LineageError(
                f"{what}: tensor {name!r} has shape {list(d.shape)} but the parent's is "
                f"{list(b.shape)}"
            )
    for name in sorted(acc):
        d = delta.pop(name)
        np.add(acc[name], d, out=acc[name])
        del d
        check_finite(name, acc[name])


@dataclass(frozen=True, slots=True)
class Resolved:
    """A verified chain (leaf first) and the adapter it materialises to."""

    chain: list[Artifact]
    config: AdapterConfig
    config_bytes: bytes
    tensors: dict[str, F32Array]
    #: the leaf's prototypes file, checked (``None``: it carries none)
    prototypes: bytes | None = None

    @property
    def artifact(self) -> Artifact:
        return self.chain[0]


def resolve(
    get_block: BlockGetter,
    cid: CID,
    *,
    limits: Limits = DEFAULT_LIMITS,
    expected_base_model: str | None = None,
    base_modules: Collection[str] | None = None,
) -> Resolved:
    """Verify ``cid`` and its whole lineage; return the materialised adapter tensors.

    ``base_modules``: the base model's module names when the caller knows them
    (see :func:`~p2phier.artifact.adapter.check_adapter_tensors`).  Peak memory
    is bounded by :meth:`Limits.peak_memory`.
    """
    chain = walk_lineage(
        cid, lambda c: read_artifact(get_block, c, limits=limits), max_chain=limits.max_chain
    )
    leaf = chain[0].manifest
    if expected_base_model is not None and expected_base_model not in (
        leaf.base_model_id,
        str(leaf.base_model_cid) if leaf.base_model_cid else None,
    ):
        raise BaseModelMismatchError(
            f"{cid} is an update for base model {leaf.base_model_id!r}, not {expected_base_model!r}"
        )
    acc: dict[str, F32Array] = {}
    content: Content | None = None
    for art in reversed(chain):
        content = None  # the previous update's tensors are gone before the next is read
        content = read_content(get_block, art, limits=limits, base_modules=base_modules)
        if art.manifest.parent is None:
            acc = content.tensors
        else:
            apply_delta(acc, content.tensors, what=f"update {art.cid}")
            try:
                check_adapter_tensors(
                    content.config,
                    {n: t.shape for n, t in acc.items()},
                    base_modules=base_modules,
                )
            except TensorFileError as exc:
                raise LineageError(
                    f"update {art.cid} does not fit its own adapter config: {exc}"
                ) from None
    assert content is not None  # a chain has at least one artifact
    # the loop ends at the leaf: its prototypes are the chain's (they are never deltas)
    return Resolved(chain, content.config, content.config_bytes, acc, content.prototypes)


def verify_artifact(
    store: ContentStore,
    cid: CID | str,
    *,
    expected_base_model: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    base_modules: Collection[str] | None = None,
) -> Artifact:
    """Fully verify an artifact in ``store``: signature, content and the whole lineage."""
    return resolve(
        BlockSource(store).get_block,
        CID.parse(cid),
        limits=limits,
        expected_base_model=expected_base_model,
        base_modules=base_modules,
    ).artifact


def load_tensors(
    store: ContentStore, artifact: Artifact, *, limits: Limits = DEFAULT_LIMITS
) -> dict[str, F32Array]:
    """The artifact's own decoded tensors (for a delta: the decoded delta)."""
    return read_content(BlockSource(store).get_block, artifact, limits=limits).tensors


def inspect(
    store: ContentStore,
    cid: CID | str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    base_modules: Collection[str] | None = None,
) -> dict[str, object]:
    """A JSON-able summary of a fully verified artifact."""
    return summarise(
        resolve(
            BlockSource(store).get_block, CID.parse(cid), limits=limits, base_modules=base_modules
        )
    )


def summarise(resolved: Resolved) -> dict[str, object]:
    """A JSON-able summary of a verified chain (see :func:`inspect`)."""
    art = resolved.artifact
    m = art.manifest
    return {
        "cid": str(art.cid),
        "verified": True,
        "manifest": m.to_json(),
        "signer": str(m.author),
        "lineage": [str(a.cid) for a in resolved.chain],
        "depth": len(resolved.chain) - 1,
        "delta": m.parent is not None,
        "tensors": len(resolved.tensors),
        "parameters": int(sum(t.size for t in resolved.tensors.values())),
        "rank": resolved.config.r,
        "bytes": {
            "envelope": len(art.envelope_bytes),
            "config": m.config.size,
            "payload": m.tensors.size,
            "payload_decompressed": m.tensors_raw_size,
            "prototypes": m.prototypes.size if m.prototypes is not None else 0,
            "stored": art.stored_bytes,
        },
    }
