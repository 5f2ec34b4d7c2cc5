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
import math
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


WINDOW_S = 61.0
"""The minute budget's window: a second more than a minute, because a request is counted when
it is let through and the provider counts it when it arrives, a little later (a busy event
loop, a slow connect); 21 arrivals in a provider's minute were seen with an exact 60 s."""


class RateLimiter:
    """Per-minute and per-day request budgets for one source, and its `Retry-After`.

    The minute budget is a sliding window (a log of the last minute's request times, so no 60 s
    window ever holds more than `per_minute`: a token bucket would allow a burst on top of its
    refill); the day budget resets at 00:00 UTC. 0 means no limit.

    Live requests come first; history requests (bootstrap, gap scans, end-of-day checks) take
    what is left: within any minute they may use `per_minute` less the live loop's demand (the
    larger of what it used in the last minute and its recent per-cycle rate, which it reports
    each cycle, so the first minute is covered too) and a margin, and at most
    `history_day_share` of the day budget.

    :param clock: wall time for the day, monotonic time for the bucket.
    :param history_day_share: the share of `per_day` history requests may take.
    """

    def __init__(self, *, clock: Clock, per_minute: int = 0, per_day: int = 0,
                 history_day_share: float = 0.5) -> None:
        self.clock, self.per_minute, self.per_day = clock, per_minute, per_day
        self.history_day_share = history_day_share
        self._recent: collections.deque[float] = collections.deque()
        self._history: collections.deque[float] = collections.deque()  # the history requests among them
        self._day = int(clock.time() // 86400)
        self.used_today = 0
        self.history_today = 0
        self.blocked_until = 0.0  # monotonic
        self.refused = 0
        self.live_per_minute = 0.0  # the live loop's demand: rises at once, decays slowly

    def note_live_cycle(self, taken: int, period_s: float) -> None:
        """A live cycle took `taken` requests (or credits); cycles come every `period_s`."""
        # what the live loop needs in one budget window: the cycles a window can hold, each
        # taking as much (five 15 s cycles fit in a 61 s window, not four)
        rate = taken * math.ceil(WINDOW_S / period_s - 1e-9)
        self.live_per_minute = max(rate, 0.95 * self.live_per_minute)

    def block_for(self, seconds: float) -> None:
        """The source said to wait (429 with Retry-After): no request until then."""
        self.blocked_until = max(self.blocked_until, self.clock.monotonic() + seconds)

    def _roll(self, now: float) -> None:
        day = int(self.clock.time() // 86400)
        if day != self._day:
            self._day, self.used_today, self.history_today = day, 0, 0
        for log in (self._recent, self._history):
            while log and log[0] <= now - WINDOW_S:
                log.popleft()

    def _room(self, n: int, history: bool) -> bool:
        """Whether `n` more requests fit now (the logs rolled forward already)."""
        if self.clock.monotonic() < self.blocked_until:
            return False
        if self.per_day and self.used_today + n > self.per_day:
            return False
        if self.per_minute and len(self._recent) + n > self.per_minute:
            return False
        if history:
            if self.per_day and self.history_today + n > int(self.per_day * self.history_day_share):
                return False
            if self.per_minute:
                live = max(len(self._recent) - len(self._history), math.ceil(self.live_per_minute))
                if len(self._history) + n > self.per_minute - live - max(1, live // 10):
                    return False
        return True

    def available(self, n: int = 1, history: bool = False) -> bool:
        """Whether `try_acquire(n, history)` would succeed now (nothing is taken)."""
        self._roll(self.clock.monotonic())
        return self._room(n, history)

    def try_acquire(self, n: int = 1, history: bool = False) -> bool:
        """Take `n` requests (or credits) from the budgets, or refuse (and count) if that would
        exceed them; `history` requests only take what the live loop leaves."""
        now = self.clock.monotonic()
        self._roll(now)
        if not self._room(n, history):
            self.refused += not history  # a history request waits for room: not a refusal
            return False
        if self.per_minute:
            self._recent.extend([now] * n)
            if history:
                self._history.extend([now] * n)
        self.used_today += n
        self.history_today += n if history else 0
        return True

    def history_wait_s(self, n: int = 1) -> float:
        """How long until a history request of `n` could fit, at the soonest (0: now)."""
        now = self.clock.monotonic()
        self._roll(now)
        if self._room(n, True):
            return 0.0
        waits = [self.blocked_until - now]
        if self._recent:
            waits.append(self._recent[0] + 60.0 - now)
        if self.per_day and (self.used_today + n > self.per_day
                             or self.history_today + n > int(self.per_day * self.history_day_share)):
            waits.append(86400 - self.clock.time() % 86400)
        return max(0.05, min(w for w in waits if w > 0) if any(w > 0 for w in waits) else 1.0)


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient errors: at most `attempts` tries."""

    attempts: int = 3
    base_s: float = 0.05
    cap_s: float = 0.4

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next try after `failures` failures (full jitter)."""
        return (rng or random).uniform(0, min(self.cap_s, self.base_s * 2 ** (failures - 1)))
