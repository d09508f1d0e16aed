"""Node records: golden bytes, codec properties, hostile input, and the RecordBook's rules."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.cid import CID, encode_varint
from p2phier.errors import ProtocolViolationError, SignatureError
from p2phier.identity import Identity, signing_bytes
from p2phier.records import (
    MAX_SIGNED_RECORD,
    SIGNING_DOMAIN,
    Capabilities,
    HardwareClass,
    Layer,
    NodeRecord,
    RecordBook,
    RecordError,
    RecordSignatureError,
    RecordStatus,
    SignedRecord,
    check_layer_domain,
    domain_ancestors,
    is_domain_prefix,
    next_seq,
    open_record,
    sign_record,
    validate_domain,
)
from tests.node_logic import gen_vectors
from tests.node_logic.helpers import T0, ident, node_records, peer, record, signed

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/node_records.json").read_text()
)


def _from_fields(f: dict[str, Any], who: Identity) -> NodeRecord:
    caps = f["capabilities"]
    return NodeRecord(
        peer_id=who.peer_id,
        addrs=tuple(f["addrs"]),
        layer=Layer.parse(f["layer"]),
        domain=f["domain"],
        base_model_id=f["base_model_id"],
        capabilities=Capabilities(
            caps["ram_bytes"], caps["max_params"], HardwareClass(caps["hardware"])
        ),
        head=CID.parse(f["head"]) if f["head"] else None,
        seq=f["seq"],
        issued_ms=f["issued_ms"],
        expires_ms=f["expires_ms"],
        started_ms=f["started_ms"],
    )


# --- golden vectors ------------------------------------------------------------------------


def test_vectors_use_this_signing_domain() -> None:
    assert VECTORS["record_signing_domain"].encode() == SIGNING_DOMAIN


@pytest.mark.parametrize("v", VECTORS["records"], ids=lambda v: v["name"])
def test_golden_record_bytes_signature_and_envelope(v: dict[str, Any]) -> None:
    who = Identity.from_seed(bytes.fromhex(v["seed_hex"]))
    assert str(who.peer_id) == v["peer_id"]
    rec = _from_fields(v["fields"], who)
    assert rec.to_bytes().hex() == v["record_hex"]
    assert signing_bytes(SIGNING_DOMAIN, rec.to_bytes()).hex() == v["signing_bytes_hex"]
    assert sign_record(rec, who).hex() == v["signed_hex"]
    opened = open_record(bytes.fromhex(v["signed_hex"]))
    assert opened == rec
    assert opened.to_json()["peer_id"] == v["peer_id"]


@pytest.mark.parametrize("v", VECTORS["invalid_records"], ids=lambda v: v["name"])
def test_golden_invalid_records_get_their_status(v: dict[str, Any]) -> None:
    book = RecordBook()
    result = book.accept(bytes.fromhex(v["signed_hex"]), VECTORS["now_ms"] / 1000)
    assert result.status.value == v["status"], result.reason
    assert not result.accepted
    assert len(book) == 0


def test_committed_vectors_are_what_the_independent_generator_builds() -> None:
    assert gen_vectors.main(["--check"]) == 0


def test_the_largest_valid_record_fits_the_size_limit() -> None:
    big = record(
        1,
        Layer.DEVICE,
        "/".join(["a" * 31] * 4),
        addrs=tuple(f"/dns4/{i:02}" + "x" * 248 for i in range(16)),
        base_model_id="m" * 256,
        head=CID.dag_pb(b"head"),
        seq=2**63 - 1,
        capabilities=Capabilities(2**63 - 1, 2**63 - 1, HardwareClass.EMBEDDED),
    )
    data = sign_record(big, ident(1))
    assert len(data) <= MAX_SIGNED_RECORD
    assert open_record(data) == big


def test_invalid_vectors_cover_every_refusal_but_book_state() -> None:
    statuses = {v["status"] for v in VECTORS["invalid_records"]}
    assert statuses == {"bad-signature", "expired", "future", "malformed", "oversized"}


# --- codec properties -----------------------------------------------------------------------


@given(node_records())
def test_record_round_trips_through_the_signed_envelope(pair: tuple[NodeRecord, Identity]) -> None:
    rec, who = pair
    data = sign_record(rec, who)
    assert open_record(data) == rec
    assert NodeRecord.from_bytes(rec.to_bytes()) == rec
    # one record, one encoding
    assert SignedRecord.from_bytes(data).to_bytes() == data


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_record_errors(data: bytes) -> None:
    for parse in (open_record, NodeRecord.from_bytes, SignedRecord.from_bytes):
        with contextlib.suppress(RecordError):
            parse(data)


@given(node_records(), st.integers(0, 10_000), st.integers(1, 255))
def test_any_flipped_byte_is_refused(
    pair: tuple[NodeRecord, Identity], pos: int, flip: int
) -> None:
    rec, who = pair
    data = bytearray(sign_record(rec, who))
    data[pos % len(data)] ^= flip
    with pytest.raises(RecordError):
        open_record(bytes(data))


@given(node_records(), st.integers(13, 2000), st.binary(max_size=8))
def test_unknown_fields_are_refused_even_when_signed(
    pair: tuple[NodeRecord, Identity], field: int, value: bytes
) -> None:
    rec, who = pair
    body = rec.to_bytes() + encode_varint(field << 3 | 2) + encode_varint(len(value)) + value
    data = SignedRecord(body, who.sign(SIGNING_DOMAIN, body)).to_bytes()
    with pytest.raises(RecordError, match="canonical"):
        open_record(data)


def test_errors_belong_to_the_network_and_signature_families() -> None:
    assert issubclass(RecordError, ProtocolViolationError)
    assert issubclass(RecordSignatureError, SignatureError)
    assert RecordSignatureError("x").exit_code == 7


def test_only_the_records_own_key_can_sign_it() -> None:
    with pytest.raises(RecordSignatureError, match="signing key"):
        sign_record(record(1), ident(2))
    forged = SignedRecord(record(1).to_bytes(), ident(2).sign(SIGNING_DOMAIN, record(1).to_bytes()))
    with pytest.raises(RecordSignatureError, match="does not verify"):
        open_record(forged.to_bytes())


def test_a_signature_for_another_purpose_does_not_verify() -> None:
    body = record(1).to_bytes()
    other = SignedRecord(body, ident(1).sign(b"p2phier/manifest/v1", body))
    with pytest.raises(RecordSignatureError):
        open_record(other.to_bytes())


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"addrs": tuple(f"/ip4/10.0.0.{i}/tcp/1" for i in range(17))}, "at most 16"),
        ({"addrs": ("/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1")}, "unique"),
        ({"addrs": ("ip4/1.2.3.4",)}, "multiaddr"),
        ({"addrs": ("/ip4//tcp/1",)}, "multiaddr"),
        ({"addrs": ("/ip4/1.2.3.4 /tcp/1",)}, "multiaddr"),
        ({"addrs": ("/" + "a" * 300,)}, "characters"),
        ({"base_model_id": "has space"}, "base model"),
        ({"base_model_id": ""}, "base model"),
        ({"seq": -1}, "sequence"),
        ({"seq": 2**63}, "sequence"),
        ({"expires_ms": int(T0 * 1000)}, "expire after"),
        ({"expires_ms": int(T0 * 1000) + 24 * 3600 * 1000 + 1}, "at most 24 h"),
        ({"started_ms": int(T0 * 1000) + 1}, "started after"),
        ({"head": CID(0, 0x70, CID.raw(b"x").multihash)}, "CIDv1"),
        ({"format_version": 2}, "format version 2"),
    ],
)
def test_field_rules(over: dict[str, Any], match: str) -> None:
    with pytest.raises(RecordError, match=match):
        record(1, **over)


# --- layers and domains ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "domain", "ok"),
    [
        (Layer.MASTER, "", True),
        (Layer.MASTER, "en", False),
        (Layer.LANGUAGE, "en", True),
        (Layer.LANGUAGE, "", False),
        (Layer.LANGUAGE, "en/healthcare", False),
        (Layer.DOMAIN, "en/healthcare", True),
        (Layer.DOMAIN, "en/healthcare/cardiology", True),
        (Layer.DOMAIN, "en", False),
        (Layer.SUBDOMAIN, "en/healthcare/cardiology", True),
        (Layer.SUBDOMAIN, "en/healthcare", False),
        (Layer.DEVICE, "en/healthcare/cardiology/ecg", True),
        (Layer.DEVICE, "en/healthcare", False),
        (Layer.DOMAIN, "", False),
    ],
)
def test_layer_domain_depth_rule(layer: Layer, domain: str, ok: bool) -> None:
    if ok:
        check_layer_domain(layer, domain)
    else:
        with pytest.raises(RecordError, match=f"a {layer.label} node's domain"):
            check_layer_domain(layer, domain)


@pytest.mark.parametrize(
    "bad", ["En", "en/", "/en", "en//x", "-en", "en-", "en_x", "é", "a" * 33, "a/b/c/d/e", 5]
)
def test_bad_domain_paths(bad: Any) -> None:
    with pytest.raises(RecordError):
        validate_domain(bad)


def test_domain_prefix_is_segment_wise() -> None:
    assert is_domain_prefix("", "en")
    assert is_domain_prefix("en", "en")
    assert is_domain_prefix("en", "en/healthcare")
    assert not is_domain_prefix("en", "english")
    assert not is_domain_prefix("en/healthcare", "en")
    assert domain_ancestors("en/a/b") == ["en/a/b", "en/a", "en", ""]
    assert domain_ancestors("") == [""]


def test_layer_order_and_names() -> None:
    assert [layer.label for layer in Layer] == [
        "master",
        "language",
        "domain",
        "subdomain",
        "device",
    ]
    assert Layer.MASTER < Layer.DEVICE and int(Layer.MASTER) == 0
    assert Layer.MASTER.above is None and Layer.DEVICE.below is None
    assert Layer.DEVICE.above is Layer.SUBDOMAIN
    assert Layer.parse(" Domain ") is Layer.DOMAIN
    with pytest.raises(RecordError, match="not one of"):
        Layer.parse("boss")


def test_next_seq_survives_a_lost_counter() -> None:
    assert next_seq(None, T0) == int(T0 * 1000)
    assert next_seq(int(T0 * 1000) + 50, T0) == int(T0 * 1000) + 51
    assert next_seq(3, T0) == int(T0 * 1000)


# --- the record book ---------------------------------------------------------------------------


def test_book_keeps_the_newest_record_per_peer() -> None:
    book = RecordBook()
    r1 = book.accept(signed(1, seq=5), T0)
    assert r1.status is RecordStatus.NEW and r1.accepted
    assert book.accept(signed(1, seq=5), T0).status is RecordStatus.DUPLICATE
    r2 = book.accept(signed(1, seq=6, issued=T0 + 1), T0 + 1)
    assert r2.status is RecordStatus.REPLACED
    assert r2.previous is not None and r2.previous.seq == 5
    stale = book.accept(signed(1, seq=5), T0 + 2)
    assert stale.status is RecordStatus.STALE_SEQ and "not above 6" in stale.reason
    book_rec = book.get(peer(1))
    assert book_rec is not None and book_rec.seq == 6
    assert book.signed_bytes(peer(1)) == signed(1, seq=6, issued=T0 + 1)
    assert len(book) == 1


def test_same_seq_with_other_content_is_a_conflict() -> None:
    book = RecordBook()
    book.accept(signed(1, seq=5), T0)
    other = sign_record(record(1, seq=5, addrs=("/ip4/10.9.9.9/tcp/1",)), ident(1))
    result = book.accept(other, T0)
    assert result.status is RecordStatus.CONFLICT
    kept = book.get(peer(1))
    assert kept is not None and kept.addrs == ("/ip4/127.0.0.1/tcp/4001",)


@pytest.mark.parametrize(
    ("now", "status"),
    [
        (T0 - 301, RecordStatus.FUTURE),
        (T0 - 299, RecordStatus.NEW),
        (T0 + 3599.999, RecordStatus.NEW),
        (T0 + 3600, RecordStatus.EXPIRED),
        (T0 + 9999, RecordStatus.EXPIRED),
    ],
)
def test_expiry_and_clock_skew_table(now: float, status: RecordStatus) -> None:
    assert RecordBook().accept(signed(1), now).status is status


def test_expire_drops_records_and_remembers_their_seq() -> None:
    book = RecordBook()
    book.accept(signed(1, seq=9, ttl=60), T0)
    book.accept(signed(2, seq=1, ttl=7200), T0)
    gone = book.expire(T0 + 60)
    assert [r.peer_id for r in gone] == [peer(1)]
    assert peer(1) not in book and peer(2) in book
    # An older record of the same peer that is still valid cannot come back...
    old = sign_record(record(1, seq=8, issued=T0 - 10, ttl=7200), ident(1))
    assert book.accept(old, T0 + 61).status is RecordStatus.STALE_SEQ
    # ...but a newer one can.
    assert book.accept(signed(1, seq=10, issued=T0 + 61), T0 + 61).status is RecordStatus.NEW


def test_removed_record_cannot_be_replayed() -> None:
    book = RecordBook()
    data = signed(1, seq=3)
    book.accept(data, T0)
    assert book.remove(peer(1), T0) is not None
    assert book.accept(data, T0).status is RecordStatus.STALE_SEQ
    assert book.remove(peer(1), T0) is None


def test_a_full_book_evicts_the_record_expiring_first() -> None:
    book = RecordBook(max_records=2)
    book.accept(signed(1, ttl=100), T0)
    book.accept(signed(2, ttl=200), T0)
    short = book.accept(signed(3, ttl=50), T0)
    assert short.status is RecordStatus.FULL
    assert book.accept(signed(4, ttl=300), T0).status is RecordStatus.NEW
    assert {r.peer_id for r in book} == {peer(2), peer(4)}
    # a peer already in the book can always refresh
    assert book.accept(signed(2, seq=2, ttl=10), T0).status is RecordStatus.REPLACED


def test_size_limit_is_checked_before_parsing() -> None:
    book = RecordBook(max_size=100)
    result = book.accept(b"\xff" * 101, T0)
    assert result.status is RecordStatus.OVERSIZED and result.record is None


def test_query_by_layer_domain_and_prefix() -> None:
    book = RecordBook()
    book.accept(signed(1, Layer.MASTER, ""), T0)
    book.accept(signed(2, Layer.LANGUAGE, "en"), T0)
    book.accept(signed(3, Layer.LANGUAGE, "fr"), T0)
    book.accept(signed(4, Layer.DOMAIN, "en/healthcare"), T0)
    book.accept(signed(5, Layer.DOMAIN, "en/law"), T0)
    book.accept(signed(6, Layer.SUBDOMAIN, "en/healthcare/cardiology", ttl=10), T0)

    def ids(records: list[NodeRecord]) -> list[str]:
        return [r.domain for r in records]

    assert ids(book.query()) == [
        "",
        "en",
        "fr",
        "en/healthcare",
        "en/law",
        "en/healthcare/cardiology",
    ]
    assert ids(book.query(layer=Layer.LANGUAGE)) == ["en", "fr"]
    assert ids(book.query(domain="en/law")) == ["en/law"]
    assert ids(book.query(domain_prefix="en/healthcare")) == [
        "en/healthcare",
        "en/healthcare/cardiology",
    ]
    assert ids(book.query(layer=Layer.DOMAIN, domain_prefix="en")) == ["en/healthcare", "en/law"]
    assert ids(book.query(domain_prefix="e")) == []
    assert ids(book.query(domain_prefix="en", now=T0 + 11)) == ["en", "en/healthcare", "en/law"]
