"""Resource limits applied to every artifact read from a peer, a file or the store.

Owns :class:`Limits`.  Each limit is checked *before* the memory it guards is
allocated (lengths are read from headers and compared first), so a hostile
artifact costs at most these amounts.  The defaults fit LoRA adapters of
models up to a few billion parameters with room to spare; callers that need
more pass their own :class:`Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2phier.errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for one artifact (and its lineage)."""

    #: the signed envelope (manifest + signature) as stored
    max_envelope: int = 64 * KiB
    #: adapter_config.json
    max_config: int = 64 * KiB
    #: the zstd-compressed tensor payload as stored
    max_compressed: int = 256 * MiB
    #: the decompressed safetensors payload
    max_decompressed: int = 256 * MiB
    #: all tensors of one artifact once decoded to float32
    max_decoded: int = 1 * GiB
    #: the JSON header of a safetensors file
    max_header: int = 1 * MiB
    #: tensors in one safetensors file
    max_tensors: int = 10_000
    #: artifacts in one lineage (the artifact itself and its ancestors)
    max_chain: int = 64
    #: largest zstd window accepted (2**23 = 8 MiB; zstd level 3 uses at most 2**21)
    max_window_log: int = 23
    #: a CAR archive on import
    max_car: int = 1 * GiB

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"limit {name} must be a positive integer, not {value!r}")
        if not 10 <= self.max_window_log <= 31:
            raise UsageError("max_window_log must lie between 10 and 31")


DEFAULT_LIMITS = Limits()
