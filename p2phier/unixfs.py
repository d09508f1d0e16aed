"""UnixFS files as dag-pb DAGs, exactly as kubo builds them (pure, no I/O).

Owns the dag-pb codec (``PBNode``/``PBLink``), the UnixFS ``Data`` message,
a streaming builder that reproduces ``ipfs add --cid-version=1`` byte for byte
(262144-byte fixed chunks, raw leaves, balanced layout with at most 174 links
per node, sha2-256, CIDv1), a reader that streams a file back out of any
block source while checking its structure, and :func:`check_file_dag`, the
reader's checks of a whole DAG without reading the file out (a pin applies them).

Facts this module relies on (ipfs/specs ``src/unixfs.md``, ipld dag-pb spec,
boxo ``ipld/unixfs/importer/balanced`` and ``ipld/merkledag/coding.go``):

* A ``PBNode`` is encoded Links (field 2) first, then Data (field 1); a
  ``PBLink`` is Hash (1), Name (2), Tsize (3) in that order.  kubo always
  writes Name, as an empty string, for file links.
* A link's Tsize is the cumulative encoded size of the child's whole subtree
  (a raw leaf's Tsize is its length; a node's is its own encoded length plus
  its links' Tsizes).
* Internal nodes of a raw-leaf file carry UnixFS ``Data`` with Type=File,
  ``filesize`` and one ``blocksizes`` entry per link (non-packed), no Data bytes.
* An empty file is the raw leaf of zero bytes; a file of one chunk is that
  chunk's raw leaf; more chunks hang under a balanced tree: the first leaf is
  wrapped into a depth-1 node, which is filled to 174 links; when a tree of
  depth d is full and data remains, it becomes the first child of a depth d+1
  root, whose further children are filled the same way.  The last branch may
  therefore be a chain of single-child nodes.

Everything parsed here may come from a hostile peer: a dag-pb node over
:data:`MAX_NODE_SIZE` is refused before parsing, link counts are capped at
:data:`MAX_PB_LINKS`, varints at 64 bits, traversals are iterative and capped
at :data:`MAX_DEPTH`, and every inconsistency raises :class:`UnixFSError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from p2phier.cid import CID, DAG_PB, RAW
from p2phier.errors import CIDError, UnixFSError

log = logging.getLogger(__name__)

CHUNK_SIZE: int = 262144
MAX_LINKS: int = 174

#: A dag-pb block larger than this is refused before it is parsed.
MAX_NODE_SIZE: int = 1 << 20
#: At most this many links in one decoded node (kubo writes 174; other importers
#: use up to 1024; 8192 leaves room for large basic directories).
MAX_PB_LINKS: int = 8192
#: Deepest DAG the reader follows (174**32 chunks is far beyond any real file).
MAX_DEPTH: int = 32
#: Largest leaf (raw or dag-pb data) the builder will make; the Bitswap limit.
MAX_CHUNK_SIZE: int = 1 << 20

# UnixFS Data.DataType values (ipfs/specs src/unixfs.md).
UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2
UNIXFS_METADATA = 3
UNIXFS_SYMLINK = 4
UNIXFS_HAMT_SHARD = 5

_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LEN = 2
_WIRE_FIXED32 = 5

_U64_MAX = (1 << 64) - 1


class FileTooLargeError(UnixFSError):
    """A file is larger than the caller's ``max_size``; refused before reading it."""


#: Beyond its first ``READ_VISITS_FLOOR`` block reads, a file's blocks must average at
#: least ``MIN_AVERAGE_BLOCK`` bytes of its size: a reader visits at most
#: ``READ_VISITS_FLOOR + size // MIN_AVERAGE_BLOCK`` blocks.  kubo's (and p2phier's) chunks
#: are 256 KiB, and a small honest file may use any chunker; a DAG whose links fan in to
#: the same few tiny blocks can declare gigabytes from a few kilobytes and cost a block
#: read per byte (6 blocks declaring 1.6e11 bytes; a 33-block "diamond" declaring 4 GiB
#: meant 2^32 reads of one 1-byte leaf).
MIN_AVERAGE_BLOCK = 4096
READ_VISITS_FLOOR = 1 << 16


class DagAmplificationError(UnixFSError):
    """A file's DAG reuses small blocks to declare far more bytes than it holds."""


# --- protobuf wire helpers ---------------------------------------------------------------
# Minimal and strict: only what dag-pb and UnixFS need, 64-bit varints (protobuf
# allows 10 bytes; cid.decode_varint deliberately stops at multiformats' 9).


def _pb_varint(value: int) -> bytes:
    if value < 0 or value > _U64_MAX:
        raise UnixFSError(f"protobuf varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # one byte: most tags and lengths (hot in walks)
        return buf[pos], pos + 1
    value = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise UnixFSError(f"truncated varint in {what}")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > _U64_MAX:
                raise UnixFSError(f"varint in {what} exceeds 64 bits")
            return value, pos + i + 1
    raise UnixFSError(f"varint in {what} longer than 10 bytes")


def _read_tag(buf: memoryview, pos: int, what: str) -> tuple[int, int, int]:
    key, pos = _read_varint(buf, pos, what)
    field_no, wire = key >> 3, key & 7
    if field_no == 0:
        raise UnixFSError(f"field number 0 in {what}")
    return field_no, wire, pos


def _read_bytes(buf: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    length, pos = _read_varint(buf, pos, what)
    end = pos + length
    if end > len(buf):
        raise UnixFSError(f"length-delimited field in {what} runs past the end ({length} bytes)")
    return buf[pos:end], end


def _expect_wire(field_no: int, wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise UnixFSError(f"{what} field {field_no} has wire type {wire}, expected {expected}")


# --- dag-pb ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link: child CID, name (empty for file chunks) and subtree size."""

    cid: CID
    name: str
    tsize: int


@dataclass(frozen=True, slots=True)
class PBNode:
    """A dag-pb node.  ``data`` empty means the Data field is absent when encoded."""

    links: tuple[PBLink, ...]
    data: bytes


def _encode_link(link: PBLink) -> bytes:
    cid_bytes = link.cid.to_bytes()
    name = link.name.encode("utf-8")
    return (
        b"\x0a"
        + _pb_varint(len(cid_bytes))
        + cid_bytes
        + b"\x12"
        + _pb_varint(len(name))
        + name
        + b"\x18"
        + _pb_varint(link.tsize)
    )


def encode_pbnode(node: PBNode) -> bytes:
    """Canonical dag-pb bytes: every link (Hash, Name, Tsize) first, then Data if non-empty.

    Name is always written (kubo writes ``""`` for file links), so the bytes equal
    kubo's for the same node.
    """
    out = bytearray()
    for link in node.links:
        body = _encode_link(link)
        out += b"\x12" + _pb_varint(len(body)) + body
    if node.data:
        out += b"\x0a" + _pb_varint(len(node.data)) + node.data
    return bytes(out)


def _decode_link(buf: memoryview) -> PBLink:
    pos = 0
    last = 0
    cid: CID | None = None
    name = ""
    tsize: int | None = None
    while pos < len(buf):
        field_no, wire, pos = _read_tag(buf, pos, "PBLink")
        if field_no <= last:
            raise UnixFSError(f"PBLink field {field_no} out of order or repeated")
        last = field_no
        if field_no == 1:
            _expect_wire(1, wire, _WIRE_LEN, "PBLink")
            raw, pos = _read_bytes(buf, pos, "PBLink.Hash")
            try:
                cid = CID.from_bytes(bytes(raw))
            except CIDError as exc:
                raise UnixFSError(f"PBLink.Hash is not a valid CID: {exc}") from None
        elif field_no == 2:
            _expect_wire(2, wire, _WIRE_LEN, "PBLink")
            raw, pos = _read_bytes(buf, pos, "PBLink.Name")
            try:
                name = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise UnixFSError("PBLink.Name is not valid UTF-8") from None
        elif field_no == 3:
            _expect_wire(3, wire, _WIRE_VARINT, "PBLink")
            tsize, pos = _read_varint(buf, pos, "PBLink.Tsize")
        else:
            raise UnixFSError(f"unknown PBLink field {field_no}")
    if cid is None:
        raise UnixFSError("PBLink without a Hash")
    # Tsize is optional in dag-pb; an absent one reads as 0 (it is only a hint).
    return PBLink(cid, name, 0 if tsize is None else tsize)


def decode_pbnode(block: bytes | memoryview) -> PBNode:
    """Strictly decode a dag-pb node; raise :class:`UnixFSError` on anything malformed.

    Refused: blocks over :data:`MAX_NODE_SIZE`, more than :data:`MAX_PB_LINKS`
    links, unknown fields, wrong wire types, Data before Links, Data twice, a link
    without Hash, out-of-order link fields, truncation, over-long varints.
    """
    if len(block) > MAX_NODE_SIZE:
        raise UnixFSError(f"dag-pb node of {len(block)} bytes exceeds {MAX_NODE_SIZE}")
    buf = memoryview(block)
    pos = 0
    links: list[PBLink] = []
    data: bytes | None = None
    while pos < len(buf):
        field_no, wire, pos = _read_tag(buf, pos, "PBNode")
        if field_no == 2:
            _expect_wire(2, wire, _WIRE_LEN, "PBNode")
            if data is not None:
                raise UnixFSError("PBNode Links after Data (non-canonical order)")
            if len(links) >= MAX_PB_LINKS:
                raise UnixFSError(f"dag-pb node has more than {MAX_PB_LINKS} links")
            raw, pos = _read_bytes(buf, pos, "PBNode.Links")
            links.append(_decode_link(raw))
        elif field_no == 1:
            _expect_wire(1, wire, _WIRE_LEN, "PBNode")
            if data is not None:
                raise UnixFSError("PBNode has two Data fields")
            raw, pos = _read_bytes(buf, pos, "PBNode.Data")
            data = bytes(raw)
        else:
            raise UnixFSError(f"unknown PBNode field {field_no} (wire type {wire})")
    return PBNode(tuple(links), b"" if data is None else data)


# --- UnixFS Data --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS ``Data`` message carried in a dag-pb node's Data field.

    ``data`` empty means the field is absent when encoded.  Optional metadata
    (hashType/fanout for HAMT shards, mode, mtime) is kept so a node round-trips;
    ``mtime`` is ``(seconds, nanoseconds or None)``.
    """

    type: int
    data: bytes
    filesize: int | None
    blocksizes: tuple[int, ...]
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None


def encode_unixfs(d: UnixFSData) -> bytes:
    """Encode as kubo (gogo-protobuf, proto2) does: fields in number order, blocksizes unpacked."""
    out = bytearray(b"\x08" + _pb_varint(d.type))
    if d.data:
        out += b"\x12" + _pb_varint(len(d.data)) + d.data
    if d.filesize is not None:
        out += b"\x18" + _pb_varint(d.filesize)
    for size in d.blocksizes:
        out += b"\x20" + _pb_varint(size)
    if d.hash_type is not None:
        out += b"\x28" + _pb_varint(d.hash_type)
    if d.fanout is not None:
        out += b"\x30" + _pb_varint(d.fanout)
    if d.mode is not None:
        out += b"\x38" + _pb_varint(d.mode)
    if d.mtime is not None:
        seconds, nanos = d.mtime
        body = b"\x08" + _pb_varint(seconds & _U64_MAX)  # int64: two's complement
        if nanos is not None:
            body += b"\x15" + nanos.to_bytes(4, "little")
        out += b"\x42" + _pb_varint(len(body)) + body
    return bytes(out)


def _decode_mtime(buf: memoryview) -> tuple[int, int | None]:
    pos = 0
    seconds: int | None = None
    nanos: int | None = None
    last = 0
    while pos < len(buf):
        field_no, wire, pos = _read_tag(buf, pos, "UnixTime")
        if field_no <= last:
            raise UnixFSError(f"UnixTime field {field_no} out of order or repeated")
        last = field_no
        if field_no == 1:
            _expect_wire(1, wire, _WIRE_VARINT, "UnixTime")
            raw, pos = _read_varint(buf, pos, "UnixTime.Seconds")
            seconds = raw - (1 << 64) if raw >> 63 else raw
        elif field_no == 2:
            _expect_wire(2, wire, _WIRE_FIXED32, "UnixTime")
            if pos + 4 > len(buf):
                raise UnixFSError("truncated UnixTime.FractionalNanoseconds")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
            if nanos >= 1_000_000_000:
                raise UnixFSError("UnixTime.FractionalNanoseconds must be below 1e9")
        else:
            raise UnixFSError(f"unknown UnixTime field {field_no}")
    if seconds is None:
        raise UnixFSError("UnixTime without Seconds")
    return seconds, nanos


def decode_unixfs(b: bytes | memoryview) -> UnixFSData:
    """Strictly decode a UnixFS ``Data`` message; raise :class:`UnixFSError` if malformed.

    Fields must appear in number order (as every known encoder writes them);
    blocksizes are accepted unpacked (kubo) or packed (valid proto2 wire form).
    """
    if len(b) > MAX_NODE_SIZE:
        raise UnixFSError("UnixFS Data larger than a dag-pb node can be")
    buf = memoryview(b)
    pos = 0
    last = 0
    type_: int | None = None
    data = b""
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: tuple[int, int | None] | None = None
    while pos < len(buf):
        field_no, wire, pos = _read_tag(buf, pos, "UnixFS Data")
        if field_no < last or (field_no == last and field_no != 4):
            raise UnixFSError(f"UnixFS Data field {field_no} out of order or repeated")
        last = field_no
        if field_no == 4:
            if wire == _WIRE_VARINT:
                if len(blocksizes) >= MAX_PB_LINKS:
                    raise UnixFSError("too many UnixFS blocksizes")
                size, pos = _read_varint(buf, pos, "UnixFS blocksizes")
                blocksizes.append(size)
            elif wire == _WIRE_LEN:
                packed, pos = _read_bytes(buf, pos, "UnixFS blocksizes")
                ppos = 0
                while ppos < len(packed):
                    if len(blocksizes) >= MAX_PB_LINKS:
                        raise UnixFSError("too many UnixFS blocksizes")
                    size, ppos = _read_varint(packed, ppos, "UnixFS blocksizes")
                    blocksizes.append(size)
            else:
                raise UnixFSError(f"UnixFS blocksizes has wire type {wire}")
        elif field_no in (1, 3, 5, 6, 7):
            _expect_wire(field_no, wire, _WIRE_VARINT, "UnixFS Data")
            value, pos = _read_varint(buf, pos, "UnixFS Data")
            if field_no == 1:
                type_ = value
            elif field_no == 3:
                filesize = value
            elif field_no == 5:
                hash_type = value
            elif field_no == 6:
                fanout = value
            else:
                mode = value
        elif field_no == 2:
            _expect_wire(2, wire, _WIRE_LEN, "UnixFS Data")
            raw, pos = _read_bytes(buf, pos, "UnixFS Data.Data")
            data = bytes(raw)
        elif field_no == 8:
            _expect_wire(8, wire, _WIRE_LEN, "UnixFS Data")
            raw, pos = _read_bytes(buf, pos, "UnixFS Data.mtime")
            mtime = _decode_mtime(raw)
        else:
            raise UnixFSError(f"unknown UnixFS Data field {field_no}")
    if type_ is None:
        raise UnixFSError("UnixFS Data without a Type")
    if type_ > UNIXFS_HAMT_SHARD:
        raise UnixFSError(f"unknown UnixFS node type {type_}")
    return UnixFSData(type_, data, filesize, tuple(blocksizes), hash_type, fanout, mode, mtime)


# --- the builder ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    cid: CID
    tsize: int  # cumulative encoded size of the subtree
    filesize: int  # bytes of file content under it


@dataclass(slots=True)
class FileDagBuilder:
    """Streaming builder of kubo's balanced raw-leaf UnixFS file DAG.

    Feed bytes with :meth:`write` (any split gives the same DAG), then call
    :meth:`finish`.  Blocks are handed out as soon as they are final, children
    always before their parents; identical chunks give identical blocks, which
    are handed out each time (a store treats a repeated put as a no-op).
    Memory is bounded by one chunk plus ``max_links`` pending links per level.
    """

    chunk_size: int = CHUNK_SIZE
    max_links: int = MAX_LINKS
    # kubo's other layouts, for reading and cross-checking legacy DAGs only:
    # raw_leaves=False wraps each chunk in a dag-pb File node (kubo before
    # CIDv1); cid_version=0 gives dag-pb nodes CIDv0 (raw leaves stay CIDv1).
    raw_leaves: bool = field(default=True, kw_only=True)
    cid_version: int = field(default=1, kw_only=True)
    _buf: bytearray = field(default_factory=bytearray, init=False, repr=False)
    # _levels[h]: finished subtrees of height h (0 = leaves) not yet under a parent.
    _levels: list[list[_Child]] = field(default_factory=list, init=False, repr=False)
    _chunks: int = field(default=0, init=False)
    _size: int = field(default=0, init=False)
    _finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise UnixFSError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")
        if not 2 <= self.max_links <= MAX_PB_LINKS:
            raise UnixFSError(f"max links per node must be between 2 and {MAX_PB_LINKS}")
        if self.cid_version not in (0, 1):
            raise UnixFSError(f"CID version must be 0 or 1, not {self.cid_version}")

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes | memoryview) -> list[tuple[CID, bytes]]:
        """Add file bytes; return the blocks completed by them (maybe none)."""
        if self._finished:
            raise UnixFSError("write() after finish() on a FileDagBuilder")
        out: list[tuple[CID, bytes]] = []
        view = memoryview(data).cast("B")
        self._size += len(view)
        pos = 0
        while pos < len(view):
            take = min(self.chunk_size - len(self._buf), len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self.chunk_size:
                self._add_leaf(bytes(self._buf), out)
                self._buf.clear()
        return out

    def finish(self) -> tuple[CID, list[tuple[CID, bytes]]]:
        """Close the file; return ``(root, remaining blocks)`` with the root's block last."""
        if self._finished:
            raise UnixFSError("finish() called twice on a FileDagBuilder")
        self._finished = True
        out: list[tuple[CID, bytes]] = []
        if self._buf or self._chunks == 0:
            # The short tail chunk, or the empty file's single empty raw leaf.
            self._add_leaf(bytes(self._buf), out)
            self._buf.clear()
        if len(self._levels) == 1 and len(self._levels[0]) == 1:
            # One chunk: the raw leaf is the file (its block was already handed out).
            return self._levels[0][0].cid, out
        # Close every open level bottom-up.  Any non-empty level below the top (and
        # every level above one that was closed) becomes one more child of the level
        # above: this is where kubo's last branch gets its single-child chains.  A
        # close may fill the level above and add a new top, hence the live bound.
        height = 0
        while height < len(self._levels) - 1:
            if self._levels[height]:
                self._close_level(height, out)
            height += 1
        root_children = self._levels[-1]
        root = self._make_node(root_children, out)
        root_children.clear()
        return root.cid, out

    # internals ----------------------------------------------------------------------------
    def _add_leaf(self, chunk: bytes, out: list[tuple[CID, bytes]]) -> None:
        if self.raw_leaves:
            cid, block = CID.raw(chunk), chunk
        else:
            meta = UnixFSData(UNIXFS_FILE, chunk, len(chunk), ())
            block = encode_pbnode(PBNode((), encode_unixfs(meta)))
            cid = self._node_cid(block)
        out.append((cid, block))
        self._chunks += 1
        self._push(0, _Child(cid, len(block), len(chunk)), out)

    def _node_cid(self, block: bytes) -> CID:
        cid = CID.dag_pb(block)
        return CID(0, DAG_PB, cid.multihash) if self.cid_version == 0 else cid

    def _push(self, height: int, child: _Child, out: list[tuple[CID, bytes]]) -> None:
        if height == len(self._levels):
            if height > MAX_DEPTH:
                raise UnixFSError("file too large for the DAG depth limit")
            self._levels.append([])
        level = self._levels[height]
        if len(level) == self.max_links:
            # A full node is only closed when more content arrives (kubo keeps
            # the last full tree open: it may turn out to be the root).
            self._close_level(height, out)
        level.append(child)

    def _close_level(self, height: int, out: list[tuple[CID, bytes]]) -> None:
        level = self._levels[height]
        node = self._make_node(level, out)
        level.clear()
        self._push(height + 1, node, out)

    def _make_node(self, children: list[_Child], out: list[tuple[CID, bytes]]) -> _Child:
        filesize = sum(c.filesize for c in children)
        data = encode_unixfs(
            UnixFSData(UNIXFS_FILE, b"", filesize, tuple(c.filesize for c in children))
        )
        block = encode_pbnode(PBNode(tuple(PBLink(c.cid, "", c.tsize) for c in children), data))
        cid = self._node_cid(block)
        out.append((cid, block))
        return _Child(cid, len(block) + sum(c.tsize for c in children), filesize)


def build_file(data: bytes | memoryview) -> tuple[CID, list[tuple[CID, bytes]]]:
    """Build a whole file at once: ``(root, blocks)``, children before parents, root last."""
    builder = FileDagBuilder()
    blocks = builder.write(data)
    root, rest = builder.finish()
    blocks.extend(rest)
    return root, blocks


# --- reading ----------------------------------------------------------------------------------


def child_links(cid: CID, block: bytes | memoryview) -> list[CID]:
    """CIDs a block links to: none for raw, the (validated) link CIDs for dag-pb."""
    if cid.codec == RAW:
        return []
    if cid.codec == DAG_PB:
        return [link.cid for link in decode_pbnode(block).links]
    raise UnixFSError(f"cannot follow links of codec 0x{cid.codec:x} in {cid}")


def iter_dag(root: CID, get_block: Callable[[CID], bytes]) -> Iterator[tuple[CID, bytes]]:
    """Every distinct block of the DAG under ``root``, each once, depth-first pre-order.

    A parent comes before its children; a block reachable twice (identical
    chunks) is yielded the first time only.  Depth is capped at
    :data:`MAX_DEPTH`; the walk is iterative.
    """
    seen: set[CID] = set()
    stack: list[tuple[CID, int]] = [(root, 0)]
    while stack:
        cid, depth = stack.pop()
        key = cid.to_v1()
        if key in seen:
            continue
        if depth > MAX_DEPTH:
            raise UnixFSError(f"DAG under {root} is deeper than {MAX_DEPTH} levels")
        seen.add(key)
        block = get_block(cid)
        links = child_links(cid, block)
        yield cid, block
        stack.extend((c, depth + 1) for c in reversed(links))


def _file_node(cid: CID, block: bytes) -> tuple[PBNode, UnixFSData]:
    node = decode_pbnode(block)
    if not node.data:
        raise UnixFSError(f"dag-pb node {cid} has no UnixFS Data")
    meta = decode_unixfs(node.data)
    if meta.type in (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD):
        raise UnixFSError(f"{cid} is a directory, not a file")
    if meta.type not in (UNIXFS_FILE, UNIXFS_RAW):
        raise UnixFSError(f"{cid} is a UnixFS node of type {meta.type}, not a file")
    if len(meta.blocksizes) != len(node.links):
        raise UnixFSError(
            f"{cid} has {len(node.links)} links but {len(meta.blocksizes)} blocksizes"
        )
    expected = len(meta.data) + sum(meta.blocksizes)
    if meta.filesize is not None and meta.filesize != expected:
        raise UnixFSError(
            f"{cid} claims filesize {meta.filesize} but its data and blocksizes add to {expected}"
        )
    return node, meta


def _node_size(cid: CID, block: bytes) -> int:
    if cid.codec == RAW:
        return len(block)
    if cid.codec != DAG_PB:
        raise UnixFSError(f"{cid} is neither raw nor dag-pb; not a UnixFS file")
    _, meta = _file_node(cid, block)
    return len(meta.data) + sum(meta.blocksizes)


def file_size(root: CID, get_block: Callable[[CID], bytes]) -> int:
    """The file's size as its root block states it (one block read)."""
    return _node_size(root, get_block(root))


def _root_size(root: CID, root_block: bytes, max_size: int | None) -> int:
    total = _node_size(root, root_block)
    if max_size is not None and total > max_size:
        raise FileTooLargeError(f"file {root} is {total} bytes, over the limit of {max_size}")
    return total


def _check_claim(cid: CID, size: int, claimed: int) -> None:
    if size != claimed:
        what = f"leaf {cid} has" if cid.codec == RAW else f"node {cid} holds"
        raise UnixFSError(f"{what} {size} bytes but its parent claims {claimed}")


def _check_dag(
    root: CID,
    root_block: bytes,
    get_block: Callable[[CID], bytes],
    total: int,
    leaf_size: Callable[[CID], int] | None,
) -> None:
    """Check the structure of the file DAG under ``root`` (declaring ``total`` bytes) as a
    whole, each distinct block once, before any of its content is read out.

    Every dag-pb node must be a UnixFS file node (:func:`_file_node`) holding the size
    its parent claims; the longest path may not exceed :data:`MAX_DEPTH` links; a full
    read may not take more than ``READ_VISITS_FLOOR + total // MIN_AVERAGE_BLOCK`` block
    reads (:class:`DagAmplificationError`).  A raw leaf's size comes from ``leaf_size``;
    with ``None`` raw leaves are not looked at (a reader checks each as it reads it).
    Reads, depths and sizes are found bottom up and remembered per block, so a DAG whose
    links fan in costs its distinct blocks, not its paths.
    """
    limit = READ_VISITS_FLOOR + total // MIN_AVERAGE_BLOCK
    # per distinct block: (reads of a full read under it, links on its longest path
    # down, the bytes it holds or None for a raw leaf not looked at)
    done: dict[CID, tuple[int, int, int | None]] = {}
    # (cid, its block if at hand, depth, its parsed node once its children are pushed)
    stack: list[tuple[CID, bytes | None, int, tuple[PBNode, UnixFSData] | None]] = [
        (root, root_block, 0, None)
    ]
    while stack:
        cid, block, depth, parsed = stack.pop()
        key = cid.to_v1()
        if key in done:
            continue
        if parsed is None:
            if depth > MAX_DEPTH:
                raise UnixFSError(f"file {root} is deeper than {MAX_DEPTH} levels")
            if cid.codec == RAW:
                done[key] = (1, 0, None if leaf_size is None else leaf_size(cid))
                continue
            if cid.codec != DAG_PB:
                raise UnixFSError(f"{cid} is neither raw nor dag-pb; not a UnixFS file")
            node, meta = _file_node(cid, block if block is not None else get_block(cid))
            stack.append((cid, None, depth, (node, meta)))
            children = dict.fromkeys(link.cid for link in reversed(node.links))
            stack.extend((c, None, depth + 1, None) for c in children if c.to_v1() not in done)
            continue
        node, meta = parsed
        reads, height = 1, 0
        for link, claimed in zip(node.links, meta.blocksizes, strict=True):
            child_reads, child_height, child_size = done[link.cid.to_v1()]
            if child_size is not None:
                _check_claim(link.cid, child_size, claimed)
            reads += child_reads
            height = max(height, child_height + 1)
        if depth + height > MAX_DEPTH:
            raise UnixFSError(f"file {root} is deeper than {MAX_DEPTH} levels")
        if reads > limit:
            raise DagAmplificationError(
                f"file {root} declares {total} bytes but reading it takes more than {limit} "
                f"block reads (its blocks average under {MIN_AVERAGE_BLOCK} bytes: a DAG whose "
                "links reuse small blocks); refused before reading it"
            )
        done[key] = (reads, height, len(meta.data) + sum(meta.blocksizes))


def check_file_dag(
    root: CID,
    get_block: Callable[[CID], bytes],
    *,
    max_size: int | None = None,
    leaf_size: Callable[[CID], int] | None = None,
) -> int:
    """Check a whole UnixFS file DAG as :func:`read_file` does, without reading it out;
    return the size its root declares.

    The checks, each distinct block looked at once: the root is a raw block or a
    UnixFS File (or Raw) node whose declared size is within ``max_size``
    (:class:`FileTooLargeError`); every dag-pb node is such a node, its ``filesize``
    equal to its data plus blocksizes, each child holding exactly the size its
    blocksize claims; no path longer than :data:`MAX_DEPTH` links; a full read within
    ``READ_VISITS_FLOOR + size // MIN_AVERAGE_BLOCK`` block reads
    (:class:`DagAmplificationError`).  Anything else raises :class:`UnixFSError`.
    ``leaf_size`` gives a raw leaf's length without reading it (a store's
    ``block_size``); by default each leaf is fetched with ``get_block``.
    """
    root_block = get_block(root)
    total = _root_size(root, root_block, max_size)
    _check_dag(root, root_block, get_block, total, leaf_size or (lambda c: len(get_block(c))))
    return total


def read_file(
    root: CID, get_block: Callable[[CID], bytes], *, max_size: int | None = None
) -> Iterator[bytes]:
    """Stream a UnixFS file's bytes (raw or dag-pb leaves, any balanced/trickle shape).

    ``get_block`` must return hash-verified bytes; the structure is not trusted.
    Before anything is yielded, the DAG's nodes are checked as by
    :func:`check_file_dag`: a root claiming more than ``max_size`` bytes raises
    :class:`FileTooLargeError`, a DAG needing more block reads than its size allows
    :class:`DagAmplificationError`, a malformed, non-file or too deep one
    :class:`UnixFSError`.  Each raw leaf's size is checked against its parent's
    claim as it is read, before its bytes are yielded.
    """
    root_block = get_block(root)
    total = _root_size(root, root_block, max_size)
    _check_dag(root, root_block, get_block, total, None)
    # Stack of pending (cid, block-or-None, claimed size); iterative DFS in order.  The
    # nodes' sizes, types and depths were checked above; the leaves are checked here.
    stack: list[tuple[CID, bytes | None, int]] = [(root, root_block, total)]
    produced = 0
    while stack:
        cid, block, claimed = stack.pop()
        if block is None:
            block = get_block(cid)
        if cid.codec == RAW:
            _check_claim(cid, len(block), claimed)
            produced += len(block)
            if block:
                yield block
            continue
        node, meta = _file_node(cid, block)
        if meta.data:
            produced += len(meta.data)
            yield meta.data
        for link, bsize in zip(reversed(node.links), reversed(meta.blocksizes), strict=True):
            stack.append((link.cid, None, bsize))
    if produced != total:  # pragma: no cover - implied by the per-node checks
        raise UnixFSError(f"file {root} produced {produced} bytes, expected {total}")
