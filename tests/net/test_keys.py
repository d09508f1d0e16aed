"""The identity bridge: a p2phier identity and its libp2p key pair name the same peer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.rsa import create_new_key_pair as create_rsa_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_pair
from libp2p.peer.id import ID

from p2phier.cid import CID, LIBP2P_KEY, RAW, Multihash, b58decode, b58encode
from p2phier.errors import IdentityError, InvalidPeerIdError
from p2phier.identity import Identity, PeerId, parse_network_peer_id
from p2phier.net.host import PeerAddr
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


def _rsa_pair() -> KeyPair:
    return create_rsa_pair(bits=1024)  # small: the test is about the id, not the key's strength


@pytest.mark.parametrize(
    ("make", "prefix"),
    [(create_new_key_pair, "12D3KooW"), (create_secp256k1_pair, "16Uiu2"), (_rsa_pair, "Qm")],
    ids=["ed25519", "secp256k1", "rsa"],
)
def test_transport_peer_ids_of_every_key_type_are_accepted(
    make: Callable[[], KeyPair], prefix: str
) -> None:
    # Regression: a kubo peer with an RSA key (Qm...) crashed a node (the Bitswap
    # sender's dial raised "only Ed25519 ..." out of its task).  Dialing, serving
    # and bookkeeping accept every libp2p key type; p2phier's signed objects do not.
    text = ID.from_pubkey(make().public_key).to_base58()
    assert text.startswith(prefix)
    assert peer_id_str(libp2p_peer_id(text)) == text
    addr = PeerAddr.parse(f"/ip4/127.0.0.1/tcp/4001/p2p/{text}")
    assert addr == PeerAddr(text, ("/ip4/127.0.0.1/tcp/4001",))
    assert PeerAddr.parse(text) == PeerAddr(text)
    if prefix != "12D3KooW":
        with pytest.raises(InvalidPeerIdError, match="Ed25519"):
            PeerId.parse(text)  # an author of records and manifests must be Ed25519


def test_the_cid_form_of_a_peer_id_is_accepted_and_made_canonical() -> None:
    identity = Identity.from_seed(b"\x09" * 32)
    mh, _ = Multihash.from_bytes(b58decode(str(identity.peer_id)))
    as_cid = str(CID(1, LIBP2P_KEY, mh))
    assert as_cid.startswith("bafz")
    assert parse_network_peer_id(as_cid) == str(identity.peer_id)
    with pytest.raises(InvalidPeerIdError, match="libp2p key"):
        parse_network_peer_id(str(CID(1, RAW, Multihash.sha256(b"x"))))


def _b58_mh(code: int, digest: bytes) -> str:
    return b58encode(Multihash(code, digest).to_bytes())


@pytest.mark.parametrize(
    "text",
    [
        _b58_mh(0x00, b"\x08\x07\x12\x20" + b"k" * 32),  # unknown key type 7
        _b58_mh(0x00, b"\x08\x01\x12\x21" + b"k" * 32),  # data length lies
        _b58_mh(0x00, b"\x12\x20" + b"k" * 32),  # no key type
        _b58_mh(0x00, b"\x08\x00\x12\x25" + b"k" * 37 + b"12"),  # 43 bytes inlined
        _b58_mh(0x00, b""),
        b58encode(Multihash(0x12, b"h" * 32).to_bytes() + b"\x00"),  # trailing byte
        b58encode(bytes([0x12, 31]) + b"h" * 31),  # sha2-256 of the wrong length
        "Qm" + "1" * 200,
        "",
    ],
    ids=[
        "key-type",
        "length",
        "no-type",
        "too-long",
        "empty-key",
        "trailing",
        "short-hash",
        "huge",
        "empty",
    ],
)
def test_malformed_peer_ids_are_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidPeerIdError):
        libp2p_peer_id(text)


@given(st.text(max_size=80) | st.binary(max_size=60).map(b58encode))
def test_peer_id_parsing_raises_only_its_own_error(text: str) -> None:
    try:
        canonical = parse_network_peer_id(text)
    except InvalidPeerIdError:
        return
    assert parse_network_peer_id(canonical) == canonical
