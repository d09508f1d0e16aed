"""Proofs: misbehaviour anyone can re-check from signed bytes alone (pure).

Owns :func:`check_provenance` (the intake's check of a fetched artifact against its
announcement) and :func:`check_proof`, which re-checks a proof received from
another node.  A proof carries the signed messages exactly as they were received:

* ``provenance``: a signed announcement and the signed manifest envelope of the
  artifact it pointed at, which disagree on signer, layer, domain, base model, round
  or lineage.  Its subject is the announcement's author: it signed a claim that its
  own signed artifact (or someone else's) contradicts;
* ``equivocation``: two different signed node records of one peer with one sequence
  number.  Its subject is that peer.

A proof that does not check out is the sender's forgery, never evidence against
its subject.
"""

from __future__ import annotations

from p2phier.announce import Announcement, open_announcement
from p2phier.artifact.limits import DEFAULT_LIMITS
from p2phier.artifact.manifest import Envelope, Manifest, open_envelope
from p2phier.cid import CID
from p2phier.errors import P2PHierError, ProtocolViolationError
from p2phier.identity import PeerId
from p2phier.records import SignedRecord
from p2phier.unixfs import build_file

PROVENANCE = "provenance"
EQUIVOCATION = "equivocation"


class ProvenanceError(ProtocolViolationError):
    """A fetched artifact is not what its announcement said (another signer, layer, domain,
    base model, round or lineage): the announcer passed off something else as its update.
    ``proof``: the signed announcement and envelope, when the caller has them."""

    def __init__(self, message: str, proof: tuple[bytes, ...] = ()) -> None:
        super().__init__(message)
        self.proof = proof


class BadProofError(ProtocolViolationError):
    """A proof received from a peer does not check out."""


def check_provenance(ann: Announcement, manifest: Manifest, cid: CID) -> None:
    """The artifact ``cid`` (its signed ``manifest``) must be the announcing author's own
    update, as announced; :class:`ProvenanceError` names the first disagreement."""
    m = manifest
    problems = []
    if m.author != ann.author:
        problems.append(f"it is signed by {m.author}, not by the announcer {ann.author}")
    if m.layer != ann.layer.label or m.domain != ann.domain:
        problems.append(
            f"its manifest says {m.layer}/{m.domain or '(root)'} but the announcement "
            f"{ann.layer.label}/{ann.domain or '(root)'}"
        )
    base_cid = str(m.base_model_cid) if m.base_model_cid else None
    if ann.base_model_id not in (m.base_model_id, base_cid):
        problems.append(
            f"its base model is {m.base_model_id!r}, the announcement's {ann.base_model_id!r}"
        )
    if m.round != ann.round:
        problems.append(f"its round is {m.round}, the announcement's {ann.round}")
    if m.parent != ann.parent:
        problems.append("its lineage differs from the announcement's")
    if problems:
        raise ProvenanceError(f"artifact {cid} is not the announced update: {problems[0]}")


def check_proof(kind: str, signed: tuple[bytes, ...]) -> tuple[PeerId, str]:
    """Re-check a proof; return its subject and what it proves, or raise BadProofError."""
    try:
        if kind == PROVENANCE and len(signed) == 2:
            ann = open_announcement(signed[0])
            envelope = Envelope.from_bytes(signed[1], max_size=DEFAULT_LIMITS.max_envelope)
            manifest = open_envelope(envelope)
            if build_file(signed[1])[0] != ann.cid:  # the very object the announcement named
                raise BadProofError("the envelope is not the artifact the announcement named")
            try:
                check_provenance(ann, manifest, ann.cid)
            except ProvenanceError as exc:
                return ann.author, str(exc)
            raise BadProofError("the announcement and the artifact agree: no provenance proof")
        if kind == EQUIVOCATION and len(signed) == 2:
            a, b = (SignedRecord.from_bytes(s).open() for s in signed)
            if a.peer_id != b.peer_id or a.seq != b.seq or a.to_bytes() == b.to_bytes():
                raise BadProofError("the two records are not one peer's with one seq")
            return a.peer_id, f"{a.peer_id} signed two different records with seq {a.seq}"
    except BadProofError:
        raise
    except P2PHierError as exc:
        raise BadProofError(f"{kind} proof does not check out: {exc}") from None
    raise BadProofError(f"unknown proof {kind!r} with {len(signed)} signed message(s)")
