"""Shared builders for the node-logic tests: identities, records, announcements, strategies."""

from __future__ import annotations

from functools import cache
from typing import Any

from hypothesis import strategies as st

from p2phier.announce import Announcement, sign_announcement
from p2phier.cid import CID
from p2phier.identity import Identity, PeerId
from p2phier.records import (
    MAX_DOMAIN_DEPTH,
    Capabilities,
    HardwareClass,
    Layer,
    NodeRecord,
    sign_record,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, seconds
T0_MS = int(T0 * 1000)
BASE = "sentence-transformers/all-MiniLM-L6-v2"


@cache
def ident(i: int) -> Identity:
    """A deterministic identity per small integer."""
    return Identity.from_seed(bytes([i % 256]) * 31 + bytes([i // 256]))


def peer(i: int) -> PeerId:
    return ident(i).peer_id


def record(
    i: int,
    layer: Layer | str = Layer.DOMAIN,
    domain: str = "en/healthcare",
    *,
    seq: int = 1,
    issued: float = T0,
    ttl: float = 3600.0,
    started: float | None = None,
    **over: Any,
) -> NodeRecord:
    fields: dict[str, Any] = {
        "peer_id": peer(i),
        "addrs": (f"/ip4/127.0.0.1/tcp/{4000 + i}",),
        "layer": Layer.parse(layer) if isinstance(layer, str) else layer,
        "domain": domain,
        "base_model_id": BASE,
        "capabilities": Capabilities(8 << 30, 22_700_000, HardwareClass.CPU),
        "head": None,
        "seq": seq,
        "issued_ms": int(issued * 1000),
        "expires_ms": int((issued + ttl) * 1000),
        "started_ms": int((issued - 60 if started is None else started) * 1000),
    }
    fields.update(over)
    return NodeRecord(**fields)


def signed(i: int, *args: Any, **kw: Any) -> bytes:
    return sign_record(record(i, *args, **kw), ident(i))


def cid(tag: str) -> CID:
    return CID.raw(tag.encode())


def announcement(
    i: int,
    topic: str,
    layer: Layer = Layer.SUBDOMAIN,
    domain: str = "en/healthcare/cardiology",
    *,
    round_: int = 1,
    seq: int = 1,
    created: float = T0,
    **over: Any,
) -> Announcement:
    fields: dict[str, Any] = {
        "author": peer(i),
        "topic": topic,
        "cid": cid(f"update {i} {round_} {seq}"),
        "parent": None,
        "layer": layer,
        "domain": domain,
        "base_model_id": BASE,
        "round": round_,
        "seq": seq,
        "created_ms": int(created * 1000),
        "metrics": (("accuracy", 0.5),),
        "size": 1000,
    }
    fields.update(over)
    return Announcement(**fields)


def signed_ann(i: int, topic: str, *args: Any, **kw: Any) -> bytes:
    return sign_announcement(announcement(i, topic, *args, **kw), ident(i))


# --- hypothesis strategies ------------------------------------------------------------------

segment = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@st.composite
def layer_and_domain(draw: st.DrawFn) -> tuple[Layer, str]:
    layer = draw(st.sampled_from(list(Layer)))
    lo, hi = layer.depth_range
    depth = draw(st.integers(lo, min(hi, MAX_DOMAIN_DEPTH)))
    return layer, "/".join(draw(st.lists(segment, min_size=depth, max_size=depth)))


u63 = st.integers(0, 2**63 - 1)
addr = st.from_regex(r"(/[a-z0-9.:]{1,12}){1,5}", fullmatch=True)
content_cids = st.builds(
    lambda data, dag: CID.dag_pb(data) if dag else CID.raw(data),
    st.binary(max_size=16),
    st.booleans(),
)


@st.composite
def node_records(draw: st.DrawFn) -> tuple[NodeRecord, Identity]:
    who = ident(draw(st.integers(0, 20)))
    layer, domain = draw(layer_and_domain())
    issued = draw(st.integers(0, 2**62))
    return (
        NodeRecord(
            peer_id=who.peer_id,
            addrs=tuple(draw(st.lists(addr, max_size=16, unique=True))),
            layer=layer,
            domain=domain,
            base_model_id=draw(st.from_regex(r"[\x21-\x7e]{1,60}", fullmatch=True)),
            capabilities=Capabilities(
                draw(u63), draw(u63), draw(st.sampled_from(list(HardwareClass)))
            ),
            head=draw(st.none() | content_cids),
            seq=draw(u63),
            issued_ms=issued,
            expires_ms=issued + draw(st.integers(1, 24 * 3600 * 1000)),
            started_ms=draw(st.integers(0, issued)),
        ),
        who,
    )
