"""The ``ContentStore`` interface and every DAG-level operation on top of it.

A store keeps blocks exactly as given, each named by the CID of its bytes.  An
implementation provides only a small private block layer (``_store``,
``_load``, ``_contains``, ``_size``, ``_remove``, ``_keys``, ``_quarantine``);
this module owns everything above it, once, for every implementation:

* the public block API with its checks (size limit before hashing, hash before
  storing, re-hash before returning, corrupt blocks moved aside, never returned);
* objects: UnixFS files added from bytes, streams or paths (bounded memory),
  read back, exported atomically, checked for completeness;
* pins (recursive / direct), garbage collection and verification;
* object metadata in the SQLite index (:mod:`p2phier.store.index`).

Blocks are keyed by their CIDv1: a CIDv0 and the CIDv1 with the same multihash
name the same bytes.  Identity-hash CIDs carry their bytes inline and are never
stored.

Concurrency: ingests (adds, ``put_block``, ``pin``, ``ingest()``) take the
*shared* side of a lock, GC and ``delete_block`` the *exclusive* side, so GC
never removes the blocks of an ingest in progress.  Implementations shared by
several processes extend the lock across processes (``_os_lock``).

Batched durability: blocks put while the calling thread is inside an ingest
(``add_*``, ``put_blocks``, ``put_block`` within ``with store.ingest():``) go
through ``_stage``; an implementation may defer their durability until
``_commit_staged``, which this module calls before any pin or index row can
name them (``pin``, ``record``, the end of an add) and when the outermost
ingest of a thread ends -- also when it ends with an exception, so a block a
put accepted is kept.  A lone ``put_block`` is durable when it returns.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from p2phier.cid import CID, DAG_PB, IDENTITY
from p2phier.errors import (
    BlockNotFoundError,
    BlockTooLargeError,
    CorruptBlockError,
    HashMismatchError,
    PinnedError,
    StoreError,
    StoreIOError,
    UnixFSError,
    UsageError,
)
from p2phier.fsutil import fsync_dir as fsync_dir  # noqa: PLC0414 - re-exported for artifact.car
from p2phier.fsutil import write_atomic
from p2phier.store.gclock import GcLock
from p2phier.store.index import (
    PIN_DIRECT,
    PIN_RECURSIVE,
    Index,
    ObjectMeta,
)
from p2phier.unixfs import (
    CHUNK_SIZE,
    FileDagBuilder,
    FileTooLargeError,
    check_file_dag,
    child_links,
    file_size,
    read_file,
)

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 1 << 20
"""Blocks larger than this (1 MiB) are refused before they are hashed or stored."""


class NotPinnedError(StoreError, ValueError):
    """``unpin`` of a CID that has no pin of its own."""


class UnreadablePinError(StoreError):
    """A node of a pinned DAG is missing or corrupt, so its children are unknown.

    GC and ``delete_block`` refuse to run rather than risk deleting pinned data.
    """


class UnprovenPinsError(StoreError):
    """The store cannot prove which blocks are pinned (its index was lost and no pin
    journal survives), so GC refuses to delete anything."""


class ObjectTooLargeError(StoreError, ValueError):
    """An object exceeds the size the caller allowed."""


@dataclass(frozen=True, slots=True)
class MetaSpec:
    """Metadata given when adding an object (the store fills cid, size, created)."""

    kind: str = "file"
    layer: str | None = None
    domain: str | None = None
    author: str | None = None
    parent: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        self.to_meta(CID.raw(b""), 0, 0.0)  # validate now, before any block is written

    def to_meta(self, cid: CID, size: int, created: float) -> ObjectMeta:
        return ObjectMeta(
            cid=cid,
            kind=self.kind,
            size=size,
            created=created,
            layer=self.layer,
            domain=self.domain,
            author=self.author,
            parent=self.parent,
            name=self.name,
        )


def ensure_free_space(directory: str | os.PathLike[str], size: int, what: str) -> None:
    """Refuse (StoreIOError) to write ``size`` bytes of ``what`` into ``directory`` when its
    file system has less free space; called before anything is written."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise StoreIOError(
            f"cannot check free space at {directory}: {exc.strerror or exc}"
        ) from exc
    if size > free:
        raise StoreIOError(
            f"{what} declares {size} bytes, but only {free} are free at {directory}; "
            "nothing was written"
        )


def block_key(cid: CID | str) -> CID:
    """Parse ``cid`` (a CID or its string) and return the CIDv1 blocks are keyed by."""
    parsed = CID.parse(cid)
    return parsed.to_v1() if parsed.version == 0 else parsed


class ContentStore(ABC):
    """A content-addressed block store with UnixFS objects, pins, GC and an index."""

    def __init__(
        self,
        index: Index,
        *,
        max_block_size: int = MAX_BLOCK_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._index = index
        self.max_block_size = max_block_size
        self._clock = clock
        self._gc_lock = GcLock(self._os_lock)
        self._ingests = threading.local()  # .depth: this thread's nesting of ingest()
        self._closed = False
        #: called (in the pinning thread, no pin or GC in between) after every pin made
        #: through this store object, with True when the CID had no pin of its own before:
        #: how a node tells the pins it made from those the operator made (another process)
        self.pin_observer: Callable[[CID, bool], None] | None = None

    # --- the block layer an implementation provides ----------------------------------------------
    @abstractmethod
    def _store(self, key: CID, data: bytes) -> bool:
        """Durably store verified ``data`` under ``key``; False if it was already there."""

    @abstractmethod
    def _load(self, key: CID) -> bytes:
        """Raw stored bytes, never more than ``max_block_size + 1`` read.

        Raises BlockNotFoundError, or CorruptBlockError when the stored entry cannot
        be a valid block (too large, not a regular file) -- decided before reading it.
        """

    def _stage(self, key: CID, data: bytes) -> bool:
        """Store a block put during an ingest; False if it was already there.

        May defer durability (and visibility to other store objects) until
        :meth:`_commit_staged`, but must be readable through ``_load``,
        ``_contains`` and ``_size`` at once.  The default stores it durably now.
        """
        return self._store(key, data)

    def _commit_staged(self) -> None:
        """Make every staged block durable and visible (called before anything names them)."""
        return None

    @abstractmethod
    def _contains(self, key: CID) -> bool: ...

    @abstractmethod
    def _size(self, key: CID) -> int: ...

    @abstractmethod
    def _remove(self, key: CID) -> bool:
        """Delete a block; False if it was not there."""

    @abstractmethod
    def _keys(self) -> Iterator[CID]: ...

    @abstractmethod
    def _quarantine(self, key: CID) -> None:
        """Move a corrupt block out of the store (kept for inspection, no longer served)."""

    def _os_lock(self, mode: str) -> None:
        """Mirror the GC lock for other processes (no-op for a single-process store)."""
        return None

    def _cleanup_temp(self) -> None:
        """Remove leftovers of interrupted writes (called while GC holds the lock)."""
        return None

    def _close_blocks(self) -> None:
        """Release the block layer's resources."""
        return None

    # --- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._index.close()
            finally:
                self._close_blocks()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _key(self, cid: CID | str) -> CID:
        if self._closed:
            raise StoreError("the store is closed")
        return block_key(cid)

    @contextmanager
    def ingest(self) -> Iterator[None]:
        """Hold while fetching an object block by block: GC waits until it ends.

        Blocks put inside are made durable together: at the latest when the
        outermost ingest of this thread ends (normally or by an exception), and
        always before a pin or metadata row names them.
        """
        with self._gc_lock.shared():
            depth = int(getattr(self._ingests, "depth", 0))
            self._ingests.depth = depth + 1
            try:
                yield
            except BaseException:
                self._ingests.depth = depth
                if depth == 0 and not self._closed:
                    try:  # already failing: keep the original error, never mask it
                        self._commit_staged()
                    except StoreError as exc:
                        log.error("could not make the blocks of a failed ingest durable: %s", exc)
                raise
            self._ingests.depth = depth
            if depth == 0 and not self._closed:
                self._commit_staged()

    def _in_ingest(self) -> bool:
        return bool(getattr(self._ingests, "depth", 0))

    # --- blocks ----------------------------------------------------------------------------------
    def put_block(self, cid: CID | str, data: bytes) -> bool:
        """Store ``data`` as the block ``cid``; True if it was new.

        The size limit is checked before the bytes are hashed, the hash before
        anything is written.
        """
        return self._put_checked(self._key(cid), data, verify=True)

    def _put_checked(self, key: CID, data: bytes, *, verify: bool) -> bool:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UsageError(f"block data must be bytes, not {type(data).__name__}")
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > self.max_block_size:
            raise BlockTooLargeError(
                f"block {key} is {size} bytes; blocks larger than {self.max_block_size} "
                "bytes are refused"
            )
        if verify and not key.verify(data):
            raise HashMismatchError(
                f"the bytes given for block {key} do not hash to it (they hash to "
                f"{CID.raw(data).multihash.digest.hex()[:16]}...); refused"
            )
        if key.multihash.code == IDENTITY:
            return False  # inline: the CID is the data
        with self._gc_lock.shared():
            if self._in_ingest():
                return self._stage(key, bytes(data))
            return self._store(key, bytes(data))

    def put_blocks(
        self, blocks: Iterable[tuple[CID | str, bytes]], *, verified: bool = False
    ) -> list[bool]:
        """Store many blocks (each checked as by :meth:`put_block`) with one durability step.

        All are durable when this returns; which were new, in order.  If one is
        refused, the blocks before it are still kept and the error is raised.
        ``verified=True`` is for a caller that has itself just hashed each block's
        exact (immutable) bytes against its CID -- the Bitswap driver does before it
        accepts a block -- and skips the store's second hash; sizes are still checked.
        """
        with self.ingest():
            return [
                self._put_checked(self._key(cid), data, verify=not verified) for cid, data in blocks
            ]

    def get_block(self, cid: CID | str) -> bytes:
        """The block's bytes, re-hashed first; a corrupt block is quarantined and never returned."""
        key = self._key(cid)
        if key.multihash.code == IDENTITY:
            return key.multihash.digest
        try:
            data = self._load(key)
            if key.verify(data):
                return data
            problem = f"stored block {key} no longer matches its hash"
        except CorruptBlockError as exc:
            problem = str(exc)
        self._quarantine(key)
        log.warning("%s; moved to quarantine", problem)
        raise CorruptBlockError(
            f"{problem} (corruption at rest); it was moved to quarantine: fetch it again"
        )

    def has_block(self, cid: CID | str) -> bool:
        key = self._key(cid)
        return key.multihash.code == IDENTITY or self._contains(key)

    def block_size(self, cid: CID | str) -> int:
        key = self._key(cid)
        if key.multihash.code == IDENTITY:
            return len(key.multihash.digest)
        return self._size(key)

    def delete_block(self, cid: CID | str) -> None:
        """Remove one block; refused (PinnedError) if any pin protects it.

        Low level: metadata of an unpinned object whose child is deleted stays
        until GC removes the rest of it.
        """
        key = self._key(cid)
        with self._gc_lock.exclusive():
            unproven = self._pins_unproven()
            if unproven is not None:
                raise UnprovenPinsError(f"block {key} not deleted: {unproven}")
            if key in self._live_set(strict=True):
                raise PinnedError(
                    f"block {key} is pinned (directly or by a recursive pin); unpin first"
                )
            if not self._contains(key):
                raise BlockNotFoundError(f"block {key} is not in the store")
            self._index.forget([key])
            self._remove(key)

    def iter_block_cids(self) -> Iterator[CID]:
        if self._closed:
            raise StoreError("the store is closed")
        return self._keys()

    # --- objects ---------------------------------------------------------------------------------
    def add_bytes(self, data: bytes, meta: MetaSpec | None = None, pin: bool = True) -> CID:
        """Add ``data`` as a UnixFS file (CIDv1, raw leaves, 256 KiB chunks); return its root."""
        view = memoryview(data)
        chunks = (bytes(view[off : off + CHUNK_SIZE]) for off in range(0, len(view), CHUNK_SIZE))
        return self._add_chunks(chunks, meta, pin, None)

    def add_stream(
        self,
        stream: BinaryIO,
        meta: MetaSpec | None = None,
        pin: bool = True,
        *,
        max_size: int | None = None,
    ) -> CID:
        """Add everything ``stream`` yields, holding at most about one chunk in memory."""

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    chunk = stream.read(CHUNK_SIZE)
                except OSError as exc:
                    raise StoreIOError(f"cannot read the input stream: {exc}") from exc
                if chunk is None:
                    raise UsageError("add_stream needs a blocking stream (read() returned None)")
                if not chunk:
                    return
                yield chunk

        return self._add_chunks(chunks(), meta, pin, max_size)

    def add_file(
        self,
        path: str | os.PathLike[str],
        meta: MetaSpec | None = None,
        pin: bool = True,
        *,
        max_size: int | None = None,
    ) -> CID:
        """Add a file from disk (streamed); the default metadata names it by its base name."""
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below, errors mapped first
        except OSError as exc:
            raise StoreIOError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if meta is None:
            meta = MetaSpec(name=Path(path).name[:1024] or None)
        with stream:
            return self.add_stream(stream, meta, pin, max_size=max_size)

    def _add_chunks(
        self, chunks: Iterable[bytes], meta: MetaSpec | None, pin: bool, max_size: int | None
    ) -> CID:
        if self._closed:
            raise StoreError("the store is closed")
        builder = FileDagBuilder()
        total = 0
        with self.ingest():
            for chunk in chunks:
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise ObjectTooLargeError(
                        f"the input is larger than the allowed {max_size} bytes; nothing was pinned"
                    )
                self._put_own(builder.write(chunk))
            root, rest = builder.finish()
            self._put_own(rest)
            # Blocks are durable before any index row names them (crash safety).
            self._commit_staged()
            if pin:
                self._set_pin(root, PIN_RECURSIVE)
            existing = self._index.get(root)
            if meta is not None:
                created = existing.created if existing is not None else self._clock()
                self._index.record(meta.to_meta(root, total, created))
            elif existing is None:
                self._index.record(MetaSpec().to_meta(root, total, self._clock()))
        return root

    def _put_own(self, blocks: Iterable[tuple[CID, bytes]]) -> None:
        for cid, block in blocks:
            # Built here from the bytes just hashed: only the size is re-checked.
            if len(block) > self.max_block_size:
                raise BlockTooLargeError(f"the DAG builder made a {len(block)}-byte block")
            self._stage(block_key(cid), block)

    def cat(self, root: CID | str, max_size: int | None = None) -> Iterator[bytes]:
        """Stream a file's content; every block is re-hashed and the DAG structure checked.

        Refused before anything is produced (ObjectTooLargeError) when the file
        declares more than ``max_size`` bytes, and (UnixFSError) when its DAG
        reuses small blocks to declare far more than it holds.
        """
        key = self._key(root)
        try:
            yield from read_file(key, self.get_block, max_size=max_size)
        except FileTooLargeError as exc:
            raise ObjectTooLargeError(str(exc)) from exc

    def get_bytes(self, root: CID | str, max_size: int | None = None) -> bytes:
        """A whole file in memory, refused (ObjectTooLargeError) beyond ``max_size`` bytes."""
        key = self._key(root)
        out = bytearray()
        try:
            for piece in read_file(key, self.get_block, max_size=max_size):
                out += piece
                if max_size is not None and len(out) > max_size:  # root's claim is checked too
                    raise ObjectTooLargeError(f"object {key} is larger than {max_size} bytes")
        except FileTooLargeError as exc:
            raise ObjectTooLargeError(str(exc)) from exc
        return bytes(out)

    def export_file(
        self, root: CID | str, path: str | os.PathLike[str], max_size: int | None = None
    ) -> None:
        """Write a file's content to ``path`` atomically (temp file, fsync, rename, fsync dir).

        Checked before anything is written: every block present, the declared size
        within ``max_size`` and within the free space where ``path`` goes, the DAG
        not one that reuses small blocks to declare far more than it holds.
        """
        key = self._key(root)
        missing = self.missing_blocks(key)
        if missing:
            raise BlockNotFoundError(
                f"cannot export {key}: {len(missing)} block(s) missing (first {missing[0]})"
            )
        dest = Path(path)
        size = file_size(key, self.get_block)
        if max_size is not None and size > max_size:
            raise ObjectTooLargeError(
                f"object {key} declares {size} bytes, over the limit of {max_size} "
                "(store.max_object_size)"
            )
        ensure_free_space(dest.parent, size, f"object {key}")
        try:
            write_atomic(dest, self.cat(key), 0o666)  # the umask applies, as for open()
        except OSError as exc:
            raise StoreIOError(f"cannot write {dest}: {exc.strerror or exc}") from exc

    def missing_blocks(self, root: CID | str) -> list[CID]:
        """Blocks of ``root``'s DAG that are absent (or corrupt), in DAG order.

        Children of an absent node are unknown until it is fetched, so a fetcher
        calls this again after each round.
        """
        missing: list[CID] = []
        seen: set[CID] = set()
        stack = [self._key(root)]
        while stack:
            cid = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            if cid.codec != DAG_PB:
                if not self.has_block(cid):
                    missing.append(cid)
                continue
            try:
                block = self.get_block(cid)
            except (BlockNotFoundError, CorruptBlockError):
                missing.append(cid)
                continue
            stack.extend(block_key(c) for c in reversed(child_links(cid, block)))
        return missing

    def has_object(self, root: CID | str) -> bool:
        """True when every block of ``root``'s DAG is present."""
        return not self.missing_blocks(root)

    # --- pins and GC -----------------------------------------------------------------------------
    def pin(self, root: CID | str, recursive: bool = True, *, max_size: int | None = None) -> None:
        """Protect ``root`` (and, if recursive, its whole DAG) from GC.

        Only a UnixFS file that a reader would read out is pinned; anything else is
        refused before the pin is recorded (nothing stored changes):

        * recursive (the default): every block must be present (BlockNotFoundError),
          and the DAG must pass :func:`~p2phier.unixfs.check_file_dag`, the checks
          ``cat`` and ``get`` apply, without reading the file out (a raw leaf's size
          is its stored size): File/Raw nodes only, each node's sizes agreeing with
          its children's, no path deeper than ``MAX_DEPTH``, the read cost bound
          (DagAmplificationError; both UnixFSError), and the declared size within
          ``max_size`` (ObjectTooLargeError).
        * direct (``recursive=False``): protects the root block alone, so only that
          block must be present and is checked: a raw block, or a UnixFS File/Raw
          node whose ``filesize`` equals its data plus blocksizes, declaring at most
          ``max_size`` bytes.  Its children need not be present and are not checked
          (a recursive pin or a read checks them).
        """
        key = self._key(root)
        with self._gc_lock.shared():
            self._commit_staged()  # a pin only ever names durable blocks
            if recursive:
                missing = self.missing_blocks(key)
                if missing:
                    raise BlockNotFoundError(
                        f"cannot pin {key}: {len(missing)} block(s) missing (first {missing[0]}); "
                        "fetch the object first"
                    )
            elif not self.has_block(key):
                raise BlockNotFoundError(f"cannot pin {key}: the block is not in the store")
            try:
                if recursive:
                    check_file_dag(
                        key, self.get_block, max_size=max_size, leaf_size=self.block_size
                    )
                else:
                    size = file_size(key, self.get_block)
                    if max_size is not None and size > max_size:
                        raise FileTooLargeError(
                            f"file {key} is {size} bytes, over the limit of {max_size}"
                        )
            except FileTooLargeError as exc:
                raise ObjectTooLargeError(
                    f"cannot pin {key}: {exc} (store.max_object_size); nothing was pinned"
                ) from exc
            except UnixFSError as exc:  # the same class (DagAmplificationError...), named
                raise type(exc)(f"cannot pin {key}: {exc}; nothing was pinned") from exc
            self._set_pin(key, PIN_RECURSIVE if recursive else PIN_DIRECT)

    def _set_pin(self, key: CID, mode: str) -> None:
        # Always inside the shared side of the GC lock (pin, adds): release_pins cannot
        # run between the pin and the observer's call.
        new = self._index.pin_mode(key) is None
        # The journal first: after a crash in between, a pin is kept, never lost.
        self._journal_pin(key, mode)
        self._index.set_pin(key, mode)
        if self.pin_observer is not None:
            self.pin_observer(key, new)

    def unpin(self, root: CID | str) -> None:
        key = self._key(root)
        # The index first: after a crash in between, the journal brings the pin back
        # (an unpin may have to be repeated; nothing pinned is ever collected).
        removed = self._index.remove_pin(key)
        self._journal_unpin(key)
        if not removed:
            raise NotPinnedError(f"{key} is not pinned (blocks pinned only through a parent stay)")

    def release_pins(
        self, roots: Iterable[CID | str], *, keep: Callable[[CID], bool] = lambda _: False
    ) -> list[CID]:
        """Unpin each of ``roots`` that has a pin of its own, except those ``keep`` names;
        return the CIDs unpinned.

        Runs on the exclusive side of the GC lock: no pin is made while it decides and
        unpins, so ``keep`` sees every pin made before (through :attr:`pin_observer`)
        and a pin made after finds the CID unpinned (a new pin).  A CID without a pin
        of its own is skipped, never an error.
        """
        keys = [self._key(r) for r in roots]
        done: list[CID] = []
        with self._gc_lock.exclusive():
            for key in keys:
                if self._index.pin_mode(key) is None or keep(key):
                    continue
                self._index.remove_pin(key)
                self._journal_unpin(key)
                done.append(key)
        return done

    # --- the pin journal (a store that keeps pins apart from its index overrides these) ---
    def _journal_pin(self, key: CID, mode: str) -> None:  # noqa: B027 - optional hook
        """Record a pin durably outside the index (before the index row)."""

    def _journal_unpin(self, key: CID) -> None:  # noqa: B027 - optional hook
        """Remove a pin's journal entry (after the index row)."""

    def _pins_unproven(self) -> str | None:
        """Why this store cannot prove which blocks are pinned (then GC refuses), or None."""
        return None

    def pins(self) -> dict[CID, str]:
        """Explicit pins: CID -> ``"recursive"`` or ``"direct"``."""
        if self._closed:
            raise StoreError("the store is closed")
        return {block_key(c): mode for c, mode in self._index.pins().items()}

    def is_pinned(self, cid: CID | str) -> bool:
        """True when a pin protects ``cid``: its own, or a recursive pin of an ancestor."""
        key = self._key(cid)
        if self._index.pin_mode(key) is not None:
            return True
        return key in self._live_set(strict=False)

    def _live_set(self, *, strict: bool) -> set[CID]:
        """Every CID a pin protects.  ``strict``: raise if a pinned node cannot be walked."""
        live: set[CID] = set()
        for root, mode in self.pins().items():
            if mode == PIN_DIRECT:
                live.add(root)
                continue
            stack = [root]
            while stack:
                cid = stack.pop()
                if cid in live:
                    continue
                live.add(cid)
                if cid.codec != DAG_PB:
                    continue
                try:
                    children = child_links(cid, self.get_block(cid))
                except (BlockNotFoundError, CorruptBlockError, UnixFSError) as exc:
                    if strict:
                        raise UnreadablePinError(
                            f"pinned object {root} cannot be walked: node {cid} is missing or "
                            f"corrupt ({exc}); nothing was deleted. Fetch it again or unpin {root}"
                        ) from exc
                    continue
                stack.extend(block_key(c) for c in children)
        return live

    def gc(self) -> list[CID]:
        """Remove every block no pin protects; return the removed CIDs.

        Waits for ingests in progress; refuses (UnreadablePinError) to delete
        anything when a pinned DAG cannot be walked.
        """
        if self._closed:
            raise StoreError("the store is closed")
        with self._gc_lock.exclusive():
            unproven = self._pins_unproven()
            if unproven is not None:
                raise UnprovenPinsError(f"garbage collection refused, nothing deleted: {unproven}")
            live = self._live_set(strict=True)
            doomed = [key for key in list(self._keys()) if key not in live]
            # Metadata first: after a crash mid-GC an index row never names a
            # half-deleted object (left-over blocks are removed by the next GC).
            self._index.forget(doomed)
            removed = [key for key in doomed if self._remove(key)]
            self._cleanup_temp()
        if removed:
            log.info("gc removed %d block(s)", len(removed))
        return removed

    def verify(self, *, quarantine: bool = True) -> list[CID]:
        """Re-hash every stored block; return the corrupt ones (quarantined unless told not to)."""
        if self._closed:
            raise StoreError("the store is closed")
        bad: list[CID] = []
        for key in list(self._keys()):
            try:
                ok = key.verify(self._load(key))
            except BlockNotFoundError:
                continue  # removed meanwhile
            except CorruptBlockError:
                ok = False
            if not ok:
                bad.append(key)
                if quarantine:
                    self._quarantine(key)
        if bad:
            log.warning("verify found %d corrupt block(s)", len(bad))
        return bad

    # --- index -----------------------------------------------------------------------------------
    def record(self, meta: ObjectMeta) -> None:
        """Store metadata for a complete object (refused while blocks are missing)."""
        key = self._key(meta.cid)
        self._commit_staged()  # a row only ever names durable blocks
        missing = self.missing_blocks(key)
        if missing:
            raise BlockNotFoundError(
                f"cannot record {key}: {len(missing)} block(s) missing (first {missing[0]})"
            )
        self._index.record(meta if meta.cid == key else _with_cid(meta, key))

    def get_meta(self, cid: CID | str) -> ObjectMeta | None:
        return self._index.get(self._key(cid))

    def query(
        self,
        *,
        kind: str | None = None,
        layer: str | None = None,
        domain: str | None = None,
        domain_prefix: str | None = None,
        author: str | None = None,
        parent: str | None = None,
    ) -> list[ObjectMeta]:
        """Metadata rows matching every given field (``domain_prefix``: plain string prefix)."""
        if self._closed:
            raise StoreError("the store is closed")
        return self._index.query(
            kind=kind,
            layer=layer,
            domain=domain,
            domain_prefix=domain_prefix,
            author=author,
            parent=parent,
        )


def _with_cid(meta: ObjectMeta, cid: CID) -> ObjectMeta:
    return ObjectMeta(
        cid=cid,
        kind=meta.kind,
        size=meta.size,
        created=meta.created,
        layer=meta.layer,
        domain=meta.domain,
        author=meta.author,
        parent=meta.parent,
        name=meta.name,
    )
