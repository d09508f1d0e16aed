"""The node's crash-safe persistent state: ``<home>/state/node.json``.

Owns the file format and its save/load: the hierarchy snapshot (children and
their expiry), the announcement filter's high-water marks, the record and
announcement sequence numbers, the head, the node's own latest signed
announcements, the list of accepted artifacts and the pins the node made itself
(:mod:`p2phier.node.housekeeping`).  :class:`NodeState` is the
typed, validated content; the daemon builds one to save and applies one on
start.

The file is written crash-safely (temp file, fsync, rename, fsync dir, mode
0600).  It is hostile input like any other: it is size-capped before reading,
must be version 1 and saved by the same identity, and every announcement in
it must open (signature) and be authored by this node.  An unusable file is
never deleted: it is moved aside to ``node.bad-<unix time>`` for the operator
and the node starts fresh.  No trio or libp2p here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2phier.announce import HighWater, open_announcement
from p2phier.cid import CID
from p2phier.errors import P2PHierError
from p2phier.fsutil import read_capped, write_atomic
from p2phier.hierarchy import HierarchyError
from p2phier.identity import PeerId

logger = logging.getLogger(__name__)

STATE_DIR = "state"
STATE_FILE = "node.json"
VERSION = 1
#: a larger file is not read (treated as unusable and moved aside)
MAX_STATE_BYTES = 16 << 20


@dataclass(frozen=True)
class SavedMark:
    """One announcement-filter high-water mark: ``(topic, author)`` -> seq, round, digest."""

    topic: str
    author: PeerId
    seq: int
    round: int
    digest: str = ""


@dataclass(frozen=True)
class NodeState:
    """What must survive a restart (the content of ``node.json``)."""

    record_seq: int | None = None
    announcement_seq: int | None = None
    head: CID | None = None
    #: :meth:`p2phier.hierarchy.HierarchyState.snapshot`, restored by the daemon
    hierarchy: Mapping[str, Any] = field(default_factory=dict)
    marks: tuple[SavedMark, ...] = ()
    #: topic -> this node's latest signed announcement on it
    announcements: Mapping[str, bytes] = field(default_factory=dict)
    accepted: tuple[dict[str, Any], ...] = ()
    #: :meth:`p2phier.node.housekeeping.PinLedger.snapshot`: the pins this node made itself
    #: and the artifacts it holds, restored by the daemon
    pins: Mapping[str, Any] = field(default_factory=dict)


def saved_marks(marks: Mapping[tuple[str, PeerId], HighWater]) -> tuple[SavedMark, ...]:
    """The filter's marks (:meth:`p2phier.announce.AnnouncementFilter.marks`) to save."""
    return tuple(SavedMark(t, a, m.seq, m.round, m.digest) for (t, a), m in marks.items())


def state_path(home: Path) -> Path:
    """``<home>/state/node.json``."""
    return home / STATE_DIR / STATE_FILE


def encode_state(peer: PeerId, state: NodeState) -> bytes:
    """The JSON bytes of ``state`` saved by ``peer``."""
    doc = {
        "version": VERSION,
        "peer_id": str(peer),
        "record_seq": state.record_seq,
        "announcement_seq": state.announcement_seq,
        "head": str(state.head) if state.head else None,
        "hierarchy": dict(state.hierarchy),
        "marks": [[m.topic, str(m.author), m.seq, m.round, m.digest] for m in state.marks],
        "announcements": {
            t: base64.b64encode(b).decode("ascii") for t, b in state.announcements.items()
        },
        "accepted": list(state.accepted),
        "pins": dict(state.pins),
    }
    return json.dumps(doc, indent=1).encode()


def decode_state(raw: bytes, peer: PeerId, *, max_accepted: int) -> NodeState:
    """Parse and validate ``node.json`` saved by ``peer``.

    Raises ValueError, TypeError, KeyError or a :class:`P2PHierError` on anything unusable.
    Keeps only the newest ``max_accepted`` accepted entries and only announcements
    this node authored.
    """
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("unknown version")
    if doc.get("peer_id") != str(peer):
        raise ValueError("saved by another identity")
    head = doc.get("head")
    marks = []
    for topic, author, seq, round_, *rest in doc.get("marks", []):
        if not isinstance(topic, str):
            raise ValueError("a saved mark has no topic")
        digest = str(rest[0]) if rest else ""  # older state files have none
        marks.append(SavedMark(topic, PeerId.parse(author), int(seq), int(round_), digest))
    announcements: dict[str, bytes] = {}
    for topic, b64 in doc.get("announcements", {}).items():
        signed = base64.b64decode(b64)
        if open_announcement(signed).author == peer:
            announcements[str(topic)] = signed
    accepted = tuple(e for e in doc.get("accepted", [])[-max_accepted:] if isinstance(e, dict))
    pins = doc.get("pins", {})  # older state files have none
    if not isinstance(pins, dict):
        raise ValueError("the saved pins are not a table")
    return NodeState(
        record_seq=_opt_int(doc.get("record_seq")),
        announcement_seq=_opt_int(doc.get("announcement_seq")),
        head=CID.parse(head) if isinstance(head, str) else None,
        hierarchy=doc.get("hierarchy", {}),
        marks=tuple(marks),
        announcements=announcements,
        accepted=accepted,
        pins=pins,
    )


def save_node_state(path: Path, peer: PeerId, state: NodeState) -> bool:
    """Write ``state`` crash-safely (0600 in a 0700 directory); False (logged) if it failed."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, encode_state(peer, state), 0o600)
    except OSError as exc:
        logger.error("cannot save node state to %s: %s", path, exc)
        return False
    return True


def load_node_state(
    path: Path,
    peer: PeerId,
    apply: Callable[[NodeState], None],
    *,
    max_accepted: int,
) -> bool:
    """Load the saved state and hand it to ``apply``; True if one was applied.

    No file: False.  A file that cannot be parsed, or that ``apply`` rejects
    (ValueError, TypeError, KeyError, P2PHierError, HierarchyError), is moved
    aside to ``node.bad-<unix time>`` (never lost) and False is returned: the
    node starts fresh.
    """
    if not os.path.lexists(path):
        return False
    try:  # an oversized, unreadable or special file is an InputFileError: moved aside too
        raw = read_capped(path, MAX_STATE_BYTES, "saved node state")
        apply(decode_state(raw, peer, max_accepted=max_accepted))
    except (ValueError, TypeError, KeyError, P2PHierError, HierarchyError) as exc:
        aside = path.with_suffix(f".bad-{int(time.time())}")
        os.replace(path, aside)
        logger.error("saved node state %s is unusable (%s); moved to %s", path, exc, aside)
        return False
    return True


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


__all__ = [
    "STATE_DIR",
    "STATE_FILE",
    "NodeState",
    "SavedMark",
    "decode_state",
    "encode_state",
    "load_node_state",
    "save_node_state",
    "saved_marks",
    "state_path",
]
