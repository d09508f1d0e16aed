"""Golden vectors (protocol/vectors/bitswap.json) byte for byte, and a cross-check of
our codec against py-libp2p 0.8.1's independently generated Bitswap protobuf code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from libp2p.bitswap.messages import create_message, create_wantlist_entry
from libp2p.bitswap.pb.bitswap_pb2 import Message as LMessage

from p2phier.bitswap import (
    BlockPayload,
    BlockPresence,
    FrameDecoder,
    Message,
    PresenceType,
    WantEntry,
    Wantlist,
    WantType,
    encode_frame,
)
from p2phier.cid import CID
from p2phier.errors import ProtocolViolationError

from . import gen_vectors
from .strategies import messages

VECTORS = json.loads(gen_vectors.PATH.read_text())
VALID = {v["name"]: v for v in VECTORS["valid"]}
INVALID = {v["name"]: v for v in VECTORS["invalid"]}


def _cid(obj: dict[str, Any]) -> CID:
    cid = CID.parse(obj["cid"])
    assert cid.to_bytes().hex() == obj["cid_hex"]  # string and bytes forms agree
    return cid


def _message(doc: dict[str, Any]) -> Message:
    wl = None
    if doc["wantlist"] is not None:
        wl = Wantlist(
            tuple(
                WantEntry(
                    _cid(e),
                    e["priority"],
                    e["cancel"],
                    WantType.HAVE if e["want_type"] == "have" else WantType.BLOCK,
                    e["send_dont_have"],
                )
                for e in doc["wantlist"]["entries"]
            ),
            doc["wantlist"]["full"],
        )
    blocks = []
    for b in doc["blocks"]:
        cid, data = _cid(b), bytes.fromhex(b["data_hex"])
        assert cid.verify(data)
        payload = BlockPayload.of(cid, data)
        assert payload.prefix.hex() == b["prefix_hex"]
        blocks.append(payload)
    presences = tuple(
        BlockPresence(_cid(p), PresenceType.HAVE if p["type"] == "have" else PresenceType.DONT_HAVE)
        for p in doc["presences"]
    )
    return Message(wl, tuple(blocks), presences, doc["pending_bytes"])


def test_the_vector_file_covers_what_the_profile_requires() -> None:
    assert VECTORS["protocol"] == "/ipfs/bitswap/1.2.0"
    assert {
        "wantlist-have-block-cancel",
        "payload-prefix-data",
        "presences-have-donthave",
    } <= set(VALID)
    kinds = {
        (e["want_type"], e["cancel"], e["send_dont_have"])
        for v in VALID.values()
        if v["message"]["wantlist"]
        for e in v["message"]["wantlist"]["entries"]
    }
    assert ("have", False, True) in kinds and ("block", False, True) in kinds
    assert any(cancel for _, cancel, _ in kinds)
    assert "00701220" in {
        b["prefix_hex"] for b in VALID["payload-prefix-data"]["message"]["blocks"]
    }


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_vector_encodes_byte_for_byte(name: str) -> None:
    vec = VALID[name]
    msg = _message(vec["message"])
    assert msg.encode().hex() == vec["hex"]
    assert encode_frame(msg.encode()).hex() == vec["frame_hex"]


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_vector_decodes_back(name: str) -> None:
    vec = VALID[name]
    assert Message.decode(bytes.fromhex(vec["hex"])) == _message(vec["message"])
    frames = FrameDecoder().feed(bytes.fromhex(vec["frame_hex"]))
    assert [f.hex() for f in frames] == [vec["hex"]]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_vector_is_refused(name: str) -> None:
    vec = INVALID[name]
    with pytest.raises(ProtocolViolationError, match=vec["error"]):
        Message.decode(bytes.fromhex(vec["hex"]))


def test_the_vector_file_is_reproducible_from_the_independent_encoder() -> None:
    assert gen_vectors.build() == Path(gen_vectors.PATH).read_text()


def _libp2p_build(msg: Message) -> LMessage:
    """The same message built with py-libp2p's own helpers."""
    entries = None
    if msg.wantlist is not None:
        entries = [
            create_wantlist_entry(
                e.cid.to_bytes(), e.priority, e.cancel, int(e.want_type), e.send_dont_have
            )
            for e in msg.wantlist.entries
        ]
    out = create_message(
        wantlist_entries=entries,
        blocks_v110=[(b.prefix, b.data) for b in msg.blocks] or None,
        block_presences=[(p.cid.to_bytes(), p.type is PresenceType.HAVE) for p in msg.presences]
        or None,
        pending_bytes=msg.pending_bytes,
        full_wantlist=msg.wantlist.full if msg.wantlist else False,
    )
    if msg.wantlist is not None:
        out.wantlist.SetInParent()  # create_message leaves an empty wantlist out
        out.wantlist.full = msg.wantlist.full
    return out


@given(messages())
def test_libp2p_encodes_every_message_exactly_as_we_do(msg: Message) -> None:
    ours = msg.encode()
    assert _libp2p_build(msg).SerializeToString() == ours
    # and what libp2p parses from our bytes re-serialises unchanged
    parsed = LMessage()
    parsed.ParseFromString(ours)
    assert parsed.SerializeToString() == ours
