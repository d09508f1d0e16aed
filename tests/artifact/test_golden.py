"""protocol/vectors/manifests.json, checked byte for byte.

A manifest built from the vector's fields must serialise to exactly the
recorded bytes, sign (Ed25519 is deterministic) to exactly the recorded
signature, and wrap into exactly the recorded envelope and envelope CID; and
the recorded bytes must parse and verify.  Any change to the schema, the
canonical encoding or the signing framing breaks this test on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2phier.artifact import (
    SIGNING_DOMAIN,
    ContentRef,
    Encoding,
    Envelope,
    Manifest,
    Metric,
    open_envelope,
    sign_manifest,
)
from p2phier.cid import CID
from p2phier.identity import Identity, signing_bytes
from p2phier.unixfs import build_file

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "manifests.json"
DOC = json.loads(VECTORS.read_text())


def _manifest(fields: dict[str, Any], ident: Identity) -> Manifest:
    def opt(value: str | None) -> CID | None:
        return CID.parse(value) if value else None

    return Manifest(
        base_model_id=fields["base_model_id"],
        base_model_cid=opt(fields["base_model_cid"]),
        parent=opt(fields["parent"]),
        layer=fields["layer"],
        domain=fields["domain"],
        round=fields["round"],
        encoding=Encoding(fields["encoding"]),
        metrics=tuple(Metric(n, v) for n, v in fields["metrics"]),
        author=ident.peer_id,
        created_ms=fields["created_ms"],
        config=ContentRef(CID.parse(fields["config"]["cid"]), fields["config"]["size"]),
        tensors=ContentRef(CID.parse(fields["tensors"]["cid"]), fields["tensors"]["size"]),
        tensors_raw_size=fields["tensors_raw_size"],
        base_version=opt(fields.get("base_version")),
        prototypes=ContentRef(CID.parse(protos["cid"]), protos["size"])
        if (protos := fields.get("prototypes"))
        else None,
    )


def test_vector_file_is_versioned() -> None:
    assert DOC["format_version"] == 1
    assert DOC["signing_domain"].encode() == SIGNING_DOMAIN
    assert len(DOC["vectors"]) >= 3
    # every optional field appears in some vector
    assert any(v["fields"].get("prototypes") for v in DOC["vectors"])
    assert any(v["fields"].get("base_version") for v in DOC["vectors"])


@pytest.mark.parametrize("vec", DOC["vectors"], ids=lambda v: v["name"])
def test_manifest_vector(vec: dict[str, Any]) -> None:
    ident = Identity.from_seed(bytes.fromhex(vec["seed_hex"]))
    assert str(ident.peer_id) == vec["author"]
    want = vec["expected"]
    manifest = _manifest(vec["fields"], ident)
    assert manifest.to_bytes().hex() == want["manifest_hex"]
    env = sign_manifest(manifest, ident)
    assert signing_bytes(SIGNING_DOMAIN, env.manifest_bytes).hex() == want["signing_bytes_hex"]
    assert env.signature.hex() == want["signature_hex"]
    assert env.signer.hex() == want["signer_hex"]
    assert env.to_bytes().hex() == want["envelope_hex"]
    root, blocks = build_file(env.to_bytes())
    assert str(root) == want["envelope_cid"]
    assert len(blocks) == 1

    # and the recorded bytes, read back, verify and give the same manifest
    received = Envelope.from_bytes(bytes.fromhex(want["envelope_hex"]), max_size=65536)
    assert open_envelope(received) == manifest
    assert Manifest.from_bytes(bytes.fromhex(want["manifest_hex"])) == manifest


def test_rfc8032_key_is_embedded_in_author() -> None:
    # The second vector's seed is RFC 8032 section 7.1 TEST 1; its public key must
    # appear verbatim inside the author peer id (identity multihash of the key).
    vec = DOC["vectors"][1]
    assert vec["seed_hex"].startswith("9d61b19d")
    rfc_public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert vec["expected"]["signer_hex"].endswith(rfc_public)
