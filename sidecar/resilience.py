"""Per-source policies that keep a failing or rate-limited source from hurting the daemon:
a circuit breaker, a rate limiter, and a retry policy. Each is a small value object on the
injected clock, so tests drive them without sleeping.

Breaker semantics (reliability.md B.4): closed -> open after `threshold` consecutive failures
(timeouts count; cancellation does not); open -> half-open once `reset_timeout_s` has passed
since it opened (failures reported while open do not push that back); half-open admits exactly
one probe; the probe's success closes the breaker, its failure opens it again with a new timer.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from .clock import Clock

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)


class CircuitBreaker:
    """Stops calls to a source after repeated failures and probes it before trusting it again.

    :param name: the source, for logs and metrics.
    :param clock: monotonic time for the reset timer.
    :param threshold: consecutive failures that open the breaker.
    :param reset_timeout_s: time open before one probe is let through.
    :param on_transition: called with (old state, new state) on every change.
    """

    def __init__(self, name: str, *, clock: Clock, threshold: int = 5, reset_timeout_s: float = 30.0,
                 on_transition: Callable[[str, str], object] | None = None) -> None:
        self.name, self.clock = name, clock
        self.threshold, self.reset_timeout_s = threshold, reset_timeout_s
        self.on_transition = on_transition
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.transitions = 0
        self._probing = False

    def _move(self, new: str) -> None:
        old, self.state = self.state, new
        self.transitions += 1
        log.warning("breaker %s: %s -> %s", self.name, old, new)
        if self.on_transition is not None:
            self.on_transition(old, new)

    def allow(self) -> bool:
        """May a call go to the source now? In half-open, only the one probe may."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock.monotonic() - self.opened_at < self.reset_timeout_s:
                return False
            self._move(HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def would_allow(self) -> bool:
        """What `allow` would answer, without taking the probe or changing the state."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return self.clock.monotonic() - self.opened_at >= self.reset_timeout_s
        return not self._probing

    def release(self) -> None:
        """A probe ended without a verdict (rate-limited here, a 4xx about one symbol): let the
        next call be the probe, without changing the state."""
        self._probing = False

    def record_success(self) -> None:
        """A call succeeded: a probe closes the breaker; failures are forgotten."""
        self.failures = 0
        if self.state != CLOSED:
            self._probing = False
            self._move(CLOSED)

    def record_failure(self) -> None:
        """A call failed (a timeout counts; a cancelled call is not reported at all)."""
        if self.state == HALF_OPEN:
            self._probing = False
            self.opened_at = self.clock.monotonic()
            self._move(OPEN)
            return
        if self.state == OPEN:
            return  # a call that was already in flight: the reset timer stays where it is
        self.failures += 1
        if self.failures >= self.threshold:
            self.opened_at = self.clock.monotonic()
            self._move(OPEN)


class RateLimiter:
    """Per-minute and per-day request budgets for one source, and its `Retry-After`.

    The minute budget is a sliding window (a log of the last minute's request times, so no 60 s
    window ever holds more than `per_minute`: a token bucket would allow a burst on top of its
    refill); the day budget resets at 00:00 UTC. 0 means no limit.

    :param clock: wall time for the day, monotonic time for the bucket.
    """

    def __init__(self, *, clock: Clock, per_minute: int = 0, per_day: int = 0) -> None:
        self.clock, self.per_minute, self.per_day = clock, per_minute, per_day
        self._recent: collections.deque[float] = collections.deque()
        self._day = int(clock.time() // 86400)
        self.used_today = 0
        self.blocked_until = 0.0  # monotonic
        self.refused = 0

    def block_for(self, seconds: float) -> None:
        """The source said to wait (429 with Retry-After): no request until then."""
        self.blocked_until = max(self.blocked_until, self.clock.monotonic() + seconds)

    def available(self, n: int = 1) -> bool:
        """Whether `try_acquire(n)` would succeed now (nothing is taken)."""
        now = self.clock.monotonic()
        if now < self.blocked_until:
            return False
        fresh_day = int(self.clock.time() // 86400) != self._day
        if self.per_day and (0 if fresh_day else self.used_today) + n > self.per_day:
            return False
        recent = sum(1 for t in self._recent if t > now - 60.0) if self.per_minute else 0
        return not (self.per_minute and recent + n > self.per_minute)

    def try_acquire(self, n: int = 1) -> bool:
        """Take `n` requests (or credits) from the budgets, or refuse (and count) if that would
        exceed them."""
        now = self.clock.monotonic()
        day = int(self.clock.time() // 86400)
        if day != self._day:
            self._day, self.used_today = day, 0
        while self._recent and self._recent[0] <= now - 60.0:
            self._recent.popleft()
        if now < self.blocked_until or (self.per_day and self.used_today + n > self.per_day) or (
                self.per_minute and len(self._recent) + n > self.per_minute):
            self.refused += 1
            return False
        if self.per_minute:
            self._recent.extend([now] * n)
        self.used_today += n
        return True


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient errors: at most `attempts` tries."""

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 0.4

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next try after `failures` failures (full jitter)."""
        return (rng or random).uniform(0, min(self.cap_s, self.base_s * 2 ** (failures - 1)))
