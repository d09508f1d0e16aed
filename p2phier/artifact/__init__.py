"""Signed adapter-update artifacts: manifests, encodings, bounded zstd, hostile safetensors.

An *artifact* is a PEFT LoRA adapter (or a delta against a parent artifact)
stored as three UnixFS files: the adapter config JSON, a zstd-compressed
safetensors payload, and a signed envelope whose CID is the artifact's CID.

Modules: :mod:`.manifest` (protobuf manifest, envelope, signatures),
:mod:`.encode` (fp32/fp16/int8/top-k), :mod:`.compress` (bounded zstd),
:mod:`.tensors` (safetensors + PEFT checks), :mod:`.pack`, :mod:`.verify`,
:mod:`.materialise`, :mod:`.car` (CARv1 archives), :mod:`.limits`.
Nothing here imports torch, transformers or peft.
"""

from p2phier.artifact.adapter import AdapterConfig, parse_adapter_config
from p2phier.artifact.car import CarFormatError, export_car, import_car, read_car
from p2phier.artifact.compress import compress, decompress, frame_info
from p2phier.artifact.encode import Encoded, Encoding, decode_tensors, encode_tensors
from p2phier.artifact.limits import DEFAULT_LIMITS, Limits
from p2phier.artifact.manifest import (
    FORMAT_VERSION,
    SIGNING_DOMAIN,
    ContentRef,
    Envelope,
    Manifest,
    Metric,
    open_envelope,
    sign_manifest,
    validate_domain,
    validate_layer,
)
from p2phier.artifact.materialise import materialise
from p2phier.artifact.pack import pack_adapter, pack_tensors, pin_artifact, read_adapter_dir
from p2phier.artifact.tensors import parse_safetensors, write_safetensors
from p2phier.artifact.verify import (
    Artifact,
    artifact_files,
    inspect,
    load_tensors,
    read_artifact,
    resolve,
    verify_artifact,
    walk_lineage,
)

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "SIGNING_DOMAIN",
    "AdapterConfig",
    "Artifact",
    "CarFormatError",
    "ContentRef",
    "Encoded",
    "Encoding",
    "Envelope",
    "Limits",
    "Manifest",
    "Metric",
    "artifact_files",
    "compress",
    "decode_tensors",
    "decompress",
    "encode_tensors",
    "export_car",
    "frame_info",
    "import_car",
    "inspect",
    "load_tensors",
    "materialise",
    "open_envelope",
    "pack_adapter",
    "pack_tensors",
    "parse_adapter_config",
    "parse_safetensors",
    "pin_artifact",
    "read_adapter_dir",
    "read_artifact",
    "read_car",
    "resolve",
    "sign_manifest",
    "validate_domain",
    "validate_layer",
    "verify_artifact",
    "walk_lineage",
    "write_safetensors",
]
