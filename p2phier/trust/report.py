"""Trust reports: a node's signed opinions of peers and the proofs it holds (pure).

Owns :class:`TrustReport` (``protocol/p2phier.proto``: ``TrustReport``,
``SignedTrustReport``), :func:`sign_report`, :func:`open_report` and
:class:`ReportBook`, the newest report per reporter.  Reports are gossiped on
:data:`TRUST_TOPIC`; a receiver checks, before anything else, the size, the
canonical encoding, the signature (the reporter's, through :mod:`p2phier.signing`),
that the reporter is the gossip message's origin, and the sequence number
(replays and old reports are dropped).  Opinions are clamped and at most
:data:`MAX_OPINIONS`; proofs at most :data:`MAX_PROOFS`, each re-checked by
:func:`p2phier.trust.proofs.check_proof` before it counts.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from p2phier.errors import InvalidPeerIdError, ProtocolViolationError, SignatureError
from p2phier.identity import Identity, PeerId
from p2phier.records import parse_canonical
from p2phier.signing import check_signed, sign_as
from p2phier.wire import p2phier_pb2 as pb

TRUST_TOPIC = "/p2phier/1/trust"
SIGNING_DOMAIN = b"p2phier/trust-report/v1"
FORMAT_VERSION = 1
#: a signed report fits one gossip message (p2phier.net.pubsub.MAX_GOSSIP_MESSAGE)
MAX_SIGNED_REPORT = 8192
MAX_OPINIONS = 64
MAX_PROOFS = 2
MAX_PROOF_PART = 3072  # one signed message in a proof (a record, announcement, envelope)
OPINION_CLAMP = 1_000.0


class TrustReportError(ProtocolViolationError):
    """A trust report is malformed, oversized, unsigned or replayed."""


class TrustReportSignatureError(TrustReportError, SignatureError):
    """A trust report's signature is not its reporter's."""


@dataclass(frozen=True, slots=True)
class TrustReport:
    reporter: PeerId
    seq: int
    issued_ms: int
    opinions: tuple[tuple[PeerId, float], ...] = ()
    proofs: tuple[tuple[str, tuple[bytes, ...]], ...] = ()

    def to_bytes(self) -> bytes:
        msg = pb.TrustReport(
            format_version=FORMAT_VERSION,
            reporter=self.reporter.multihash_bytes,
            seq=self.seq,
            issued_ms=self.issued_ms,
        )
        for subject, opinion in sorted(self.opinions, key=lambda o: o[0].multihash_bytes):
            value = max(-OPINION_CLAMP, min(OPINION_CLAMP, opinion))
            msg.opinions.add(subject=subject.multihash_bytes, opinion_milli=round(value * 1000))
        for kind, signed in self.proofs:
            msg.proofs.add(kind=kind, signed=list(signed))
        data: bytes = msg.SerializeToString(deterministic=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustReport:
        msg = parse_canonical(pb.TrustReport, data, "trust report", TrustReportError)
        if msg.format_version != FORMAT_VERSION:
            raise TrustReportError(f"trust report format {msg.format_version} is not supported")
        if len(msg.opinions) > MAX_OPINIONS or len(msg.proofs) > MAX_PROOFS:
            raise TrustReportError("trust report carries too many opinions or proofs")
        try:
            reporter = PeerId.from_bytes(msg.reporter)
            opinions = []
            previous = b""
            for o in msg.opinions:
                if o.subject <= previous:
                    raise TrustReportError("trust report subjects are not distinct and sorted")
                previous = o.subject
                if abs(o.opinion_milli) > OPINION_CLAMP * 1000:
                    raise TrustReportError("trust report opinion out of range")
                opinions.append((PeerId.from_bytes(o.subject), o.opinion_milli / 1000))
        except InvalidPeerIdError as exc:
            raise TrustReportError(f"trust report names a bad peer id: {exc}") from None
        proofs = []
        for p in msg.proofs:
            if (
                len(p.kind) > 32
                or len(p.signed) > 2
                or any(len(s) > MAX_PROOF_PART for s in p.signed)
            ):
                raise TrustReportError("trust report proof is oversized")
            proofs.append((p.kind, tuple(bytes(s) for s in p.signed)))
        return cls(reporter, msg.seq, msg.issued_ms, tuple(opinions), tuple(proofs))


def sign_report(report: TrustReport, identity: Identity) -> bytes:
    data = report.to_bytes()
    signature = sign_as(
        identity, report.reporter, SIGNING_DOMAIN, data, what="trust report",
        error=TrustReportSignatureError,
    )  # fmt: skip
    out: bytes = pb.SignedTrustReport(report=data, signature=signature).SerializeToString(
        deterministic=True
    )
    if len(out) > MAX_SIGNED_REPORT:
        raise TrustReportError(f"trust report is {len(out)} bytes, over {MAX_SIGNED_REPORT}")
    return out


def open_report(data: bytes) -> TrustReport:
    """Size check, strict parse and signature check of ``SignedTrustReport`` bytes."""
    if len(data) > MAX_SIGNED_REPORT:
        raise TrustReportError(f"trust report is {len(data)} bytes, over {MAX_SIGNED_REPORT}")
    msg = parse_canonical(pb.SignedTrustReport, data, "signed trust report", TrustReportError)
    report = TrustReport.from_bytes(bytes(msg.report))
    check_signed(
        report.reporter, SIGNING_DOMAIN, bytes(msg.report), bytes(msg.signature),
        what="trust report", error=TrustReportSignatureError,
    )  # fmt: skip
    return report


class ReportBook:
    """The newest report per reporter (replays and older ones refused), bounded."""

    def __init__(self, max_reporters: int = 4096) -> None:
        self.max_reporters = max_reporters
        self._reports: OrderedDict[PeerId, TrustReport] = OrderedDict()

    def offer(self, report: TrustReport) -> bool:
        """Keep ``report`` if it is its reporter's newest; False for a replay or older one."""
        old = self._reports.get(report.reporter)
        if old is not None and report.seq <= old.seq:
            return False
        self._reports.pop(report.reporter, None)
        self._reports[report.reporter] = report
        while len(self._reports) > self.max_reporters:
            self._reports.popitem(last=False)
        return True

    def reports(self) -> list[TrustReport]:
        return list(self._reports.values())

    def __len__(self) -> int:
        return len(self._reports)
