"""The bridge between p2phier identities and py-libp2p keys and peer ids.

Owns the conversions: a :class:`~p2phier.identity.Identity` becomes the libp2p
Ed25519 ``KeyPair`` built from the same 32-byte seed (so the node's libp2p peer
id IS its p2phier author id), and peer ids move between p2phier's
:class:`~p2phier.identity.PeerId` / strings and libp2p's ``ID`` (remote peers'
ids of every key type: the node itself is Ed25519, its peers need not be).  Every
conversion is checked both ways: a key pair whose libp2p peer id differs from
``str(identity.peer_id)`` is refused, because signatures and connections would
then name two different nodes.
"""

from __future__ import annotations

from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pEd25519PrivateKey
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.peer.id import ID

from p2phier.errors import IdentityError, InvalidPeerIdError
from p2phier.identity import Identity, PeerId, parse_network_peer_id

__all__ = [
    "KeyPair",
    "identity_from_keypair",
    "keypair_from_identity",
    "libp2p_peer_id",
    "peer_id_str",
]


def keypair_from_identity(identity: Identity) -> KeyPair:
    """The libp2p Ed25519 key pair of ``identity`` (same seed, same peer id)."""
    try:
        pair = create_new_key_pair(identity.seed)
    except ValueError as exc:  # libp2p rejects seeds whose public key is not a valid point
        raise IdentityError(f"libp2p refuses this node key: {exc}") from None
    derived = str(ID.from_pubkey(pair.public_key))
    expected = str(identity.peer_id)
    if derived != expected:  # pragma: no cover - would mean libp2p derives ids differently
        raise IdentityError(
            f"libp2p derives peer id {derived} from this key, p2phier {expected}; refusing to "
            "run a node whose network id differs from its signing id"
        )
    return pair


def identity_from_keypair(pair: KeyPair) -> Identity:
    """The p2phier identity of a libp2p Ed25519 key pair (refuses other key types)."""
    private = pair.private_key
    if private.get_type() != KeyType.Ed25519 or not isinstance(private, Libp2pEd25519PrivateKey):
        raise IdentityError(
            f"p2phier nodes use Ed25519 keys; this libp2p key is {private.get_type().name}"
        )
    seed = private.to_bytes()[:32]
    identity = Identity.from_seed(seed)
    if str(identity.peer_id) != str(ID.from_pubkey(pair.public_key)):
        raise IdentityError("the libp2p key pair is inconsistent (public key does not match)")
    return identity


def libp2p_peer_id(peer: str | PeerId | ID) -> ID:
    """libp2p's ``ID`` for a peer id of any key type (checked; InvalidPeerIdError).

    Transport-level work (dial, serve, fetch, ledgers) talks to every libp2p
    peer: RSA (``Qm...``), Ed25519, secp256k1 and ECDSA ids are all accepted
    here.  Only p2phier's signed objects require an Ed25519 author
    (:class:`~p2phier.identity.PeerId`).
    """
    if isinstance(peer, ID):
        return peer
    text = parse_network_peer_id(str(peer))  # raises InvalidPeerIdError with a clear message
    try:
        return ID.from_base58(text)
    except ValueError as exc:  # pragma: no cover - parse_network_peer_id accepted it
        raise InvalidPeerIdError(f"invalid peer id {text!r}: {exc}") from None


def peer_id_str(peer: ID | PeerId | str) -> str:
    """The canonical base58btc string of a peer id (``12D3KooW...``, ``Qm...``)."""
    return peer.to_base58() if isinstance(peer, ID) else str(peer)
