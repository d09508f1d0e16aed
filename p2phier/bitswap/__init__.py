"""Bitswap 1.2.0 for p2phier, as a pure protocol core (no I/O, no clock).

Owns the Bitswap wire messages (:mod:`.message`), stream framing
(:mod:`.framing`), per-peer accounting and rate limits (:mod:`.ledger`), the
server side that answers wants (:mod:`.engine`) and the client side that
fetches a DAG from several providers (:mod:`.session`).  Nothing here imports
trio or libp2p: the network layer (``p2phier.net``) moves the bytes, feeds
them in with the current time, and carries out the actions that come back.
The profile p2phier implements is described in ``protocol/bitswap.md``.
"""

from __future__ import annotations

from .engine import (
    BlockSource,
    Engine,
    EngineAction,
    EngineConfig,
    LocalBlockCorrupt,
    ReadAheadSource,
    RoomFn,
    WantsDropped,
)
from .framing import FrameDecoder, encode_frame
from .ledger import (
    MALFORMED,
    OVER_LIMIT,
    WRONG_BLOCK,
    Ledger,
    LedgerBook,
    Misbehaviour,
    TokenBucket,
)
from .message import (
    DEFAULT_LIMITS,
    MAX_BLOCK_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_SERVED_BLOCK_SIZE,
    PROTOCOL_ID,
    BlockPayload,
    BlockPresence,
    Limits,
    LocalProtocolError,
    Message,
    PresenceType,
    SendMessage,
    WantEntry,
    Wantlist,
    WantType,
    block_key,
)
from .session import (
    BlockFetched,
    FetchComplete,
    FetchFailed,
    FetchFailedError,
    PeerTimedOut,
    Session,
    SessionConfig,
    SessionEvent,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MALFORMED",
    "MAX_BLOCK_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_SERVED_BLOCK_SIZE",
    "OVER_LIMIT",
    "PROTOCOL_ID",
    "WRONG_BLOCK",
    "BlockFetched",
    "BlockPayload",
    "BlockPresence",
    "BlockSource",
    "Engine",
    "EngineAction",
    "EngineConfig",
    "FetchComplete",
    "FetchFailed",
    "FetchFailedError",
    "FrameDecoder",
    "Ledger",
    "LedgerBook",
    "Limits",
    "LocalBlockCorrupt",
    "LocalProtocolError",
    "Message",
    "Misbehaviour",
    "PeerTimedOut",
    "PresenceType",
    "ReadAheadSource",
    "RoomFn",
    "SendMessage",
    "Session",
    "SessionConfig",
    "SessionEvent",
    "TokenBucket",
    "WantEntry",
    "WantType",
    "Wantlist",
    "WantsDropped",
    "block_key",
    "encode_frame",
]
