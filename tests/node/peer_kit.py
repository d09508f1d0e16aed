"""Pieces the hostile helper processes share: a signed node record of their own."""

from __future__ import annotations

import time

from p2phier.cid import CID
from p2phier.config import DEFAULT_BASE_MODEL
from p2phier.identity import Identity
from p2phier.net.host import Host
from p2phier.records import Capabilities, HardwareClass, Layer, NodeRecord, sign_record


def signed_record(
    me: Identity,
    host: Host,
    *,
    layer: Layer,
    domain: str,
    seq: int,
    head: CID | None,
    started_ms: int,
    issued_ms: int | None = None,
) -> bytes:
    """A valid record of ``me`` (5 minutes to live) at ``host``'s addresses."""
    now = int(time.time() * 1000) if issued_ms is None else issued_ms
    return sign_record(
        NodeRecord(
            peer_id=me.peer_id,
            addrs=tuple(host.listen_addrs),
            layer=layer,
            domain=domain,
            base_model_id=DEFAULT_BASE_MODEL,
            capabilities=Capabilities(1 << 30, 0, HardwareClass.CPU),
            head=head,
            seq=seq,
            issued_ms=now,
            expires_ms=now + 300_000,
            started_ms=started_ms,
        ),
        me,
    )
