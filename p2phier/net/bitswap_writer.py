"""The Bitswap driver's store writer: received blocks into the store, in batches.

Owns :class:`StoreWriter`, the one task that puts blocks fetched over Bitswap
into the node's :class:`~p2phier.store.ContentStore`.  Each batch costs the
store one durability step (file-system syncs), so blocks are gathered up to
``store_batch_bytes`` while they keep coming, and written in a worker thread.

A block handed to the writer is the fetch's responsibility until it is
written: :meth:`StoreWriter.reserve` counts it in ``Fetch.pending_puts`` (a
message's blocks at once) and :meth:`StoreWriter.drain` waits for them, so a
fetch that ends (complete, failed or timed out) returns only once every block
it received is in the store.  A later fetch then resumes from them instead of
fetching them again (a timed-out fetch used to return while its blocks were
still queued here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from p2phier.cid import CID
from p2phier.errors import StoreError
from p2phier.store import ContentStore

from .bitswap_state import BitswapConfig, Fetch, Put

logger = logging.getLogger(__name__)

#: ``on_stored(cids, batch)``: called (on the event loop) after each written batch
OnStored = Callable[[list[CID], list[Put]], Awaitable[None]]


class StoreWriter:
    """Writes received blocks to ``store``; run :meth:`run` in a nursery."""

    def __init__(self, store: ContentStore, config: BitswapConfig, on_stored: OnStored) -> None:
        self.store = store
        self.config = config
        self._on_stored = on_stored
        self._send, self._recv = trio.open_memory_channel[Put](config.store_queue)

    @staticmethod
    def reserve(fetch: Fetch, count: int) -> int:
        """Count ``count`` blocks of ``fetch`` as pending before they are queued; returns
        ``count``.  Each is then :meth:`put`, or given back with :meth:`release`.

        A message's blocks are reserved together, before the first ``await``: the
        session may complete in another message's task while some of them still
        wait for room in the queue, and the fetch must wait for those too (counted
        one by one, the count could reach zero in between and the fetch pin an
        incomplete DAG).
        """
        if count:
            fetch.pending_puts += count
            # A new event only when the last one fired: a task waiting on an unfired
            # one must be woken by it (replacing it stranded the fetch loop).
            if fetch.flushed.is_set():
                fetch.flushed = trio.Event()
        return count

    @staticmethod
    def release(fetch: Fetch, count: int) -> None:
        """``count`` reserved blocks will not be put (their task was cancelled)."""
        if count:
            fetch.pending_puts -= count
            if not fetch.pending_puts:
                fetch.flushed.set()

    async def put(self, fetch: Fetch, cid: CID, data: bytes) -> None:
        """Queue one verified block of ``fetch``, reserved with :meth:`reserve`
        (waits while the queue is full)."""
        try:
            await self._send.send(Put(cid, data, fetch))
        except BaseException:  # cancelled while the queue was full: this one is not stored
            self._done(fetch)
            raise

    async def drain(self, fetch: Fetch, timeout: float) -> bool:
        """Wait (shielded, at most ``timeout``) until every block ``fetch`` queued is
        written or refused; False if the store is still busy with some."""
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            while fetch.pending_puts:
                await fetch.flushed.wait()
        if fetch.pending_puts:
            logger.warning(
                "bitswap: %d received blocks still wait for the store after %.0fs",
                fetch.pending_puts,
                timeout,
            )
        return not fetch.pending_puts

    @staticmethod
    def _done(fetch: Fetch) -> None:
        fetch.pending_puts -= 1
        if not fetch.pending_puts:
            fetch.flushed.set()

    async def run(self) -> None:
        """Puts received blocks in the store, in a worker thread, a batch at a time.

        A batch is filled up to ``store_batch_bytes`` while blocks keep coming:
        the writer waits up to ``store_batch_wait`` for the next one, but not when
        every fetch in the batch has received all its blocks (none is coming).
        """
        cfg = self.config
        batch: list[Put] = []
        try:
            while True:
                batch = [await self._recv.receive()]
                size = len(batch[0].data)
                deadline = trio.current_time() + cfg.store_batch_wait
                while len(batch) < cfg.store_queue and size < cfg.store_batch_bytes:
                    try:
                        put = self._recv.receive_nowait()
                    except trio.WouldBlock:
                        if all(p.fetch.session.done for p in batch):
                            break
                        got: Put | None = None
                        with trio.move_on_at(deadline):
                            got = await self._recv.receive()
                        if got is None:
                            break
                        put = got
                    batch.append(put)
                    size += len(put.data)
                results = await trio.to_thread.run_sync(self._put_batch, batch)
                stored: list[CID] = []
                for put, error in zip(batch, results, strict=True):
                    if error is not None:
                        put.fetch.error = error
                        put.fetch.wake.set()
                    else:
                        stored.append(put.cid)
                    self._done(put.fetch)
                written, batch = batch, []
                if stored:
                    await self._on_stored(stored, written)
        finally:
            # Stopping (the Bitswap closes): nothing waits for blocks never written.
            for put in batch:
                self._done(put.fetch)
            while True:
                try:
                    self._done(self._recv.receive_nowait().fetch)
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break

    def _put_batch(self, batch: list[Put]) -> list[StoreError | None]:
        """In a worker thread: store a batch with one durability step (``put_blocks``);
        if the store refuses one, retry them singly to know which fetch failed."""
        try:
            # each block was hashed against its CID on arrival (``Bitswap._prepare``)
            self.store.put_blocks([(put.cid, put.data) for put in batch], verified=True)
            return [None] * len(batch)
        except StoreError as exc:
            logger.debug("bitswap: batch put failed (%s); storing blocks one by one", exc)
        results: list[StoreError | None] = []
        for put in batch:
            try:
                self.store.put_block(put.cid, put.data)
            except StoreError as exc:
                logger.error("bitswap: cannot store block %s: %s", put.cid, exc)
                results.append(exc)
            else:
                results.append(None)
        return results
