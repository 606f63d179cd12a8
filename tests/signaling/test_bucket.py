"""The per-connection rate limit (signaling/bucket.py), driven by a hand-moved clock."""

from __future__ import annotations

from signaling.bucket import Limiter, TokenBucket


def test_a_bucket_allows_a_burst_then_the_sustained_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, at=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second at 2/s
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never past burst


def test_a_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=1, at=5.0)
    assert bucket.take(5.0)
    assert not bucket.take(4.0)
    assert not bucket.take(5.0)


def test_refusals_that_keep_coming_mean_disconnect() -> None:
    limiter = Limiter.of(rate=1, burst=2, now=0.0)
    assert [limiter.check(0.0) for _ in range(5)] == [True, True, False, False, None]
    later = Limiter.of(rate=1, burst=2, now=0.0)
    assert [later.check(0.0) for _ in range(4)] == [True, True, False, False]
    assert later.check(10.0) is True  # it stopped: all forgiven
    assert later.check(10.0) is True
    assert later.check(10.0) is False
