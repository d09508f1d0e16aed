"""In-memory content store: blocks in a dict, pins and metadata in SQLite ``:memory:``.

For tests, simulations and short-lived tools.  It honours every rule of
:class:`~p2phier.store.base.ContentStore` (size limits, hash checks, re-hash
on read, pins, GC) so the same conformance suite runs against it and
:class:`~p2phier.store.disk.DiskStore`.  Nothing survives ``close()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from p2phier.cid import CID
from p2phier.errors import BlockNotFoundError, CorruptBlockError
from p2phier.store.base import MAX_BLOCK_SIZE, ContentStore
from p2phier.store.index import Index


class MemoryStore(ContentStore):
    """A :class:`ContentStore` held entirely in this process's memory."""

    def __init__(
        self,
        *,
        max_block_size: int = MAX_BLOCK_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(Index(":memory:"), max_block_size=max_block_size, clock=clock)
        self._blocks: dict[CID, bytes] = {}
        self.quarantined: dict[CID, bytes] = {}
        """Corrupt blocks moved out of the store, kept for inspection."""

    def _store(self, key: CID, data: bytes) -> bool:
        if key in self._blocks:
            return False
        self._blocks[key] = data
        return True

    def _load(self, key: CID) -> bytes:
        try:
            data = self._blocks[key]
        except KeyError:
            raise BlockNotFoundError(f"block {key} is not in the store") from None
        if len(data) > self.max_block_size:
            raise CorruptBlockError(
                f"stored block {key} is {len(data)} bytes, over the {self.max_block_size}-byte "
                "limit, so it cannot be valid"
            )
        return data

    def _contains(self, key: CID) -> bool:
        return key in self._blocks

    def _size(self, key: CID) -> int:
        try:
            return len(self._blocks[key])
        except KeyError:
            raise BlockNotFoundError(f"block {key} is not in the store") from None

    def _remove(self, key: CID) -> bool:
        return self._blocks.pop(key, None) is not None

    def _keys(self) -> Iterator[CID]:
        return iter(list(self._blocks))

    def _quarantine(self, key: CID) -> None:
        data = self._blocks.pop(key, None)
        if data is not None:
            self.quarantined[key] = data
