"""Content identifiers exactly as IPFS makes them (pure, no I/O).

Owns unsigned varints, multihash (sha2-256 and identity), multibase base32
(lower case, unpadded, prefix ``b``) and base58btc, and CIDv1 / CIDv0 parsing
and encoding per ipfs/specs ``src/data-formats/cid.md``.  A :class:`CID` is a
frozen value; ``str(cid)`` is the canonical CIDv1 base32 string that kubo
prints (``bafkrei...`` for raw leaves, ``bafybei...`` for dag-pb nodes).

Everything that parses input from outside bounds its work first: a CID string
longer than :data:`MAX_CID_STRING` or bytes longer than :data:`MAX_CID_BYTES`
are refused before decoding, so a hostile id can never cost more than a few
hundred bytes of work, and a parsed CID's string form contains only
``[a-z2-7]`` (safe as a file name: no path can escape a store directory).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from p2phier.errors import CIDError

# Multicodec codes (https://github.com/multiformats/multicodec table.csv).
RAW = 0x55
DAG_PB = 0x70
LIBP2P_KEY = 0x72
SHA2_256 = 0x12
IDENTITY = 0x00

CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", LIBP2P_KEY: "libp2p-key"}

MAX_VARINT_BYTES = 9  # unsigned-varint spec: at most 9 bytes (63 bits)
MAX_CID_BYTES = 128
MAX_CID_STRING = 256
MAX_IDENTITY_DIGEST = 128


# --- unsigned varints ------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a non-negative int as an unsigned LEB128 varint."""
    if value < 0:
        raise CIDError(f"varint cannot encode a negative number ({value})")
    if value >= 1 << 63:
        raise CIDError("varint value exceeds 63 bits")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode a minimal unsigned varint at ``offset``; return ``(value, new_offset)``."""
    if offset < len(buf) and buf[offset] < 0x80:  # one byte: the common case
        return buf[offset], offset + 1
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        pos = offset + i
        if pos >= len(buf):
            raise CIDError("truncated varint")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise CIDError("varint is not minimally encoded")
            return value, pos + 1
        shift += 7
    raise CIDError("varint longer than 9 bytes")


# --- multibase ---------------------------------------------------------------------

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase ``z`` without its prefix)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out = bytearray()
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    out.extend(b"1" * zeros)
    return bytes(reversed(out)).decode("ascii")


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`CIDError` on a bad character."""
    if len(text) > MAX_CID_STRING:
        raise CIDError("base58 string too long")
    num = 0
    for ch in text.encode("ascii", errors="replace"):
        try:
            num = num * 58 + _B58_INDEX[ch]
        except KeyError:
            raise CIDError(f"invalid base58 character {chr(ch)!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def b32encode(data: bytes) -> str:
    """RFC 4648 base32, lower case, no padding (multibase ``b`` without its prefix)."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def b32decode(text: str) -> bytes:
    if len(text) > MAX_CID_STRING:
        raise CIDError("base32 string too long")
    if not text or any(c not in "abcdefghijklmnopqrstuvwxyz234567" for c in text):
        raise CIDError("invalid base32 (expected lower-case rfc4648 alphabet, no padding)")
    pad = (-len(text)) % 8
    try:
        return base64.b32decode(text.upper() + "=" * pad)
    except ValueError as exc:  # binascii.Error subclasses ValueError
        raise CIDError(f"invalid base32: {exc}") from None


# --- multihash ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Multihash:
    """A self-describing hash: function code and digest."""

    code: int
    digest: bytes

    def to_bytes(self) -> bytes:
        return encode_varint(self.code) + encode_varint(len(self.digest)) + self.digest

    @classmethod
    def from_bytes(cls, buf: bytes, offset: int = 0) -> tuple[Multihash, int]:
        code, offset = decode_varint(buf, offset)
        length, offset = decode_varint(buf, offset)
        if code == SHA2_256 and length != 32:
            raise CIDError(f"sha2-256 multihash must have a 32-byte digest, not {length}")
        if code == IDENTITY and length > MAX_IDENTITY_DIGEST:
            raise CIDError("identity multihash too long")
        if code not in (SHA2_256, IDENTITY):
            raise CIDError(f"unsupported multihash function 0x{code:x}")
        end = offset + length
        if end > len(buf):
            raise CIDError("truncated multihash digest")
        return cls(code, bytes(buf[offset:end])), end

    @classmethod
    def sha256(cls, data: bytes | memoryview) -> Multihash:
        return cls(SHA2_256, hashlib.sha256(data).digest())

    def matches(self, data: bytes | memoryview) -> bool:
        """True when ``data`` hashes to this multihash."""
        if self.code == SHA2_256:
            return hashlib.sha256(data).digest() == self.digest
        if self.code == IDENTITY:
            return bytes(data) == self.digest
        return False


# --- CIDs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CID:
    """A content identifier (version 0 or 1)."""

    version: int
    codec: int
    multihash: Multihash

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise CIDError(f"unsupported CID version {self.version}")
        if self.version == 0 and (self.codec != DAG_PB or self.multihash.code != SHA2_256):
            raise CIDError("CIDv0 must be dag-pb with sha2-256")

    # construction ----------------------------------------------------------------------
    @classmethod
    def raw(cls, data: bytes | memoryview) -> CID:
        """CIDv1 of a raw leaf block."""
        return cls(1, RAW, Multihash.sha256(data))

    @classmethod
    def dag_pb(cls, data: bytes | memoryview) -> CID:
        """CIDv1 of a dag-pb node."""
        return cls(1, DAG_PB, Multihash.sha256(data))

    @classmethod
    def from_bytes(cls, buf: bytes) -> CID:
        """Parse binary CID form (v1: varint version, codec, multihash; v0: bare multihash)."""
        if len(buf) > MAX_CID_BYTES:
            raise CIDError("CID bytes too long")
        if len(buf) == 34 and buf[0] == SHA2_256 and buf[1] == 32:
            mh, _ = Multihash.from_bytes(buf)
            return cls(0, DAG_PB, mh)
        version, off = decode_varint(buf)
        if version != 1:
            raise CIDError(f"unsupported CID version {version}")
        codec, off = decode_varint(buf, off)
        mh, off = Multihash.from_bytes(buf, off)
        if off != len(buf):
            raise CIDError("trailing bytes after CID")
        return cls(1, codec, mh)

    @classmethod
    def parse(cls, text: str | CID) -> CID:
        """Parse a CID string: CIDv1 in base32 (``b``) or base58btc (``z``), or CIDv0 ``Qm...``."""
        if isinstance(text, CID):
            return text
        if not isinstance(text, str):
            raise CIDError(f"a CID must be a string, not {type(text).__name__}")
        if not text or len(text) > MAX_CID_STRING:
            raise CIDError("empty or overlong CID string")
        if len(text) == 46 and text.startswith("Qm"):
            return cls.from_bytes(b58decode(text))
        prefix, body = text[0], text[1:]
        if prefix == "b":
            raw = b32decode(body)
        elif prefix == "B":
            raw = b32decode(body.lower())
        elif prefix == "z":
            raw = b58decode(body)
        else:
            raise CIDError(f"unsupported multibase prefix {prefix!r} in CID {text[:20]!r}")
        if len(raw) == 34 and raw[0] == SHA2_256:
            raise CIDError("CIDv0 must not carry a multibase prefix")
        return cls.from_bytes(raw)

    # encoding --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash.to_bytes()
        return encode_varint(1) + encode_varint(self.codec) + self.multihash.to_bytes()

    def encode(self) -> str:
        """Canonical string: base32 for v1, base58btc for v0."""
        if self.version == 0:
            return b58encode(self.to_bytes())
        return "b" + b32encode(self.to_bytes())

    def __str__(self) -> str:
        return self.encode()

    def to_v1(self) -> CID:
        return CID(1, self.codec, self.multihash)

    def prefix(self) -> bytes:
        """Bitswap block prefix: version, codec, multihash type and length as varints."""
        return (
            encode_varint(self.version)
            + encode_varint(self.codec)
            + encode_varint(self.multihash.code)
            + encode_varint(len(self.multihash.digest))
        )

    @classmethod
    def from_prefix(cls, prefix: bytes, data: bytes | memoryview) -> CID:
        """Rebuild a block's CID from a Bitswap prefix and the block's bytes."""
        version, off = decode_varint(prefix)
        codec, off = decode_varint(prefix, off)
        mh_code, off = decode_varint(prefix, off)
        mh_len, off = decode_varint(prefix, off)
        if off != len(prefix):
            raise CIDError("trailing bytes after CID prefix")
        if mh_code != SHA2_256 or mh_len != 32:
            raise CIDError("only sha2-256/32 block prefixes are supported")
        if version == 0:
            if codec != DAG_PB:
                raise CIDError("CIDv0 prefix must name dag-pb")
        elif version != 1:
            raise CIDError(f"unsupported CID version {version} in prefix")
        return cls(version, codec, Multihash.sha256(data))

    def verify(self, data: bytes | memoryview) -> bool:
        """True when ``data`` is the block this CID names."""
        return self.multihash.matches(data)

    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")


def parse_cid(text: str | CID) -> CID:
    """Module-level shorthand for :meth:`CID.parse`."""
    return CID.parse(text)
