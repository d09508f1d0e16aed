"""The signed manifest of an adapter update, and its envelope (pure, no I/O).

Owns :class:`Manifest` (what an update is: base model, lineage, place in the
hierarchy, encoding, metrics, author, content CIDs), its protobuf codec
(``protocol/p2phier.proto``, format version :data:`FORMAT_VERSION`), the
``SignedManifest`` envelope and the signature rules:

* a producer serialises canonically (fields in number order, defaults omitted);
  :meth:`Manifest.from_bytes` refuses any other byte form (unknown fields,
  reordered or repeated fields), so a manifest has exactly one encoding;
* the signature is Ed25519 over the *exact* manifest bytes received, framed
  with the domain :data:`SIGNING_DOMAIN` (see :func:`p2phier.identity.signing_bytes`);
  nothing is re-serialised to verify;
* the key is the one embedded in the author's peer id: a signature by any other
  key is an :class:`AuthorMismatchError`.

Every field is validated on construction and on parse (lengths bounded, domain
paths lower-case segments of bounded depth, metric names unique and sorted,
values finite), so a :class:`Manifest` in memory is always a valid one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from p2phier.artifact.encode import Encoding
from p2phier.cid import CID, DAG_PB, RAW, SHA2_256
from p2phier.errors import (
    AuthorMismatchError,
    CIDError,
    FormatVersionError,
    IdentityError,
    ManifestError,
    NewerManifestError,
    SignatureError,
)
from p2phier.identity import Identity, PeerId
from p2phier.signing import check_signed, sign_as
from p2phier.wire import p2phier_pb2 as pb

FORMAT_VERSION = 1
SIGNING_DOMAIN = b"p2phier/manifest/v1"

MAX_MANIFEST = 16 * 1024
MAX_BASE_MODEL_ID = 256
MAX_LAYER = 32
MAX_DOMAIN = 128
MAX_DOMAIN_DEPTH = 4
MAX_SEGMENT = 32
MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_ROUND = 2**63 - 1
#: Layers of the hierarchy; other lower-case tokens are accepted for future layers.
KNOWN_LAYERS = ("master", "language", "domain", "subdomain", "device")

_SEGMENT_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?")
_LAYER_RE = re.compile(r"[a-z][a-z0-9-]*")
_METRIC_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_MODEL_ID_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces

_TO_PB = {
    Encoding.FP32: pb.ENCODING_FP32,
    Encoding.FP16: pb.ENCODING_FP16,
    Encoding.INT8_DELTA: pb.ENCODING_INT8_DELTA,
    Encoding.TOPK_DELTA: pb.ENCODING_TOPK_DELTA,
    Encoding.INT8: pb.ENCODING_INT8,
}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


def validate_domain(domain: str) -> str:
    """A domain path: ``""`` (the root) or up to 4 ``/``-separated lower-case segments."""
    if not isinstance(domain, str):
        raise ManifestError("domain must be a string")
    if len(domain) > MAX_DOMAIN:
        raise ManifestError(f"domain path is {len(domain)} characters, over {MAX_DOMAIN}")
    if domain == "":
        return domain
    segments = domain.split("/")
    if len(segments) > MAX_DOMAIN_DEPTH:
        raise ManifestError(
            f"domain path {domain!r} has {len(segments)} segments, over {MAX_DOMAIN_DEPTH}"
        )
    for seg in segments:
        if len(seg) > MAX_SEGMENT or not _SEGMENT_RE.fullmatch(seg):
            raise ManifestError(
                f"domain segment {seg!r} in {domain!r} must be 1-{MAX_SEGMENT} lower-case "
                "letters, digits, '-' or '_' (e.g. en/healthcare/cardiology)"
            )
    return domain


def validate_layer(layer: str) -> str:
    if not isinstance(layer, str) or len(layer) > MAX_LAYER or not _LAYER_RE.fullmatch(layer):
        raise ManifestError(
            f"layer {layer!r} must be a short lower-case token, "
            f"e.g. one of {', '.join(KNOWN_LAYERS)}"
        )
    return layer


def _content_cid(cid: CID, what: str) -> CID:
    if cid.version != 1 or cid.codec not in (RAW, DAG_PB) or cid.multihash.code != SHA2_256:
        raise ManifestError(f"{what} must be a CIDv1 (raw or dag-pb, sha2-256), not {cid}")
    return cid


@dataclass(frozen=True, slots=True)
class ContentRef:
    """A UnixFS file the manifest points at, and its size."""

    cid: CID
    size: int

    def __post_init__(self) -> None:
        _content_cid(self.cid, "content CID")
        if not isinstance(self.size, int) or not 0 <= self.size < 2**63:
            raise ManifestError(f"content size {self.size!r} out of range")


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    value: float

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or len(self.name) > MAX_METRIC_NAME
            or not _METRIC_RE.fullmatch(self.name)
        ):
            raise ManifestError(
                f"metric name {self.name!r} must be lower-case letters, digits, '_', '.' or '-' "
                f"(at most {MAX_METRIC_NAME})"
            )
        if not isinstance(self.value, float) or not math.isfinite(self.value):
            raise ManifestError(f"metric {self.name!r} must be a finite float, not {self.value!r}")


def metrics_from_mapping(metrics: Mapping[str, float]) -> tuple[Metric, ...]:
    """Sorted :class:`Metric` tuple from a name -> value mapping."""
    return tuple(Metric(str(k), float(v)) for k, v in sorted(metrics.items()))


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one update is; immutable and always valid."""

    base_model_id: str
    base_model_cid: CID | None
    parent: CID | None
    layer: str
    domain: str
    round: int
    encoding: Encoding
    metrics: tuple[Metric, ...]
    author: PeerId
    created_ms: int
    config: ContentRef
    tensors: ContentRef
    tensors_raw_size: int
    #: the parent node's version this adapter was trained on (its stack); not a delta base
    base_version: CID | None = None
    #: the author's class prototypes (``protofile.py``); ``None``: it sends none
    prototypes: ContentRef | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise FormatVersionError(
                f"manifest format version {self.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if (
            not isinstance(self.base_model_id, str)
            or not 1 <= len(self.base_model_id) <= MAX_BASE_MODEL_ID
            or not _MODEL_ID_RE.fullmatch(self.base_model_id)
        ):
            raise ManifestError(
                f"base model id {self.base_model_id!r:.80} must be 1-{MAX_BASE_MODEL_ID} "
                "printable ASCII characters without spaces"
            )
        if self.base_model_cid is not None:
            _content_cid(self.base_model_cid, "base model CID")
        if self.parent is not None:
            _content_cid(self.parent, "parent CID")
        if self.base_version is not None:
            _content_cid(self.base_version, "base version CID")
        validate_layer(self.layer)
        validate_domain(self.domain)
        if not isinstance(self.round, int) or not 0 <= self.round <= MAX_ROUND:
            raise ManifestError(f"round {self.round!r} must be a non-negative 63-bit integer")
        if not isinstance(self.encoding, Encoding):
            raise ManifestError(f"encoding {self.encoding!r} is not an Encoding")
        if self.encoding.delta_only and self.parent is None:
            raise ManifestError(f"encoding {self.encoding.value} needs a parent update")
        if self.encoding.full_only and self.parent is not None:
            raise ManifestError(
                f"encoding {self.encoding.value} stores a full adapter: a delta on a parent "
                "is int8-delta"
            )
        if len(self.metrics) > MAX_METRICS:
            raise ManifestError(f"{len(self.metrics)} metrics, over the limit of {MAX_METRICS}")
        names = [m.name for m in self.metrics]
        if names != sorted(set(names)):
            raise ManifestError("metrics must be sorted by name with no duplicates")
        if not isinstance(self.author, PeerId):
            raise ManifestError("author must be a PeerId")
        if not isinstance(self.created_ms, int) or not 0 <= self.created_ms < 2**63:
            raise ManifestError(f"created time {self.created_ms!r} out of range")
        if not isinstance(self.tensors_raw_size, int) or not 0 <= self.tensors_raw_size < 2**63:
            raise ManifestError("tensors_raw_size out of range")
        if self.prototypes is not None and not isinstance(self.prototypes, ContentRef):
            raise ManifestError("prototypes must be a ContentRef")

    @property
    def files(self) -> tuple[CID, ...]:
        """The files this artifact names (not its envelope or lineage): config, payload and,
        where it has them, its prototypes."""
        refs = (self.config, self.tensors, self.prototypes)
        return tuple(r.cid for r in refs if r is not None)

    # convenience -------------------------------------------------------------------------
    @property
    def created(self) -> float:
        """Creation time in Unix seconds."""
        return self.created_ms / 1000.0

    @property
    def metrics_dict(self) -> dict[str, float]:
        return {m.name: m.value for m in self.metrics}

    def to_json(self) -> dict[str, Any]:
        """A JSON-able view (CIDs and peer ids as strings)."""
        return {
            "format_version": self.format_version,
            "base_model_id": self.base_model_id,
            "base_model_cid": str(self.base_model_cid) if self.base_model_cid else None,
            "parent": str(self.parent) if self.parent else None,
            "layer": self.layer,
            "domain": self.domain,
            "round": self.round,
            "encoding": self.encoding.value,
            "metrics": self.metrics_dict,
            "author": str(self.author),
            "created_ms": self.created_ms,
            "config": {"cid": str(self.config.cid), "size": self.config.size},
            "tensors": {"cid": str(self.tensors.cid), "size": self.tensors.size},
            "tensors_raw_size": self.tensors_raw_size,
            "base_version": str(self.base_version) if self.base_version else None,
            "prototypes": None
            if self.prototypes is None
            else {"cid": str(self.prototypes.cid), "size": self.prototypes.size},
        }

    # codec ----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        msg = pb.Manifest(
            format_version=self.format_version,
            base_model_id=self.base_model_id,
            base_model_cid=self.base_model_cid.to_bytes() if self.base_model_cid else b"",
            parent=self.parent.to_bytes() if self.parent else b"",
            layer=self.layer,
            domain=self.domain,
            round=self.round,
            encoding=_TO_PB[self.encoding],
            author=self.author.multihash_bytes,
            created_ms=self.created_ms,
            config=pb.ContentRef(cid=self.config.cid.to_bytes(), size=self.config.size),
            tensors=pb.ContentRef(cid=self.tensors.cid.to_bytes(), size=self.tensors.size),
            tensors_raw_size=self.tensors_raw_size,
            base_version=self.base_version.to_bytes() if self.base_version else b"",
        )
        if self.prototypes is not None:
            msg.prototypes.CopyFrom(
                pb.ContentRef(cid=self.prototypes.cid.to_bytes(), size=self.prototypes.size)
            )
        for m in self.metrics:
            msg.metrics.add(name=m.name, value=m.value)
        data = msg.SerializeToString(deterministic=True)
        if len(data) > MAX_MANIFEST:
            raise ManifestError(f"manifest is {len(data)} bytes, over the limit of {MAX_MANIFEST}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Strict parse: bounded, canonical encoding only, every field validated."""
        if len(data) > MAX_MANIFEST:
            raise ManifestError(f"manifest is {len(data)} bytes, over the limit of {MAX_MANIFEST}")
        msg = _parse(pb.Manifest, data, "manifest")
        newer = len(unknown_fields.UnknownFieldSet(msg)) > 0
        msg.DiscardUnknownFields()
        if msg.format_version != FORMAT_VERSION:
            raise FormatVersionError(
                f"manifest format version {msg.format_version} is not supported "
                f"(this build reads version {FORMAT_VERSION}); upgrade p2phier"
            )
        if msg.SerializeToString(deterministic=True) != bytes(data):
            if newer:
                raise NewerManifestError(
                    "manifest has fields this build does not know (a newer format); upgrade p2phier"
                )
            raise ManifestError(
                "manifest is not canonically encoded (repeated or out-of-order fields)"
            )
        if msg.encoding not in _FROM_PB:
            raise NewerManifestError(
                f"manifest has unknown encoding number {msg.encoding} (a newer format?)"
            )
        if not msg.HasField("config") or not msg.HasField("tensors"):
            raise ManifestError("manifest lacks its config or tensors reference")
        try:
            author = PeerId.from_bytes(msg.author)
        except IdentityError as exc:
            raise ManifestError(f"manifest author is not an Ed25519 peer id: {exc}") from None
        return cls(
            base_model_id=msg.base_model_id,
            base_model_cid=_opt_cid(msg.base_model_cid, "base model CID"),
            parent=_opt_cid(msg.parent, "parent CID"),
            layer=msg.layer,
            domain=msg.domain,
            round=msg.round,
            encoding=_FROM_PB[msg.encoding],
            metrics=tuple(Metric(m.name, float(m.value)) for m in msg.metrics),
            author=author,
            created_ms=msg.created_ms,
            config=ContentRef(_cid(msg.config.cid, "config CID"), msg.config.size),
            tensors=ContentRef(_cid(msg.tensors.cid, "tensors CID"), msg.tensors.size),
            tensors_raw_size=msg.tensors_raw_size,
            base_version=_opt_cid(msg.base_version, "base version CID"),
            prototypes=ContentRef(_cid(msg.prototypes.cid, "prototypes CID"), msg.prototypes.size)
            if msg.HasField("prototypes")
            else None,
            format_version=msg.format_version,
        )


def _parse(cls: Any, data: bytes, what: str) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ManifestError(f"{what} is not a valid protobuf message: {exc}") from None
    return msg


def _parse_canonical(cls: Any, data: bytes, what: str) -> Any:
    msg = _parse(cls, data, what)
    msg.DiscardUnknownFields()
    return msg


def _cid(raw: bytes, what: str) -> CID:
    try:
        return _content_cid(CID.from_bytes(raw), what)
    except CIDError as exc:
        raise ManifestError(f"{what} is malformed: {exc}") from None


def _opt_cid(raw: bytes, what: str) -> CID | None:
    return _cid(raw, what) if raw else None


# --- the signed envelope ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """The stored, announced object: exact manifest bytes, their signature and the signer."""

    manifest_bytes: bytes
    signature: bytes
    signer: bytes  # peer id bytes of the signing key (must be the author's to be accepted)

    def to_bytes(self) -> bytes:
        msg = pb.SignedManifest(
            manifest=self.manifest_bytes, signature=self.signature, signer=self.signer
        )
        return msg.SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int) -> Envelope:
        if len(data) > max_size:
            raise ManifestError(f"envelope is {len(data)} bytes, over the limit of {max_size}")
        msg = _parse_canonical(pb.SignedManifest, data, "envelope")
        if msg.SerializeToString(deterministic=True) != bytes(data):
            raise ManifestError("envelope is not canonically encoded")
        if not msg.manifest:
            raise ManifestError("envelope carries no manifest")
        return cls(bytes(msg.manifest), bytes(msg.signature), bytes(msg.signer))


def sign_manifest(manifest: Manifest, identity: Identity) -> Envelope:
    """Serialise and sign; the identity must be the manifest's author."""
    data = manifest.to_bytes()
    signature = sign_as(
        identity, manifest.author, SIGNING_DOMAIN, data, what="manifest", error=AuthorMismatchError
    )
    return Envelope(data, signature, identity.peer_id.multihash_bytes)


def open_envelope(envelope: Envelope) -> Manifest:
    """Parse the manifest; check the signature over its exact bytes and that the author made it.

    Refusals: no or malformed signature, or one that does not verify under the
    signer's key -> :class:`SignatureError` (e.g. the manifest was changed after
    signing); a valid signature by a key other than the author's ->
    :class:`AuthorMismatchError`.
    """
    manifest = Manifest.from_bytes(envelope.manifest_bytes)
    if not envelope.signature:
        raise SignatureError("manifest is not signed (the envelope has no signature)")
    if not envelope.signer:
        raise SignatureError("envelope does not name the signing key")
    try:
        signer = PeerId.from_bytes(envelope.signer)
    except IdentityError as exc:
        raise SignatureError(f"envelope signer is not an Ed25519 peer id: {exc}") from None
    # The envelope names its signer, so a valid signature by a key other than the
    # author's is told apart from a broken one (AuthorMismatchError below).
    check_signed(
        signer, SIGNING_DOMAIN, envelope.manifest_bytes, envelope.signature, what="manifest"
    )
    if signer != manifest.author:
        raise AuthorMismatchError(
            f"manifest claims author {manifest.author} but was signed by {signer}, "
            "a key that is not the author's"
        )
    return manifest
