"""Child registration: ``/p2phier/register/1.0.0`` (protocol/node.md §5).

Owns the wire exchange only; the decisions are the caller's
(:class:`p2phier.hierarchy.HierarchyState` via a callback).

Exchange on one stream, each message a ``varint(len) || body`` frame:

1. child -> parent: its current ``SignedNodeRecord`` (<= 8192 bytes);
2. parent -> child: a verdict frame, ``0x00`` (accepted) or ``0x01``
   (rejected), followed by a UTF-8 reason (<= 512 bytes);
3. parent -> child: the parent's own ``SignedNodeRecord`` (so a child learns
   of its parent's restart, new addresses or head without gossip).

The parent checks that the record's peer is the stream's authenticated remote
peer (done by the callback, which gets both).  Every read and write has a
deadline; anything else is a protocol violation and the stream is reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from libp2p.abc import INetStream

from p2phier.errors import NetworkError, ProtocolViolationError
from p2phier.records import MAX_SIGNED_RECORD

from .host import Host
from .streams import close_quietly, read_frame, reset_quietly, stream_peer, write_frame

logger = logging.getLogger(__name__)

REGISTER_PROTOCOL = "/p2phier/register/1.0.0"
MAX_REASON = 512
_ACCEPTED = 0
_REJECTED = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """The parent's answer to one registration."""

    accepted: bool
    reason: str
    parent_record: bytes  # the parent's SignedNodeRecord (unverified until offered to a book)


#: ``decide(remote peer id, signed record bytes) -> (accepted, reason)``; must not raise
Decide = Callable[[str, bytes], tuple[bool, str]]
#: the parent's own current signed record
OwnRecord = Callable[[], bytes]


def serve_registrations(
    host: Host, decide: Decide, own_record: OwnRecord, *, timeout: float = 10.0
) -> None:
    """Answer registrations on ``host`` with ``decide``."""

    async def handler(stream: INetStream) -> None:
        peer = stream_peer(stream)
        try:
            signed = await read_frame(stream, max_frame_size=MAX_SIGNED_RECORD, timeout=timeout)
            accepted, reason = decide(peer, signed)
            verdict = bytes([_ACCEPTED if accepted else _REJECTED])
            verdict += reason.encode("utf-8")[:MAX_REASON]
            await write_frame(stream, verdict, timeout=timeout, max_size=MAX_REASON + 1)
            await write_frame(stream, own_record(), timeout=timeout, max_size=MAX_SIGNED_RECORD)
            await close_quietly(stream)
        except NetworkError as exc:
            logger.info("registration from %s failed: %s", peer, exc)
            await reset_quietly(stream)

    host.set_stream_handler(REGISTER_PROTOCOL, handler)


async def register_with(
    host: Host, parent: str, signed_record: bytes, *, timeout: float = 10.0
) -> Verdict:
    """Register with ``parent`` (dialling it if needed); returns its verdict.

    Raises NetworkError subclasses when the parent cannot be reached, stalls or
    breaks the protocol.
    """
    stream = await host.open_stream(parent, REGISTER_PROTOCOL, timeout=timeout)
    try:
        await write_frame(stream, signed_record, timeout=timeout, max_size=MAX_SIGNED_RECORD)
        verdict = await read_frame(stream, max_frame_size=MAX_REASON + 1, timeout=timeout)
        record = await read_frame(stream, max_frame_size=MAX_SIGNED_RECORD, timeout=timeout)
    except BaseException:
        await reset_quietly(stream)
        raise
    await close_quietly(stream)
    if not verdict or verdict[0] not in (_ACCEPTED, _REJECTED):
        raise ProtocolViolationError(f"{parent} sent a malformed registration verdict")
    reason = verdict[1:].decode("utf-8", errors="replace")
    return Verdict(verdict[0] == _ACCEPTED, reason, record)
