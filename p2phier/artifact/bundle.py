"""Tier bundles: a directory of a few regular files as ONE UnixFS file holding a canonical tar.

What this module owns:

* the bundle format: a POSIX ustar archive (POSIX.1-1988) of the directory's
  regular files only, in byte order of their names, every header with mode
  0644, uid/gid 0, empty user/group names, mtime 0, no directory entries, no
  links, no pax/GNU extension headers, followed by the two zero blocks that end
  an archive.  Same files, same bytes, same CID: any IPFS node can serve or
  fetch a tier by the CID of its bundle, and ``tar -x`` unpacks it;
* :func:`pack_dir`: stream a directory into a store as that archive (one
  file open at a time, bounded memory);
* :func:`unpack_dir`: the hostile-input reader.  Every header is checked
  (checksum, magic, type, name, size) and every limit applied *before* the
  member's body is read; names must match ``[A-Za-z0-9._-]{1,100}`` (no
  slashes, no ``.`` or ``..``: nothing can land outside the output), no name
  twice, at most ``max_files`` files and ``max_total`` bytes.  Files are
  written into a private temporary directory beside ``out_dir`` and fsynced;
  the directory is renamed into place only once the whole archive checked
  out, so ``out_dir`` appears whole or not at all.  Before a byte is written,
  the UnixFS DAG is checked as a reader checks it (size limit, read cost,
  structure) and its declared size against the free space there.

Names are capped at 100 characters (the ustar name field) rather than 128:
longer names would need a pax header or the ``prefix`` field, which exists
for paths with slashes, and bundles have neither.
Nothing here imports torch: the node ships tiers without loading them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, cast

from p2phier.artifact.limits import GiB
from p2phier.cid import CID
from p2phier.errors import ArtifactError, BlockNotFoundError, MissingBlocksError, UnixFSError
from p2phier.fsutil import commit_dir, write_all
from p2phier.store.base import ContentStore, MetaSpec, block_key, ensure_free_space
from p2phier.unixfs import check_file_dag, read_file

logger = logging.getLogger(__name__)

KIND_BUNDLE = "tier-bundle"
BLOCK = 512
NAME_FIELD = 100
#: a tier's weights may reach 4 GiB (p2phier.learn.models.MAX_TIER_WEIGHTS); the rest is small
DEFAULT_MAX_TOTAL = 4 * GiB + 256 * 1024 * 1024
DEFAULT_MAX_FILES = 64
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_READ_CHUNK = 1 << 20
_MAGIC = b"ustar\x00"
_VERSION = b"00"
_MAX_OCTAL_SIZE = 8**11 - 1  # 11 octal digits: just under 8 GiB
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"x": "pax extended header",
    b"g": "pax global header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
}


class BundleError(ArtifactError):
    """A directory cannot be bundled, or a bundle is malformed, hostile or over a limit."""


def check_name(name: str) -> str:
    """A member name the format allows: ``[A-Za-z0-9._-]{1,100}``, not ``.`` or ``..``."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise BundleError(
            f"file name {name[:140]!r} is not allowed in a bundle "
            "(use 1-100 of A-Z a-z 0-9 . _ -, not '.' or '..')"
        )
    return name


# --- writing ----------------------------------------------------------------------------------


def tar_header(name: str, size: int) -> bytes:
    """The canonical 512-byte ustar header of a regular file ``name`` of ``size`` bytes."""
    check_name(name)
    if not 0 <= size <= _MAX_OCTAL_SIZE:
        raise BundleError(f"{name}: {size} bytes does not fit a ustar header")
    header = bytearray(BLOCK)

    def put(offset: int, value: bytes) -> None:
        header[offset : offset + len(value)] = value

    put(0, name.encode("ascii"))
    put(100, b"0000644\x00")  # mode
    put(108, b"0000000\x00")  # uid
    put(116, b"0000000\x00")  # gid
    put(124, b"%011o\x00" % size)
    put(136, b"00000000000\x00")  # mtime
    put(148, b" " * 8)  # checksum is computed over these spaces
    put(156, b"0")  # regular file
    put(257, _MAGIC + _VERSION)
    put(329, b"0000000\x00")  # devmajor
    put(337, b"0000000\x00")  # devminor
    put(148, b"%06o\x00 " % sum(header))
    return bytes(header)


def _padding(size: int) -> bytes:
    return b"\x00" * (-size % BLOCK)


def bundle_bytes(files: Mapping[str, bytes]) -> bytes:
    """The bundle of ``files`` (name -> content) in memory, as :func:`pack_dir` streams it."""
    out = bytearray()
    for name in sorted(files):
        data = files[name]
        out += tar_header(name, len(data)) + data + _padding(len(data))
    return bytes(out + b"\x00" * (2 * BLOCK))


def _list_dir(directory: Path, max_files: int, max_total: int) -> list[tuple[str, int]]:
    """(name, size) of the regular files to pack, sorted; anything else is refused."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise BundleError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    if not entries:
        raise BundleError(f"{directory} is empty; nothing to bundle")
    if len(entries) > max_files:
        raise BundleError(f"{directory} holds {len(entries)} entries (limit {max_files})")
    out: list[tuple[str, int]] = []
    total = 0
    for entry in entries:
        check_name(entry.name)
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(
                f"{directory / entry.name} is not a regular file; bundles hold no others"
            )
        total += st.st_size
        if total > max_total:
            raise BundleError(f"{directory} holds more than {max_total} bytes")
        out.append((entry.name, st.st_size))
    return sorted(out)


def _tar_stream(directory: Path, entries: list[tuple[str, int]]) -> Iterator[bytes]:
    for name, size in entries:
        yield tar_header(name, size)
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "rb") as stream:
            remaining = size
            while remaining:
                chunk = stream.read(min(_READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
            # The size went into the header already: a file that changed under us
            # would make a corrupt archive, so it is refused rather than packed.
            if remaining or stream.read(1):
                raise BundleError(f"{path} changed size while it was being bundled")
        yield _padding(size)
    yield b"\x00" * (2 * BLOCK)


class _ExactReader:
    """``read(n)`` over an iterator of pieces, returning exactly ``n`` bytes until the end.

    The store chunks a stream at what each ``read`` returns: exact reads make
    the chunks, hence the CID, those of :meth:`ContentStore.add_bytes` of the
    same archive, whatever sizes the pieces had.
    """

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = bytearray()
        self._eof = False

    def read(self, want: int = -1) -> bytes:
        while not self._eof and (want < 0 or len(self._buf) < want):
            piece = next(self._pieces, None)
            if piece is None:
                self._eof = True
            else:
                self._buf += piece
        take = len(self._buf) if want < 0 else min(want, len(self._buf))
        out = bytes(self._buf[:take])
        del self._buf[:take]
        return out


def pack_dir(
    store: ContentStore,
    directory: Path,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_total: int = DEFAULT_MAX_TOTAL,
    pin: bool = True,
) -> CID:
    """Store ``directory``'s regular files as one canonical tar (a UnixFS file); return its CID.

    Refused: subdirectories, links and other special files, names outside
    ``[A-Za-z0-9._-]{1,100}``, more than ``max_files`` files or ``max_total``
    bytes, an empty directory, and a file that changes size while it is read.
    """
    directory = Path(directory)
    entries = _list_dir(directory, max_files, max_total)
    reader = _ExactReader(_tar_stream(directory, entries))
    meta = MetaSpec(kind=KIND_BUNDLE, name=directory.name[:1024] or None)
    # add_stream only calls read(); the reader is file-like for that one method.
    cid = store.add_stream(cast(BinaryIO, reader), meta, pin)
    logger.info("bundled %d files of %s as %s", len(entries), directory, cid)
    return cid


# --- reading ----------------------------------------------------------------------------------


class _Stream:
    """Exact reads over the store's verified pieces of one file."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._buf, self._pos = self._buf[self._pos :] + piece, 0
                return True
        return False

    def take(self, n: int, what: str) -> Iterator[bytes]:
        """Yield exactly ``n`` bytes in pieces; a short stream is a truncated bundle."""
        while n > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise BundleError(f"the bundle is truncated inside {what}")
            piece = self._buf[self._pos : self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            yield piece

    def read(self, n: int, what: str) -> bytes:
        return b"".join(self.take(n, what))

    def rest_is_zero(self) -> bool:
        if any(self._buf[self._pos :]):
            return False
        return not any(any(piece) for piece in self._pieces)


def _octal(field: bytes, what: str) -> int:
    digits = field.rstrip(b"\x00 ")
    if not digits or digits.strip(b"01234567"):
        # Base-256 sizes (high bit set) and signed/garbled values are refused too.
        raise BundleError(f"{what} is not an octal number: {field!r}")
    return int(digits, 8)


def _parse_header(header: bytes, index: int) -> tuple[str, int]:
    where = f"header {index}"
    stored = _octal(header[148:156], f"{where}: checksum")
    if stored != sum(header[:148]) + 8 * 0x20 + sum(header[156:]):
        raise BundleError(f"{where}: checksum mismatch (corrupt or not a tar archive)")
    if header[257:265] != _MAGIC + _VERSION:
        raise BundleError(f"{where}: not a POSIX ustar header (magic {header[257:265]!r})")
    kind = header[156:157]
    if kind not in (b"0", b"\x00"):
        label = _TYPE_NAMES.get(kind, f"type {kind!r}")
        raise BundleError(f"{where}: a {label} entry; bundles hold only regular files")
    if any(header[345:500]):
        raise BundleError(f"{where}: the ustar prefix field is set (a path with directories)")
    raw = header[:NAME_FIELD]
    end = raw.find(b"\x00")
    name_bytes, tail = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    if any(tail):
        raise BundleError(f"{where}: bytes after the end of the name")
    try:
        name = name_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{where}: the name is not ASCII") from None
    check_name(name)
    return name, _octal(header[124:136], f"{where} ({name}): size")


def _write_member(path: Path, pieces: Iterator[bytes]) -> None:
    """Create ``path`` (never through a link), write the pieces and fsync (cf. write_durable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        for piece in pieces:
            write_all(fd, piece)
        os.fsync(fd)
    finally:
        os.close(fd)


def _extract(stream: _Stream, tmp: Path, max_total: int, max_files: int) -> int:
    seen: set[str] = set()
    total = 0
    while True:
        header = stream.read(BLOCK, f"header {len(seen)}")
        if not any(header):
            stream.read(BLOCK, "the end-of-archive marker")  # must be a second block...
            if not stream.rest_is_zero():  # ...and nothing but zeros may follow
                raise BundleError("the bundle has data after its end-of-archive marker")
            break
        name, size = _parse_header(header, len(seen))
        # Every limit is checked before a byte of the body is read.
        if name in seen:
            raise BundleError(f"the bundle holds {name!r} twice")
        if len(seen) + 1 > max_files:
            raise BundleError(f"the bundle holds more than {max_files} files")
        if size > max_total - total:
            raise BundleError(
                f"{name} ({size} bytes) takes the bundle over its limit of {max_total} bytes"
            )
        seen.add(name)
        total += size
        _write_member(tmp / name, stream.take(size, name))
        if any(stream.read(-size % BLOCK, f"the padding of {name}")):
            raise BundleError(f"the padding after {name} is not zero")
    if not seen:
        raise BundleError("the bundle holds no files")
    return len(seen)


def unpack_dir(
    store: ContentStore,
    cid: CID | str,
    out_dir: Path,
    *,
    max_total: int = DEFAULT_MAX_TOTAL,
    max_files: int = DEFAULT_MAX_FILES,
) -> Path:
    """Check and write the bundle ``cid`` as the new directory ``out_dir`` (all or nothing).

    Raises :class:`BundleError` for a malformed, hostile or oversized bundle,
    :class:`~p2phier.errors.MissingBlocksError` when blocks are not in the store
    yet, and :class:`~p2phier.errors.StoreIOError` when the bundle declares more
    bytes than are free where ``out_dir`` goes (checked before anything is
    written); whatever fails, nothing is left behind.
    """
    out_dir = Path(out_dir)
    if max_total < 0 or max_files <= 0:
        raise BundleError("max_total must be >= 0 and max_files > 0")
    if out_dir.exists() or out_dir.is_symlink():
        raise BundleError(f"{out_dir} already exists; unpack into a new directory")
    root = block_key(cid)
    # Headers, paddings, the end marker, and a tar writer's record padding.
    overhead = (2 * max_files + 2) * BLOCK + 20 * BLOCK
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out_dir.parent))
    try:
        # The whole DAG is checked first (size limit, read cost, structure; leaves sized,
        # not read), so its declared size can be held against the free space.
        size = check_file_dag(
            root, store.get_block, max_size=max_total + overhead, leaf_size=store.block_size
        )
        ensure_free_space(out_dir.parent, size, f"bundle {root}")
        pieces = read_file(root, store.get_block, max_size=max_total + overhead)
        count = _extract(_Stream(pieces), tmp, max_total, max_files)
        commit_dir(tmp, out_dir)
    except BlockNotFoundError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MissingBlocksError(f"bundle {root} is incomplete in the store: {exc}") from exc
    except UnixFSError as exc:  # includes the root's size claim over the limit
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"bundle {root} is not a usable UnixFS file: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("unpacked bundle %s (%d files) to %s", root, count, out_dir)
    return out_dir
