"""Bounded zstd: compress tensor payloads, decompress hostile frames safely.

Owns the single-frame zstd format p2phier stores (level 3, content size and
checksum written) and a decompressor that can be fed anything.  python-zstandard's
one-shot ``decompress`` allocates whatever size a frame *declares*, so hostile
input is never given to it.  Instead :func:`frame_info` parses the frame
header and walks the block headers ourselves (RFC 8878 section 3.1.1) to learn,
without decompressing or allocating:

* the declared content size (refused if over the cap or not the size the
  manifest promised),
* the window size (refused over ``2**max_window_log``: a decoder must hold a
  whole window in memory, and a frame may ask for 2 GiB),
* the frame's exact length (refused if bytes trail it, or if it is a skippable
  frame, uses a dictionary or a reserved bit).

Then the frame is decompressed *streaming*, in 1 MiB reads, into a buffer
allocated once, and abandoned the moment output passes the size the manifest
declares (the cap without one), so a frame without a declared size (or one
that lies about it) can never make us hold more than that size plus one byte.

:func:`compress_into_store` is the publishing path: it compresses in a worker
thread (python-zstandard releases the GIL) while the calling thread chunks,
hashes and writes the compressed bytes into a store, so the two overlap on two
cores instead of running one after the other.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, cast

import zstandard

from p2phier.errors import DecompressionError, UsageError

if TYPE_CHECKING:
    from p2phier.cid import CID
    from p2phier.store.base import ContentStore, MetaSpec

LEVEL = 3
MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_BLOCK_MAX = 128 * 1024
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What a zstd frame header and its block headers say."""

    content_size: int | None  # None when the frame does not declare it
    window_size: int
    has_checksum: bool
    frame_length: int  # bytes of input the frame occupies
    blocks: int


def compress(data: bytes, level: int = LEVEL) -> bytes:
    """One zstd frame with content size and checksum (deterministic for a given input)."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return cctx.compress(data)


_QUEUE_DEPTH = 8  # compressed pieces in flight: bounds memory to ~8 x chunk output
_PUT_POLL_S = 0.05  # how often a blocked worker checks whether the consumer gave up


class _QueueReader:
    """A blocking ``read(n)`` over the pieces the compressing worker queues.

    ``read(n)`` returns exactly ``n`` bytes until the end, as a file would, so the
    store chunks the stream at the same boundaries as ``add_bytes`` of the same
    frame and the root CID does not depend on how the worker split its output.
    """

    def __init__(self, pieces: queue.Queue[bytes | BaseException | None]) -> None:
        self._pieces = pieces
        self._buf = bytearray()
        self._eof = False
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            item = self._pieces.get()
            if item is None:
                self._eof = True
            elif isinstance(item, BaseException):
                self._eof = True
                raise item
            else:
                self._buf += item
        take = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:take])
        del self._buf[:take]
        self.total += take
        return out


def compress_into_store(
    store: ContentStore,
    data: bytes | memoryview,
    *,
    level: int = LEVEL,
    meta: MetaSpec | None = None,
    pin: bool = True,
    chunk: int = _READ_CHUNK,
    max_size: int | None = None,
) -> tuple[CID, int]:
    """Compress ``data`` into one zstd frame and add it to ``store``; return (root, size).

    The frame is the format :func:`compress` writes (content size declared,
    checksum), produced in a worker thread ``chunk`` input bytes at a time while
    this thread stores it; ``size`` is the frame's length in bytes.  An error in
    either thread is raised here (the worker's with its own type) and the worker
    has stopped before this returns or raises.  ``max_size`` caps the compressed
    size, as :meth:`ContentStore.add_stream` does.
    """
    if chunk <= 0:
        raise UsageError(f"chunk must be a positive number of bytes, not {chunk}")
    view = memoryview(data).cast("B")
    pieces: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> bool:
        # A bounded put that gives up once the consumer has stopped reading, so the
        # worker can never hang on a full queue after the store raised.
        while not stop.is_set():
            try:
                pieces.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            cctx = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
            cobj = cctx.compressobj(size=len(view))
            for off in range(0, len(view), chunk):
                out = cobj.compress(view[off : off + chunk])
                if out and not put(out):
                    return
            if put(cobj.flush()):
                put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    worker = threading.Thread(target=work, name="zstd-compress", daemon=True)
    reader = _QueueReader(pieces)
    worker.start()
    try:
        # add_stream only calls read(); the reader is file-like for that one method.
        root = store.add_stream(cast(BinaryIO, reader), meta, pin, max_size=max_size)
    finally:
        stop.set()
        worker.join()
    return root, reader.total


def frame_info(data: bytes | bytearray | memoryview) -> FrameInfo:
    """Parse one frame's header and block headers; raise :class:`DecompressionError`."""
    buf = memoryview(data)
    n = len(buf)
    if n < 6:
        raise DecompressionError(f"zstd payload is {n} bytes, too short to be a frame")
    magic = int.from_bytes(buf[:4], "little")
    if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
        raise DecompressionError("zstd payload starts with a skippable frame; refused")
    if bytes(buf[:4]) != MAGIC:
        raise DecompressionError("payload is not a zstd frame (bad magic number)")
    fhd = buf[4]
    fcs_flag = fhd >> 6
    single_segment = bool(fhd & 0x20)
    if fhd & 0x08:
        raise DecompressionError("zstd frame header sets the reserved bit")
    has_checksum = bool(fhd & 0x04)
    did_size = (0, 1, 2, 4)[fhd & 0x03]
    pos = 5
    window_size = 0
    if not single_segment:
        wd = buf[pos]
        pos += 1
        window_log = 10 + (wd >> 3)
        window_base = 1 << window_log
        window_size = window_base + (window_base >> 3) * (wd & 0x07)
    if did_size:
        if pos + did_size > n:
            raise DecompressionError("truncated zstd frame header")
        if int.from_bytes(buf[pos : pos + did_size], "little") != 0:
            raise DecompressionError("zstd frame needs a dictionary; dictionaries are refused")
        pos += did_size
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    content_size: int | None = None
    if fcs_size:
        if pos + fcs_size > n:
            raise DecompressionError("truncated zstd frame header")
        content_size = int.from_bytes(buf[pos : pos + fcs_size], "little")
        if fcs_size == 2:
            content_size += 256
        pos += fcs_size
    if single_segment:
        assert content_size is not None  # single segment always carries a content size
        window_size = content_size
    block_max = min(window_size, _BLOCK_MAX)
    blocks = 0
    while True:
        if pos + 3 > n:
            raise DecompressionError("zstd frame is truncated (missing block header)")
        header = int.from_bytes(buf[pos : pos + 3], "little")
        pos += 3
        blocks += 1
        last = header & 1
        block_type = (header >> 1) & 3
        size = header >> 3
        if block_type == 3:
            raise DecompressionError("zstd frame contains a reserved block type")
        if size > block_max:
            raise DecompressionError(
                f"zstd block of {size} bytes exceeds the frame's maximum block size {block_max}"
            )
        pos += 1 if block_type == 1 else size
        if pos > n:
            raise DecompressionError("zstd frame is truncated (block runs past the end)")
        if last:
            break
    if has_checksum:
        pos += 4
        if pos > n:
            raise DecompressionError("zstd frame is truncated (missing checksum)")
    return FrameInfo(content_size, window_size, has_checksum, pos, blocks)


def decompress(
    data: bytes | bytearray | memoryview,
    *,
    max_output: int,
    max_window_log: int,
    expected_size: int | None = None,
) -> bytearray:
    """Decompress exactly one zstd frame, never holding more than the size it may produce.

    ``expected_size`` (the size the signed manifest promises) must match both the
    frame's declared size, when it has one, and the actual output; decompression
    stops the moment output passes it (or ``max_output`` without one), so a frame
    that declares nothing cannot expand past what the manifest said.  The output
    buffer is allocated once when the size is known, and the input is not copied.
    """
    info = frame_info(data)
    if info.frame_length != len(data):
        raise DecompressionError(
            f"{len(data) - info.frame_length} bytes trail the zstd frame; "
            "a payload must be exactly one frame"
        )
    if info.content_size is not None:
        if info.content_size > max_output:
            raise DecompressionError(
                f"zstd frame declares {info.content_size} bytes of content, over the cap of "
                f"{max_output} bytes; refused before decompressing"
            )
        if expected_size is not None and info.content_size != expected_size:
            raise DecompressionError(
                f"zstd frame declares {info.content_size} bytes but the manifest says "
                f"{expected_size}"
            )
    if expected_size is not None and expected_size > max_output:
        raise DecompressionError(
            f"manifest declares {expected_size} decompressed bytes, over the cap of {max_output}"
        )
    max_window = 1 << max_window_log
    if info.window_size > max_window:
        raise DecompressionError(
            f"zstd frame needs a {info.window_size}-byte window, over the limit of "
            f"{max_window} bytes (windowLog {max_window_log}); refused"
        )
    known = expected_size if expected_size is not None else info.content_size
    cap = known if known is not None else max_output
    dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
    # One byte of room past the cap tells "exactly the cap" from "more than the cap".
    out = bytearray(cap + 1) if known is not None else bytearray()
    filled = 0
    try:
        with dctx.stream_reader(data, read_across_frames=False) as reader:
            if known is not None:
                view = memoryview(out)
                while filled <= cap:
                    n = reader.readinto(view[filled : min(filled + _READ_CHUNK, cap + 1)])
                    if not n:
                        break
                    filled += n
                view.release()
            else:
                while len(out) <= cap:
                    chunk = reader.read(min(_READ_CHUNK, cap + 1 - len(out)))
                    if not chunk:
                        break
                    out += chunk
                filled = len(out)
    except zstandard.ZstdError as exc:
        raise DecompressionError(f"corrupt zstd frame: {exc}") from None
    if filled > cap:
        what = "the size the manifest declares" if expected_size is not None else "the cap"
        raise DecompressionError(
            f"zstd frame expands past {what} of {cap} bytes; decompression abandoned"
        )
    del out[filled:]
    if info.content_size is not None and filled != info.content_size:
        raise DecompressionError(
            f"zstd frame declared {info.content_size} bytes but produced {filled}"
        )
    if expected_size is not None and filled != expected_size:
        raise DecompressionError(
            f"payload decompressed to {filled} bytes but the manifest says {expected_size}"
        )
    return out
