"""Identities: golden peer ids and signatures, libp2p cross-check, key-file safety."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.errors import (
    InsecureKeyFileError,
    InvalidPeerIdError,
    KeyFileError,
    SignatureError,
)
from p2phier.identity import Identity, PeerId, signing_bytes, verify_signature
from tests.golden import load

PEERS: list[dict[str, Any]] = load("peer_ids")["vectors"]
SIGS: dict[str, Any] = load("signatures")


def test_vectors_include_published_libp2p_peer_ids() -> None:
    assert sum(1 for v in PEERS if v["published"]) >= 2


@pytest.mark.parametrize("vector", PEERS, ids=lambda v: v["name"])
def test_seed_gives_the_golden_peer_id(vector: dict[str, Any]) -> None:
    ident = Identity.from_seed(bytes.fromhex(vector["seed"]))
    assert ident.public_raw.hex() == vector["public_key"]
    assert ident.private_key_protobuf().hex() == vector["private_key_protobuf"]
    assert str(ident.peer_id) == vector["peer_id"]
    parsed = PeerId.parse(vector["peer_id"])
    assert parsed == ident.peer_id
    assert parsed.multihash_bytes[2:].hex() == vector["public_key_protobuf"]
    again = Identity.from_private_key_protobuf(bytes.fromhex(vector["private_key_protobuf"]))
    assert again.peer_id == ident.peer_id


@pytest.mark.parametrize("vector", PEERS, ids=lambda v: v["name"])
def test_libp2p_derives_the_same_peer_id(vector: dict[str, Any]) -> None:
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    key = Ed25519PublicKey.from_bytes(bytes.fromhex(vector["public_key"]))
    assert ID.from_pubkey(key).to_base58() == vector["peer_id"]


@given(st.binary(min_size=32, max_size=32))
def test_any_seed_matches_libp2p(seed: bytes) -> None:
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    ident = Identity.from_seed(seed)
    key = Ed25519PublicKey.from_bytes(ident.public_raw)
    assert ID.from_pubkey(key).to_base58() == str(ident.peer_id)
    assert PeerId.parse(str(ident.peer_id)) == ident.peer_id


@pytest.mark.parametrize("vector", SIGS["raw"], ids=lambda v: v["name"])
def test_published_raw_signatures_verify_with_our_keys(vector: dict[str, Any]) -> None:
    ident = Identity.from_seed(bytes.fromhex(vector["seed"]))
    assert ident.public_raw.hex() == vector["public_key"]
    message, signature = bytes.fromhex(vector["message"]), bytes.fromhex(vector["signature"])
    ident.peer_id.public_key().verify(signature, message)  # raises if wrong
    # Ed25519 is deterministic: our private key makes the very same signature.
    assert ident._private.sign(message) == signature


@pytest.mark.parametrize("vector", SIGS["domain_separated"], ids=lambda v: v["_domain_text"])
def test_domain_separated_signature_vectors(vector: dict[str, Any]) -> None:
    ident = Identity.from_seed(bytes.fromhex(vector["seed"]))
    domain, payload = bytes.fromhex(vector["domain"]), bytes.fromhex(vector["payload"])
    assert signing_bytes(domain, payload).hex() == vector["signed_bytes"]
    assert ident.sign(domain, payload).hex() == vector["signature"]
    assert str(ident.peer_id) == vector["peer_id"]
    signature = bytes.fromhex(vector["signature"])
    verify_signature(vector["peer_id"], domain, payload, signature)
    with pytest.raises(SignatureError):
        verify_signature(vector["peer_id"], domain + b"x", payload, signature)
    with pytest.raises(SignatureError):
        verify_signature(vector["peer_id"], domain, payload + b"x", signature)
    other = Identity.from_seed(bytes(31) + b"\x07")
    with pytest.raises(SignatureError):
        other.peer_id.verify(domain, payload, signature)


def test_framing_keeps_domain_and_payload_apart() -> None:
    # Without length prefixes ("ab", "c") and ("a", "bc") would sign the same bytes.
    assert signing_bytes(b"ab", b"c") != signing_bytes(b"a", b"bc")
    with pytest.raises(ValueError):
        signing_bytes(b"", b"payload")


def test_bad_signature_lengths_are_refused() -> None:
    ident = Identity.from_seed(bytes(32))
    with pytest.raises(SignatureError, match="64 bytes"):
        ident.peer_id.verify(b"d", b"p", b"\x00" * 63)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * 200,
        "12D3KooW0",  # '0' is not base58
        "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",  # sha2-256 peer id: no key inside
        "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3p",  # truncated
    ],
)
def test_malformed_peer_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidPeerIdError):
        PeerId.parse(text)


@given(st.text(max_size=80))
def test_peer_id_parse_raises_only_invalid_peer_id(text: str) -> None:
    try:
        peer = PeerId.parse(text)
    except InvalidPeerIdError:
        return
    assert str(peer) == text


# --- key files --------------------------------------------------------------------------------


def test_key_file_round_trip_with_mode_0600(tmp_path: Path) -> None:
    ident = Identity.from_seed(bytes(range(32)))
    path = ident.save(tmp_path / "keys" / "node.key")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert path.read_bytes() == ident.private_key_protobuf()
    assert Identity.load(path).peer_id == ident.peer_id
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temp file left


def test_existing_key_is_not_overwritten(tmp_path: Path) -> None:
    path = Identity.from_seed(bytes(32)).save(tmp_path / "k")
    with pytest.raises(KeyFileError, match="already exists"):
        Identity.from_seed(b"\x01" * 32).save(path)
    assert Identity.load(path).seed == bytes(32)


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    path = Identity.from_seed(bytes(32)).save(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(InsecureKeyFileError, match="chmod 600"):
        Identity.load(path)
    os.chmod(path, 0o600)
    assert Identity.load(path).seed == bytes(32)


def test_symlinked_key_is_refused(tmp_path: Path) -> None:
    real = Identity.from_seed(bytes(32)).save(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(KeyFileError):
        Identity.load(link)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        bytes(68),
        b"\x08\x01\x12\x40" + bytes(64),  # public half does not match the seed
        b"\x08\x02\x12\x40" + bytes(64),  # not an Ed25519 key type
        b"\x08\x01\x12\x40" + bytes(5000),
    ],
)
def test_garbage_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyFileError):
        Identity.load(path)


def test_missing_and_non_regular_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no key file"):
        Identity.load(tmp_path / "absent")
    os.chmod(tmp_path, 0o700)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        Identity.load(tmp_path / "dir")


@pytest.mark.timeout(30)  # the old code waited for a writer for ever
def test_a_fifo_key_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "identity.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        Identity.load(fifo)


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "k")
    second = Identity.load_or_create(tmp_path / "k")
    assert first.peer_id == second.peer_id


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(KeyFileError):
        Identity.from_seed(bytes(31))
