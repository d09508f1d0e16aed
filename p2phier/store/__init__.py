"""The content-addressed store: blocks, UnixFS objects, pins, GC and a metadata index.

One interface, :class:`ContentStore` (``base.py``), with two implementations:
:class:`MemoryStore` (tests, simulations) and :class:`DiskStore` (a node's
repository).  Both share every DAG-level operation and pass one conformance
suite (``tests/store/``).
"""

from p2phier.store.base import (
    MAX_BLOCK_SIZE,
    ContentStore,
    MetaSpec,
    NotPinnedError,
    ObjectTooLargeError,
    UnprovenPinsError,
    UnreadablePinError,
    block_key,
)
from p2phier.store.disk import DiskStore
from p2phier.store.index import (
    PIN_DIRECT,
    PIN_RECURSIVE,
    SCHEMA_VERSION,
    IndexSchemaError,
    InvalidMetaError,
    ObjectMeta,
)
from p2phier.store.memory import MemoryStore

__all__ = [
    "MAX_BLOCK_SIZE",
    "PIN_DIRECT",
    "PIN_RECURSIVE",
    "SCHEMA_VERSION",
    "ContentStore",
    "DiskStore",
    "IndexSchemaError",
    "InvalidMetaError",
    "MemoryStore",
    "MetaSpec",
    "NotPinnedError",
    "ObjectMeta",
    "ObjectTooLargeError",
    "UnprovenPinsError",
    "UnreadablePinError",
    "block_key",
]
