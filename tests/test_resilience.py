"""The breaker, the rate limiter and the retry policy on a virtual clock."""

from __future__ import annotations

import random

from sidecar.clock import ManualClock
from sidecar.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, RateLimiter, RetryPolicy


def test_breaker_opens_probes_once_and_closes_on_recovery() -> None:
    clock = ManualClock()
    seen: list[tuple[str, str]] = []
    b = CircuitBreaker("yahoo", clock=clock, threshold=3, reset_timeout_s=10,
                       on_transition=lambda a, c: seen.append((a, c)))
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    b.record_success()  # a success in between resets the count
    for _ in range(3):
        assert b.allow()
        b.record_failure()
    assert b.state == OPEN and not b.allow()
    clock.advance(5)
    b.record_failure()  # a call already in flight fails while open: the timer is not pushed back
    clock.advance(5)
    assert b.allow() and b.state == HALF_OPEN  # exactly one probe...
    assert not b.allow() and not b.allow()  # ...the others wait for it
    b.record_failure()  # the probe failed: open again, with a new timer
    assert b.state == OPEN and not b.allow()
    clock.advance(10)
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow() and b.allow()
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_rate_limiter_never_exceeds_the_minute_and_day_budgets() -> None:
    clock = ManualClock(start=86400 * 20_000 + 3600)
    limiter = RateLimiter(clock=clock, per_minute=5, per_day=12)
    granted = []
    for _ in range(600):  # ten minutes, a try every second
        granted.append(limiter.try_acquire())
        clock.advance(1)
    times = [i for i, ok in enumerate(granted) if ok]
    assert all(sum(1 for t in times if s <= t < s + 60) <= 5 for s in range(600))  # any 60 s window
    assert len(times) == 12  # and the day's budget
    clock.advance(86400)  # a new UTC day
    assert limiter.try_acquire()


def test_retry_after_blocks_the_source_until_then() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    limiter.block_for(7.5)
    assert not limiter.try_acquire()
    clock.advance(7.4)
    assert not limiter.try_acquire()
    clock.advance(0.2)
    assert limiter.try_acquire() and limiter.refused == 2


def test_retry_delays_grow_exponentially_with_full_jitter_under_a_cap() -> None:
    policy, rng = RetryPolicy(attempts=3, base_s=0.05, cap_s=0.4), random.Random(1)
    for failures, ceiling in ((1, 0.05), (2, 0.1), (3, 0.2), (4, 0.4), (9, 0.4)):
        delays = [policy.delay(failures, rng) for _ in range(500)]
        assert 0 <= min(delays) and max(delays) <= ceiling and max(delays) > ceiling * 0.9
