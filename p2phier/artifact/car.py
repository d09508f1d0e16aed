"""Self-contained artifact archives as CARv1 files (IPFS's own archive format).

Owns the CARv1 codec (ipld specs ``transport/car/carv1``): a varint-framed
DAG-CBOR header ``{"roots": [CID], "version": 1}``, then sections
``varint(len(cid) + len(block)) || cid bytes || block``; and
:func:`export_car` / :func:`import_car` for artifacts.

An exported archive holds one root, the artifact's CID, and every block of the
artifact and of its whole lineage (envelopes, configs, payloads) in DAG order,
so ``p2phier artifact verify FILE`` needs nothing else.  ``ipfs dag import``
reads it as is.

Import treats the file as hostile: its size is checked before reading, the
header is bounded and must name exactly one CIDv1 root, every section is
bounded (a block over the store's block limit is refused before it is read)
and hash-checked, only sha2-256 raw/dag-pb blocks are accepted, at most
``max_car_blocks`` of them.  The archive is *indexed*, not loaded
(:class:`CarIndex`: one pass keeps each block's offset; verification reads
and re-hashes blocks from the file as it needs them), so a 1 GiB archive of
junk costs its index, not 1 GiB of memory.  The artifact
is then *fully verified* against the archive's blocks plus what the store
already holds, and only then are its blocks written and pinned: a failed
import stores nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from p2phier.artifact.limits import DEFAULT_LIMITS, Limits
from p2phier.artifact.pack import KIND_ARTIFACT, KIND_CONFIG, KIND_PROTOTYPES, KIND_TENSORS
from p2phier.artifact.verify import Artifact, BlockSource, Resolved, resolve
from p2phier.cid import CID, DAG_PB, RAW, SHA2_256, decode_varint, encode_varint
from p2phier.errors import ArtifactError, CIDError, HashMismatchError, UsageError
from p2phier.fsutil import fsync_dir
from p2phier.store.base import MAX_BLOCK_SIZE, ContentStore, MetaSpec, block_key
from p2phier.store.memory import MemoryStore
from p2phier.unixfs import iter_dag

log = logging.getLogger(__name__)

MAX_HEADER = 4096
MAX_ROOTS = 16
_CID_TAG = 42


class CarFormatError(ArtifactError):
    """A CAR archive is malformed, oversized or not a p2phier artifact archive."""


# --- minimal DAG-CBOR for the header ------------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * size):
            return bytes([major << 5 | info]) + value.to_bytes(size, "big")
    raise CarFormatError("CBOR value too large")  # pragma: no cover - 64-bit values only


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return _cbor_head(3, len(raw)) + raw


def encode_header(roots: list[CID]) -> bytes:
    """DAG-CBOR ``{"roots": [...], "version": 1}`` (keys in DAG-CBOR order: length first)."""
    out = bytearray(_cbor_head(5, 2))
    out += _cbor_text("roots") + _cbor_head(4, len(roots))
    for root in roots:
        link = b"\x00" + root.to_bytes()
        out += _cbor_head(6, _CID_TAG) + _cbor_head(2, len(link)) + link
    out += _cbor_text("version") + _cbor_head(0, 1)
    return bytes(out)


class _Cbor:
    """A strict reader for the few CBOR items a CAR header uses."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _head(self) -> tuple[int, int]:
        if self.pos >= len(self.data):
            raise CarFormatError("CAR header is truncated")
        byte = self.data[self.pos]
        self.pos += 1
        major, info = byte >> 5, byte & 0x1F
        if info < 24:
            return major, info
        sizes = {24: 1, 25: 2, 26: 4, 27: 8}
        if info not in sizes:
            raise CarFormatError("CAR header uses indefinite-length or reserved CBOR items")
        end = self.pos + sizes[info]
        if end > len(self.data):
            raise CarFormatError("CAR header is truncated")
        value = int.from_bytes(self.data[self.pos : end], "big")
        self.pos = end
        return major, value

    def item(self, depth: int = 0) -> Any:
        if depth > 4:
            raise CarFormatError("CAR header is nested too deeply")
        major, value = self._head()
        if major == 0:
            return value
        if major in (2, 3):
            end = self.pos + value
            if end > len(self.data):
                raise CarFormatError("CAR header is truncated")
            raw = self.data[self.pos : end]
            self.pos = end
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CarFormatError("CAR header has invalid UTF-8 text") from None
        if major == 4:
            if value > MAX_ROOTS:
                raise CarFormatError(f"CAR header array of {value} items is too long")
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            if value > 8:
                raise CarFormatError("CAR header map is too large")
            out: dict[str, Any] = {}
            for _ in range(value):
                key = self.item(depth + 1)
                if not isinstance(key, str) or key in out:
                    raise CarFormatError("CAR header map keys must be distinct strings")
                out[key] = self.item(depth + 1)
            return out
        if major == 6 and value == _CID_TAG:
            link = self.item(depth + 1)
            if not isinstance(link, bytes) or not link.startswith(b"\x00"):
                raise CarFormatError("CAR header CID link must be bytes starting with 0x00")
            try:
                return CID.from_bytes(link[1:])
            except CIDError as exc:
                raise CarFormatError(f"CAR header root is not a CID: {exc}") from None
        raise CarFormatError(f"CAR header contains an unsupported CBOR item (major type {major})")


def decode_header(data: bytes) -> list[CID]:
    reader = _Cbor(data)
    header = reader.item()
    if reader.pos != len(data):
        raise CarFormatError("bytes trail the CAR header")
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarFormatError("not a CARv1 archive (header version is not 1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not roots or not all(isinstance(r, CID) for r in roots):
        raise CarFormatError("CAR header must list one or more root CIDs")
    return roots


# --- sections ---------------------------------------------------------------------------------


def encode_car(roots: list[CID], blocks: Iterable[tuple[CID, bytes]]) -> Iterator[bytes]:
    """The archive's bytes, piece by piece."""
    header = encode_header(roots)
    yield encode_varint(len(header)) + header
    for cid, block in blocks:
        raw_cid = cid.to_bytes()
        yield encode_varint(len(raw_cid) + len(block)) + raw_cid + block


def _read_varint(stream: BinaryIO) -> int | None:
    raw = bytearray()
    while True:
        byte = stream.read(1)
        if not byte:
            if raw:
                raise CarFormatError("CAR archive ends inside a length prefix")
            return None
        raw += byte
        if not byte[0] & 0x80:
            break
        if len(raw) >= 9:
            raise CarFormatError("CAR length prefix is longer than 9 bytes")
    try:
        value, _ = decode_varint(bytes(raw))
    except CIDError as exc:
        raise CarFormatError(f"bad CAR length prefix: {exc}") from None
    return value


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CarFormatError(f"CAR archive is truncated inside {what}")
    return data


def _split_section(section: bytes) -> tuple[CID, bytes]:
    try:
        if len(section) >= 34 and section[0] == SHA2_256 and section[1] == 32:
            end = 34
        else:
            _, off = decode_varint(section)  # version
            _, off = decode_varint(section, off)  # codec
            _, off = decode_varint(section, off)  # multihash code
            length, off = decode_varint(section, off)
            end = off + length
        if end > len(section):
            raise CarFormatError("CAR section is shorter than its CID")
        cid = CID.from_bytes(section[:end])
    except CIDError as exc:
        raise CarFormatError(f"CAR section does not start with a valid CID: {exc}") from None
    return cid, section[end:]


def _sections(
    stream: BinaryIO, *, max_block: int, max_blocks: int | None
) -> Iterator[tuple[CID, bytes, int]]:
    """Each hash-checked block of a CARv1 stream after its header, with its file offset."""
    count = 0
    max_section = max_block + 128  # a CID is well under 128 bytes
    while True:
        length = _read_varint(stream)
        if length is None:
            return
        if length > max_section:
            raise CarFormatError(
                f"CAR section of {length} bytes exceeds the block limit of {max_block}; refused"
            )
        count += 1
        if max_blocks is not None and count > max_blocks:
            raise CarFormatError(f"CAR archive holds more than {max_blocks} blocks; refused")
        start = stream.tell()
        cid, block = _split_section(_read_exact(stream, length, "a block"))
        if cid.multihash.code != SHA2_256 or cid.codec not in (RAW, DAG_PB):
            raise CarFormatError(f"CAR block {cid} is not a sha2-256 raw or dag-pb block; refused")
        if not cid.verify(block):
            raise HashMismatchError(f"CAR block {cid} does not hash to its CID; refused")
        yield cid, block, start + length - len(block)


def _read_roots(stream: BinaryIO) -> list[CID]:
    header_len = _read_varint(stream)
    if header_len is None:
        raise CarFormatError("empty file: not a CAR archive")
    if header_len > MAX_HEADER:
        raise CarFormatError(f"CAR header of {header_len} bytes is over the limit of {MAX_HEADER}")
    return decode_header(_read_exact(stream, header_len, "its header"))


def read_car(
    stream: BinaryIO, *, max_block: int = MAX_BLOCK_SIZE
) -> tuple[list[CID], dict[CID, bytes]]:
    """Parse a CARv1 stream into memory: roots and hash-checked blocks (keyed by CIDv1).

    For small archives and tests; :func:`import_car` indexes the file instead
    (:class:`CarIndex`) so that an archive's size never becomes memory.
    """
    roots = _read_roots(stream)
    blocks: dict[CID, bytes] = {}
    for cid, block, _ in _sections(stream, max_block=max_block, max_blocks=None):
        blocks[block_key(cid)] = block
    return roots, blocks


class CarIndex(Mapping[CID, bytes]):
    """The blocks of a CAR file, located by one hash-checking pass and read back on demand.

    Holds only (offset, length) per block.  A block is re-read and re-hashed on
    every access, so a file changed after indexing gives a
    :class:`HashMismatchError`, never wrong bytes.
    """

    def __init__(self, fh: BinaryIO, *, max_block: int, max_blocks: int) -> None:
        self._fh = fh
        self.roots = _read_roots(fh)
        self._where: dict[CID, tuple[int, int]] = {}
        for cid, block, offset in _sections(fh, max_block=max_block, max_blocks=max_blocks):
            self._where.setdefault(block_key(cid), (offset, len(block)))

    def root(self) -> CID:
        """The one root of an artifact archive (:class:`CarFormatError` otherwise)."""
        if len(self.roots) != 1:
            raise CarFormatError(
                f"an artifact archive has exactly one root, this one has {len(self.roots)}"
            )
        return self.roots[0]

    def __getitem__(self, key: CID) -> bytes:
        offset, length = self._where[key]
        self._fh.seek(offset)
        data = self._fh.read(length)
        if len(data) != length or not key.verify(data):
            raise HashMismatchError(f"CAR block {key} changed in the file since it was read")
        return data

    def __iter__(self) -> Iterator[CID]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


# --- artifacts ----------------------------------------------------------------------------------


def _artifact_roots(art: Artifact) -> list[tuple[CID, str]]:
    m = art.manifest
    out = [(art.cid, KIND_ARTIFACT), (m.config.cid, KIND_CONFIG), (m.tensors.cid, KIND_TENSORS)]
    if m.prototypes is not None:
        out.append((m.prototypes.cid, KIND_PROTOTYPES))
    return out


def export_car(
    store: ContentStore,
    cid: CID | str,
    path: str | os.PathLike[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """Verify an artifact, then write it and its lineage as a CARv1 file (atomically)."""
    source = BlockSource(store)
    resolved = resolve(source.get_block, CID.parse(cid), limits=limits)
    seen: set[CID] = set()

    def blocks() -> Iterator[tuple[CID, bytes]]:
        for art in resolved.chain:
            for root, _ in _artifact_roots(art):
                for block_cid, block in iter_dag(root, source.get_block):
                    key = block_key(block_cid)
                    if key not in seen:
                        seen.add(key)
                        yield block_cid, block

    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            for piece in encode_car([resolved.artifact.cid], blocks()):
                fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


@contextmanager
def _indexed(path: str | os.PathLike[str], limits: Limits, max_block: int) -> Iterator[CarIndex]:
    """The CAR file at ``path``, size-checked and indexed, open for the block."""
    src = Path(path)
    try:
        fh = open(src, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {src}: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_car:
            raise CarFormatError(f"CAR file is {size} bytes, over the limit of {limits.max_car}")
        yield CarIndex(fh, max_block=max_block, max_blocks=limits.max_car_blocks)


def import_car(
    store: ContentStore, path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS
) -> CID:
    """Verify the artifact archived in a CAR file; only then store and pin it. Returns its CID."""
    with _indexed(path, limits, store.max_block_size) as blocks:
        return _import_indexed(store, blocks, limits)


def verify_car(
    path: str | os.PathLike[str],
    *,
    limits: Limits = DEFAULT_LIMITS,
    max_block: int = MAX_BLOCK_SIZE,
    base_modules: Collection[str] | None = None,
) -> Resolved:
    """Fully verify the artifact archived in a CAR file from the file alone; store nothing."""
    with _indexed(path, limits, max_block) as blocks, MemoryStore() as empty:
        source = BlockSource(empty, blocks)
        return resolve(source.get_block, blocks.root(), limits=limits, base_modules=base_modules)


def _import_indexed(store: ContentStore, blocks: CarIndex, limits: Limits) -> CID:
    root = blocks.root()
    source = BlockSource(store, blocks)
    resolved = resolve(source.get_block, root, limits=limits)
    with store.ingest():
        for art in reversed(resolved.chain):
            m = art.manifest
            common = {
                "layer": m.layer,
                "domain": m.domain,
                "author": str(m.author),
                "parent": str(m.parent) if m.parent else None,
            }
            for obj, kind in _artifact_roots(art):
                for block_cid, block in iter_dag(obj, source.get_block):
                    store.put_block(block_cid, block)
                store.pin(obj)
                if store.get_meta(obj) is None:
                    size = {
                        KIND_ARTIFACT: len(art.envelope_bytes),
                        KIND_CONFIG: m.config.size,
                        KIND_TENSORS: m.tensors.size,
                        KIND_PROTOTYPES: m.prototypes.size if m.prototypes else 0,
                    }[kind]
                    store.record(
                        MetaSpec(kind=kind, **common).to_meta(block_key(obj), size, m.created)
                    )
    log.info("imported artifact %s (%d updates in its lineage)", root, len(resolved.chain))
    return resolved.artifact.cid
