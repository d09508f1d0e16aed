"""Build protocol/vectors/bitswap.json with an independent implementation.

Every valid vector is encoded by py-libp2p 0.8.1's own generated protobuf code
(``libp2p.bitswap.pb.bitswap_pb2`` via ``libp2p.bitswap.messages``) with CIDs
and prefixes computed by py-cid, not by p2phier; ``test_vectors.py`` then
checks p2phier's codec against the stored bytes.  Invalid vectors are written
by hand as raw protobuf so that no encoder can tidy them up.

Run from the repository root: ``.venv/bin/python -m tests.bitswap.gen_vectors``
(``--check`` exits 1 if the committed file differs from what this builds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from libp2p.bitswap.cid import compute_cid_v0_obj, compute_cid_v1_obj
from libp2p.bitswap.messages import create_message, create_wantlist_entry
from libp2p.bitswap.pb.bitswap_pb2 import Message as LMessage

PATH = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "bitswap.json"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _cid(kind: str, data: bytes) -> Any:
    if kind == "v0":
        return compute_cid_v0_obj(data)
    return compute_cid_v1_obj(data, kind)


def _cid_json(c: Any) -> dict[str, str]:
    text = c.encode("base32") if c.version == 1 else c.encode()
    return {"cid": text.decode() if isinstance(text, bytes) else text, "cid_hex": c.buffer.hex()}


def _valid() -> list[dict[str, Any]]:
    hello = _cid("raw", b"hello")
    node = _cid("dag-pb", b"\x0a\x02\x08\x01")  # bytes need not be a real node for the codec
    v0 = _cid("v0", b"\x0a\x02\x08\x01")  # the same block as ``node``, named by CIDv0
    other_v0 = _cid("v0", b"\x0a\x02\x08\x02")
    world = _cid("raw", b"world")
    out: list[dict[str, Any]] = []

    def add(name: str, note: str, msg: LMessage, as_json: dict[str, Any]) -> None:
        data = msg.SerializeToString()
        out.append(
            {
                "name": name,
                "note": note,
                "hex": data.hex(),
                "frame_hex": (_varint(len(data)) + data).hex(),
                "message": as_json,
            }
        )

    def entry(c: Any, priority: int, cancel: bool, want: str, sdh: bool) -> dict[str, Any]:
        return {
            **_cid_json(c),
            "priority": priority,
            "cancel": cancel,
            "want_type": want,
            "send_dont_have": sdh,
        }

    empty: dict[str, Any] = {"wantlist": None, "blocks": [], "presences": [], "pending_bytes": 0}

    msg = create_message(
        wantlist_entries=[
            create_wantlist_entry(hello.buffer, 1, False, 1, True),
            create_wantlist_entry(node.buffer, 10, False, 0, True),
            create_wantlist_entry(other_v0.buffer, 0, True, 0, False),
        ]
    )
    add(
        "wantlist-have-block-cancel",
        "want-have with sendDontHave (raw CIDv1), want-block priority 10 with sendDontHave "
        "(dag-pb CIDv1), cancel (CIDv0); full=false",
        msg,
        {
            **empty,
            "wantlist": {
                "full": False,
                "entries": [
                    entry(hello, 1, False, "have", True),
                    entry(node, 10, False, "block", True),
                    entry(other_v0, 0, True, "block", False),
                ],
            },
        },
    )

    msg = create_message(
        wantlist_entries=[create_wantlist_entry(world.buffer, 2147483647, False, 0, False)],
        full_wantlist=True,
    )
    add(
        "wantlist-full",
        "a full wantlist with one want-block at the highest int32 priority, no sendDontHave",
        msg,
        {
            **empty,
            "wantlist": {
                "full": True,
                "entries": [entry(world, 2147483647, False, "block", False)],
            },
        },
    )

    blocks = [
        (hello.prefix().to_bytes(), b"hello"),
        (node.prefix().to_bytes(), b"\x0a\x02\x08\x01"),
        # py-libp2p's get_cid_prefix() returns b"" for CIDv0 (one of its bugs); py-cid's
        # own Prefix of a CIDv0 is the correct 00 70 12 20
        (v0.prefix().to_bytes(), b"\x0a\x02\x08\x01"),
    ]
    msg = create_message(blocks_v110=blocks)
    add(
        "payload-prefix-data",
        "blocks as prefix+data: raw CIDv1, dag-pb CIDv1, and the same dag-pb block as CIDv0 "
        "(prefix 00701220)",
        msg,
        {
            **empty,
            "blocks": [
                {"prefix_hex": p.hex(), "data_hex": d.hex(), **_cid_json(c)}
                for (p, d), c in zip(blocks, (hello, node, v0), strict=True)
            ],
        },
    )

    msg = create_message(
        block_presences=[(hello.buffer, True), (v0.buffer, False)], pending_bytes=262144
    )
    add(
        "presences-have-donthave",
        "blockPresences HAVE (raw CIDv1) and DONT_HAVE (CIDv0), pendingBytes 262144",
        msg,
        {
            **empty,
            "presences": [
                {**_cid_json(hello), "type": "have"},
                {**_cid_json(v0), "type": "dont_have"},
            ],
            "pending_bytes": 262144,
        },
    )

    msg = create_message(
        wantlist_entries=[create_wantlist_entry(node.buffer, 5, False, 1, True)],
        blocks_v110=[(hello.prefix().to_bytes(), b"hello")],
        block_presences=[(world.buffer, False)],
        pending_bytes=5,
    )
    add(
        "mixed",
        "a wantlist, a block, a presence and pendingBytes in one message",
        msg,
        {
            "wantlist": {"full": False, "entries": [entry(node, 5, False, "have", True)]},
            "blocks": [
                {
                    "prefix_hex": hello.prefix().to_bytes().hex(),
                    "data_hex": b"hello".hex(),
                    **_cid_json(hello),
                }
            ],
            "presences": [{**_cid_json(world), "type": "dont_have"}],
            "pending_bytes": 5,
        },
    )
    add("empty", "the empty message (all fields default)", LMessage(), dict(empty))
    return out


def _ld(field: int, body: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _invalid() -> list[dict[str, str]]:
    hello = _cid("raw", b"hello").buffer
    entry = _ld(1, hello)
    cases = [
        ("truncated-wantlist", _ld(1, _ld(1, entry))[:-3], "truncated"),
        ("entry-without-cid", _ld(1, _ld(1, b"")), "empty CID"),
        ("bad-cid", _ld(1, _ld(1, _ld(1, hello[:-1]))), "invalid CID"),
        ("unknown-want-type", _ld(1, _ld(1, entry + b"\x20\x02")), "unknown wantType"),
        ("duplicate-entry", _ld(1, _ld(1, entry) + _ld(1, entry)), "twice"),
        ("empty-prefix", _ld(3, _ld(2, b"hello")), "invalid"),
        ("sha1-prefix", _ld(3, _ld(1, bytes.fromhex("01551114")) + _ld(2, b"x")), "sha2-256"),
        ("unknown-presence-type", _ld(4, _ld(1, hello) + b"\x10\x05"), "unknown type"),
        ("negative-pending-bytes", b"\x28" + b"\xff" * 9 + b"\x01", "negative"),
        ("group-wire-type", b"\x0b", "wire type 3"),
    ]
    return [{"name": n, "hex": d.hex(), "error": e} for n, d, e in cases]


def build() -> str:
    doc = {
        "about": "Golden Bitswap 1.2.0 messages for p2phier (see protocol/bitswap.md). "
        "'hex' is the protobuf message, 'frame_hex' the same with its unsigned-varint length "
        "prefix as sent on a stream. Valid vectors were encoded by py-libp2p 0.8.1's "
        "bitswap_pb2 with CIDs from py-cid 0.5.0 (tests/bitswap/gen_vectors.py); invalid "
        "ones must be refused with an error containing 'error'.",
        "protocol": "/ipfs/bitswap/1.2.0",
        "valid": _valid(),
        "invalid": _invalid(),
    }
    return json.dumps(doc, indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = build()
    if "--check" in argv:
        return 0 if PATH.read_text() == text else 1
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
