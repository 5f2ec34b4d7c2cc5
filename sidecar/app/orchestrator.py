"""The per-second cycle: fetch every symbol concurrently, validate, write Redis in one
pipeline, buffer closed bars for SQLite.

Two ways to fetch. `chart`: one history request per symbol per cycle. `quotes`: a few batch
quote requests for all symbols, turned into bars by the bar builder; a closed bar the builder
saw completely, right after the last minute accounted for, is taken as it is, and a symbol
whose minutes the builder cannot vouch for (start-up, a missed poll, a stale or bad quote, a
minute without trades) is caught up from the history endpoint, a bounded number per cycle.

Each symbol keeps a cursor, the open of the newest closed bar accepted, and the next fetch
asks for bars from just after it, so a symbol's closed bars are fetched until they are
accepted. When a closed bar is rejected, the cursor is pulled back so that minute is asked
for again (at most `REJECT_RETRIES` times), which recovers a bar a source corrupted once.
One failing symbol never stops the cycle: its error is counted and the rest go on.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..barbuilder import BarBuilder, BuildResult
from ..bars import FORMING, SETTLED_S, SYNTHETIC, Bar, BarFlag, bucket_start, timeframe_seconds
from ..calendars import is_trading, session_day
from ..clock import Clock
from ..errors import RedisStoreError
from ..features.service import FeatureService
from ..fetchers import FetchResult, HttpFetcher, QuoteBatch, YahooFetcher
from ..metrics import Metrics
from ..resilience import CircuitBreaker, RateLimiter, RetryPolicy
from ..scanner import Scanner, ScanResult
from ..sources import GuardedSource
from ..stores import RedisStore, SQLiteStore
from ..symbols import SymbolInfo
from ..validator import REASONS, Validator
from .ticker import Ticker

log = logging.getLogger(__name__)

TIMEFRAME = "1m"
REJECT_RETRIES = 3
MAX_FILL_S = 6 * 3600  # a longer silence inside a session is an outage to report, not minutes to fill
EARLY_WAKE_S = 0.02
CATCH_UP_S = 86400


@dataclass(slots=True)
class SymbolState:
    """What the loop knows about one symbol between cycles."""

    info: SymbolInfo
    cursor: int | None = None  # open of the newest closed bar accepted
    last_update: float | None = None  # wall time of the last successful fetch
    last_bar_ts: int | None = None  # open of the newest bar written to Redis
    last_error: str | None = None
    reject_attempts: dict[int, int] = field(default_factory=dict)
    beyond_reach_logged: bool = False
    window_end: int = 0  # end of the window last asked for
    latest: Bar | None = None  # the newest bar written to Redis
    last_closed: Bar | None = None  # the newest closed bar accepted (the spike filter's reference)
    pending: Bar | None = None  # a closed bar that jumped: held until the next bar confirms it
    dead_since: float | None = None  # when its fetches started failing for good (dead-letter entry)
    slot: int = -1  # its row in the bar builder (quotes mode)
    sources: list[GuardedSource] = field(default_factory=list)  # the ones that serve it, in order
    source: str | None = None  # the source of its newest bars
    errors: dict[str, str] = field(default_factory=dict)  # the last error of each source that failed it
    synced_until: int | None = None  # quotes mode: every closed minute before this is accounted for
    unsettled: dict[int, Bar] = field(default_factory=dict)  # closed bars stored while they could still change
    ts_gauge: Any = None  # its child of the last-bar-timestamp gauge


@dataclass(slots=True, frozen=True)
class CycleReport:
    """What one cycle did."""

    duration_s: float
    fetched: int
    failed: int
    closed: int
    rejected: int
    redis_ok: bool


class Orchestrator:
    """Runs the cycle on a Ticker until stopped.

    :param symbols: the symbols to follow.
    :param fetcher: the source of bars.
    :param validator: decides which bars are stored.
    :param redis: hot store, written once per cycle.
    :param sqlite: durable store, buffered here and flushed elsewhere.
    :param metrics: counters and histograms.
    :param clock: wall and monotonic time.
    :param period: seconds between cycles.
    :param lookback_minutes: how far back a symbol's first fetch reaches.
    :param breaker: the source's circuit breaker (default: threshold 5, reset 30 s).
    :param limiter: the source's request budgets (default: none).
    :param retry: how transient errors are retried within a cycle.
    :param features: turns bars into indicator values (None: bars only).
    :param scanner: turns the features read back from Redis into signals (None: no scan).
    :param on_redis_lost: called when a write finds that Redis lost its data (to re-seed it).
    :param on_recovered: called when a symbol's source answers again after failing (to backfill).
    :param stale_after_s: a symbol not refreshed for this long has its newest bar flagged STALE
        in Redis and goes on the dead-letter hash until its source answers again.
    :param spike_atr: a closed bar further than this many ATRs from the previous close is held
        until the next bar: stored if the next confirms the level, quarantined if it reverts
        (0: no spike filter).
    :param quotes: poll batch quotes and build bars from them (else one chart request per symbol).
    :param quote_batch: symbols per batch quote request.
    :param catchup_per_cycle: quotes mode: at most this many history requests per cycle.
    :param fallbacks: further sources, in order: a symbol's fetch goes down the ones that serve
        it while the ones before are failing, open or out of budget.
    :param source_order: names in order of preference (default: the primary, then `fallbacks`);
        the primary (`fetcher`) also serves quotes whatever its place.
    :param trace: called after each cycle with its record (time, duration, stages, counts).
    :param settle_s: a closed bar that ended less than this before the provider's clock when
        fetched could still change (late trades): it is stored, fetched again once settled, and
        corrected (a revision) if the source's values moved.
    :param on_rewarm: awaited at the end of a cycle with the symbols whose committed bars were
        revised, to rebuild their features from the corrected history.
    :param primary: `fetcher` behind its gate, built by the caller (instead of `breaker`,
        `limiter` and `retry`).
    """

    def __init__(self, *, symbols: list[SymbolInfo], fetcher: YahooFetcher, validator: Validator,
                 redis: RedisStore, sqlite: SQLiteStore, metrics: Metrics, clock: Clock,
                 period: float, lookback_minutes: int, breaker: CircuitBreaker | None = None,
                 limiter: RateLimiter | None = None, retry: RetryPolicy | None = None,
                 features: FeatureService | None = None,
                 scanner: Scanner | None = None, on_redis_lost: Callable[[], object] | None = None,
                 on_recovered: Callable[[], object] | None = None, stale_after_s: float = 5.0,
                 spike_atr: float = 0.0, quotes: bool = False, quote_batch: int = 200,
                 catchup_per_cycle: int = 200, fallbacks: Sequence[GuardedSource] = (),
                 source_order: Sequence[str] | None = None, trace: Callable[[dict[str, object]], None] | None = None,
                 settle_s: float = 5.0, on_rewarm: Callable[[set[str]], Awaitable[object]] | None = None,
                 primary: GuardedSource | None = None) -> None:
        self.states: dict[str, SymbolState] = {}
        self.quotes = quotes
        self.quote_batch = quote_batch
        self.catchup_per_cycle = catchup_per_cycle
        self.builder = BarBuilder(timeframe_seconds(TIMEFRAME))
        self._by_slot: dict[int, SymbolState] = {}
        self._free_slots: list[int] = []
        self.stages: dict[str, float] = {}  # seconds spent per stage in the last cycle
        self._bounds = np.zeros((64, 2))  # per builder slot: the asset class's price range
        self._accepted_children: dict[tuple[str, str], Any] = {}
        self._slot_source: dict[int, str] = {}  # quotes mode: slots whose quotes came from a fallback this poll
        self.trace = trace
        self.settle_s = settle_s
        self.on_rewarm = on_rewarm
        self._rewarm: set[str] = set()  # symbols whose features are rebuilt at the end of the cycle
        self._recovered = False  # a symbol's source answered again this cycle (one event, not one per symbol)
        self._parse_s = self._build_s = 0.0  # quotes mode: this cycle's parse and bar-builder time
        self.validator = validator
        self.fetcher = fetcher
        self.redis = redis
        self.sqlite = sqlite
        self.metrics = metrics
        self.clock = clock
        self.ticker = Ticker(clock, period, on_overrun=metrics.cycle_overruns.inc)
        self.lookback_s = lookback_minutes * 60
        self.period = period
        self.guarded = primary or GuardedSource(
            fetcher, breaker=breaker or CircuitBreaker(fetcher.name, clock=clock),
            limiter=limiter or RateLimiter(clock=clock), retry=retry or RetryPolicy(), metrics=metrics, clock=clock)
        self.breaker, self.limiter = self.guarded.breaker, self.guarded.limiter
        self.sources = [self.guarded, *fallbacks]  # in order of preference
        if source_order is not None:  # the primary too may be placed later, or left out of fallback
            self.sources = sorted((g for g in self.sources if g.name in source_order),
                                  key=lambda g: source_order.index(g.name))
        self.source = self.guarded.state  # the primary's health
        self.features = features
        self.scanner = scanner
        self.on_redis_lost = on_redis_lost
        self.on_recovered = on_recovered
        self.stale_after_s = stale_after_s
        self.spike_atr = spike_atr
        self._quarantine: list[dict[str, object]] = []  # spikes of this cycle, for Redis
        self.last_scan: ScanResult | None = None
        self.step = timeframe_seconds(TIMEFRAME)
        self.last_cycle: CycleReport | None = None
        self.last_cycle_at: float | None = None
        self.redis_ok: bool | None = None
        self.redis_last_error: str | None = None
        self._stopping = False
        self._in_cycle = False
        self._started_at = clock.time()
        self._task: asyncio.Task[None] | None = None
        self.add(symbols)

    def add(self, infos: list[SymbolInfo]) -> None:
        """Start following symbols (their first fetch reaches back `lookback_minutes`)."""
        for info in infos:
            if info.symbol in self.states:
                continue
            slot = self._free_slots.pop() if self._free_slots else len(self._by_slot)
            self.builder.reset(np.array([slot]))
            if slot >= len(self._bounds):
                self._bounds = np.concatenate([self._bounds, np.zeros((max(slot + 1, 2 * len(self._bounds)), 2))])
            self._bounds[slot] = self.validator.bounds[info.asset_class]
            self.states[info.symbol] = self._by_slot[slot] = SymbolState(info, slot=slot,
                                                                         sources=self.sources_for(info))

    def sources_for(self, info: SymbolInfo) -> list[GuardedSource]:
        """The configured, enabled sources that serve a symbol, in SIDECAR_SOURCES order: what
        live fetches and history work (bootstrap, gap scans, end-of-day checks) go down."""
        state = self.states.get(info.symbol)
        if state is not None:
            return state.sources
        return [g for g in self.sources if g.fetcher.disabled_reason is None and g.fetcher.serves(info)]

    def request_rewarm(self, symbols: set[str]) -> None:
        """Rebuild these symbols' features from their stored history at the end of the next
        cycle (in the cycle, so no cycle's commit falls between the read and the rebuild)."""
        self._rewarm |= symbols

    def remove(self, symbols: list[str]) -> None:
        """Stop following symbols; a fetch already in flight for one is simply not used again."""
        for symbol in symbols:
            state = self.states.pop(symbol, None)
            if state is not None:
                del self._by_slot[state.slot]
                self._free_slots.append(state.slot)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start the loop as a task and return it (the caller supervises it)."""
        self._task = asyncio.create_task(self._run(), name="orchestrator")
        return self._task

    async def stop(self, timeout: float) -> None:
        """Stop scheduling cycles; let a cycle in flight finish within `timeout`."""
        self._stopping = True
        task = self._task
        if task is None or task.done():
            return
        if not self._in_cycle:
            task.cancel()  # it is only sleeping until the next deadline
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (asyncio.CancelledError, TimeoutError):
            if not task.done():
                log.warning("cycle still running after %.1fs at shutdown; cancelling it", timeout)
                task.cancel()

    async def _run(self) -> None:
        async for _tick in self.ticker:
            if self._stopping:
                break
            self._in_cycle = True
            try:
                await self.run_cycle()
            finally:
                self._in_cycle = False
            if self._stopping:
                break

    # -- the cycle -----------------------------------------------------------------------------

    async def run_cycle(self) -> CycleReport:
        """One cycle over every symbol."""
        started = self.clock.monotonic()
        for g in self.sources:
            g.begin_cycle(started + 0.8 * self.period)  # retries must leave time for the writes
        now = self.clock.time()
        states = list(self.states.values())
        forming: list[tuple[SymbolState, Bar]] = []  # quotes mode: built and validated already
        if self.quotes:
            results, from_history, forming = await self._poll_quotes(states, now)
        else:
            results = await asyncio.gather(*(self._fetch(state, now) for state in states))
            from_history = set()
        for g in self.sources:
            g.end_cycle(now, self.period)
        t_fetched = self.clock.monotonic()

        closed: list[Bar] = []
        latest: list[Bar] = []
        rejected = 0
        now = self.clock.time()  # validate against the time the answers arrived
        current = bucket_start(now, self.step)
        synthetic: list[Bar] = []
        revised: list[Bar] = []
        for state, result in zip(states, results, strict=True):
            if result is None:
                continue
            before = state.last_closed
            new_closed, newest, n_rejected, corrected = self._accept(state, result, now)
            revised += corrected
            if new_closed and before is not None:
                synthetic += self._fill_gaps(state, [before, *new_closed])
            if state.info.symbol in from_history:  # what history vouched for, unless it must ask again
                reached = state.window_end >= current + self.step  # a catch-up may take several windows
                state.synced_until = current if reached and not n_rejected else (
                    state.cursor + self.step if state.cursor is not None else None)
            closed += new_closed
            rejected += n_rejected
            if newest is not None:
                self._set_latest(state, newest)
                latest.append(newest)
        for state, bar in forming:
            if state.info.symbol not in from_history and (state.latest is None or bar.ts >= state.latest.ts):
                self._set_latest(state, bar)
                latest.append(bar)
        latest += self._mark_stale(states, now)

        t_validated = self.clock.monotonic()
        feature_rows: list[tuple[str, str, bytes]] = []
        if self.features is not None:
            fresh = {b.symbol for b in latest}
            unchanged = [st.last_closed for st, r in zip(states, results, strict=True)
                         if r is not None and st.last_closed is not None and st.info.symbol not in fresh]
            feature_rows = self.features.update(closed, [b for b in latest if b.forming], unchanged)
            self.metrics.features_seconds.observe(self.clock.monotonic() - t_validated)
        t_features = self.clock.monotonic()
        redis_ok = await self._write_redis(latest, closed + synthetic + revised, feature_rows)
        t_redis = self.clock.monotonic()
        if redis_ok:
            await self._update_dead_letters(states, now)
            if self._quarantine:
                try:
                    await self.redis.quarantine(self._quarantine)
                    self._quarantine = []
                except RedisStoreError as exc:
                    log.warning("%s", exc)
        self.sqlite.add(closed + revised)
        if revised:
            self.request_rewarm({b.symbol for b in revised})
        if self._rewarm and self.on_rewarm is not None:
            symbols, self._rewarm = self._rewarm, set()
            await self.on_rewarm(symbols)
        if self._recovered and self.on_recovered is not None:
            self.on_recovered()
        self._recovered = False
        t_scan = self.clock.monotonic()
        if self.scanner is not None and redis_ok:
            await self._scan()
        self.metrics.sqlite_buffered.set(self.sqlite.buffered)
        end = self.clock.monotonic()
        parse, build = (self._parse_s, self._build_s) if self.quotes else (0.0, 0.0)
        self.stages = {"fetch": t_fetched - started - parse - build, "parse": parse, "build": build,
                       "validate": t_validated - t_fetched,
                       "features": t_features - t_validated, "redis": t_redis - t_features,
                       "sqlite_buffer": t_scan - t_redis, "scan": end - t_scan}

        with_forming = {id(st) for st, _bar in forming}  # quotes mode: answered without a fetch result
        answered = [st for st, r in zip(states, results, strict=True) if r is not None or id(st) in with_forming]
        failed = len(states) - len(answered)
        served = collections.Counter(st.source for st in answered)
        for g in self.sources:
            g.state.served_last_cycle = served.get(g.name, 0)
        duration = self.clock.monotonic() - started
        self.metrics.cycles.inc()
        self.metrics.cycle_seconds.observe(duration)
        report = CycleReport(duration, len(states) - failed, failed, len(closed), rejected, redis_ok)
        self.last_cycle, self.last_cycle_at = report, now
        if self.trace is not None:
            self.trace({"t": round(now, 3), "cycle_s": round(duration, 6),
                        **{k: round(v, 6) for k, v in self.stages.items()}, "symbols": len(states),
                        "fetched": report.fetched, "closed": report.closed, "rejected": rejected,
                        "history_requests": len(from_history), "overruns": self.ticker.overruns})
        return report

    def _accepted(self, source: str, kind: str) -> Any:
        """The accepted-bars counter's child (labels() costs microseconds: looked up once)."""
        child = self._accepted_children.get((source, kind))
        if child is None:
            child = self._accepted_children[(source, kind)] = self.metrics.bars_accepted.labels(source, kind)
        return child

    def _set_latest(self, state: SymbolState, bar: Bar) -> None:
        state.latest = bar
        state.last_bar_ts = bar.ts
        if state.ts_gauge is None:  # labels() costs microseconds: once per symbol, not per bar
            state.ts_gauge = self.metrics.last_bar_ts.labels(state.info.symbol)
        state.ts_gauge.set(bar.ts)

    def _silent_since(self, st: SymbolState, now: float) -> float | None:
        """When the symbol was last refreshed, if that is more than `stale_after_s` ago."""
        since = st.last_update if st.last_update is not None else self._started_at
        return since if now - since > self.stale_after_s else None

    def _mark_stale(self, states: list[SymbolState], now: float) -> list[Bar]:
        """Newest bars to rewrite flagged STALE: symbols not refreshed for `stale_after_s`, once."""
        out = []
        for st in states:
            bar = st.latest
            if bar is not None and self._silent_since(st, now) is not None and not bar.flags & BarFlag.STALE:
                st.latest = replace(bar, flags=int(bar.flags) | int(BarFlag.STALE))
                out.append(st.latest)
        return out

    async def _update_dead_letters(self, states: list[SymbolState], now: float) -> None:
        """Symbols whose fetches fail past `stale_after_s` go on the dead-letter hash with the
        reason; a symbol whose source answers again comes off it."""
        add: dict[str, dict[str, object]] = {}
        remove: list[str] = []
        for st in states:
            since = self._silent_since(st, now)
            failing = st.last_error is not None and since is not None
            if failing and st.dead_since is None:
                st.dead_since = now
                add[st.info.symbol] = {"reason": "every source failing", "error": st.last_error, "since": since,
                                       "sources": [g.name for g in st.sources], "errors": dict(st.errors)}
            elif not failing and st.dead_since is not None:
                st.dead_since = None
                remove.append(st.info.symbol)
        try:
            await self.redis.dead_letters(add, remove)
        except RedisStoreError as exc:
            log.warning("%s", exc)
            for symbol in add:  # try again next cycle
                if symbol in self.states:
                    self.states[symbol].dead_since = None

    def resume(self, last_stored: dict[str, int], overlap_s: int) -> None:
        """Continue each symbol after its newest stored bar (after a restart or a crash),
        fetching `overlap_s` before it again: upserts make the overlap harmless, and it repairs
        a bar the source revised while we were down."""
        for symbol, ts in last_stored.items():
            if symbol in self.states:
                self.states[symbol].cursor = ts - overlap_s

    def _window(self, state: SymbolState, now: float, fetcher: HttpFetcher) -> tuple[int, int]:
        """The bars to ask `fetcher` for: after the cursor (or `lookback` back), within what it
        serves at this timeframe; a long gap is caught up one window per cycle."""
        current = bucket_start(now, self.step)
        start = state.cursor + self.step if state.cursor is not None else current - self.lookback_s
        if state.unsettled:  # closed bars stored while they could still change: ask for them again
            start = min(start, min(state.unsettled))
        oldest = current - fetcher.max_age_s
        if start < oldest:
            if not state.beyond_reach_logged:
                log.warning("%s: bars before %d are older than %s serves at %s; bootstrap fills them coarser",
                            state.info.symbol, oldest, fetcher.name, TIMEFRAME)
                state.beyond_reach_logged = True
            start = oldest
        # exclusive end: the forming bar too. A catch-up asks for at most a day per cycle, so
        # one lagging symbol never holds the cycle past the live timeout.
        end = min(start + min(fetcher.max_window_s, CATCH_UP_S), current + self.step)
        return start, end

    async def _fetch(self, state: SymbolState, now: float) -> FetchResult | None:
        """A symbol's window from the first of its sources that is usable and answers: each
        behind its breaker, budgets and retries; a failing one passes the symbol to the next."""
        for g in state.sources:
            if not g.usable() and g is not state.sources[-1]:
                # open, out of budget: the next source, without waiting for this one
                state.errors.setdefault(g.name, f"{g.name} {state.info.symbol}: " + (
                    "circuit open" if not g.breaker.would_allow() else "rate budget spent"))
                continue
            start, end = self._window(state, now, g.fetcher)
            state.window_end = end
            result = await g.fetch(state.info, TIMEFRAME, start, end,
                                   on_error=functools.partial(self._fetch_failed, state, g))
            if result is not None:
                if state.source != g.name and state.source is not None:
                    log.info("%s now from %s (was %s)", state.info.symbol, g.name, state.source)
                state.source = g.name
                self._answered(state, now)
                return result
        if state.sources and state.sources[0].breaker.state == "open":
            state.last_error = state.last_error or f"{state.sources[0].name} circuit open"
        return None

    def _answered(self, state: SymbolState, now: float) -> None:
        if state.last_error is not None:
            log.info("%s recovered on %s", state.info.symbol, state.source)
            self._recovered = True
        state.last_error = None
        state.errors.clear()
        state.last_update = now

    async def _poll_quotes(self, states: list[SymbolState], now: float) -> tuple[
            list[FetchResult | None], set[str], list[tuple[SymbolState, Bar]]]:
        """Quotes mode: batch quotes for every symbol through the bar builder, then history for
        the symbols whose minutes the builder cannot vouch for (at most `catchup_per_cycle`)."""
        # The poll is labelled with the second it samples. A timer may wake the loop a fraction of
        # a millisecond before the second turns (and wall and monotonic time drift apart): such a
        # poll belongs to the coming second, and must not reach the source before it.
        label = math.floor(now + EARLY_WAKE_S)
        if now < label:
            await self.clock.sleep(label - now)
            now = self.clock.time()
        current = bucket_start(label, self.step)
        chunks = [states[i:i + self.quote_batch] for i in range(0, len(states), self.quote_batch)]
        for g in self.sources:
            g.fetcher.parse_s = 0.0
        batches = await asyncio.gather(*(self._quote_chunk(chunk) for chunk in chunks))
        self._parse_s = sum(g.fetcher.parse_s for g in self.sources)
        t_build = self.clock.monotonic()
        slots, parts = [], []
        self._slot_source = {}
        for chunk, batch in zip(chunks, batches, strict=True):
            if batch is None:
                continue
            chunk_slots = np.fromiter((st.slot for st in chunk), dtype=np.int64, count=len(chunk))
            slots.append(chunk_slots[batch.index])
            parts.append(batch)
            if batch.source != self.fetcher.name:
                self._slot_source.update(dict.fromkeys(chunk_slots.tolist(), batch.source))
        results: dict[int, FetchResult] = {}
        forming: list[tuple[SymbolState, Bar]] = []
        if parts:
            built = self.builder.update(label, np.concatenate(slots), np.concatenate([b.price for b in parts]),
                                        np.concatenate([b.time for b in parts]),
                                        np.concatenate([b.day_volume for b in parts]))
            forming = self._take_built(built, results, now)
        self._build_s = self.clock.monotonic() - t_build
        due = now - self.step - self.settle_s  # an unsettled bar opening before this can be asked again
        lagging = sorted((st for st in states if st.synced_until is None or st.synced_until < current
                          or (st.unsettled and min(st.unsettled) <= due)),
                         key=lambda st: st.synced_until or 0)[: self.catchup_per_cycle]
        history = await asyncio.gather(*(self._fetch(st, now) for st in lagging))
        fetched = set()
        for st, result in zip(lagging, history, strict=True):
            if result is not None:  # the source's own bars replace what the builder had
                results[st.slot] = result
                fetched.add(st.info.symbol)
        return [results.get(st.slot) for st in states], fetched, forming

    async def _quote_chunk(self, chunk: list[SymbolState]) -> QuoteBatch | None:
        """One chunk's batch quote from the first quote source that is usable and answers."""
        infos = [st.info for st in chunk]
        sources = [g for g in self.sources if g.quotes and g.fetcher.disabled_reason is None]
        for g in sources:
            if not g.usable(g.fetcher.quote_cost(infos)) and g is not sources[-1]:  # type: ignore[attr-defined]
                continue
            batch = await g.fetch_quotes(infos, on_error=functools.partial(self._chunk_failed, chunk, g))
            if batch is not None:
                return batch
        return None

    def _take_built(self, built: BuildResult, results: dict[int, FetchResult],
                    now: float) -> list[tuple[SymbolState, Bar]]:
        """Bars from the builder: closed ones, as fetch results, only where they follow the last
        minute accounted for (they go through `_accept`: spike gate, cursor); forming ones
        validated here in one vectorized check and returned."""
        source = self.fetcher.name
        if len(built.rejected):
            self.metrics.bars_rejected.labels(source, "bad_quote").inc(len(built.rejected))
        c = built.closed
        for slot, ts, o, h, l, cl, v, ok in zip(c.slot.tolist(), c.ts.tolist(), c.open.tolist(), c.high.tolist(),
                                               c.low.tolist(), c.close.tolist(), c.volume.tolist(),
                                               c.complete.tolist(), strict=True):
            st = self._by_slot.get(slot)
            if st is None or not ok or st.synced_until != ts:
                continue  # left to the history catch-up
            st.synced_until = ts + self.step
            src = self._slot_source.get(slot, source)
            # built from the quotes of every second: nothing to ask again (the end-of-day check verifies)
            results[slot] = FetchResult(st.info.symbol, src, [Bar(st.info.symbol, TIMEFRAME, ts, o, h, l, cl, v,
                                                                   src, 0)], provider_time=math.inf)
        f = built.forming
        reasons = self.validator.check_arrays(self.step, f.ts, f.open, f.high, f.low, f.close, f.volume,
                                              self._bounds[f.slot, 0], self._bounds[f.slot, 1], now)
        for code in np.unique(reasons[reasons >= 0]).tolist():
            self.metrics.bars_rejected.labels(source, REASONS[code]).inc(int((reasons == code).sum()))
        good = reasons < 0
        self.metrics.bars_accepted.labels(source, "forming").inc(int(good.sum()))
        forming = []
        by_slot = self._by_slot
        for slot, ts, o, h, l, cl, v in zip(f.slot[good].tolist(), f.ts[good].tolist(), f.open[good].tolist(),
                                           f.high[good].tolist(), f.low[good].tolist(), f.close[good].tolist(),
                                           f.volume[good].tolist(), strict=True):
            st = by_slot.get(slot)
            if st is not None:
                forming.append((st, Bar(st.info.symbol, TIMEFRAME, ts, o, h, l, cl, v,
                                        self._slot_source.get(slot, source), FORMING)))
        for slot in np.union1d(c.slot, f.slot).tolist():
            st = by_slot.get(slot)
            if st is not None:
                st.source = self._slot_source.get(slot, source)
                self._answered(st, now)
        return forming

    def _chunk_failed(self, chunk: list[SymbolState], source: GuardedSource, reason: str, message: str) -> None:
        for state in chunk:
            self._fetch_failed(state, source, reason, message)

    def _fetch_failed(self, state: SymbolState, source: GuardedSource, reason: str, message: str) -> None:
        self.metrics.fetch_errors.labels(source.name, reason).inc()
        if state.last_error is None:  # log transitions, not every second of an outage
            log.warning("fetch failed: %s", message)
        state.last_error = message
        state.errors[source.name] = message
        source.state.last_error, source.state.last_error_at = message, self.clock.time()

    def _accept(self, state: SymbolState, result: FetchResult,
                now: float) -> tuple[list[Bar], Bar | None, int, list[Bar]]:
        """Validate a result: (new closed bars, newest bar, number rejected, stored bars whose
        values the source revised); move the cursor."""
        source = result.source
        closed: list[Bar] = []
        revised: list[Bar] = []
        newest: Bar | None = None
        rejected = 0
        refetch_from: int | None = None
        settled_by = result.provider_time - self.settle_s  # a closed bar ending after this may still change
        for bar in result.bars:
            reason = self.validator.check(bar, now, state.info.asset_class)
            if reason is not None:
                rejected += 1
                self.metrics.bars_rejected.labels(source, reason).inc()
                log.warning("rejected %s bar ts=%d from %s: %s", bar.symbol, bar.ts, source, reason)
                if not bar.forming:
                    refetch_from = self._refetch_point(state, bar, refetch_from)
                continue
            if bar.forming:
                newest = bar
                self._accepted(source, "forming").inc()
            elif bar.ts in state.unsettled:
                stored = state.unsettled[bar.ts]
                limit = self._spike_limit(bar.symbol)
                if bar.values != stored.values and abs(bar.close - stored.close) > limit:
                    # the spike filter holds for revisions too: a jump is quarantined, never stored
                    self._quarantine_bar(bar, state, limit / self.spike_atr, "a revision that jumped")
                elif bar.values != stored.values:
                    revised.append(bar)
                    self.metrics.bars_revised.labels(source, "live").inc()
                    state.unsettled[bar.ts] = bar
                    if state.last_closed is not None and state.last_closed.ts == bar.ts:
                        state.last_closed = bar
                    if state.latest is not None and state.latest.ts == bar.ts:
                        newest = bar
                if bar.ts + self.step <= settled_by:
                    del state.unsettled[bar.ts]  # settled: no need to ask again
            elif state.cursor is None or bar.ts > state.cursor:
                for ok in self._spike_gate(state, bar):
                    closed.append(ok)
                    newest = ok
                    state.last_closed = ok
                    self._accepted(source, "closed").inc()
                    if ok.ts + self.step > settled_by:
                        state.unsettled[ok.ts] = ok
        if closed:
            state.cursor = closed[-1].ts
        if state.unsettled:  # never asked again for an hour (the source moved on): the end-of-day check verifies
            horizon = bucket_start(now, self.step) - SETTLED_S
            state.unsettled = {t: b for t, b in state.unsettled.items() if t > horizon}
        if refetch_from is None and 0 < state.window_end <= bucket_start(now, self.step) - SETTLED_S:
            # A window wholly in the settled past came back complete: minutes it lacks had no
            # trades, so step over it (a catch-up would otherwise ask for an empty week forever).
            state.cursor = max(state.cursor or 0, state.window_end - self.step)
        if refetch_from is not None and (state.cursor is None or refetch_from <= state.cursor):
            state.cursor = refetch_from - self.step
        if state.cursor is not None and state.reject_attempts:
            # forget attempts at minutes the cursor has passed for good
            state.reject_attempts = {t: n for t, n in state.reject_attempts.items() if t > state.cursor}
        return closed, newest, rejected, revised

    def _fill_gaps(self, state: SymbolState, bars: list[Bar]) -> list[Bar]:
        """Flat bars at the previous close, volume 0, flagged SYNTHETIC, for the minutes between
        consecutive accepted closed bars in which the symbol's market was open (within one
        session, never across a close) and the source showed no trade. They go to Redis's
        history only: SQLite keeps what sources served, and the indicators see real bars."""
        out: list[Bar] = []
        asset_class = state.info.asset_class
        for a, b in itertools.pairwise(bars):
            if b.ts - a.ts <= self.step or b.ts - a.ts > MAX_FILL_S:
                continue
            minutes = np.arange(a.ts + self.step, b.ts, self.step, dtype=np.int64)
            days = session_day(asset_class, np.concatenate(([a.ts, b.ts], minutes)))
            keep = is_trading(asset_class, minutes) & (days[2:] == days[0]) & (days[0] == days[1])
            for ts in minutes[keep].tolist():
                out.append(Bar(a.symbol, a.timeframe, ts, a.close, a.close, a.close, a.close, 0.0, a.source,
                               SYNTHETIC))
        if out:
            self.metrics.synthetic_bars.inc(len(out))
        return out

    def _spike_limit(self, symbol: str) -> float:
        """How far a closed bar's close may move without being held as a spike (inf: no filter,
        or no ATR yet)."""
        atr = self.features.book.atr(symbol) if self.features is not None else math.nan
        return self.spike_atr * atr if self.spike_atr and atr > 0 else math.inf

    def _spike_gate(self, state: SymbolState, bar: Bar) -> list[Bar]:
        """The closed bars to accept now, given a new one: a jump of more than `spike_atr` ATRs
        from the previous close waits one bar; the next bar decides whether it was real."""
        limit = self._spike_limit(bar.symbol)
        if limit == math.inf:
            return [bar]
        atr = limit / self.spike_atr
        out: list[Bar] = []
        held = state.pending
        if held is not None:
            state.pending = None
            if bar.ts == held.ts:  # the source sent that minute again
                if state.last_closed is None or abs(bar.close - state.last_closed.close) <= limit:
                    self._quarantine_bar(held, state, atr, "corrected by the source")
                    return [bar]
                state.pending = bar
                return []
            if abs(bar.close - held.close) <= limit:
                out.append(held)  # the next bar confirms the new level: the jump was real
                self.metrics.bars_accepted.labels(held.source, "spike_confirmed").inc()
                state.last_closed = held
            else:
                self._quarantine_bar(held, state, atr, "reverted by the next bar")
        prev = state.last_closed
        # the calendar is asked only about a jump (a numpy call per bar cost ~10 us x every symbol a minute)
        if prev is None or abs(bar.close - prev.close) <= limit or self._new_session(state, prev.ts, bar.ts):
            return [*out, bar]
        state.pending = bar
        return out

    def _new_session(self, state: SymbolState, before: int, after: int) -> bool:
        days = session_day(state.info.asset_class, np.array([before, after], dtype=np.int64))
        return bool(days[0] != days[1])

    def _quarantine_bar(self, bar: Bar, state: SymbolState, atr: float, why: str) -> None:
        self.metrics.bars_rejected.labels(bar.source, "spike").inc()
        prev = state.last_closed.close if state.last_closed is not None else None
        log.warning("quarantined %s bar ts=%d close=%s (previous close %s, ATR %.6g): %s", bar.symbol, bar.ts,
                    bar.close, prev, atr, why)
        self._quarantine.append({**bar.as_map(), "previous_close": prev, "atr": atr, "why": why})

    def _refetch_point(self, state: SymbolState, bar: Bar, current: int | None) -> int | None:
        """The minute to ask for again after a closed bar was rejected, within the retry budget."""
        minute = bucket_start(bar.ts, self.step)
        attempts = state.reject_attempts.get(minute, 0) + 1
        state.reject_attempts[minute] = attempts
        if attempts > REJECT_RETRIES:
            log.warning("giving up on %s ts=%d after %d rejected copies", bar.symbol, minute, REJECT_RETRIES)
            return current
        return minute if current is None else min(current, minute)

    async def _scan(self) -> None:
        """Read every symbol's features back, evaluate the rules, publish new signals."""
        assert self.scanner is not None and self.features is not None
        t0 = self.clock.monotonic()
        try:
            raws = await self.redis.features(self.scanner.symbols, TIMEFRAME)
            result = self.scanner.evaluate(self.features.codec.decode(raws), self.clock.time())
            await self.redis.publish_signals([
                {"id": f"{s.symbol}:{s.rule}:{s.ts}:{int(s.time * 1000)}", **s.as_map()} for s in result.signals])
        except RedisStoreError as exc:
            self.metrics.redis_errors.inc()
            log.warning("scan skipped: %s", exc)
            return
        for sig in result.signals:
            self.metrics.signals.labels(sig.rule).inc()
            log.info("signal %s %s (%s) ts=%d close=%s", sig.rule, sig.symbol, sig.broker_symbol, sig.ts, sig.close)
        self.metrics.features_stale.set(result.stale)
        self.metrics.scan_seconds.observe(self.clock.monotonic() - t0)
        self.last_scan = result

    async def _write_redis(self, latest: list[Bar], closed: list[Bar],
                           features: list[tuple[str, str, bytes]]) -> bool:
        t0 = self.clock.monotonic()
        try:
            result = await self.redis.write_cycle(latest, closed, features)
        except RedisStoreError as exc:
            self.metrics.redis_errors.inc()
            if self.redis_ok is not False:
                log.warning("redis write failed (SQLite keeps recording): %s", exc)
            self.redis_ok, self.redis_last_error = False, str(exc)
            return False
        self.metrics.redis_write_seconds.observe(self.clock.monotonic() - t0)
        if self.redis_ok is False:
            log.info("redis writes recovered")
        self.redis_ok, self.redis_last_error = True, None
        if result.fresh and self.on_redis_lost is not None:
            self.on_redis_lost()
        return True
