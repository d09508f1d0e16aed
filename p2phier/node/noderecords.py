"""Node records on a running node: its own signed record, the records of others, registrations.

Owns :class:`NodeRecords`: this node's record (issued with a fresh sequence
number, published on the records topic, served to pulls and registrations),
every record offered from the network (gossip, pulls, registrations) checked
by the :class:`~p2phier.records.RecordBook`, and the decision on a child's
registration up to the point where the hierarchy has its say.  Each peer's
records and registrations are rate-limited before any signature is checked.
What a record means for the node (its hierarchy, its parent candidates) and
whether a registered child is admitted stay with the daemon: it is told
through ``on_record`` and asked through ``admit_child``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable

from p2phier.announce import RECORDS_TOPIC
from p2phier.cid import CID
from p2phier.config import NodeConfig
from p2phier.errors import NetworkError, ProtocolViolationError
from p2phier.identity import Identity
from p2phier.node.guard import Guard
from p2phier.node.services import NetServices
from p2phier.records import (
    Capabilities,
    NodeRecord,
    RecordBook,
    RecordStatus,
    next_seq,
    now_ms,
    open_record,
    sign_record,
)
from p2phier.trust import RECORDS, REGISTRATIONS, RateBudget

logger = logging.getLogger(__name__)

#: what the node makes of a record the book took: (record, status, now)
OnRecord = Callable[[NodeRecord, RecordStatus, float], None]
#: the hierarchy's verdict on a child whose record checked out: (record, now) -> (ok, reason)
AdmitChild = Callable[[NodeRecord, float], tuple[bool, str]]


class NodeRecords:
    """This node's record and the book of everyone's (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        services: NetServices,
        book: RecordBook,
        guard: Guard,
        *,
        clock: Callable[[], float],
        refused: Counter[str],
        on_record: OnRecord,
        admit_child: AdmitChild,
        on_change: Callable[[], None],
    ) -> None:
        self.identity = identity
        self.peer = identity.peer_id
        self.config = config
        self.services = services
        self.book = book
        self.guard = guard
        self.clock = clock
        #: peers refused as p2phier nodes, by reason (shared with the daemon's other refusals)
        self.refused = refused
        self.on_record = on_record
        self.admit_child = admit_child
        self.on_change = on_change
        #: what each peer may make this node check per second, before any signature check
        self.record_budget = RateBudget(RECORDS)
        self.registration_budget = RateBudget(REGISTRATIONS)
        self._seq: int | None = None
        self._signed = b""

    # --- this node's record ----------------------------------------------------------------
    @property
    def seq(self) -> int | None:
        """The sequence number of this node's latest record (None before the first)."""
        return self._seq

    @property
    def signed(self) -> bytes:
        """This node's latest signed record (empty before the first)."""
        return self._signed

    def restore(self, seq: int | None) -> None:
        """Continue from the saved sequence number (on start): records only move forward."""
        self._seq = seq

    def issue(self, *, head: CID | None, base_model_id: str, started_ms: int) -> None:
        """Sign a new record of this node (new addresses, head, base model or expiry)."""
        now = self.clock()
        self._seq = next_seq(self._seq, now)
        cfg = self.config
        ram = cfg.ram_bytes or _physical_memory()
        record = NodeRecord(
            peer_id=self.peer,
            addrs=self._advertised(),
            layer=cfg.layer,
            domain=cfg.domain,
            base_model_id=base_model_id,
            capabilities=Capabilities(ram, cfg.max_params, cfg.hardware),
            head=head,
            seq=self._seq,
            issued_ms=now_ms(now),
            expires_ms=now_ms(now) + int(cfg.record_ttl_s * 1000),
            started_ms=min(started_ms, now_ms(now)),
        )
        self._signed = sign_record(record, self.identity)
        self.book.accept(self._signed, now)
        self.on_change()

    def _advertised(self) -> tuple[str, ...]:
        addrs = self.config.advertise or tuple(self.services.host.listen_addrs)
        return tuple(dict.fromkeys(addrs))[:16]

    async def publish(self) -> None:
        """Gossip this node's latest record (it may be dropped: callers repeat it)."""
        try:
            await self.services.gossip.publish(RECORDS_TOPIC, self._signed)
        except NetworkError as exc:
            logger.debug("record publish: %s", exc)

    # --- everyone's records ----------------------------------------------------------------
    def all_signed(self) -> list[bytes]:
        """Every unexpired record held, as signed (what a records pull is answered with)."""
        out = []
        for record in self.book.query(now=self.clock()):
            signed = self.book.signed_bytes(record.peer_id)
            if signed is not None:
                out.append(signed)
        return out

    def offer(self, signed: bytes) -> RecordStatus:
        """Offer a signed record from anywhere (gossip, pull, registration) to the book."""
        now = self.clock()
        result = self.book.accept(signed, now)
        record = result.record
        if result.status is RecordStatus.CONFLICT and record is not None:
            held = self.book.signed_bytes(record.peer_id)
            if held is not None:
                self.guard.equivocation(str(record.peer_id), result.reason, (held, signed))
        if record is not None and result.status in (
            RecordStatus.NEW,
            RecordStatus.REPLACED,
            RecordStatus.DUPLICATE,
        ):
            if record.peer_id != self.peer and record.addrs:
                self.services.host.add_addrs(str(record.peer_id), record.addrs)
            self.on_record(record, result.status, now)
        return result.status

    def validate(self, origin: str, data: bytes) -> bool:
        """The records topic's validator: relay only records the book took."""
        if not self.record_budget.allow(origin, self.clock()):
            return False  # over its budget: dropped before the signature check
        status = self.offer(data)
        return status in (RecordStatus.NEW, RecordStatus.REPLACED, RecordStatus.DUPLICATE)

    # --- registrations ---------------------------------------------------------------------
    def decide_registration(self, remote: str, signed: bytes) -> tuple[bool, str]:
        """A peer asks to register as a child, with its signed record: (accepted, reason)."""
        if not self.registration_budget.allow(remote, self.clock()):
            # Before the record's signature is checked: a flood costs a lookup each.
            self.refused["registration-rate"] += 1
            return False, "too many registrations; try again later"
        accepted, reason = self._registration_verdict(remote, signed)
        if not accepted:
            self.refused["registration"] += 1
            logger.info("registration from %s refused: %s", remote, reason)
        return accepted, reason

    def _registration_verdict(self, remote: str, signed: bytes) -> tuple[bool, str]:
        now = self.clock()
        if self.guard.is_isolated(remote):
            return False, "this node has isolated you (misbehaviour)"
        status = self.offer(signed)
        try:
            record = open_record(signed)
        except ProtocolViolationError as exc:
            return False, f"your node record was refused: {exc}"
        newer = self.book.get(record.peer_id) if status is RecordStatus.STALE_SEQ else None
        if newer is not None:
            # Its newer record reached us by gossip while this registration was in flight
            # (e.g. it just loaded its tier): register it with the newest one we hold.
            record = newer
        elif not status.accepted and status is not RecordStatus.DUPLICATE:
            return False, f"your node record was refused: {status.value}"
        if str(record.peer_id) != remote:
            return False, "the record is not the registering peer's own"
        return self.admit_child(record, now)


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0


__all__ = ["AdmitChild", "NodeRecords", "OnRecord"]
