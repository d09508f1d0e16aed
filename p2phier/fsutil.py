"""Crash-safe file primitives used across the project.

Owns every way p2phier makes a file durable:

* :func:`write_atomic` -- one file: temp file (created ``O_EXCL``, never
  following a planted link) in the destination's directory or a given temp
  directory on the same file system, write everything, fsync, rename, fsync
  the directory.  A reader sees the old file or the new one, never a torn one.
  ``overwrite=False`` refuses an existing destination atomically (hard link,
  so two writers racing for a new name cannot both win).
* :func:`fsync_dir` -- make a create, rename or unlink in a directory durable.
* :class:`WriteBatch` -- many files made durable *together*: each is written
  to a temp file at once without fsync; :meth:`WriteBatch.commit` syncs all of
  the data in one step, only then renames every file into place and makes the
  renames durable.  A crash before the commit finishes leaves temp files (the
  owner removes them on its next start) and, at most, some destination files
  that are complete -- never a torn one.
* :func:`open_regular` -- open an input file read-only, refusing a FIFO,
  device, socket or directory without blocking on it.
* :func:`syncfs` -- Linux ``syncfs(2)`` through ctypes (one call syncs a whole
  file system; per-file fsync is the fallback where it does not exist).
* :func:`read_capped`, :func:`load_toml`, :func:`load_json` -- the one way to read
  a small input file that a user or a peer could supply (configuration, learning
  plan and data, scenario, run records): opened as :func:`open_regular` does, its
  size checked on the open descriptor before anything is read, then read with a
  bound; every failure one error (the caller's class, :class:`InputFileError` by
  default) that names the file, e.g. ``config file /etc/p2phier.toml: larger than
  1048576 bytes``.

Why a batch: an fsync costs a journal commit, and one file per 256 KiB block
made that three fsyncs per block (file, directory, sometimes the parent).  One
``syncfs`` before and one after the renames give the same guarantee for a
whole object.  ``syncfs`` also flushes other writers' dirty data on that file
system; :func:`start_writeback` starts writing each file's pages as soon as it
is written so that the final sync mostly waits for I/O already under way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import stat
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2phier.errors import InputFileError, NotRegularFileError, P2PHierError

log = logging.getLogger(__name__)

Data = bytes | bytearray | memoryview
"""What can be written: bytes-like objects."""

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


class _Libc:
    """Lazily bound ``syncfs`` / ``sync_file_range`` (None where the platform lacks them)."""

    def __init__(self) -> None:
        self.syncfs: Any = None
        self.sync_file_range: Any = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover - no C library to bind to
            return
        fn = getattr(libc, "syncfs", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            self.syncfs = fn
        fn = getattr(libc, "sync_file_range", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            fn.restype = ctypes.c_int
            self.sync_file_range = fn


_libc = _Libc()


def write_all(fd: int, data: Data) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so a create, rename or unlink in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # some file systems refuse dir fsync
            raise
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def open_regular(path: str | os.PathLike[str], what: str = "file") -> int:
    """Open ``path`` read-only and return the descriptor; anything but a regular file is refused.

    A plain ``open()`` of a FIFO waits for a writer for ever, and a device may
    block or never end.  So the open is ``O_NONBLOCK`` (at once for a FIFO, no
    effect on a regular file) and the kind is checked with ``fstat`` on the open
    descriptor, not by a ``stat`` before it that a rename could outdate.
    Symbolic links are followed (a Hugging Face snapshot is made of links).
    Raises :class:`NotRegularFileError` naming ``what``, or the OSError of the
    open.  The caller closes the descriptor, which reads as a blocking one.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(
                f"{what} {os.fspath(path)} is {_kind(mode)}, not a regular file"
            )
        os.set_blocking(fd, True)  # so that the caller gets the usual semantics
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(
    path: str | os.PathLike[str],
    limit: int,
    what: str,
    error: type[P2PHierError] = InputFileError,
) -> bytes:
    """The whole of the input file ``path``, at most ``limit`` bytes, or ``error``.

    ``what`` names the file in messages (``"config file"``).  A file over the limit
    is refused from its size on the open descriptor, before a byte is read, and
    the read itself stops at ``limit + 1`` bytes (a file that grew meanwhile, or a
    ``/proc`` file that says 0).  A FIFO, device, socket or directory is refused
    without blocking on it.
    """
    where = f"{what} {os.fspath(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{where}: does not exist") from None
    except OSError as exc:
        raise error(f"{where}: cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{where}: is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise error(f"{where}: larger than {limit} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{where}: cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"{where}: larger than {limit} bytes")
    return data


def load_toml(
    path: str | os.PathLike[str],
    limit: int,
    what: str,
    error: type[P2PHierError] = InputFileError,
) -> dict[str, Any]:
    """The TOML document in ``path`` (:func:`read_capped`; UTF-8 and TOML errors too)."""
    data = read_capped(path, limit, what, error)
    where = f"{what} {os.fspath(path)}"
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{where}: not valid TOML: nested too deeply") from None


def load_json(
    path: str | os.PathLike[str],
    limit: int,
    what: str,
    error: type[P2PHierError] = InputFileError,
) -> Any:
    """The JSON value in ``path`` (:func:`read_capped`; encoding, syntax and nesting errors too)."""
    data = read_capped(path, limit, what, error)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(f"{what} {os.fspath(path)}: not JSON: {exc}") from None


def write_durable(path: str | os.PathLike[str], data: Data, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist), write ``data`` and fsync it.

    For files inside a private temporary directory that :func:`commit_dir` then
    renames into place as a whole: the rename, not this write, makes them visible.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_dir(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Make a fully written temporary directory durable and rename it to ``dest``."""
    fsync_dir(tmp)
    os.replace(tmp, dest)
    fsync_dir(Path(dest).parent)


def syncfs(path: str | os.PathLike[str]) -> bool:
    """Flush the whole file system holding ``path`` to stable storage.

    Returns False (having done nothing) where ``syncfs(2)`` is not available,
    so the caller falls back to per-file fsync; raises OSError when the sync
    fails (Linux >= 5.8 reports write-back errors of that file system here).
    """
    fn = _libc.syncfs
    if fn is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                _libc.syncfs = None
                return False
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", os.fspath(path))
    finally:
        os.close(fd)
    return True


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting.

    Best effort and no guarantee at all: durability still comes from a later
    fsync or syncfs, which then finds most of the I/O done.  Errors are
    ignored here because that later sync reports any real write error.
    """
    fn = _libc.sync_file_range
    failed = fn is not None and fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0
    if failed and ctypes.get_errno() == errno.ENOSYS:
        _libc.sync_file_range = None


def _temp_name(dest: Path) -> str:
    return f".{dest.name[:200]}.{os.urandom(6).hex()}.tmp"


def _open_temp(directory: Path, dest: Path, mode: int) -> tuple[Path, int]:
    # O_EXCL: never reuse or follow something already at the temp name.
    tmp = directory / _temp_name(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    return tmp, fd


def _link_new(tmp: Path, dest: Path) -> None:
    """Name ``tmp`` ``dest`` unless ``dest`` exists (FileExistsError), then drop ``tmp``."""
    try:
        os.link(tmp, dest)  # atomic: of two racing writers exactly one wins
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # No hard links on this file system: check, then rename (a small race remains).
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dest)) from exc
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


def write_atomic(
    path: str | os.PathLike[str],
    data: Data | Iterable[Data],
    mode: int = 0o644,
    *,
    exact_mode: bool = False,
    tmp_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one.

    ``data`` is a bytes-like object or an iterable of them (streamed, never
    joined in memory).  The file is created with ``mode`` less the umask, as
    ``open()`` would; ``exact_mode=True`` sets exactly ``mode`` whatever the
    umask (key files).  ``tmp_dir`` must be on the destination's file system.
    With ``overwrite=False`` an existing ``path`` raises FileExistsError and is
    left untouched.  On any error the temp file is removed and the error
    re-raised; the destination is unchanged.
    """
    dest = Path(path)
    tmp, fd = _open_temp(Path(tmp_dir) if tmp_dir is not None else dest.parent, dest, mode)
    try:
        try:
            if exact_mode:
                os.fchmod(fd, mode)
            if isinstance(data, bytes | bytearray | memoryview):
                write_all(fd, data)
            else:
                for piece in data:
                    write_all(fd, piece)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, dest)
        else:
            _link_new(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    return dest


@dataclass(frozen=True, slots=True)
class _Staged:
    tmp: str
    size: int


class WriteBatch:
    """Files written now, made durable and renamed into place together by :meth:`commit`.

    Every temp file goes into ``tmp_dir``, which must be on the same file system
    as the destinations.  A staged file is readable at :meth:`pending` until the
    commit.  With ``content_addressed=True`` a destination that already exists
    as a regular file of the staged size is kept and the temp file dropped (the
    name says what the bytes are).  Thread-safe: a commit sees every file
    staged before it started.  The caller removes leftover temp files after a
    crash (the temp names end in ``.tmp``).
    """

    def __init__(
        self, tmp_dir: str | os.PathLike[str], *, mode: int = 0o644, content_addressed: bool = False
    ) -> None:
        self.tmp_dir = Path(tmp_dir)
        self._mode = mode
        self._content_addressed = content_addressed
        self._lock = threading.RLock()
        self._staged: dict[str, _Staged] = {}
        self._dirs: set[str] = set()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._staged)

    @property
    def nbytes(self) -> int:
        """Bytes staged and not yet committed."""
        return self._nbytes

    def pending(self, dest: str | os.PathLike[str]) -> str | None:
        """The temp file holding ``dest``'s new content, or None if it is not staged.

        It may be renamed away by a concurrent commit: on FileNotFoundError,
        read ``dest`` instead.
        """
        with self._lock:
            staged = self._staged.get(os.fspath(dest))
        return None if staged is None else staged.tmp

    def sync_dir_too(self, directory: str | os.PathLike[str]) -> None:
        """Make an entry the caller created in ``directory`` durable with the next commit."""
        with self._lock:
            self._dirs.add(os.fspath(directory))

    def stage(self, dest: str | os.PathLike[str], data: Data) -> bool:
        """Write ``data`` to a temp file for ``dest``; False if ``dest`` was already staged.

        No fsync: the data become durable at the commit.  On an error the temp
        file is removed and nothing is staged.
        """
        key = os.fspath(dest)
        with self._lock:
            if key in self._staged:
                return False
        tmp, fd = _open_temp(self.tmp_dir, Path(key), self._mode)
        try:
            try:
                write_all(fd, data)
                start_writeback(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        size = memoryview(data).nbytes
        with self._lock:
            if key in self._staged:  # another thread staged it meanwhile: keep one copy
                duplicate = True
            else:
                duplicate = False
                self._staged[key] = _Staged(os.fspath(tmp), size)
                self._nbytes += size
        if duplicate:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return not duplicate

    def discard(self, dest: str | os.PathLike[str] | None = None) -> None:
        """Forget ``dest`` (or everything) and remove the temp file(s)."""
        with self._lock:
            if dest is None:
                doomed = list(self._staged.values())
                self._staged.clear()
                self._dirs.clear()
                self._nbytes = 0
            else:
                one = self._staged.pop(os.fspath(dest), None)
                doomed = [] if one is None else [one]
                self._nbytes -= sum(s.size for s in doomed)
        for staged in doomed:
            with contextlib.suppress(OSError):
                os.unlink(staged.tmp)

    def take(self, dest: str | os.PathLike[str]) -> str | None:
        """Remove ``dest`` from the batch and hand its temp file to the caller."""
        with self._lock:
            staged = self._staged.pop(os.fspath(dest), None)
            if staged is None:
                return None
            self._nbytes -= staged.size
            return staged.tmp

    def commit(self) -> list[str]:
        """Make every staged file durable at its destination; return the destinations.

        Order: sync all data (one ``syncfs``, or fsync per file), then rename each
        file into place, then make the renames durable (``syncfs`` again, or fsync
        each distinct directory once).  Only when this returns may anything that
        names these files (an index row, a pin) be written.  On an error the
        remaining temp files are removed and the batch is empty: files already
        renamed are complete, but the caller must treat the commit as failed.
        """
        with self._lock:
            if not self._staged:
                return []
            staged = self._staged
            dirs = self._dirs
            self._staged, self._dirs, self._nbytes = {}, set(), 0
            renamed: list[str] = []
            done = 0
            items = list(staged.items())
            try:
                self._sync_data(items, dirs)
                rename_dirs: set[str] = set()
                for dest, entry in items:
                    if self._keep_existing(dest, entry.size):
                        os.unlink(entry.tmp)
                    else:
                        self._rename(entry.tmp, dest, rename_dirs)
                    done += 1
                    renamed.append(dest)
                if not syncfs(self.tmp_dir):
                    for directory in sorted(rename_dirs):
                        fsync_dir(directory)
            except BaseException:
                for _, entry in items[done:]:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.tmp)
                raise
            return renamed

    def _sync_data(self, items: list[tuple[str, _Staged]], dirs: set[str]) -> None:
        if syncfs(self.tmp_dir):
            return
        for _, entry in items:
            fd = os.open(entry.tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for directory in sorted(dirs):
            fsync_dir(directory)

    def _keep_existing(self, dest: str, size: int) -> bool:
        if not self._content_addressed:
            return False
        try:
            st = os.stat(dest, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    @staticmethod
    def _rename(tmp: str, dest: str, dirs: set[str]) -> None:
        parent = os.path.dirname(dest)
        try:
            os.replace(tmp, dest)
        except FileNotFoundError:
            if not os.path.exists(tmp):
                raise
            # The destination's directory vanished (removed by hand): recreate it and
            # make its entry in the grandparent durable with the renames.
            os.makedirs(parent, exist_ok=True)
            dirs.add(os.path.dirname(parent))
            os.replace(tmp, dest)
        dirs.add(parent)
