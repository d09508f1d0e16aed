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
ENCODING_UNSPECIFIED: Encoding
ENCODING_FP32: Encoding
ENCODING_FP16: Encoding
ENCODING_INT8_DELTA: Encoding
ENCODING_TOPK_DELTA: Encoding

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
    __slots__ = ("format_version", "base_model_id", "base_model_cid", "parent", "layer", "domain", "round", "encoding", "metrics", "author", "created_ms", "config", "tensors", "tensors_raw_size")
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
    def __init__(self, format_version: _Optional[int] = ..., base_model_id: _Optional[str] = ..., base_model_cid: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., layer: _Optional[str] = ..., domain: _Optional[str] = ..., round: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., author: _Optional[bytes] = ..., created_ms: _Optional[int] = ..., config: _Optional[_Union[ContentRef, _Mapping]] = ..., tensors: _Optional[_Union[ContentRef, _Mapping]] = ..., tensors_raw_size: _Optional[int] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signature", "signer")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    signer: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer: _Optional[bytes] = ...) -> None: ...
