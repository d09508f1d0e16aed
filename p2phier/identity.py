"""Node identity: Ed25519 keys, libp2p peer ids and domain-separated signatures.

A node's key is its libp2p identity.  The peer id is derived exactly as
libp2p's peer-id spec says for Ed25519: the public key is serialised as the
libp2p ``PublicKey`` protobuf (``Type = Ed25519``, ``Data = 32 bytes``), and
because that is at most 42 bytes the peer id is its *identity* multihash,
printed in base58btc (``12D3KooW...``).  The public key can therefore be read
back out of the peer id, and any p2phier signature is checkable from the
author's peer id alone.

Signatures never cover bare payloads: every signed message is framed as
``varint(len(domain)) || domain || varint(len(payload)) || payload`` (the shape
of libp2p's signed envelopes), so a signature made for one purpose can never be
replayed as another.

Transport peers are another matter: any libp2p peer may connect to a node,
whatever its key type (RSA and ECDSA keys are too large to inline, so their
peer ids are sha2-256 multihashes, ``Qm...``; secp256k1 keys are inlined like
Ed25519).  :func:`parse_network_peer_id` accepts every peer id the peer-id spec
allows, for dialing, serving and bookkeeping; only p2phier's own signed objects
(records, announcements, manifests) need an Ed25519 author (:class:`PeerId`).

Key files hold the libp2p ``PrivateKey`` protobuf (Type = Ed25519, Data = the
64-byte seed||public key, as go-libp2p writes it), written atomically with mode
0600; a key file any other user can read is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2phier.cid import (
    CID,
    IDENTITY,
    LIBP2P_KEY,
    SHA2_256,
    Multihash,
    b58decode,
    b58encode,
    decode_varint,
    encode_varint,
)
from p2phier.errors import (
    CIDError,
    InsecureKeyFileError,
    InvalidPeerIdError,
    KeyFileError,
    SignatureError,
)
from p2phier.fsutil import write_atomic

KEY_TYPE_ED25519 = 1
# PublicKey{Type: Ed25519 (field 1, varint), Data: 32 bytes (field 2, length-delimited)}
_PUB_PREFIX = bytes([0x08, KEY_TYPE_ED25519, 0x12, 0x20])
# PrivateKey{Type: Ed25519, Data: 64 bytes}
_PRIV_PREFIX = bytes([0x08, KEY_TYPE_ED25519, 0x12, 0x40])
MAX_KEY_FILE = 4096
#: bytes of an Ed25519 signature
SIGNATURE_SIZE = 64

#: libp2p ``KeyType`` values (peer-id spec): RSA, Ed25519, Secp256k1, ECDSA
KEY_TYPE_NAMES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}
#: the peer-id spec inlines a public key (identity multihash) only up to this size
MAX_INLINE_KEY = 42
#: the longest peer id text accepted (a CIDv1 of an inlined key is ~62 characters)
MAX_PEER_ID_TEXT = 128


def _raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_protobuf(raw_public: bytes) -> bytes:
    """libp2p ``PublicKey`` protobuf bytes for a 32-byte Ed25519 public key."""
    if len(raw_public) != 32:
        raise InvalidPeerIdError("an Ed25519 public key is 32 bytes")
    return _PUB_PREFIX + raw_public


def parse_network_peer_id(text: str) -> str:
    """Check a peer id of ANY libp2p key type and return its canonical base58btc text.

    Accepts the two forms of the peer-id spec: a base58btc multihash
    (``12D3KooW...``, ``16Uiu2...``, ``Qm...``) and a CIDv1 with the
    ``libp2p-key`` codec (``bafz...``).  The multihash is either a sha2-256 hash
    of the key (RSA, ECDSA: keys over 42 bytes) or an identity multihash that
    inlines a ``PublicKey`` protobuf of a known key type.  Raises
    :class:`InvalidPeerIdError`; nothing here requires Ed25519.
    """
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_PEER_ID_TEXT:
        raise InvalidPeerIdError("a peer id must be a short base58 or CIDv1 string")
    try:
        if text[0] in "1Q":  # base58btc multihash (identity: "1...", sha2-256: "Qm...")
            data = b58decode(text)
        else:
            cid = CID.parse(text)
            if cid.version != 1 or cid.codec != LIBP2P_KEY:
                raise InvalidPeerIdError(f"{text!r} is a CID, but not of a libp2p key")
            data = cid.multihash.to_bytes()
        mh, end = Multihash.from_bytes(data)
    except CIDError as exc:
        raise InvalidPeerIdError(f"invalid peer id {text!r}: {exc}") from None
    if end != len(data):
        raise InvalidPeerIdError(f"invalid peer id {text!r}: trailing bytes")
    if mh.code == IDENTITY:
        _check_public_key_protobuf(mh.digest, text)
    elif mh.code != SHA2_256:  # pragma: no cover - Multihash.from_bytes allows no other
        raise InvalidPeerIdError(f"invalid peer id {text!r}: unsupported hash")
    return b58encode(data)


def _check_public_key_protobuf(body: bytes, text: str) -> None:
    """``PublicKey{Type = 1 (varint), Data = 2 (bytes)}``, both required, in that order."""
    if len(body) > MAX_INLINE_KEY:
        raise InvalidPeerIdError(f"invalid peer id {text!r}: an inlined key is at most 42 bytes")
    try:
        if body[:1] != b"\x08":
            raise CIDError("no key type")
        key_type, off = decode_varint(body, 1)
        if body[off : off + 1] != b"\x12":
            raise CIDError("no key data")
        length, off = decode_varint(body, off + 1)
    except (CIDError, IndexError) as exc:
        raise InvalidPeerIdError(f"invalid peer id {text!r}: bad inlined key ({exc})") from None
    if key_type not in KEY_TYPE_NAMES:
        raise InvalidPeerIdError(f"invalid peer id {text!r}: unknown key type {key_type}")
    if length == 0 or off + length != len(body):
        raise InvalidPeerIdError(f"invalid peer id {text!r}: inlined key has the wrong length")


def signing_bytes(domain: bytes, payload: bytes) -> bytes:
    """The exact bytes a domain-separated signature covers."""
    if not domain:
        raise ValueError("a signing domain must not be empty")
    return encode_varint(len(domain)) + domain + encode_varint(len(payload)) + payload


@dataclass(frozen=True, slots=True)
class PeerId:
    """A libp2p peer id for an Ed25519 key (identity multihash of its public key)."""

    raw_public: bytes

    @property
    def multihash_bytes(self) -> bytes:
        return Multihash(IDENTITY, public_key_protobuf(self.raw_public)).to_bytes()

    def __str__(self) -> str:
        return b58encode(self.multihash_bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        try:
            mh, end = Multihash.from_bytes(data)
        except CIDError as exc:
            raise InvalidPeerIdError(f"peer id is not a multihash: {exc}") from None
        if end != len(data):
            raise InvalidPeerIdError("trailing bytes after peer id")
        if mh.code != IDENTITY:
            # A sha2-256 peer id (RSA and other large keys) carries no key: p2phier
            # only accepts Ed25519 authors, whose keys are inlined.
            raise InvalidPeerIdError("only Ed25519 (identity-multihash) peer ids are supported")
        body = mh.digest
        if len(body) != 36 or body[:4] != _PUB_PREFIX:
            raise InvalidPeerIdError("peer id does not embed an Ed25519 public key")
        return cls(body[4:])

    @classmethod
    def parse(cls, text: str) -> PeerId:
        if not isinstance(text, str) or not 1 <= len(text) <= 128:
            raise InvalidPeerIdError("peer id must be a short base58 string")
        try:
            data = b58decode(text)
        except CIDError as exc:
            raise InvalidPeerIdError(f"invalid peer id {text!r}: {exc}") from None
        return cls.from_bytes(data)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw_public)

    def verify(self, domain: bytes, payload: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is this peer's over ``payload``."""
        if len(signature) != 64:
            raise SignatureError(f"an Ed25519 signature is 64 bytes, got {len(signature)}")
        try:
            self.public_key().verify(signature, signing_bytes(domain, payload))
        except InvalidSignature:
            raise SignatureError(f"signature does not verify for author {self}") from None


class Identity:
    """A node's Ed25519 key pair."""

    __slots__ = ("_private", "peer_id")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.peer_id = PeerId(_raw_public(private.public_key()))

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (tests, golden vectors)."""
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_raw(self) -> bytes:
        return self.peer_id.raw_public

    def private_key_protobuf(self) -> bytes:
        """libp2p ``PrivateKey`` protobuf (seed || public key), as go-libp2p stores it."""
        return _PRIV_PREFIX + self.seed + self.public_raw

    @classmethod
    def from_private_key_protobuf(cls, data: bytes) -> Identity:
        if len(data) != 68 or data[:4] != _PRIV_PREFIX:
            raise KeyFileError("not a libp2p Ed25519 private key (expected 68-byte protobuf)")
        ident = cls.from_seed(data[4:36])
        if ident.public_raw != data[36:]:
            raise KeyFileError("key file is inconsistent: public half does not match the seed")
        return ident

    def sign(self, domain: bytes, payload: bytes) -> bytes:
        return self._private.sign(signing_bytes(domain, payload))

    # persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key atomically with mode 0600 (temp file, fsync, rename, fsync dir).

        Without ``overwrite`` an existing key is never replaced, even by a racing writer.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(
                path, self.private_key_protobuf(), 0o600, exact_mode=True, overwrite=overwrite
            )
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Load a key file; refuse one that group or others can access."""
        path = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer for ever
            # (it is refused below); reads of a regular file are unaffected.
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise KeyFileError(
                f"no key file at {path} (create one with `p2phier id new`)"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{path} is not a regular file")
            if st.st_mode & 0o077:
                raise InsecureKeyFileError(
                    f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                    f"it must not be accessible by group or others (chmod 600 {path})"
                )
            if st.st_size > MAX_KEY_FILE:
                raise KeyFileError(f"{path} is too large to be a key file")
            data = os.read(fd, MAX_KEY_FILE + 1)
        finally:
            os.close(fd)
        return cls.from_private_key_protobuf(data)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path)
        if path.exists():
            return cls.load(path)
        ident = cls.generate()
        ident.save(path)
        return ident


def verify_signature(author: str | PeerId, domain: bytes, payload: bytes, signature: bytes) -> None:
    """Check ``signature`` from the author's peer id alone."""
    peer = author if isinstance(author, PeerId) else PeerId.parse(author)
    peer.verify(domain, payload, signature)
