"""A data source behind its policies: circuit breaker, request budgets, retries.

The breaker sees cycles, not requests: with one request per symbol, "5 failed requests" is one
bad second, so a cycle counts as failed for the source only when every request it made failed.
A half-open probe gets one try; nothing is retried once the breaker is open. A 429 blocks the
source for its Retry-After without counting as an outage, and a 4xx about one symbol neither
retries nor counts against the source. Retries back off with full jitter, each bounded by
what is left of the cycle, so a retry never makes the cycle overrun.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .clock import Clock
from .errors import BeyondReach, CircuitOpen, FetchError, FetchTimeout, MalformedResponse, ProviderError, RateLimited
from .fetchers import FetchResult, HttpFetcher, QuoteBatch
from .fetchers.base import live_pool
from .metrics import Metrics
from .resilience import CircuitBreaker, RateLimiter, RetryPolicy
from .symbols import SymbolInfo

if TYPE_CHECKING:
    from .cluster.budget import SharedBudget

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_RETRY_S = 0.1  # a retry needs at least this much of the cycle left
REACH_SLACK_S = 1800
HISTORY_MAX_WAIT_S = 600.0  # a history request waits this long for budget at most, then tries the next source


@dataclass(slots=True)
class SourceState:
    """Health of one source as the loop saw it."""

    name: str
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failed_last_cycle: int = 0
    tried_last_cycle: int = 0
    served_last_cycle: int = 0  # symbols whose bars came from this source


def transient(exc: FetchError) -> bool:
    """Worth retrying: timeouts, connection errors, 5xx, a garbled body; not a 4xx about the symbol."""
    if isinstance(exc, ProviderError):  # an error body with no status is about the request
        return exc.status is not None and exc.status >= 500
    return isinstance(exc, (FetchTimeout, MalformedResponse)) or type(exc) is FetchError


class GuardedSource:
    """Fetches through a source's breaker, budgets and retry policy, one cycle at a time.

    :param fetcher: the source.
    :param breaker: its circuit breaker.
    :param limiter: its request budgets.
    :param retry: its retry policy.
    :param metrics: where skips, retries and durations are counted.
    :param clock: for deadlines and backoff.
    """

    def __init__(self, fetcher: HttpFetcher, *, breaker: CircuitBreaker, limiter: RateLimiter,
                 retry: RetryPolicy, metrics: Metrics, clock: Clock) -> None:
        self.fetcher, self.breaker, self.limiter, self.retry = fetcher, breaker, limiter, retry
        self.metrics, self.clock = metrics, clock
        self.name = fetcher.name
        self.state = SourceState(fetcher.name)
        self._deadline = 0.0
        self._ok = self._failed = 0  # requests that succeeded / failed for good this cycle
        self._taken = 0  # requests (or credits) taken from the budget this cycle
        # In a cluster, the provider key's budgets shared by every member (cluster.budget);
        # the local limiter then keeps only Retry-After and the live loop's demand.
        self.shared: SharedBudget | None = None

    @classmethod
    def build(cls, fetcher: HttpFetcher, *, clock: Clock, metrics: Metrics | None = None, per_minute: int = 0,
              per_day: int = 0, retry: RetryPolicy | None = None, threshold: int = 5, reset_timeout_s: float = 30.0,
              on_transition: Callable[[str, str], object] | None = None) -> GuardedSource:
        """A source with its own breaker and budgets (0: no limit)."""
        return cls(fetcher, breaker=CircuitBreaker(fetcher.name, clock=clock, threshold=threshold,
                                                   reset_timeout_s=reset_timeout_s, on_transition=on_transition),
                   limiter=RateLimiter(clock=clock, per_minute=per_minute, per_day=per_day),
                   retry=retry or RetryPolicy(), metrics=metrics or Metrics(), clock=clock)

    def begin_cycle(self, deadline: float) -> None:
        """A cycle starts: its retries must be done by `deadline` (monotonic)."""
        self._deadline = deadline

    def end_cycle(self, now: float, period_s: float) -> None:
        """A cycle ended: tell the breaker whether the source worked at all, and the budget what
        the live loop needs (history takes only what is left)."""
        self.limiter.note_live_cycle(self._taken, period_s)
        if self.shared is not None:
            self.shared.live_rate = self.limiter.live_per_minute
        if self._ok:
            self.breaker.record_success()
            self.state.last_success_at = now
        elif self._failed:
            self.breaker.record_failure()
        self.state.tried_last_cycle, self.state.failed_last_cycle = self._ok + self._failed, self._failed
        # reset here, not when a cycle begins: the poller's requests made between two cycles count too
        self._ok, self._failed, self._taken = 0, 0, 0

    def health(self) -> dict[str, object]:
        """The source as the loop saw it last cycle: `ok`, `degraded` (some requests failed),
        `down` (all failed, or the breaker is open), `idle` (not asked), `disabled` (with why)."""
        f, src, breaker, limiter = self.fetcher, self.state, self.breaker, self.limiter
        if f.disabled_reason is not None:
            return {"state": "disabled", "reason": f.disabled_reason}
        if breaker.state == "open":
            state = "down"
        elif src.tried_last_cycle == 0:
            state = "idle"
        elif src.failed_last_cycle == 0:
            state = "ok"
        else:
            state = "down" if src.failed_last_cycle == src.tried_last_cycle else "degraded"
        now = self.clock.time()

        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        doc: dict[str, object] = {
            "state": state,
            "breaker": {"state": breaker.state, "consecutive_failures": breaker.failures,
                        "transitions": breaker.transitions},
            "rate_limit": {"per_minute": limiter.per_minute, "per_day": limiter.per_day,
                           "used_today": limiter.used_today, "refused": limiter.refused,
                           "blocked_for_s": round(max(0.0, limiter.blocked_until - self.clock.monotonic()), 3),
                           **({"shared": self.shared.health()} if self.shared is not None else {})},
            "base_url": f.base_url,
            "delay_s": f.delay_s,  # the plan's delay: its bars are this old when they arrive, by design
            "requests_last_cycle": src.tried_last_cycle,
            "failed_last_cycle": src.failed_last_cycle,
            "symbols_served_last_cycle": src.served_last_cycle,
            "last_success_age_s": age(src.last_success_at),
            "last_error": src.last_error,
            "last_error_age_s": age(src.last_error_at),
        }
        errors = {reason: n for (name, reason), n in
                  self.metrics.by_labels("sidecar_fetch_errors_total", ("source", "reason")).items() if name == self.name}
        if errors:
            doc["errors_total"] = errors
        return doc

    def usable(self, cost: int = 1) -> bool:
        """Worth trying now: enabled, breaker letting requests through, budget left (no side effects)."""
        return (self.fetcher.disabled_reason is None and self.breaker.would_allow()
                and self.limiter.available(cost))

    @property
    def quotes(self) -> bool:
        """Whether the source has a batch quote endpoint."""
        return hasattr(self.fetcher, "fetch_quotes")

    async def fetch(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                    on_error: Callable[[str, str], None]) -> FetchResult | None:
        """Bars of [start, end), or None when skipped (breaker, budget) or failed; every failed
        try is reported to `on_error(reason, message)`."""
        return await self.call(info.symbol, lambda timeout: self.fetcher.fetch_bars(
            info, timeframe, start, end, timeout_s=timeout), on_error)

    async def fetch_quotes(self, infos: Sequence[SymbolInfo], on_error: Callable[[str, str], None],
                           deadline: float | None = None) -> QuoteBatch | None:
        """One batch quote for `infos` (charged what it costs at the provider: requests or
        credits), or None as for `fetch`; with a `deadline` (default: the cycle's), that is
        when it gives up, however long the live timeout. It goes through the fetcher's live pool."""
        with live_pool():
            return await self.call(f"{len(infos)} symbols", lambda timeout: self.fetcher.fetch_quotes(  # type: ignore[attr-defined]
                infos, timeout_s=timeout), on_error, cost=self.fetcher.quote_cost(infos),  # type: ignore[attr-defined]
                deadline=deadline)

    async def call(self, label: str, request: Callable[[float | None], Awaitable[T]],
                   on_error: Callable[[str, str], None], cost: int = 1, deadline: float | None = None) -> T | None:
        """Run `request(timeout)` under the breaker, budgets (`cost` per try) and retries (until
        `deadline`, monotonic; default: the cycle's); None when skipped or failed."""
        if not self.breaker.allow():
            self.metrics.fetch_skipped.labels(self.name, "breaker_open").inc()
            return None
        failures = 0
        end = self._deadline if deadline is None else deadline  # retries (and a given deadline's first try) end here
        timeout = None if deadline is None else max(0.05, min(self.fetcher.timeout_s, end - self.clock.monotonic()))
        while True:
            if not self.limiter.try_acquire(cost) or (self.shared is not None and await self.shared.acquire(cost)):
                self.metrics.fetch_skipped.labels(self.name, "rate_limit").inc()
                self.breaker.release()
                return None
            self._taken += cost
            t0 = self.clock.monotonic()
            try:
                result = await request(timeout)
            except RateLimited as exc:  # busy, not broken: wait as long as it says
                self.limiter.block_for(exc.retry_after if exc.retry_after is not None else 1.0)
                on_error(exc.reason, str(exc))
                self.breaker.release()
                return None
            except FetchError as exc:
                failures += 1
                on_error(exc.reason, str(exc))
                self.state.last_error, self.state.last_error_at = str(exc), self.clock.time()
                if not transient(exc):  # e.g. 404 for this symbol: not the source's fault
                    self.breaker.release()
                    return None
                delay = self.retry.delay(failures)
                left = end - self.clock.monotonic() - delay
                if self.breaker.state != "closed" or failures >= self.retry.attempts or left < MIN_RETRY_S:
                    self._failed += 1
                    return None
                self.metrics.fetch_retries.labels(self.name).inc()
                await self.clock.sleep(delay)
                timeout = min(left, self.fetcher.timeout_s)
                continue
            except Exception as exc:  # a bug must cost one request one cycle, not the loop
                log.exception("unexpected error fetching %s", label)
                on_error("internal", f"{type(exc).__name__}: {exc}")
                self.breaker.release()
                return None
            finally:
                self.metrics.fetch_seconds.labels(self.name).observe(self.clock.monotonic() - t0)
            self._ok += 1
            return result

    def reaches(self, timeframe: str, start: int, now: float) -> bool:
        """Whether the source serves `timeframe` bars from `start` on (its reach per timeframe)."""
        reach = self.fetcher.reach.get(timeframe)
        # Each reach keeps an hour of margin below the provider's limit; half of it absorbs the
        # plan's rounding to the timeframe's grid and the time a long bootstrap takes.
        return reach is not None and start >= now - reach[0] - REACH_SLACK_S

    async def fetch_history(self, info: SymbolInfo, timeframe: str, start: int, end: int, *,
                            timeout_s: float, max_wait_s: float = HISTORY_MAX_WAIT_S) -> FetchResult:
        """History through the same gate as the live loop (`background`). Raises the FetchError
        that ended it (CircuitOpen when the source is not asked), so the caller can fall back to
        the next source."""
        return await self.background(info.symbol, lambda: self.fetcher.fetch_bars(
            info, timeframe, start, end, timeout_s=timeout_s), max_wait_s=max_wait_s)

    async def background(self, label: str, request: Callable[[], Awaitable[T]], *, cost: int = 1,
                         max_wait_s: float = HISTORY_MAX_WAIT_S) -> T:
        """A request that is not the live loop's (history, reference data, calendars), through
        the same gate: the breaker, the budgets (`cost` requests or credits, taking only what
        the live loop leaves, waiting up to `max_wait_s` for room), Retry-After and the retry
        policy. Raises the FetchError that ended it (CircuitOpen when the source is not asked,
        RateLimited when no room came in time)."""
        waited = 0.0
        failures = 0
        while True:
            if self.fetcher.disabled_reason is not None:
                raise CircuitOpen(self.name, label, f"disabled: {self.fetcher.disabled_reason}")
            wait = self.limiter.history_wait_s(cost)
            if wait > 0:
                if waited + wait > max_wait_s:
                    raise RateLimited(self.name, label, f"no budget for {cost} within {max_wait_s:.0f}s")
                await self.clock.sleep(wait)
                waited += wait
                continue
            if not self.breaker.allow():
                raise CircuitOpen(self.name, label, "circuit open")
            if not self.limiter.try_acquire(cost, history=True):  # taken by the live loop meanwhile
                self.breaker.release()
                continue
            if self.shared is not None and (wait := await self.shared.acquire(cost, history=True)):
                self.breaker.release()  # the cluster's live traffic comes first: wait for room
                if waited + wait > max_wait_s:
                    raise RateLimited(self.name, label, f"no shared budget for {cost} within {max_wait_s:.0f}s")
                await self.clock.sleep(wait)
                waited += wait
                continue
            t0 = self.clock.monotonic()
            try:
                result = await request()
            except RateLimited as exc:
                self.limiter.block_for(exc.retry_after if exc.retry_after is not None else 1.0)
                self.breaker.release()
                self.metrics.fetch_errors.labels(self.name, exc.reason).inc()
                continue  # wait as long as it says, then ask again
            except FetchError as exc:
                failures += 1
                self.metrics.fetch_errors.labels(self.name, exc.reason).inc()
                self.state.last_error, self.state.last_error_at = str(exc), self.clock.time()
                if not transient(exc):
                    self.breaker.release()
                    raise
                if failures >= self.retry.attempts or self.breaker.state != "closed":
                    self.breaker.record_failure()  # one failed request, however many tries it took
                    raise
                self.metrics.fetch_retries.labels(self.name).inc()
                await self.clock.sleep(self.retry.delay(failures))
                continue
            finally:
                self.metrics.fetch_seconds.labels(self.name).observe(self.clock.monotonic() - t0)
            self.breaker.record_success()
            return result

    def fits(self, cost: int) -> bool:
        """Whether a background request of `cost` can ever fit this source's budgets (a calendar
        of 40 credits does not fit a plan of 8 a minute)."""
        lim = self.limiter
        return (not lim.per_minute or cost <= lim.per_minute - 1) and (
            not lim.per_day or cost <= int(lim.per_day * lim.history_day_share))


async def fetch_history(sources: Sequence[GuardedSource], info: SymbolInfo, timeframe: str, start: int, end: int,
                        *, timeout_s: float, now: float) -> FetchResult:
    """History of [start, end) from the first of `sources` (the configured ones that serve the
    symbol, in SIDECAR_SOURCES order) that reaches that far back at `timeframe` and answers;
    a failing or open source passes the request to the next. Raises the last FetchError, or a
    FetchError saying that no source reaches the window."""
    error: FetchError | None = None
    for g in sources:
        if g.fetcher.disabled_reason is not None or not g.reaches(timeframe, start, now):
            continue
        size = g.fetcher.reach[timeframe][1]  # a window longer than this source serves at once: in pieces
        try:
            parts = [await g.fetch_history(info, timeframe, a, min(a + size, end), timeout_s=timeout_s)
                     for a in range(start, end, size)]
            if len(parts) == 1:
                return parts[0]
            return FetchResult(info.symbol, g.name, [b for p in parts for b in p.bars],
                               provider_time=min(p.provider_time for p in parts),
                               actions=sorted({a for p in parts for a in p.actions}))
        except FetchError as exc:
            error = exc
            if isinstance(exc, ProviderError) and exc.status is not None and 400 <= exc.status < 500 \
                    and exc.status not in (401, 403):
                raise  # about this request (e.g. 422 beyond reach): another source would not help either
    if error is not None:
        raise error
    raise BeyondReach("none", info.symbol, f"no configured source serves {timeframe} bars from {start}")
