"""Build protocol/vectors/node_records.json and discovery.json independently of p2phier.

Every byte here is written by hand: protobuf fields by their wire format
(tag = field << 3 | wire type), peer ids and CIDs from their multiformats
definitions, signatures straight from ``cryptography``'s Ed25519 over the
framing ``varint(len(domain)) || domain || varint(len(payload)) || payload``.
Nothing imports p2phier, so the tests that compare p2phier's codecs with these
files check two implementations against each other.

Run from the repository root: ``.venv/bin/python -m tests.node_logic.gen_vectors``
(``--check`` exits 1 if the committed files differ from what this builds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
RECORDS_PATH = ROOT / "node_records.json"
DISCOVERY_PATH = ROOT / "discovery.json"

RECORD_DOMAIN = b"p2phier/node-record/v1"
ANNOUNCE_DOMAIN = b"p2phier/announcement/v1"
DISCOVERY_DOMAIN = b"p2phier/discovery/v1"
LAYERS = {"master": 1, "language": 2, "domain": 3, "subdomain": 4, "device": 5}
HARDWARE = {"gpu": 1, "cpu": 2, "mobile": 3, "embedded": 4}
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
NOW_MS = 1767225600000  # 2026-01-01T00:00:00Z, the clock of every vector


# --- multiformats by hand -------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def cid_raw(data: bytes) -> bytes:
    """Binary CIDv1, codec raw (0x55), sha2-256 (0x12, 32 bytes)."""
    return b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()


def cid_str(binary: bytes) -> str:
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=")


def key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def peer_bytes(seed: bytes) -> bytes:
    """Identity multihash of the libp2p PublicKey protobuf {Type: Ed25519, Data: pub}."""
    pub = (
        key(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    proto = b"\x08\x01\x12\x20" + pub
    return b"\x00" + varint(len(proto)) + proto


def framed(domain: bytes, payload: bytes) -> bytes:
    return varint(len(domain)) + domain + varint(len(payload)) + payload


# --- protobuf by hand (proto3: default values are not written) -----------------------------


def f_varint(num: int, value: int) -> bytes:
    return b"" if value == 0 else varint(num << 3) + varint(value)


def f_bytes(num: int, value: bytes) -> bytes:
    return b"" if not value else varint(num << 3 | 2) + varint(len(value)) + value


def f_double(num: int, value: float) -> bytes:
    return varint(num << 3 | 1) + struct.pack("<d", value)


def seed_of(i: int) -> bytes:
    return bytes((i + j) % 256 for j in range(32))


def record_bytes(f: dict[str, Any], peer: bytes) -> bytes:
    caps = (
        f_varint(1, f["capabilities"]["ram_bytes"])
        + f_varint(2, f["capabilities"]["max_params"])
        + f_varint(3, HARDWARE[f["capabilities"]["hardware"]])
    )
    head = b""
    if f["head"]:
        head = base64.b32decode(f["head"][1:].upper() + "=" * (-len(f["head"][1:]) % 8))
    out = f_varint(1, 1) + f_bytes(2, peer)
    for addr in f["addrs"]:
        out += varint(3 << 3 | 2) + varint(len(addr)) + addr.encode()
    out += f_varint(4, LAYERS.get(f["layer"], 0)) + f_bytes(5, f["domain"].encode())
    out += f_bytes(6, f["base_model_id"].encode())
    out += varint(7 << 3 | 2) + varint(len(caps)) + caps  # a set message field is always written
    out += f_bytes(8, head) + f_varint(9, f["seq"]) + f_varint(10, f["issued_ms"])
    out += f_varint(11, f["expires_ms"]) + f_varint(12, f["started_ms"])
    return out


def envelope(payload: bytes, signature: bytes) -> bytes:
    return f_bytes(1, payload) + f_bytes(2, signature)


def announcement_bytes(f: dict[str, Any], author: bytes) -> bytes:
    def cid_bin(text: str | None) -> bytes:
        if not text:
            return b""
        body = text[1:].upper()
        return base64.b32decode(body + "=" * (-len(body) % 8))

    out = f_varint(1, 1) + f_bytes(2, author) + f_bytes(3, f["topic"].encode())
    out += f_bytes(4, cid_bin(f["cid"])) + f_bytes(5, cid_bin(f["parent"]))
    out += f_varint(6, LAYERS[f["layer"]]) + f_bytes(7, f["domain"].encode())
    out += f_bytes(8, f["base_model_id"].encode())
    out += f_varint(9, f["round"]) + f_varint(10, f["seq"]) + f_varint(11, f["created_ms"])
    for name, value in f["metrics"]:
        metric = f_bytes(1, name.encode()) + (f_double(2, value) if value != 0 else b"")
        out += varint(12 << 3 | 2) + varint(len(metric)) + metric
    out += f_varint(13, f["size"])
    return out


# --- the vectors --------------------------------------------------------------------------------

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def record_vectors() -> list[dict[str, Any]]:
    specs: list[tuple[str, int, dict[str, Any]]] = [
        (
            "domain-node",
            0,
            {
                "addrs": ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"],
                "layer": "domain",
                "domain": "en/healthcare",
                "base_model_id": BASE,
                "capabilities": {"ram_bytes": 8 << 30, "max_params": 22_700_000, "hardware": "cpu"},
                "head": None,
                "seq": 1,
                "issued_ms": NOW_MS,
                "expires_ms": NOW_MS + 3_600_000,
                "started_ms": NOW_MS - 60_000,
            },
        ),
        (
            "master-with-head",
            1,
            {
                "addrs": ["/dns4/master.example.org/tcp/4001"],
                "layer": "master",
                "domain": "",
                "base_model_id": BASE,
                "capabilities": {
                    "ram_bytes": 256 << 30,
                    "max_params": 7_000_000_000,
                    "hardware": "gpu",
                },
                "head": cid_str(cid_raw(b"p2phier head update")),
                "seq": NOW_MS,
                "issued_ms": NOW_MS,
                "expires_ms": NOW_MS + 86_400_000,
                "started_ms": NOW_MS - 86_400_000,
            },
        ),
        (
            "device-no-addresses",
            2,
            {
                "addrs": [],
                "layer": "device",
                "domain": "en/healthcare/cardiology",
                "base_model_id": "prajjwal1/bert-tiny",
                "capabilities": {"ram_bytes": 0, "max_params": 4_400_000, "hardware": "embedded"},
                "head": None,
                "seq": 7,
                "issued_ms": NOW_MS - 1000,
                "expires_ms": NOW_MS + 600_000,
                "started_ms": 0,
            },
        ),
    ]
    out = []
    for name, seed_i, fields in specs:
        seed = seed_of(seed_i)
        peer = peer_bytes(seed)
        rec = record_bytes(fields, peer)
        to_sign = framed(RECORD_DOMAIN, rec)
        sig = key(seed).sign(to_sign)
        out.append(
            {
                "name": name,
                "seed_hex": seed.hex(),
                "peer_id": b58(peer),
                "fields": fields,
                "record_hex": rec.hex(),
                "signing_bytes_hex": to_sign.hex(),
                "signature_hex": sig.hex(),
                "signed_hex": envelope(rec, sig).hex(),
            }
        )
    return out


def invalid_record_vectors(valid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Offered to RecordBook.accept at NOW_MS: each must get exactly ``status``."""
    first = valid[0]
    seed = bytes.fromhex(first["seed_hex"])
    peer = peer_bytes(seed)
    rec = bytes.fromhex(first["record_hex"])
    good_sig = bytes.fromhex(first["signature_hex"])

    def signed(body: bytes, s: bytes = seed) -> str:
        return envelope(body, key(s).sign(framed(RECORD_DOMAIN, body))).hex()

    fields = dict(first["fields"])
    tampered = record_bytes({**fields, "seq": 2}, peer)
    expired = record_bytes(
        {
            **fields,
            "issued_ms": NOW_MS - 7_200_000,
            "expires_ms": NOW_MS - 3_600_000,
            "started_ms": NOW_MS - 7_260_000,
        },
        peer,
    )
    future = record_bytes(
        {**fields, "issued_ms": NOW_MS + 3_600_000, "expires_ms": NOW_MS + 7_200_000}, peer
    )
    lifetime = record_bytes({**fields, "expires_ms": NOW_MS + 86_400_001}, peer)
    # field 2 (peer id) written before field 1 (format version): same content, other bytes
    reordered = f_bytes(2, peer) + f_varint(1, 1) + rec[len(f_varint(1, 1) + f_bytes(2, peer)) :]
    unknown = rec + f_varint(99, 1)
    version2 = f_varint(1, 2) + rec[len(f_varint(1, 1)) :]
    no_layer = record_bytes({**fields, "layer": "unspecified"}, peer)
    bad_domain = record_bytes({**fields, "domain": "en/Health"}, peer)
    depth_mismatch = record_bytes({**fields, "domain": "en"}, peer)
    return [
        {"name": "tampered-after-signing", "status": "bad-signature",
         "signed_hex": envelope(tampered, good_sig).hex()},
        {"name": "signed-by-another-key", "status": "bad-signature",
         "signed_hex": signed(rec, seed_of(9))},
        {"name": "short-signature", "status": "bad-signature",
         "signed_hex": envelope(rec, good_sig[:63]).hex()},
        {"name": "expired", "status": "expired", "signed_hex": signed(expired)},
        {"name": "issued-an-hour-ahead", "status": "future", "signed_hex": signed(future)},
        {"name": "lifetime-over-24h", "status": "malformed", "signed_hex": signed(lifetime)},
        {"name": "fields-out-of-order", "status": "malformed", "signed_hex": signed(reordered)},
        {"name": "unknown-field", "status": "malformed", "signed_hex": signed(unknown)},
        {"name": "format-version-2", "status": "malformed", "signed_hex": signed(version2)},
        {"name": "layer-unspecified", "status": "malformed", "signed_hex": signed(no_layer)},
        {"name": "upper-case-domain", "status": "malformed", "signed_hex": signed(bad_domain)},
        {"name": "domain-too-shallow-for-layer", "status": "malformed",
         "signed_hex": signed(depth_mismatch)},
        {"name": "empty-envelope", "status": "malformed", "signed_hex": ""},
        {"name": "oversized", "status": "oversized",
         "signed_hex": envelope(rec + b"\0" * 8192, good_sig).hex()},
    ]  # fmt: skip


def announcement_vectors() -> list[dict[str, Any]]:
    parent_peer = b58(peer_bytes(seed_of(0)))
    master_peer = b58(peer_bytes(seed_of(1)))
    specs: list[tuple[str, int, dict[str, Any]]] = [
        (
            "up-delta-with-metrics",
            3,
            {
                "topic": f"/p2phier/1/up/{parent_peer}",
                "cid": cid_str(cid_raw(b"update r12")),
                "parent": cid_str(cid_raw(b"update r11")),
                "layer": "subdomain",
                "domain": "en/healthcare/cardiology",
                "base_model_id": BASE,
                "round": 12,
                "seq": 40,
                "created_ms": NOW_MS,
                "metrics": [["accuracy", 0.875], ["loss", 0.3125]],
                "size": 310_000,
            },
        ),
        (
            "down-full-from-master",
            1,
            {
                "topic": f"/p2phier/1/down/{master_peer}",
                "cid": cid_str(cid_raw(b"master round 0")),
                "parent": None,
                "layer": "master",
                "domain": "",
                "base_model_id": BASE,
                "round": 0,
                "seq": 1,
                "created_ms": NOW_MS,
                "metrics": [],
                "size": 0,
            },
        ),
    ]
    out = []
    for name, seed_i, fields in specs:
        seed = seed_of(seed_i)
        author = peer_bytes(seed)
        body = announcement_bytes(fields, author)
        to_sign = framed(ANNOUNCE_DOMAIN, body)
        sig = key(seed).sign(to_sign)
        out.append(
            {
                "name": name,
                "seed_hex": seed.hex(),
                "author": b58(author),
                "fields": fields,
                "announcement_hex": body.hex(),
                "signing_bytes_hex": to_sign.hex(),
                "signature_hex": sig.hex(),
                "signed_hex": envelope(body, sig).hex(),
            }
        )
    return out


def discovery_vectors() -> list[dict[str, Any]]:
    pairs = [
        ("master", ""),
        ("language", "en"),
        ("language", "fr"),
        ("domain", "en/healthcare"),
        ("domain", "en/healthcare/cardiology"),
        ("subdomain", "en/healthcare/cardiology"),
        ("device", "en/healthcare/cardiology"),
        ("device", "en/healthcare/cardiology/ecg"),
    ]
    out = []
    for layer, domain in pairs:
        pre = DISCOVERY_DOMAIN + b"\0" + layer.encode() + b"\0" + domain.encode()
        out.append(
            {
                "layer": layer,
                "domain": domain,
                "preimage_hex": pre.hex(),
                "key": cid_str(cid_raw(pre)),
            }
        )
    return out


def build() -> dict[Path, str]:
    valid = record_vectors()
    records = {
        "description": (
            "Golden vectors for p2phier node records and announcements "
            "(protocol/p2phier.proto NodeRecord/SignedNodeRecord, Announcement/"
            "SignedAnnouncement, format_version 1; protocol/node.md). Written by "
            "tests/node_logic/gen_vectors.py with a hand-rolled protobuf encoder, not by "
            "p2phier. The author is the Ed25519 key of the 32-byte seed; a message built from "
            "`fields` must serialise to exactly *_hex, its signature is Ed25519 over "
            "signing_bytes_hex = varint(len(domain)) || domain || varint(len(msg)) || msg, and "
            "the envelope {1: msg, 2: signature} is signed_hex. `invalid_records` are offered "
            "to RecordBook.accept at now_ms and must get exactly `status`."
        ),
        "record_signing_domain": RECORD_DOMAIN.decode(),
        "announcement_signing_domain": ANNOUNCE_DOMAIN.decode(),
        "format_version": 1,
        "now_ms": NOW_MS,
        "records": valid,
        "invalid_records": invalid_record_vectors(valid),
        "announcements": announcement_vectors(),
    }
    discovery = {
        "description": (
            "DHT provider keys for discovery by (layer, domain path), protocol/node.md. "
            "key = CIDv1(raw, sha2-256(preimage)) in base32, with preimage = "
            "'p2phier/discovery/v1' || 0x00 || layer || 0x00 || domain (UTF-8). Written by "
            "tests/node_logic/gen_vectors.py without p2phier."
        ),
        "vectors": discovery_vectors(),
    }
    return {
        RECORDS_PATH: json.dumps(records, indent=1) + "\n",
        DISCOVERY_PATH: json.dumps(discovery, indent=1) + "\n",
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} differs from what gen_vectors builds", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
