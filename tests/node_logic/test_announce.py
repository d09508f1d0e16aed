"""Announcements: golden bytes, codec properties, topics, and every rule of the filter."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2phier.announce import (
    RECORDS_TOPIC,
    SIGNING_DOMAIN,
    Announcement,
    AnnouncementError,
    AnnouncementFilter,
    AnnouncementSignatureError,
    FilterResult,
    Reject,
    SenderContext,
    SignedAnnouncement,
    TopicKind,
    announcement_digest,
    down_topic,
    metrics_from_mapping,
    open_announcement,
    parse_topic,
    sign_announcement,
    up_topic,
)
from p2phier.cid import CID, encode_varint
from p2phier.identity import Identity, PeerId, signing_bytes
from p2phier.records import Layer, NodeRecord, RecordBook
from tests.node_logic.helpers import (
    T0,
    announcement,
    cid,
    content_cids,
    ident,
    layer_and_domain,
    peer,
    record,
    signed,
    signed_ann,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/node_records.json").read_text()
)

# The local node under test: a domain node (peer 1) on en/healthcare, parent 0 (language en),
# children 10 and 11 (subdomains en/healthcare/cardiology and en/healthcare/oncology).
LOCAL, PARENT, CHILD, CHILD2, STRANGER = 1, 0, 10, 11, 12
UP = up_topic(peer(LOCAL))
DOWN = down_topic(peer(PARENT))


def _book() -> RecordBook:
    book = RecordBook()
    for data in (
        signed(PARENT, Layer.LANGUAGE, "en"),
        signed(LOCAL, Layer.DOMAIN, "en/healthcare"),
        signed(CHILD, Layer.SUBDOMAIN, "en/healthcare/cardiology"),
        signed(CHILD2, Layer.SUBDOMAIN, "en/healthcare/oncology"),
        signed(STRANGER, Layer.SUBDOMAIN, "en/healthcare/cardiology"),
    ):
        assert book.accept(data, T0).accepted
    return book


def _filter(book: RecordBook | None = None) -> AnnouncementFilter:
    return AnnouncementFilter(peer(LOCAL), (book or _book()).get)


def _ctx(topic: str = UP) -> SenderContext:
    return SenderContext(topic, peer(PARENT), frozenset({peer(CHILD), peer(CHILD2)}))


def _up(i: int = CHILD, **kw: Any) -> bytes:
    return signed_ann(i, UP, **kw)


def _down(**kw: Any) -> bytes:
    kw.setdefault("layer", Layer.LANGUAGE)
    kw.setdefault("domain", "en")
    return signed_ann(PARENT, DOWN, **kw)


# --- golden vectors -------------------------------------------------------------------------


def _ann_from_fields(f: dict[str, Any], who: Identity) -> Announcement:
    return Announcement(
        author=who.peer_id,
        topic=f["topic"],
        cid=CID.parse(f["cid"]),
        parent=CID.parse(f["parent"]) if f["parent"] else None,
        layer=Layer.parse(f["layer"]),
        domain=f["domain"],
        base_model_id=f["base_model_id"],
        round=f["round"],
        seq=f["seq"],
        created_ms=f["created_ms"],
        metrics=tuple((n, float(v)) for n, v in f["metrics"]),
        size=f["size"],
    )


def test_vectors_use_this_signing_domain() -> None:
    assert VECTORS["announcement_signing_domain"].encode() == SIGNING_DOMAIN


@pytest.mark.parametrize("v", VECTORS["announcements"], ids=lambda v: v["name"])
def test_golden_announcement(v: dict[str, Any]) -> None:
    who = Identity.from_seed(bytes.fromhex(v["seed_hex"]))
    assert str(who.peer_id) == v["author"]
    ann = _ann_from_fields(v["fields"], who)
    assert ann.to_bytes().hex() == v["announcement_hex"]
    assert signing_bytes(SIGNING_DOMAIN, ann.to_bytes()).hex() == v["signing_bytes_hex"]
    assert sign_announcement(ann, who).hex() == v["signed_hex"]
    assert open_announcement(bytes.fromhex(v["signed_hex"])) == ann


# --- codec properties -------------------------------------------------------------------------


@st.composite
def announcements(draw: st.DrawFn) -> tuple[Announcement, Identity]:
    who = ident(draw(st.integers(0, 20)))
    layer, domain = draw(layer_and_domain())
    owner = peer(draw(st.integers(0, 20)))
    names = draw(st.lists(st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True), max_size=16))
    values = st.floats(allow_nan=False, allow_infinity=False)
    the_cid = draw(content_cids)
    parent = draw(st.none() | content_cids.filter(lambda c: c != the_cid))
    return (
        Announcement(
            author=who.peer_id,
            topic=draw(st.sampled_from([up_topic(owner), down_topic(owner)])),
            cid=the_cid,
            parent=parent,
            layer=layer,
            domain=domain,
            base_model_id=draw(st.from_regex(r"[\x21-\x7e]{1,60}", fullmatch=True)),
            round=draw(st.integers(0, 2**63 - 1)),
            seq=draw(st.integers(0, 2**63 - 1)),
            created_ms=draw(st.integers(0, 2**63 - 1)),
            metrics=tuple((n, draw(values)) for n in sorted(set(names))),
            size=draw(st.integers(0, 2**63 - 1)),
        ),
        who,
    )


@given(announcements())
def test_announcement_round_trips(pair: tuple[Announcement, Identity]) -> None:
    ann, who = pair
    data = sign_announcement(ann, who)
    assert len(data) < 1024
    assert open_announcement(data) == ann
    assert SignedAnnouncement.from_bytes(data).to_bytes() == data


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_announcement_errors(data: bytes) -> None:
    for parse in (open_announcement, Announcement.from_bytes, SignedAnnouncement.from_bytes):
        with contextlib.suppress(AnnouncementError):
            parse(data)


@given(announcements(), st.integers(14, 2000), st.binary(max_size=8))
def test_unknown_fields_are_refused(
    pair: tuple[Announcement, Identity], field: int, value: bytes
) -> None:
    ann, _ = pair
    extra = encode_varint(field << 3 | 2) + encode_varint(len(value)) + value
    with pytest.raises(AnnouncementError):
        Announcement.from_bytes(ann.to_bytes() + extra)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"topic": RECORDS_TOPIC}, "records topic"),
        ({"topic": "/p2phier/1/sideways/x"}, "not a p2phier topic"),
        ({"parent": cid("update 10 1 1")}, "own parent"),
        ({"cid": CID(0, 0x70, cid("x").multihash)}, "CIDv1"),
        ({"metrics": (("b", 1.0), ("a", 2.0))}, "sorted"),
        ({"metrics": (("a", 1.0), ("a", 2.0))}, "sorted"),
        ({"metrics": (("Acc", 1.0),)}, "metric name"),
        ({"metrics": (("acc", float("nan")),)}, "finite"),
        ({"metrics": tuple((f"m{i:02}", 1.0) for i in range(17))}, "at most 16"),
        ({"round": -1}, "round"),
        ({"layer": Layer.LANGUAGE}, "domain must have"),
        ({"base_model_id": "a b"}, "base model"),
    ],
)
def test_announcement_field_rules(over: dict[str, Any], match: str) -> None:
    over = dict(over)
    topic = over.pop("topic", UP)
    with pytest.raises(AnnouncementError, match=match):
        announcement(CHILD, topic, **over)


def test_signature_errors() -> None:
    ann = announcement(CHILD, UP)
    with pytest.raises(AnnouncementSignatureError, match="signing key"):
        sign_announcement(ann, ident(CHILD2))
    body = ann.to_bytes()
    forged = SignedAnnouncement(body, ident(CHILD2).sign(SIGNING_DOMAIN, body)).to_bytes()
    with pytest.raises(AnnouncementSignatureError, match="does not verify"):
        open_announcement(forged)
    record_domain = SignedAnnouncement(body, ident(CHILD).sign(b"p2phier/node-record/v1", body))
    with pytest.raises(AnnouncementSignatureError):
        open_announcement(record_domain.to_bytes())


def test_metrics_from_mapping_sorts() -> None:
    assert metrics_from_mapping({"loss": 1, "acc": 0.5}) == (("acc", 0.5), ("loss", 1.0))


# --- topics --------------------------------------------------------------------------------------


def test_topic_names_round_trip() -> None:
    p = peer(3)
    assert up_topic(p) == f"/p2phier/1/up/{p}"
    assert down_topic(p) == f"/p2phier/1/down/{p}"
    assert parse_topic(up_topic(p)).kind is TopicKind.UP
    assert parse_topic(down_topic(p)).owner == p
    assert parse_topic(RECORDS_TOPIC).kind is TopicKind.RECORDS


@pytest.mark.parametrize(
    "bad",
    [
        "/p2phier/1/up/",
        "/p2phier/1/up/notapeer",
        "/p2phier/2/up/{p}",
        "/p2phier/1/up/{p}/",
        "/p2phier/1/UP/{p}",
        "p2phier/1/down/{p}",
        "/p2phier/1/down/{p}" + "x" * 200,
    ],
)
def test_bad_topics(bad: str) -> None:
    with pytest.raises(AnnouncementError):
        parse_topic(bad.replace("{p}", str(peer(3))))


# --- the filter ---------------------------------------------------------------------------------


def _check(result: FilterResult, reason: Reject | None) -> None:
    assert result.reason is reason, result.detail
    assert result.accepted is (reason is None)


def test_child_and_parent_announcements_are_accepted() -> None:
    f = _filter()
    ok = f.validate(_up(), _ctx(), T0)
    _check(ok, None)
    assert ok.action == "accept" and ok.announcement is not None
    assert ok.announcement.author == peer(CHILD)
    _check(f.validate(_down(), _ctx(DOWN), T0), None)


def test_filter_rejection_table() -> None:
    """One row per rule, each announcement otherwise valid; checked in the documented order."""
    book = _book()
    # a child whose record says something else than its announcements
    rows: list[tuple[str, bytes, SenderContext, Reject]] = [
        ("oversized", b"\x0a" * 5000, _ctx(), Reject.OVERSIZED),
        ("garbage", b"\xff\x00garbage", _ctx(), Reject.MALFORMED),
        ("empty", b"", _ctx(), Reject.MALFORMED),
        ("signed for down, sent on up", _down(), _ctx(UP), Reject.WRONG_TOPIC),
        (
            "another parent's up topic",
            signed_ann(CHILD, up_topic(peer(7))),
            _ctx(up_topic(peer(7))),
            Reject.NOT_OUR_TOPIC,
        ),
        (
            "a down topic that is not our parent's",
            signed_ann(7, down_topic(peer(7)), Layer.LANGUAGE, "en"),
            _ctx(down_topic(peer(7))),
            Reject.NOT_OUR_TOPIC,
        ),
        ("stranger on our up topic", _up(STRANGER), _ctx(), Reject.STRANGER),
        (
            "a child posing as the parent on the down topic",
            signed_ann(CHILD, DOWN),
            _ctx(DOWN),
            Reject.STRANGER,
        ),
        (
            "bad signature",
            SignedAnnouncement(
                announcement(CHILD, UP).to_bytes(), ident(STRANGER).sign(SIGNING_DOMAIN, b"x")
            ).to_bytes(),
            _ctx(),
            Reject.BAD_SIGNATURE,
        ),
        (
            "wrong domain for the record",
            _up(domain="en/healthcare/oncology"),
            _ctx(),
            Reject.RECORD_MISMATCH,
        ),
        ("wrong base model", _up(base_model_id="other/model"), _ctx(), Reject.RECORD_MISMATCH),
        ("wrong layer", _up(layer=Layer.DEVICE), _ctx(), Reject.RECORD_MISMATCH),
        ("from the future", _up(created=T0 + 31), _ctx(), Reject.FUTURE),
        ("too old", _up(created=T0 - 601), _ctx(), Reject.TOO_OLD),
    ]
    for name, data, ctx, reason in rows:
        f = AnnouncementFilter(peer(LOCAL), book.get)
        result = f.validate(data, ctx, T0)
        assert result.reason is reason, f"{name}: {result.reason} {result.detail}"
        assert not result.accepted
        assert f.marks() == {}, name  # a refusal never moves a high-water mark


def test_child_without_a_known_record_is_ignored_not_punished() -> None:
    book = _book()
    book.remove(peer(CHILD), T0)
    result = _filter(book).validate(_up(), _ctx(), T0)
    _check(result, Reject.NO_RECORD)
    assert result.action == "ignore"


def test_expired_author_record_counts_as_unknown() -> None:
    book = _book()
    f = AnnouncementFilter(peer(LOCAL), book.get)
    # the record (ttl 3600 s) is still in the book but expired at the time of the check
    _check(f.validate(_up(created=T0 + 3600), _ctx(), T0 + 3600), Reject.NO_RECORD)


def test_reject_actions_penalise_only_forgeries() -> None:
    assert Reject.BAD_SIGNATURE.action == "reject"
    assert Reject.STRANGER.action == "reject"
    assert Reject.MALFORMED.action == "reject"
    assert Reject.REPLAY.action == "ignore"
    assert Reject.DUPLICATE.action == "ignore"
    assert Reject.TOO_OLD.action == "ignore"


@pytest.mark.parametrize(
    ("first", "second", "reason"),
    [
        ((5, 3), (6, 3), None),  # same round, higher seq: a re-announcement
        ((5, 3), (6, 4), None),
        ((5, 3), (5, 3), Reject.DUPLICATE),  # the very same signed bytes again
        ((5, 3), (5, 4), Reject.REPLAY),  # seq must move
        ((5, 3), (4, 9), Reject.REPLAY),
        ((5, 3), (9, 2), Reject.OLD_ROUND),  # an old round with a fresh seq
    ],
)
def test_replay_table(
    first: tuple[int, int], second: tuple[int, int], reason: Reject | None
) -> None:
    f = _filter()
    _check(f.validate(_up(seq=first[0], round_=first[1]), _ctx(), T0), None)
    _check(f.validate(_up(seq=second[0], round_=second[1]), _ctx(), T0 + 1), reason)


def test_duplicate_is_only_the_very_bytes_last_accepted() -> None:
    """A re-announcement of the latest is a duplicate; anything else not ahead is a replay."""
    f = _filter()
    first, second = _up(seq=5, round_=3), _up(seq=6, round_=3, created=T0 + 1)
    _check(f.validate(first, _ctx(), T0), None)
    mark = f.high_water(UP, peer(CHILD))
    assert mark is not None and mark.digest == announcement_digest(first)
    result = f.validate(first, _ctx(), T0 + 1)
    _check(result, Reject.DUPLICATE)
    assert result.action == "ignore"
    _check(f.validate(second, _ctx(), T0 + 2), None)
    rows = [
        ("the previous announcement (older seq)", first, Reject.REPLAY),
        ("the latest again", second, Reject.DUPLICATE),
        ("same seq, other content", _up(seq=6, round_=3, created=T0 + 2), Reject.REPLAY),
        ("same seq, other round", _up(seq=6, round_=4, created=T0 + 1), Reject.REPLAY),
    ]
    for name, data, reason in rows:
        result = f.validate(data, _ctx(), T0 + 3)
        assert result.reason is reason, f"{name}: {result.reason} {result.detail}"
    # the latest with its signature broken is a forgery, not a duplicate
    forged = bytearray(second)
    forged[-1] ^= 0xFF
    _check(f.validate(bytes(forged), _ctx(), T0 + 3), Reject.BAD_SIGNATURE)
    # a copy from someone who is not (or no longer) a child is still a stranger's
    orphan = SenderContext(UP, peer(PARENT), frozenset({peer(CHILD2)}))
    _check(f.validate(second, orphan, T0 + 3), Reject.STRANGER)
    mark = f.high_water(UP, peer(CHILD))
    assert mark is not None and (mark.seq, mark.round) == (6, 3)


def test_marks_are_per_author_and_topic() -> None:
    f = _filter()
    _check(f.validate(_up(CHILD, seq=5), _ctx(), T0), None)
    _check(f.validate(_up(CHILD2, seq=1, domain="en/healthcare/oncology"), _ctx(), T0), None)
    _check(f.validate(_down(seq=1), _ctx(DOWN), T0), None)
    mark = f.high_water(UP, peer(CHILD))
    assert mark is not None and (mark.seq, mark.round) == (5, 1)
    assert len(f.marks()) == 3


def test_restored_marks_survive_a_restart_and_never_go_down() -> None:
    before = _filter()
    _check(before.validate(_up(seq=8, round_=4), _ctx(), T0), None)
    after = _filter()
    for (topic, author), mark in before.marks().items():
        after.restore(topic, author, mark.seq, mark.round)
    after.restore(UP, peer(CHILD), 2, 1)  # lower: ignored
    # restored without a digest: a same-seq copy cannot be told from another message
    _check(after.validate(_up(seq=8, round_=4), _ctx(), T0 + 1), Reject.REPLAY)
    _check(after.validate(_up(seq=9, round_=4), _ctx(), T0 + 1), None)


def test_restored_digest_keeps_re_announcements_duplicates() -> None:
    before = _filter()
    latest = _up(seq=8, round_=4)
    _check(before.validate(latest, _ctx(), T0), None)
    after = _filter()
    for (topic, author), mark in before.marks().items():
        after.restore(topic, author, mark.seq, mark.round, mark.digest)
    after.restore(UP, peer(CHILD), 8, 4)  # same mark without a digest: the digest stays
    after.restore(UP, peer(CHILD), 2, 1)  # lower: ignored
    _check(after.validate(latest, _ctx(), T0 + 1), Reject.DUPLICATE)
    _check(after.validate(_up(seq=8, round_=4, created=T0 + 1), _ctx(), T0 + 1), Reject.REPLAY)
    after.restore(UP, peer(CHILD), 9, 4)  # a higher seq: the old digest no longer applies
    moved = after.high_water(UP, peer(CHILD))
    assert moved is not None and (moved.seq, moved.digest) == (9, "")


def test_forget_and_bounded_marks() -> None:
    f = AnnouncementFilter(peer(LOCAL), _book().get, max_authors=2)
    f.restore(UP, peer(20), 1, 1)
    f.restore(UP, peer(21), 1, 1)
    _check(f.validate(_up(seq=3), _ctx(), T0), None)
    assert set(f.marks()) == {(UP, peer(21)), (UP, peer(CHILD))}  # least recent went
    f.forget(peer(CHILD))
    assert set(f.marks()) == {(UP, peer(21))}


def test_filter_uses_a_live_record_lookup() -> None:
    records: dict[PeerId, NodeRecord] = {}
    f = AnnouncementFilter(peer(LOCAL), records.get)
    _check(f.validate(_up(), _ctx(), T0), Reject.NO_RECORD)
    records[peer(CHILD)] = record(CHILD, Layer.SUBDOMAIN, "en/healthcare/cardiology")
    _check(f.validate(_up(), _ctx(), T0), None)
