"""Resource limits applied to every artifact read from a peer, a file or the store.

Owns :class:`Limits`.  Each limit is checked *before* the memory it guards is
allocated (lengths are read from headers and compared first), and every
buffer is sized by what the signed manifest declares, never by what a frame
or a file turns out to hold.  The promise that follows, measured in
``tests/artifact/test_memory.py`` as a child process's peak RSS:

    verifying, unpacking or importing (CAR) an artifact and its whole lineage
    takes at most :meth:`Limits.peak_memory` bytes beyond the process's own
    (``max_decoded + max_decompressed + max(max_compressed, max_decoded)``:
    the running sum of the chain, plus one update while it is decompressed
    and decoded), whatever the artifact.

A CAR archive is indexed, not loaded: its blocks are read from the file when
verification asks for them, so the archive's size does not count.  Time is
bounded by the limits too (at most ``max_chain`` updates of at most
``max_decoded`` bytes each) but is not otherwise capped.

The defaults fit LoRA adapters of models up to a few billion parameters with
room to spare; callers that need more pass their own :class:`Limits`.
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
    #: blocks in a CAR archive (its index is held in memory; an exported artifact
    #: at the size limits has a few thousand)
    max_car_blocks: int = 65_536

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"limit {name} must be a positive integer, not {value!r}")
        if not 10 <= self.max_window_log <= 31:
            raise UsageError("max_window_log must lie between 10 and 31")

    def peak_memory(self) -> int:
        """The most memory (bytes) verifying, unpacking or importing one artifact may take."""
        return self.max_decoded + self.max_decompressed + max(self.max_compressed, self.max_decoded)


DEFAULT_LIMITS = Limits()
