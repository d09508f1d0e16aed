"""On-disk content store: one file per block, pins and metadata in SQLite.

Layout under the store's root directory::

    blocks/<shard>/<cid>   one file per block, named by its canonical CIDv1 base32
                           string; <shard> is the next-to-last two characters
                           of the name (flatfs's ``next-to-last/2``, evenly spread)
    tmp/                   temp files of writes in progress (same file system)
    quarantine/            corrupt blocks moved aside, never served
    index.sqlite           pins and object metadata (see p2phier.store.index)
    lock                   flock: shared while writing, exclusive for GC

Every write is crash-safe: temp file in ``tmp/``, fsync, rename into place,
fsync the directory, so a block file is either absent or complete.  Temp files
are removed when the store is opened (if no other process is writing) and by
GC.  A path is only ever built from a parsed CID's canonical base32 string
(``[a-z2-7]``), so no block id can name a file outside ``blocks/``.  Stored
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from p2phier.cid import CID
from p2phier.errors import BlockNotFoundError, CIDError, CorruptBlockError, StoreIOError
from p2phier.store.base import (
    MAX_BLOCK_SIZE,
    OS_EXCLUSIVE,
    OS_SHARED,
    ContentStore,
    fsync_dir,
)
from p2phier.store.index import Index

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"b[a-z2-7]{8,250}")
_READ_CHUNK = 1 << 16


def _io_error(action: str, exc: OSError) -> StoreIOError:
    """A StoreIOError whose message says what to do about the OS error."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "the disk is full or a file size limit was reached: free space and retry"
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
        self._remove_temp_files_if_idle()

    # --- paths -----------------------------------------------------------------------------------
    def _path(self, key: CID) -> Path:
        name = str(key)
        # Defence in depth: a v1 CID's string is "b" + base32; re-check before it
        # becomes a path component.
        if key.version != 1 or not _NAME_RE.fullmatch(name):
            raise CIDError(f"refusing to build a block path from {name[:40]!r}")
        return self._blocks_dir / name[-3:-1] / name

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

    def _store(self, key: CID, data: bytes) -> bool:
        path = self._path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(f"check block {key} in {self.root}", exc) from exc
        else:
            # Same size: already stored (a corrupt copy is quarantined when read, after
            # which a put heals it).  A wrong size is a damaged copy: replace it.
            if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
                return False
        tmp = self._tmp_dir / f"{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            shard = path.parent
            try:
                shard.mkdir()
            except FileExistsError:
                pass
            else:
                fsync_dir(self._blocks_dir)
            os.replace(tmp, path)
            fsync_dir(shard)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _io_error(f"write block {key} into {self.root}", exc) from exc
        return True

    def _load(self, key: CID) -> bytes:
        path = self._path(key)
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
        try:
            return stat.S_ISREG(os.stat(self._path(key), follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _io_error(f"check block {key} in {self.root}", exc) from exc

    def _size(self, key: CID) -> int:
        try:
            return os.stat(self._path(key), follow_symlinks=False).st_size
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
        dest = self._quarantine_dir / f"{path.name}.{int(time.time())}.{os.urandom(4).hex()}"
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot quarantine %s (%s); deleting it", path, exc)
            try:
                os.unlink(path)
            except OSError as exc2:
                raise _io_error(f"remove corrupt block {key}", exc2) from exc2

    def _close_blocks(self) -> None:
        os.close(self._lock_fd)
