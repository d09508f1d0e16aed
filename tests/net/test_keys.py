"""The identity bridge: a p2phier identity and its libp2p key pair name the same peer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_pair
from libp2p.peer.id import ID

from p2phier.errors import IdentityError, InvalidPeerIdError
from p2phier.identity import Identity
from p2phier.net.keys import (
    identity_from_keypair,
    keypair_from_identity,
    libp2p_peer_id,
    peer_id_str,
)


@given(st.binary(min_size=32, max_size=32))
def test_keypair_has_the_identity_peer_id_and_round_trips(seed: bytes) -> None:
    identity = Identity.from_seed(seed)
    pair = keypair_from_identity(identity)
    assert str(ID.from_pubkey(pair.public_key)) == str(identity.peer_id)
    # a signature made by libp2p's key verifies with p2phier's public key and back
    assert identity_from_keypair(pair).seed == seed
    message = b"same key both ways"
    assert pair.public_key.verify(message, pair.private_key.sign(message))


def test_libp2p_generated_key_becomes_an_identity() -> None:
    pair = create_new_key_pair()
    identity = identity_from_keypair(pair)
    assert str(identity.peer_id) == str(ID.from_pubkey(pair.public_key))


def test_non_ed25519_keys_are_refused() -> None:
    with pytest.raises(IdentityError, match="Ed25519"):
        identity_from_keypair(create_secp256k1_pair())


def test_peer_id_conversions_are_checked() -> None:
    identity = Identity.from_seed(b"\x07" * 32)
    pid = libp2p_peer_id(str(identity.peer_id))
    assert peer_id_str(pid) == str(identity.peer_id)
    assert libp2p_peer_id(pid) is pid
    assert peer_id_str(identity.peer_id) == str(identity.peer_id)
    with pytest.raises(InvalidPeerIdError):
        libp2p_peer_id("not-a-peer-id")
    # a sha2-256 (RSA-style) peer id carries no key: refused
    with pytest.raises(InvalidPeerIdError):
        libp2p_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
