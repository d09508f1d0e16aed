"""Ledgers and the clock-free token bucket."""

from __future__ import annotations

import pytest

from p2phier.bitswap import WRONG_BLOCK, LedgerBook, Misbehaviour, TokenBucket
from p2phier.errors import UsageError


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert b.try_take(5, 0.0)
    assert not b.try_take(1, 0.0)
    assert b.ready_at(1, 0.0) == pytest.approx(0.1)
    assert not b.try_take(1, 0.05)
    assert b.try_take(1, 0.1)
    # never more than the burst, however long it idles
    assert b.available(1000.0) == 5


def test_bucket_ignores_time_going_backwards() -> None:
    b = TokenBucket(rate=1, burst=2, now=10.0)
    assert b.try_take(2, 10.0)
    assert b.available(5.0) == 0  # an earlier clock mints nothing
    assert b.available(11.0) == pytest.approx(1)


def test_an_amount_above_the_burst_is_admitted_when_full_and_paid_back() -> None:
    b = TokenBucket(rate=100, burst=100, now=0.0)
    assert b.try_take(300, 0.0)  # slow, never stuck
    assert b.available(0.0) == -200
    assert b.ready_at(100, 0.0) == pytest.approx(3.0)


def test_take_up_to_grants_whole_tokens() -> None:
    b = TokenBucket(rate=1, burst=3, now=0.0)
    assert b.take_up_to(5, 0.0) == 3
    assert b.take_up_to(5, 1.5) == 1


def test_a_charge_puts_the_bucket_into_debt_that_time_pays_off() -> None:
    b = TokenBucket(rate=2, burst=4, now=0.0)
    b.charge(10, 0.0)  # 6 over the burst: allowed, and owed
    assert b.available(0.0) == pytest.approx(-6)
    assert b.ready_at(0, 0.0) == pytest.approx(3.0)
    assert not b.try_take(1, 2.0)
    assert b.ready_at(0, 3.0) == 3.0
    assert b.available(5.0) == pytest.approx(4)  # refills up to the burst, no further


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(UsageError):
        TokenBucket(rate=0, burst=1, now=0)


def test_ledger_book_tracks_peers_and_reports_misbehaviour() -> None:
    seen: list[Misbehaviour] = []
    book = LedgerBook(on_misbehaviour=seen.append)
    led = book.get("A")
    led.bytes_sent, led.bytes_received = 300, 99
    assert led.debt_ratio == 3.0
    ev = book.record_misbehaviour("A", WRONG_BLOCK, "bad bytes", 7.0)
    assert ev == Misbehaviour("A", WRONG_BLOCK, "bad bytes", 7.0)
    assert seen == [ev]
    assert book.get("A").misbehaviour == 1
    assert "A" in book and book.peers() == ["A"]
    book.forget("A")
    assert "A" not in book


def test_pruned_and_forgotten_peers_leave_their_totals_behind() -> None:
    book = LedgerBook()
    for peer, sent, got, seen in (("A", 100, 10, 0.0), ("B", 200, 20, 50.0), ("C", 400, 40, 99.0)):
        led = book.get(peer)
        led.bytes_sent, led.bytes_received, led.blocks_sent, led.last_seen = sent, got, 1, seen
    book.record_misbehaviour("A", WRONG_BLOCK, "bad bytes", 0.0)
    before = book.totals()
    assert (before.bytes_sent, before.bytes_received, before.blocks_sent) == (700, 70, 3)
    # idle for 60 s at t=110: A (seen at 0) and B (50); C is younger, and D is kept
    book.get("D").last_seen = 0.0
    assert book.prune(110.0, 60.0, keep={"D"}) == ["A", "B"]
    assert book.peers() == ["C", "D"]
    book.forget("C")
    book.forget("nobody")  # unknown: nothing happens
    after = book.totals()
    assert (after.bytes_sent, after.bytes_received, after.blocks_sent) == (700, 70, 3)
    assert after.misbehaviour == 1
    assert book.forgotten.bytes_sent == 700
    # a forgotten peer that comes back starts a fresh ledger; the totals keep growing
    book.get("A").bytes_sent = 5
    assert book.totals().bytes_sent == 705
