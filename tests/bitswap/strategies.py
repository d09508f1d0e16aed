"""Hypothesis strategies for Bitswap messages."""

from __future__ import annotations

from hypothesis import strategies as st

from p2phier.bitswap import (
    BlockPayload,
    BlockPresence,
    Message,
    PresenceType,
    WantEntry,
    Wantlist,
    WantType,
    block_key,
)
from p2phier.cid import CID, DAG_PB, RAW, Multihash

INT32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)


@st.composite
def cids(draw: st.DrawFn) -> CID:
    digest = draw(st.binary(min_size=32, max_size=32))
    kind = draw(st.sampled_from(["raw", "dag-pb", "v0", "other"]))
    mh = Multihash(0x12, digest)
    if kind == "v0":
        return CID(0, DAG_PB, mh)
    codec = {"raw": RAW, "dag-pb": DAG_PB}.get(kind) or draw(
        st.integers(min_value=0, max_value=(1 << 20))
    )
    return CID(1, codec, mh)


@st.composite
def want_entries(draw: st.DrawFn, cid: CID) -> WantEntry:
    return WantEntry(
        cid,
        priority=draw(INT32),
        cancel=draw(st.booleans()),
        want_type=draw(st.sampled_from(list(WantType))),
        send_dont_have=draw(st.booleans()),
    )


@st.composite
def messages(draw: st.DrawFn) -> Message:
    wantlist = None
    if draw(st.booleans()):
        raw = draw(st.lists(cids(), max_size=6, unique_by=block_key))
        entries = tuple(draw(want_entries(c)) for c in raw)
        wantlist = Wantlist(entries, draw(st.booleans()))
    blocks = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=300))
        cid = draw(cids())
        blocks.append(BlockPayload.of(CID(cid.version, cid.codec, Multihash.sha256(data)), data))
    presences = tuple(
        BlockPresence(draw(cids()), draw(st.sampled_from(list(PresenceType))))
        for _ in range(draw(st.integers(0, 4)))
    )
    pending = draw(st.integers(min_value=0, max_value=(1 << 31) - 1))
    return Message(wantlist, tuple(blocks), presences, pending)
