"""On-disk content store: one file per block, pins and metadata in SQLite.

Layout under the store's root directory::

    blocks/<shard>/<cid>   one file per block, named by its canonical CIDv1 base32
                           string; <shard> is the next-to-last two characters
                           of the name (flatfs's ``next-to-last/2``, evenly spread)
    tmp/                   temp files of writes in progress (same file system)
    quarantine/            corrupt blocks moved aside, never served
    index.sqlite           pins and object metadata (see p2phier.store.index)
    pins/                  the pin journal: one file per pin, named by the pinned
                           CID, holding its mode; ``pins/FORMAT`` its version
    lock                   flock: shared while writing, exclusive for GC

Pins live in two places, as kubo keeps its pins in the datastore apart from the
blockstore: the index (for queries) and the pin journal ``pins/`` (for
survival).  A pin is written to the journal (atomically, fsynced) before the
index row; an unpin removes the index row first.  When the store is opened the
two are reconciled as their union (a crash in between keeps a pin, never loses
one), so a lost, truncated or replaced index gets its pins back from the
journal.  A store whose index was lost and that has no journal (it predates
it) cannot prove what is pinned: GC and ``delete_block`` refuse
(:class:`~p2phier.store.base.UnprovenPinsError`) until the operator has
re-pinned what to keep and runs ``store gc --trust-index``.

Every write is crash-safe, so a block file is either absent or complete.  A
single ``put_block`` writes a temp file in ``tmp/``, fsyncs it, renames it into
place and fsyncs the directory.  Blocks written during an ingest (``add_*``,
``put_block``/``put_blocks`` inside ``ingest()``) are *staged*: written to temp
files without fsync, then committed together (see
:class:`p2phier.fsutil.WriteBatch`): one ``syncfs`` makes all their data
durable, only then are they renamed into place, and a second ``syncfs`` makes
the renames durable -- all before any pin or index row names them.  Staged
blocks are readable by this store object at once and by others after the
commit.  Shard directories known to exist are cached (no mkdir per block).
Temp files are removed when the store is opened (if no other process is
writing) and by GC.  A path is only ever built from a parsed CID's canonical
base32 string (``[a-z2-7]``), so no block id can name a file outside ``blocks/``.  Stored
files are hostile input too: a file is fstat'ed before it is read, anything
larger than the block limit or not a regular file is refused without being
read, and every block is re-hashed before it is returned.  OS errors (disk
full, file size limit, permissions) become :class:`StoreIOError` with the temp
file removed and nothing already stored touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from p2phier.cid import CID
from p2phier.errors import (
    BlockNotFoundError,
    CIDError,
    CorruptBlockError,
    StoreError,
    StoreIOError,
)
from p2phier.fsutil import WriteBatch, fsync_dir, write_atomic
from p2phier.store.base import (
    MAX_BLOCK_SIZE,
    ContentStore,
    MetaSpec,
    block_key,
)
from p2phier.store.gclock import OS_EXCLUSIVE, OS_SHARED
from p2phier.store.index import PIN_DIRECT, PIN_RECURSIVE, Index

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"b[a-z2-7]{8,250}")
_READ_CHUNK = 1 << 16

#: first line of ``pins/FORMAT``: the journal's format version
PINS_FORMAT = b"p2phier-pins 1\n"
#: a journal entry is a mode word; anything larger is not one
MAX_PIN_ENTRY = 64

BATCH_MAX_BLOCKS = 4096
"""An ingest commits its staged blocks at least every this many blocks..."""
BATCH_MAX_BYTES = 1 << 30
"""...or this many bytes, so temp files and dirty pages stay bounded for huge objects."""


def _io_error(action: str, exc: OSError) -> StoreIOError:
    """A StoreIOError whose message says what to do about the OS error."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = (
            "the disk is full or a file size limit was reached: free space and retry; "
            "blocks already written stay, unpinned, until `p2phier store gc` removes them"
        )
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check the owner and permissions of the store directory"
    else:
        hint = "nothing already stored was changed"
    err = StoreIOError(f"cannot {action}: {reason} ({hint})")
    err.errno = exc.errno
    return err


class DiskStore(ContentStore):
    """A :class:`ContentStore` in a directory; safe to share between processes."""

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        max_block_size: int = MAX_BLOCK_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root_dir)
        self._blocks_dir = self.root / "blocks"
        self._tmp_dir = self.root / "tmp"
        self._quarantine_dir = self.root / "quarantine"
        self._pins_dir = self.root / "pins"
        self._unproven: str | None = None
        try:
            for directory in (self.root, self._blocks_dir, self._tmp_dir, self._quarantine_dir):
                directory.mkdir(mode=0o755, parents=directory is self.root, exist_ok=True)
            self._lock_fd = os.open(
                self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise _io_error(f"open the store at {self.root}", exc) from exc
        try:
            index = Index(self.root / "index.sqlite")
        except BaseException:
            os.close(self._lock_fd)
            raise
        super().__init__(index, max_block_size=max_block_size, clock=clock)
        self._blocks_str = os.fspath(self._blocks_dir)
        # Shard directories known to exist durably, and those a batch created (durable
        # only once that batch commits).  No mkdir, no directory fsync per block.
        self._shards: set[str] = set()
        self._batch_shards: set[str] = set()
        self._shard_lock = threading.Lock()
        self._batch = WriteBatch(self._tmp_dir, content_addressed=True)
        self.batch_max_blocks = BATCH_MAX_BLOCKS
        self.batch_max_bytes = BATCH_MAX_BYTES
        self._remove_temp_files_if_idle()
        try:
            self._reconcile_pins(fresh_index=index.created_fresh)
        except BaseException:
            self.close()
            raise

    # --- the pin journal -------------------------------------------------------------------------
    def _journal_path(self, key: CID) -> Path:
        name = str(key)
        if key.version != 1 or not _NAME_RE.fullmatch(name):
            raise CIDError(f"refusing to build a pin path from {name[:40]!r}")
        return self._pins_dir / name

    def _journal_pin(self, key: CID, mode: str) -> None:
        if self._unproven is not None:
            return  # no journal yet: ``trust_index`` starts it from the index
        try:
            write_atomic(self._journal_path(key), mode.encode("ascii"), tmp_dir=self._tmp_dir)
        except OSError as exc:
            raise _io_error(f"record the pin of {key}", exc) from exc

    def _journal_unpin(self, key: CID) -> None:
        try:
            self._journal_path(key).unlink(missing_ok=True)
            fsync_dir(self._pins_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(f"remove the pin of {key}", exc) from exc

    def _pins_unproven(self) -> str | None:
        return self._unproven

    def _read_journal(self) -> dict[CID, str]:
        pins: dict[CID, str] = {}
        try:
            entries = list(os.scandir(self._pins_dir))
        except OSError as exc:
            raise _io_error(f"read the pin journal {self._pins_dir}", exc) from exc
        for entry in entries:
            if entry.name == "FORMAT":
                continue
            try:
                key = CID.parse(entry.name)
                if not entry.is_file(follow_symlinks=False) or entry.stat().st_size > MAX_PIN_ENTRY:
                    raise CIDError("not a small regular file")
                mode = Path(entry.path).read_bytes().decode("ascii")
            except (CIDError, OSError, UnicodeDecodeError) as exc:
                raise StoreError(
                    f"the pin journal {self._pins_dir} holds {entry.name[:60]!r}, which is not a "
                    f"pin ({exc}); move it away (nothing was changed)"
                ) from None
            if mode not in (PIN_RECURSIVE, PIN_DIRECT) or key.version != 1:
                raise StoreError(
                    f"pin journal entry {entry.path} is not a valid pin ({mode!r:.20})"
                )
            pins[key] = mode
        return pins

    def _reconcile_pins(self, *, fresh_index: bool) -> None:
        """Make the index and the pin journal agree (their union); see the module docstring."""
        marker = self._pins_dir / "FORMAT"
        index_pins = {block_key(c): m for c, m in self._index.pins().items()}
        try:
            head = marker.read_bytes()[: len(PINS_FORMAT) + 1]
        except FileNotFoundError:
            head = None
        except OSError as exc:
            raise _io_error(f"read {marker}", exc) from exc
        if head is None:
            if fresh_index and next(self._keys(), None) is not None:
                self._unproven = (
                    f"the store index was missing or empty, and this store has no pin journal "
                    f"({self._pins_dir}: it predates it), so which blocks are pinned cannot be "
                    "proven. Pin again what must be kept (store pin CID), then run "
                    "`p2phier store gc --trust-index`"
                )
                log.error("store %s: %s", self.root, self._unproven)
                return
            self._start_journal(index_pins)
            return
        if head != PINS_FORMAT:
            raise StoreError(
                f"{marker} names an unknown pin journal format {head[:32]!r}; upgrade p2phier"
            )
        journal = self._read_journal()
        restored = {c: m for c, m in journal.items() if index_pins.get(c) != m}
        for cid, mode in restored.items():
            self._index.set_pin(cid, mode)
            if self._index.get(cid) is None:
                self._index.record(MetaSpec(name="(restored pin)").to_meta(cid, 0, self._clock()))
        for cid, mode in index_pins.items():
            if cid not in journal:
                self._journal_pin(cid, mode)
        if restored:
            log.warning(
                "store %s: %d pin(s) restored from the pin journal%s",
                self.root,
                len(restored),
                " (the index was missing or empty)" if fresh_index else "",
            )

    def _start_journal(self, pins: dict[CID, str]) -> None:
        try:
            self._pins_dir.mkdir(mode=0o755, exist_ok=True)
            for cid, mode in pins.items():
                write_atomic(self._journal_path(cid), mode.encode("ascii"), tmp_dir=self._tmp_dir)
            write_atomic(self._pins_dir / "FORMAT", PINS_FORMAT, tmp_dir=self._tmp_dir)
            fsync_dir(self.root)
        except OSError as exc:
            raise _io_error(f"start the pin journal {self._pins_dir}", exc) from exc
        self._unproven = None

    def trust_index(self) -> int:
        """Declare the index's pins complete (after its loss, once the operator has
        pinned again what to keep): start the journal from them; GC works again.
        Returns the number of pins."""
        pins = {block_key(c): m for c, m in self._index.pins().items()}
        self._start_journal(pins)
        return len(pins)

    # --- paths -----------------------------------------------------------------------------------
    def _path(self, key: CID) -> str:
        name = str(key)
        # Defence in depth: a v1 CID's string is "b" + base32; re-check before it
        # becomes a path component.
        if key.version != 1 or not _NAME_RE.fullmatch(name):
            raise CIDError(f"refusing to build a block path from {name[:40]!r}")
        return f"{self._blocks_str}/{name[-3:-1]}/{name}"

    def _make_shard(self, shard: str) -> None:
        """Create a lone put's shard directory (if needed) and make its entry durable."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(shard, 0o755)
        # Even if it existed: a batch not yet committed may have created it.
        fsync_dir(self._blocks_dir)
        with self._shard_lock:
            self._shards.add(shard)

    def _stage_shard(self, shard: str) -> None:
        """Create a batch's shard directory (if needed); the batch's commit makes it durable."""
        with self._shard_lock:
            if shard in self._shards or shard in self._batch_shards:
                return
        with contextlib.suppress(FileExistsError):
            os.mkdir(shard, 0o755)
        self._batch.sync_dir_too(self._blocks_dir)
        with self._shard_lock:
            self._batch_shards.add(shard)

    # --- temp files ------------------------------------------------------------------------------
    def _remove_temp_files_if_idle(self) -> None:
        # Another process may be mid-write (holding the shared lock); its temp files
        # are live then.  Only clean when nobody holds the lock.
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("store %s is being written by another process; temp files kept", self.root)
            return
        except OSError as exc:
            raise _io_error(f"lock the store at {self.root}", exc) from exc
        try:
            self._cleanup_temp()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _cleanup_temp(self) -> None:
        try:
            entries = list(os.scandir(self._tmp_dir))
        except OSError as exc:
            log.warning("cannot list %s: %s", self._tmp_dir, exc)
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    log.warning("unexpected directory %s in the store's tmp dir", entry.path)
                    continue
                os.unlink(entry.path)
                log.info("removed leftover temp file %s", entry.path)
            except OSError as exc:
                log.warning("cannot remove temp file %s: %s", entry.path, exc)

    # --- the block layer -------------------------------------------------------------------------
    def _os_lock(self, mode: str) -> None:
        op = {OS_SHARED: fcntl.LOCK_SH, OS_EXCLUSIVE: fcntl.LOCK_EX}.get(mode, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._lock_fd, op)
        except OSError as exc:
            raise _io_error(f"lock the store at {self.root}", exc) from exc

    def _present(self, path: str, size: int) -> bool:
        """True if ``path`` holds a block file of ``size`` bytes."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        # Same size: already stored (a corrupt copy is quarantined when read, after
        # which a put heals it).  A wrong size is a damaged copy: replace it.
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def _store(self, key: CID, data: bytes) -> bool:
        path = self._path(key)
        shard = os.path.dirname(path)
        try:
            if self._present(path, len(data)):
                return False
            for attempt in (1, 2):
                if shard not in self._shards:
                    self._make_shard(shard)  # its entry durable before the block's
                try:
                    write_atomic(path, data, 0o644, tmp_dir=self._tmp_dir)
                    break
                except FileNotFoundError:
                    if attempt == 2 or os.path.isdir(shard):
                        raise
                    with self._shard_lock:  # removed behind our back: create it again
                        self._shards.discard(shard)
        except OSError as exc:
            raise _io_error(f"write block {key} into {self.root}", exc) from exc
        return True

    def _stage(self, key: CID, data: bytes) -> bool:
        path = self._path(key)
        if self._batch.pending(path) is not None:
            return False
        try:
            if self._present(path, len(data)):
                return False
            self._stage_shard(os.path.dirname(path))
            added = self._batch.stage(path, data)
        except OSError as exc:
            raise _io_error(f"write block {key} into {self.root}", exc) from exc
        if len(self._batch) >= self.batch_max_blocks or self._batch.nbytes >= self.batch_max_bytes:
            self._commit_staged()
        return added

    def _commit_staged(self) -> None:
        # Taken before the commit: a shard staged meanwhile waits for the next one.
        with self._shard_lock:
            fresh, self._batch_shards = self._batch_shards, set()
        try:
            self._batch.commit()
        except OSError as exc:
            raise _io_error(f"make the new blocks in {self.root} durable", exc) from exc
        with self._shard_lock:
            self._shards |= fresh

    def _load(self, key: CID) -> bytes:
        path = self._path(key)
        tmp = self._batch.pending(path)
        if tmp is not None:
            try:
                return self._read(tmp, key)
            except BlockNotFoundError:
                pass  # committed (renamed into place) meanwhile
        return self._read(path, key)

    def _read(self, path: str, key: CID) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise BlockNotFoundError(f"block {key} is not in the store") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CorruptBlockError(f"stored block {key} is a symbolic link") from None
            raise _io_error(f"read block {key} from {self.root}", exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptBlockError(f"stored block {key} is not a regular file")
            if st.st_size > self.max_block_size:
                raise CorruptBlockError(
                    f"stored block {key} is {st.st_size} bytes, over the "
                    f"{self.max_block_size}-byte limit, so it cannot be valid"
                )
            # The file may grow after fstat: never read past the limit.
            parts: list[bytes] = []
            total = 0
            while True:
                part = os.read(fd, min(_READ_CHUNK, self.max_block_size + 1 - total))
                if not part:
                    break
                parts.append(part)
                total += len(part)
                if total > self.max_block_size:
                    raise CorruptBlockError(f"stored block {key} grew over the size limit")
            return b"".join(parts)
        except OSError as exc:
            raise _io_error(f"read block {key} from {self.root}", exc) from exc
        finally:
            os.close(fd)

    def _contains(self, key: CID) -> bool:
        path = self._path(key)
        if self._batch.pending(path) is not None:
            return True
        try:
            return stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _io_error(f"check block {key} in {self.root}", exc) from exc

    def _size(self, key: CID) -> int:
        path = self._path(key)
        tmp = self._batch.pending(path)
        try:
            if tmp is not None:
                try:
                    return os.stat(tmp, follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # committed meanwhile
            return os.stat(path, follow_symlinks=False).st_size
        except FileNotFoundError:
            raise BlockNotFoundError(f"block {key} is not in the store") from None
        except OSError as exc:
            raise _io_error(f"check block {key} in {self.root}", exc) from exc

    def _remove(self, key: CID) -> bool:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _io_error(f"delete block {key} from {self.root}", exc) from exc
        return True

    def _keys(self) -> Iterator[CID]:
        try:
            shards = sorted(e.name for e in os.scandir(self._blocks_dir) if e.is_dir())
        except OSError as exc:
            raise _io_error(f"list the blocks of {self.root}", exc) from exc
        for shard in shards:
            try:
                names = sorted(e.name for e in os.scandir(self._blocks_dir / shard))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _io_error(f"list the blocks of {self.root}", exc) from exc
            for name in names:
                try:
                    cid = CID.parse(name)
                except CIDError:
                    log.warning("ignoring a file that is not a block: %s/%s", shard, name)
                    continue
                if cid.version != 1 or str(cid) != name or name[-3:-1] != shard:
                    log.warning(
                        "ignoring a misplaced or non-canonical block file %s/%s", shard, name
                    )
                    continue
                yield cid

    def _quarantine(self, key: CID) -> None:
        path = self._path(key)
        tmp = self._batch.take(path)
        if tmp is not None:  # a staged copy that does not match its hash: never commit it
            with contextlib.suppress(FileNotFoundError):
                os.replace(tmp, self._quarantine_name(key))
        try:
            os.replace(path, self._quarantine_name(key))
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot quarantine %s (%s); deleting it", path, exc)
            try:
                os.unlink(path)
            except OSError as exc2:
                raise _io_error(f"remove corrupt block {key}", exc2) from exc2

    def _quarantine_name(self, key: CID) -> Path:
        return self._quarantine_dir / f"{key}.{int(time.time())}.{os.urandom(4).hex()}"

    def _close_blocks(self) -> None:
        try:
            # Ingests commit before they end, so this is empty unless a commit failed;
            # the blocks were never visible to anyone else.
            self._batch.discard()
        finally:
            os.close(self._lock_fd)
