"""Signed messages: the one way every p2phier message is signed and checked.

Owns :func:`sign_as` and :func:`check_signed`, used by node records
(:mod:`p2phier.records`), announcements (:mod:`p2phier.announce`) and artifact
manifests (:mod:`p2phier.artifact.manifest`), and by any later signed message
(trust reports).  Each message type has its own signing domain (a byte string
signed before the message, so a signature over one kind of message can never
be replayed as another), carries its exact signed bytes beside the signature
(the bytes are verified, then parsed: no re-encoding) and names its author; the
signature must be the author's Ed25519 signature over exactly those bytes.
"""

from __future__ import annotations

from p2phier.errors import P2PHierError, SignatureError
from p2phier.identity import SIGNATURE_SIZE, Identity, PeerId


def sign_as(
    identity: Identity,
    author: PeerId,
    domain: bytes,
    data: bytes,
    *,
    what: str,
    error: type[P2PHierError],
) -> bytes:
    """``identity``'s signature over ``data`` in ``domain``; ``identity`` must be ``author``
    (``error`` otherwise: a node signs only messages that name it)."""
    if identity.peer_id != author:
        raise error(f"{what} names {author} but the signing key is {identity.peer_id}")
    return identity.sign(domain, data)


def check_signed(
    author: PeerId,
    domain: bytes,
    data: bytes,
    signature: bytes,
    *,
    what: str,
    error: type[SignatureError] = SignatureError,
) -> None:
    """Raise ``error`` unless ``signature`` is ``author``'s over exactly ``data`` in ``domain``."""
    if not signature:
        raise error(f"{what} is not signed")
    if len(signature) != SIGNATURE_SIZE:
        raise error(
            f"{what} signature is {len(signature)} bytes; an Ed25519 signature is {SIGNATURE_SIZE}"
        )
    try:
        author.verify(domain, data, signature)
    except SignatureError:
        raise error(
            f"{what} signature does not verify for {author} (changed after signing, or "
            "signed by another key)"
        ) from None
