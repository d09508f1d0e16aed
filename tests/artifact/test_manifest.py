"""The manifest codec and envelope: property tests, strictness, field validation, signatures."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.artifact import (
    FORMAT_VERSION,
    SIGNING_DOMAIN,
    ContentRef,
    Encoding,
    Envelope,
    Manifest,
    Metric,
    open_envelope,
    sign_manifest,
    validate_domain,
)
from p2phier.artifact.manifest import metrics_from_mapping
from p2phier.cid import CID
from p2phier.errors import (
    AuthorMismatchError,
    FormatVersionError,
    ManifestError,
    NewerManifestError,
    SignatureError,
)
from p2phier.identity import Identity
from p2phier.wire import p2phier_pb2 as pb

IDENTITIES = [Identity.from_seed(bytes([i]) * 32) for i in range(3)]

segments = st.from_regex(r"[a-z0-9]([a-z0-9_-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(segments, max_size=4).map("/".join)
layers = st.one_of(
    st.sampled_from(["master", "language", "domain", "subdomain", "device"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
)
cids = st.builds(
    lambda data, pb_node: CID.dag_pb(data) if pb_node else CID.raw(data),
    st.binary(max_size=16),
    st.booleans(),
)
u63 = st.integers(min_value=0, max_value=2**63 - 1)
metric_maps = st.dictionaries(
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,15}", fullmatch=True),
    st.floats(allow_nan=False, allow_infinity=False),
    max_size=5,
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    encoding = draw(st.sampled_from(list(Encoding)))
    parent = (
        draw(cids) if encoding.delta_only
        else None if encoding.full_only
        else draw(st.none() | cids)
    )  # fmt: skip
    return Manifest(
        base_model_id=draw(st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True)),
        base_model_cid=draw(st.none() | cids),
        parent=parent,
        layer=draw(layers),
        domain=draw(domains),
        round=draw(u63),
        encoding=encoding,
        metrics=metrics_from_mapping(draw(metric_maps)),
        author=draw(st.sampled_from(IDENTITIES)).peer_id,
        created_ms=draw(u63),
        config=ContentRef(draw(cids), draw(u63)),
        tensors=ContentRef(draw(cids), draw(u63)),
        tensors_raw_size=draw(u63),
        base_version=draw(st.none() | cids),
    )


def _identity_of(m: Manifest) -> Identity:
    return next(i for i in IDENTITIES if i.peer_id == m.author)


@given(manifests())
def test_manifest_round_trip(m: Manifest) -> None:
    data = m.to_bytes()
    assert Manifest.from_bytes(data) == m
    assert Manifest.from_bytes(data).to_bytes() == data  # one byte form only


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_manifest_errors(data: bytes) -> None:
    try:
        m = Manifest.from_bytes(data)
    except (ManifestError, FormatVersionError):
        return
    assert m.to_bytes() == data  # whatever parses is canonical


@given(manifests(), st.data())
def test_sign_then_mutate_never_verifies(m: Manifest, data: st.DataObject) -> None:
    env = sign_manifest(m, _identity_of(m))
    assert open_envelope(env) == m
    raw = bytearray(env.manifest_bytes)
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises((SignatureError, ManifestError, FormatVersionError)):
        open_envelope(dataclasses.replace(env, manifest_bytes=bytes(raw)))


@given(manifests())
def test_envelope_round_trip(m: Manifest) -> None:
    env = sign_manifest(m, _identity_of(m))
    back = Envelope.from_bytes(env.to_bytes(), max_size=65536)
    assert back == env
    assert open_envelope(back) == m


@given(st.binary(max_size=300))
def test_random_envelopes_raise_only_artifact_errors(data: bytes) -> None:
    try:
        env = Envelope.from_bytes(data, max_size=65536)
    except (ManifestError, FormatVersionError, SignatureError):
        return
    assert env.to_bytes() == data
    with pytest.raises((ManifestError, FormatVersionError, SignatureError)):
        open_envelope(env)  # random bytes never carry a valid signature


# --- strictness ------------------------------------------------------------------------------


def _sample() -> Manifest:
    ident = IDENTITIES[0]
    return Manifest(
        base_model_id="m",
        base_model_cid=None,
        parent=CID.raw(b"p"),
        layer="device",
        domain="en/news",
        round=3,
        encoding=Encoding.INT8_DELTA,
        metrics=(Metric("acc", 0.5),),
        author=ident.peer_id,
        created_ms=5,
        config=ContentRef(CID.raw(b"c"), 10),
        tensors=ContentRef(CID.raw(b"t"), 20),
        tensors_raw_size=30,
    )


def test_unknown_field_is_refused_as_a_newer_format() -> None:
    """Refused, and told apart from a malformed manifest: its author may run a newer release
    (a node does not count it against the author; a malformed one it does)."""
    data = _sample().to_bytes() + bytes([0xF8, 0x07, 0x01])  # field 127, varint 1
    with pytest.raises(NewerManifestError, match="newer format"):
        Manifest.from_bytes(data)


def test_reordered_fields_are_refused() -> None:
    data = _sample().to_bytes()
    # move the leading format_version field (08 01) to the end: same message, other bytes
    assert data[:2] == b"\x08\x01"
    with pytest.raises(ManifestError, match="canonical") as info:
        Manifest.from_bytes(data[2:] + data[:2])
    assert not isinstance(info.value, NewerManifestError)  # malformed, not newer


def test_repeated_scalar_field_is_refused() -> None:
    data = _sample().to_bytes()
    with pytest.raises(ManifestError, match="canonical") as info:
        Manifest.from_bytes(b"\x08\x01" + data)
    assert not isinstance(info.value, NewerManifestError)


def test_unknown_format_version() -> None:
    msg = pb.Manifest()
    msg.ParseFromString(_sample().to_bytes())
    msg.format_version = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError, match="format version 2"):
        Manifest.from_bytes(msg.SerializeToString(deterministic=True))


def test_unknown_encoding_number() -> None:
    msg = pb.Manifest()
    msg.ParseFromString(_sample().to_bytes())
    msg.encoding = 99  # type: ignore[assignment]
    with pytest.raises(NewerManifestError, match="unknown encoding"):
        Manifest.from_bytes(msg.SerializeToString(deterministic=True))


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(ManifestError, match="over the limit"):
        Manifest.from_bytes(b"\x00" * (16 * 1024 + 1))


def test_envelope_must_be_canonical_and_bounded() -> None:
    env = sign_manifest(_sample(), IDENTITIES[0])
    data = env.to_bytes()
    with pytest.raises(ManifestError, match="canonical"):
        Envelope.from_bytes(data + b"\x20\x01", max_size=65536)  # unknown field 4
    with pytest.raises(ManifestError, match="over the limit"):
        Envelope.from_bytes(data, max_size=len(data) - 1)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain", ["", "en", "en/healthcare/cardiology", "de/news/sport/football", "x-1/a_b"]
)
def test_valid_domains(domain: str) -> None:
    assert validate_domain(domain) == domain


@pytest.mark.parametrize(
    "domain",
    [
        "En",
        "en/",
        "/en",
        "en//news",
        "en/../etc",
        "a/b/c/d/e",
        "a" * 33,
        "en news",
        "en/Health",
        "émoji",
        "-en",
        "en-",
        "en\x00",
    ],
)
def test_invalid_domains(domain: str) -> None:
    with pytest.raises(ManifestError, match="domain"):
        validate_domain(domain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer": "Device"}, "layer"),
        ({"layer": ""}, "layer"),
        ({"base_model_id": "has space"}, "base model id"),
        ({"base_model_id": ""}, "base model id"),
        ({"round": -1}, "round"),
        ({"parent": None}, "needs a parent"),
        ({"encoding": Encoding.INT8}, "full adapter"),
        ({"metrics": (Metric("b", 1.0), Metric("a", 1.0))}, "sorted"),
        ({"metrics": (Metric("a", 1.0), Metric("a", 2.0))}, "duplicates"),
        ({"parent": CID(1, 0x71, CID.raw(b"x").multihash)}, "parent CID"),
    ],
)
def test_invalid_fields(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        dataclasses.replace(_sample(), **change)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_metrics_are_refused(value: float) -> None:
    with pytest.raises(ManifestError, match="finite"):
        Metric("acc", value)


def test_metric_names_are_validated() -> None:
    with pytest.raises(ManifestError, match="metric name"):
        Metric("Accuracy", 1.0)


def test_signing_uses_the_domain_separated_framing() -> None:
    m = _sample()
    env = sign_manifest(m, IDENTITIES[0])
    # the same key over the bare bytes (no domain) must not produce this signature
    IDENTITIES[0].peer_id.verify(SIGNING_DOMAIN, env.manifest_bytes, env.signature)
    with pytest.raises(SignatureError):
        IDENTITIES[0].peer_id.verify(b"p2phier/other/v1", env.manifest_bytes, env.signature)


def test_only_the_author_can_sign() -> None:
    with pytest.raises(AuthorMismatchError, match="signing key"):
        sign_manifest(_sample(), IDENTITIES[1])


def test_signature_by_another_key_is_an_author_mismatch() -> None:
    m = _sample()
    rogue = IDENTITIES[1]
    forged = Envelope(
        m.to_bytes(), rogue.sign(SIGNING_DOMAIN, m.to_bytes()), rogue.peer_id.multihash_bytes
    )
    with pytest.raises(AuthorMismatchError, match="not the author"):
        open_envelope(forged)
    # claiming the author as signer does not help: the signature fails under the author's key
    claimed = dataclasses.replace(forged, signer=m.author.multihash_bytes)
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(claimed)


def test_missing_and_truncated_signatures() -> None:
    env = sign_manifest(_sample(), IDENTITIES[0])
    with pytest.raises(SignatureError, match="not signed"):
        open_envelope(dataclasses.replace(env, signature=b""))
    with pytest.raises(SignatureError, match="63 bytes"):
        open_envelope(dataclasses.replace(env, signature=env.signature[:63]))
    with pytest.raises(SignatureError, match="signing key"):
        open_envelope(dataclasses.replace(env, signer=b""))


def test_json_view() -> None:
    m = _sample()
    view = m.to_json()
    assert view["parent"] == str(m.parent)
    assert view["metrics"] == {"acc": 0.5}
    assert view["encoding"] == "int8-delta"
    assert m.created == 0.005
