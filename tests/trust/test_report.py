"""Trust reports (codec, signature, limits, replay) and proofs (re-checked, never trusted)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.announce import sign_announcement, up_topic
from p2phier.artifact.manifest import (
    ContentRef,
    Encoding,
    Manifest,
    sign_manifest,
)
from p2phier.cid import CID
from p2phier.records import Layer, sign_record
from p2phier.trust.proofs import BadProofError, check_proof
from p2phier.trust.report import (
    MAX_OPINIONS,
    ReportBook,
    TrustReport,
    TrustReportError,
    TrustReportSignatureError,
    open_report,
    sign_report,
)
from p2phier.unixfs import build_file
from tests.node_logic.helpers import BASE, announcement, ident, peer, record


def _report(seq: int = 1, **kw: object) -> TrustReport:
    args: dict[str, object] = {
        "reporter": peer(1),
        "seq": seq,
        "issued_ms": 1_700_000_000_000,
        "opinions": ((peer(2), 3.5), (peer(3), -12.25)),
        "proofs": (),
    }
    args.update(kw)
    return TrustReport(**args)  # type: ignore[arg-type]


def test_round_trip_and_signature() -> None:
    signed = sign_report(_report(), ident(1))
    got = open_report(signed)
    assert got.reporter == peer(1) and got.seq == 1
    assert dict(got.opinions) == {peer(2): 3.5, peer(3): -12.25}
    tampered = bytearray(signed)
    tampered[-1] ^= 1
    with pytest.raises(TrustReportSignatureError, match="does not verify"):
        open_report(bytes(tampered))
    with pytest.raises(TrustReportSignatureError, match="signing key"):
        sign_report(_report(), ident(2))  # a node signs only its own report


@given(st.binary(max_size=600))
def test_junk_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(TrustReportError):  # anything else escaping fails the test
        open_report(data)


def test_limits() -> None:
    many = tuple((peer(10 + i), 1.0) for i in range(MAX_OPINIONS + 1))
    with pytest.raises(TrustReportError, match="too many"):
        open_report(sign_report(_report(opinions=many), ident(1)))
    with pytest.raises(TrustReportError, match="over 8192"):
        open_report(b"\x00" * 9000)


def test_the_book_keeps_each_reporters_newest() -> None:
    book = ReportBook()
    assert book.offer(_report(2))
    assert not book.offer(_report(2))  # a replay
    assert not book.offer(_report(1))  # older
    assert book.offer(_report(3)) and len(book) == 1


def _provenance_proof(signer: int) -> tuple[bytes, bytes]:
    m = Manifest(
        base_model_id=BASE, base_model_cid=None, parent=None, layer="domain",
        domain="en/healthcare", round=1, encoding=Encoding.FP32, metrics=(),
        author=peer(signer), created_ms=0, config=ContentRef(CID.raw(b"c"), 1),
        tensors=ContentRef(CID.raw(b"t"), 1), tensors_raw_size=1,
    )  # fmt: skip
    envelope = sign_manifest(m, ident(signer)).to_bytes()
    ann = announcement(4, up_topic(peer(50)), Layer.LANGUAGE, "zz", cid=build_file(envelope)[0])
    return sign_announcement(ann, ident(4)), envelope


def test_a_provenance_proof_is_rechecked_from_its_signed_bytes() -> None:
    subject, what = check_proof("provenance", _provenance_proof(signer=9))
    assert subject == peer(4) and "not by the announcer" in what
    # the announcer's own artifact for another place is a proof too
    subject, what = check_proof("provenance", _provenance_proof(signer=4))
    assert subject == peer(4) and "domain/en/healthcare" in what
    ann, envelope = _provenance_proof(signer=9)
    with pytest.raises(BadProofError, match="not the artifact the announcement named"):
        check_proof("provenance", (ann, _provenance_proof(signer=8)[1]))
    bad = bytearray(ann)
    bad[-1] ^= 1
    with pytest.raises(BadProofError, match="does not check out"):
        check_proof("provenance", (bytes(bad), envelope))


def test_an_equivocation_proof_needs_two_different_records_with_one_seq() -> None:
    a = sign_record(record(5, seq=7), ident(5))
    b = sign_record(record(5, seq=7, addrs=("/ip4/10.0.0.1/tcp/1",)), ident(5))
    subject, what = check_proof("equivocation", (a, b))
    assert subject == peer(5) and "seq 7" in what
    with pytest.raises(BadProofError):
        check_proof("equivocation", (a, a))
    with pytest.raises(BadProofError):
        check_proof("equivocation", (a, sign_record(record(5, seq=8), ident(5))))
    with pytest.raises(BadProofError, match="unknown proof"):
        check_proof("slander", (a,))
