from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_FP32: _ClassVar[Encoding]
    ENCODING_FP16: _ClassVar[Encoding]
    ENCODING_INT8_DELTA: _ClassVar[Encoding]
    ENCODING_TOPK_DELTA: _ClassVar[Encoding]
    ENCODING_INT8: _ClassVar[Encoding]

class NodeLayer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_LAYER_UNSPECIFIED: _ClassVar[NodeLayer]
    NODE_LAYER_MASTER: _ClassVar[NodeLayer]
    NODE_LAYER_LANGUAGE: _ClassVar[NodeLayer]
    NODE_LAYER_DOMAIN: _ClassVar[NodeLayer]
    NODE_LAYER_SUBDOMAIN: _ClassVar[NodeLayer]
    NODE_LAYER_DEVICE: _ClassVar[NodeLayer]

class HardwareClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HARDWARE_CLASS_UNSPECIFIED: _ClassVar[HardwareClass]
    HARDWARE_CLASS_GPU: _ClassVar[HardwareClass]
    HARDWARE_CLASS_CPU: _ClassVar[HardwareClass]
    HARDWARE_CLASS_MOBILE: _ClassVar[HardwareClass]
    HARDWARE_CLASS_EMBEDDED: _ClassVar[HardwareClass]
ENCODING_UNSPECIFIED: Encoding
ENCODING_FP32: Encoding
ENCODING_FP16: Encoding
ENCODING_INT8_DELTA: Encoding
ENCODING_TOPK_DELTA: Encoding
ENCODING_INT8: Encoding
NODE_LAYER_UNSPECIFIED: NodeLayer
NODE_LAYER_MASTER: NodeLayer
NODE_LAYER_LANGUAGE: NodeLayer
NODE_LAYER_DOMAIN: NodeLayer
NODE_LAYER_SUBDOMAIN: NodeLayer
NODE_LAYER_DEVICE: NodeLayer
HARDWARE_CLASS_UNSPECIFIED: HardwareClass
HARDWARE_CLASS_GPU: HardwareClass
HARDWARE_CLASS_CPU: HardwareClass
HARDWARE_CLASS_MOBILE: HardwareClass
HARDWARE_CLASS_EMBEDDED: HardwareClass

class ContentRef(_message.Message):
    __slots__ = ("cid", "size")
    CID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    cid: bytes
    size: int
    def __init__(self, cid: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("format_version", "base_model_id", "base_model_cid", "parent", "layer", "domain", "round", "encoding", "metrics", "author", "created_ms", "config", "tensors", "tensors_raw_size", "base_version", "prototypes")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_CID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    base_model_id: str
    base_model_cid: bytes
    parent: bytes
    layer: str
    domain: str
    round: int
    encoding: Encoding
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    author: bytes
    created_ms: int
    config: ContentRef
    tensors: ContentRef
    tensors_raw_size: int
    base_version: bytes
    prototypes: ContentRef
    def __init__(self, format_version: _Optional[int] = ..., base_model_id: _Optional[str] = ..., base_model_cid: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., layer: _Optional[str] = ..., domain: _Optional[str] = ..., round: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., author: _Optional[bytes] = ..., created_ms: _Optional[int] = ..., config: _Optional[_Union[ContentRef, _Mapping]] = ..., tensors: _Optional[_Union[ContentRef, _Mapping]] = ..., tensors_raw_size: _Optional[int] = ..., base_version: _Optional[bytes] = ..., prototypes: _Optional[_Union[ContentRef, _Mapping]] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signature", "signer")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    signer: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer: _Optional[bytes] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("ram_bytes", "max_params", "hardware")
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARAMS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    ram_bytes: int
    max_params: int
    hardware: HardwareClass
    def __init__(self, ram_bytes: _Optional[int] = ..., max_params: _Optional[int] = ..., hardware: _Optional[_Union[HardwareClass, str]] = ...) -> None: ...

class NodeRecord(_message.Message):
    __slots__ = ("format_version", "peer_id", "addrs", "layer", "domain", "base_model_id", "capabilities", "head", "seq", "issued_ms", "expires_ms", "started_ms")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    peer_id: bytes
    addrs: _containers.RepeatedScalarFieldContainer[str]
    layer: NodeLayer
    domain: str
    base_model_id: str
    capabilities: Capabilities
    head: bytes
    seq: int
    issued_ms: int
    expires_ms: int
    started_ms: int
    def __init__(self, format_version: _Optional[int] = ..., peer_id: _Optional[bytes] = ..., addrs: _Optional[_Iterable[str]] = ..., layer: _Optional[_Union[NodeLayer, str]] = ..., domain: _Optional[str] = ..., base_model_id: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., head: _Optional[bytes] = ..., seq: _Optional[int] = ..., issued_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., started_ms: _Optional[int] = ...) -> None: ...

class SignedNodeRecord(_message.Message):
    __slots__ = ("record", "signature")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Announcement(_message.Message):
    __slots__ = ("format_version", "author", "topic", "cid", "parent", "layer", "domain", "base_model_id", "round", "seq", "created_ms", "metrics", "size")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    author: bytes
    topic: str
    cid: bytes
    parent: bytes
    layer: NodeLayer
    domain: str
    base_model_id: str
    round: int
    seq: int
    created_ms: int
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    size: int
    def __init__(self, format_version: _Optional[int] = ..., author: _Optional[bytes] = ..., topic: _Optional[str] = ..., cid: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., layer: _Optional[_Union[NodeLayer, str]] = ..., domain: _Optional[str] = ..., base_model_id: _Optional[str] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., created_ms: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., size: _Optional[int] = ...) -> None: ...

class SignedAnnouncement(_message.Message):
    __slots__ = ("announcement", "signature")
    ANNOUNCEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    announcement: bytes
    signature: bytes
    def __init__(self, announcement: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class TrustOpinion(_message.Message):
    __slots__ = ("subject", "opinion_milli")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    OPINION_MILLI_FIELD_NUMBER: _ClassVar[int]
    subject: bytes
    opinion_milli: int
    def __init__(self, subject: _Optional[bytes] = ..., opinion_milli: _Optional[int] = ...) -> None: ...

class TrustProof(_message.Message):
    __slots__ = ("kind", "signed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    signed: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, kind: _Optional[str] = ..., signed: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TrustReport(_message.Message):
    __slots__ = ("format_version", "reporter", "seq", "issued_ms", "opinions", "proofs")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ISSUED_MS_FIELD_NUMBER: _ClassVar[int]
    OPINIONS_FIELD_NUMBER: _ClassVar[int]
    PROOFS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    reporter: bytes
    seq: int
    issued_ms: int
    opinions: _containers.RepeatedCompositeFieldContainer[TrustOpinion]
    proofs: _containers.RepeatedCompositeFieldContainer[TrustProof]
    def __init__(self, format_version: _Optional[int] = ..., reporter: _Optional[bytes] = ..., seq: _Optional[int] = ..., issued_ms: _Optional[int] = ..., opinions: _Optional[_Iterable[_Union[TrustOpinion, _Mapping]]] = ..., proofs: _Optional[_Iterable[_Union[TrustProof, _Mapping]]] = ...) -> None: ...

class SignedTrustReport(_message.Message):
    __slots__ = ("report", "signature")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    report: bytes
    signature: bytes
    def __init__(self, report: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...
