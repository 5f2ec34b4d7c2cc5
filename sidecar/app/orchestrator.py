"""The loop: every second, one batch through the stages of the cycle, in this order.

    sourcing (fetch, parse, build)   sidecar/cycle/sourcing.py
    acceptance (validate, gate)      sidecar/cycle/acceptance.py
    gap fill                         sidecar/cycle/gapfill.py
    stale bars                       sidecar/cycle/deadletters.py
    features (commit, peek, encode)  sidecar/features/service.py
    higher timeframes (aggregate,    sidecar/cycle/aggregate.py, sidecar/cycle/higher.py
      their features)
    encode, Redis                    sidecar/cycle/publish.py, encode.py, sidecar/stores/redis_store.py
    dead letters, quarantine         sidecar/cycle/deadletters.py, publish.py
    durable buffer                   sidecar/stores/sqlite_store.py
    scan                             sidecar/cycle/scan.py, sidecar/scanner.py

Every symbol has a slot in the symbol table (sidecar/cycle/table.py), which holds its state
between cycles in arrays; a cycle's bars travel as one Batch of arrays. The loop owns the
order and times each stage; a stage never reaches into another's state. One failing symbol
never stops the cycle: its error is counted and the rest go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bars import Bar, timeframe_seconds
from ..clock import Clock
from ..cycle.acceptance import Acceptance, Accepted
from ..cycle.batch import Batch
from ..cycle.deadletters import DeadLetters
from ..cycle.encode import BarEncoder
from ..cycle.gapfill import fill_gaps
from ..cycle.higher import HigherTimeframes
from ..cycle.publish import Publisher, set_latest
from ..cycle.scan import Scan
from ..cycle.sourcing import Fetched, Sourcing
from ..cycle.table import StatesView, SymbolTable
from ..errors import DurableStoreError
from ..features.service import FeatureService
from ..metrics import Metrics
from ..scanner import Scanner
from ..sources import GuardedSource
from ..stores import DurableStore, RedisStore
from ..symbols import SymbolInfo
from ..timeframes import Buckets
from ..validator import Validator
from .gauges import loop_gauges
from .status import CycleHistory
from .ticker import Ticker

log = logging.getLogger(__name__)

TIMEFRAME = "1m"


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
    :param primary: the first source, behind its gate; it also serves the quotes.
    :param validator: decides which bars are stored.
    :param redis: hot store, written once per cycle.
    :param sqlite: durable store, buffered here and flushed elsewhere.
    :param metrics: counters and histograms.
    :param clock: wall and monotonic time.
    :param period: seconds between cycles.
    :param lookback_minutes: how far back a symbol's first fetch reaches.
    :param features: turns bars into indicator values (None: bars only).
    :param scanner: turns the features read back from Redis into signals (None: no scan).
    :param on_redis_lost: called when Redis needs writing again (`Publisher`'s).
    :param on_recovered: called when a symbol's source answers again after failing (to backfill).
    :param stale_after_s: a symbol not refreshed for this long has its newest bar flagged STALE
        in Redis and goes on the dead-letter hash until its source answers again.
    :param spike_atr: a closed bar further than this many ATRs from the previous close is held
        until the next bar (0: no spike filter).
    :param quotes: poll batch quotes and build bars from them (else one chart request per symbol).
    :param quote_batch: symbols per batch quote request.
    :param catchup_per_cycle: quotes mode: at most this many history requests per cycle.
    :param fallbacks: further sources: a symbol's fetch goes down the ones that serve it while
        the ones before are failing, open or out of budget.
    :param source_order: names in order of preference (default: the primary, then `fallbacks`).
    :param trace: called after each cycle with its record (time, duration, stages, counts).
    :param settle_s: a closed bar that ended less than this before the provider's clock when
        fetched could still change: it is stored, fetched again once settled, and corrected.
    :param on_rewarm: awaited at the end of a cycle with the symbols whose committed bars were
        revised, to rebuild their features from the corrected history.
    :param timeframes: the timeframes built (those above 1m are aggregated from the minutes).
    :param buckets: the bucket rules of the higher timeframes.
    :param warmup_bars: stored bars replayed per symbol when a timeframe's features are rebuilt.
    :param forming_every: cycles between refreshes of a symbol's forming bar and features in the
        timeframes above 1m.
    """

    def __init__(self, *, symbols: list[SymbolInfo], primary: GuardedSource, validator: Validator,
                 redis: RedisStore, sqlite: DurableStore, metrics: Metrics, clock: Clock,
                 period: float, lookback_minutes: int, features: FeatureService | None = None,
                 scanner: Scanner | None = None, on_redis_lost: Callable[[float], object] | None = None,
                 on_recovered: Callable[[], object] | None = None, stale_after_s: float = 5.0,
                 spike_atr: float = 0.0, quotes: bool = False, quote_batch: int = 200,
                 catchup_per_cycle: int = 200, fallbacks: Sequence[GuardedSource] = (),
                 source_order: Sequence[str] | None = None, trace: Callable[[dict[str, object]], None] | None = None,
                 settle_s: float = 5.0, on_rewarm: Callable[[set[str]], Awaitable[object]] | None = None,
                 timeframes: Sequence[str] = (TIMEFRAME,), buckets: Buckets | None = None,
                 warmup_bars: int = 600, forming_every: int = 1) -> None:
        self.guarded = primary
        self.sources = [primary, *fallbacks]  # in order of preference
        if source_order is not None:  # the primary too may be placed later, or left out of fallback
            self.sources = sorted((g for g in self.sources if g.name in source_order),
                                  key=lambda g: source_order.index(g.name))
        self.validator = validator
        self.redis, self.sqlite, self.metrics, self.clock = redis, sqlite, metrics, clock
        self.features = features
        self.on_recovered, self.on_rewarm, self.trace = on_recovered, on_rewarm, trace
        self.period = period
        self.step = timeframe_seconds(TIMEFRAME)
        self.table = SymbolTable(validator.bounds, [g.name for g in self.sources])
        self.states = StatesView(self.table)
        self.sourcing = Sourcing(table=self.table, sources=self.sources, primary=primary, metrics=metrics, clock=clock,
                                 lookback_s=lookback_minutes * 60, quotes=quotes, quote_batch=quote_batch,
                                 catchup_per_cycle=catchup_per_cycle, settle_s=settle_s, period=period)
        self.acceptance = Acceptance(table=self.table, validator=validator, metrics=metrics, step=self.step,
                                     settle_s=settle_s, spike_atr=spike_atr, atr=self._atr)
        self.dead = DeadLetters(table=self.table, redis=redis, stale_after_s=stale_after_s, started_at=clock.time())
        self.encoder = BarEncoder(TIMEFRAME)
        self.higher = HigherTimeframes(timeframes, table=self.table, buckets=buckets or Buckets(), sqlite=sqlite,
                                       metrics=metrics, clock=clock, features=None if features is None else features.book.config,
                                       warmup_bars=warmup_bars, forming_every=forming_every)
        self.publisher = Publisher(table=self.table, redis=redis, encoder=self.encoder,
                                   lane_encoders={lane.timeframe: lane.encoder for lane in self.higher.lanes},
                                   metrics=metrics, clock=clock, on_redis_lost=on_redis_lost)
        self.scan = None if scanner is None or features is None else Scan(
            scanner=scanner, redis=redis, metrics=metrics, clock=clock,
            codecs={service.timeframe: service.codec for service in self.services()})
        self.ticker = Ticker(clock, period, on_overrun=metrics.cycle_overruns.inc)
        # quotes: each second's poll as it turns, whatever the cycles' length and phase (cycle/sourcing.py)
        self.poller = Ticker(clock, period)
        self.stages: dict[str, float] = {}  # seconds spent per stage in the last cycle
        self.last_cycle: CycleReport | None = None
        self.recent = CycleHistory()  # the status page's last ten minutes of cycles
        self.last_cycle_at: float | None = None
        self._rewarm: set[str] = set()  # symbols whose features are rebuilt at the end of the cycle
        # held by each cycle, so symbols come and go between cycles: its stages keep their slots across awaits
        self.between_cycles = asyncio.Lock()
        self._stopping = False
        self._in_cycle = False
        self.task: asyncio.Task[None] | None = None  # the loop, once started
        metrics.at_scrape(lambda: loop_gauges(self.table, self.sources, self.clock.time()))
        self.add(symbols)

    # -- membership ---------------------------------------------------------------------------------

    def add(self, infos: list[SymbolInfo]) -> None:
        """Start following symbols (their first fetch reaches back `lookback_minutes`)."""
        slots = np.array([self.table.add(i, self.sourcing.serving(i)) for i in infos if i.symbol not in self.table],
                         dtype=np.int64)
        if len(slots):  # each array reset once for them all: a partition taken over brings thousands
            self.sourcing.reset(slots)
            # minutes before the sources' clock now were not seen by this process
            self.higher.reset(slots, int(self.clock.time() - self.sourcing.delays.max()))

    def remove(self, symbols: list[str]) -> None:
        """Stop following symbols; a fetch already in flight for one is simply not used again."""
        for symbol in symbols:
            self.table.remove(symbol)

    def sources_for(self, info: SymbolInfo) -> list[GuardedSource]:
        """The configured, enabled sources that serve a symbol, in SIDECAR_SOURCES order: what
        live fetches and history work (bootstrap, gap scans, end-of-day checks) go down."""
        slot = self.table.slot_of.get(info.symbol)
        return self.table.sources[slot] if slot is not None else self.sourcing.serving(info)

    def resume(self, last_stored: dict[str, int], overlap_s: int) -> None:
        """Continue each symbol after its newest stored bar (after a restart or a crash),
        fetching `overlap_s` before it again: upserts make the overlap harmless, and it repairs
        a bar the source revised while we were down."""
        for symbol, ts in last_stored.items():
            slot = self.table.slot_of.get(symbol)
            if slot is not None:
                self.table.cursor[slot] = ts - overlap_s

    def request_rewarm(self, symbols: set[str]) -> None:
        """Rebuild these symbols' features from their stored history at the end of the next
        cycle (in the cycle, so no cycle's commit falls between the read and the rebuild)."""
        self._rewarm |= symbols

    def revise_minutes(self, bars: Sequence[Bar]) -> None:
        """Minutes stored behind the loop's back (backfill, verification): their buckets in
        every higher timeframe are rebuilt from the store at the end of the next cycle."""
        known = [(self.table.slot_of[b.symbol], b.ts) for b in bars
                 if b.timeframe == TIMEFRAME and b.symbol in self.table.slot_of]
        if known and self.higher.lanes:
            slots, ts = np.array(known, dtype=np.int64).T
            self.higher.revise(slots, ts)

    def latest_bars(self) -> list[Bar]:
        """Every symbol's newest bar written to Redis (what a re-seed writes back)."""
        return [b for b in (self.table.latest(s) for s in self.table.slots().tolist()) if b is not None]

    def _atr(self, slots: np.ndarray) -> np.ndarray:
        if self.features is None:
            return np.full(len(slots), np.nan)
        cols = self.features.columns(self.table.symbols, self.table.version)
        return self.features.book.atr_columns(cols[slots])

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop as a task (`task`: what the daemon supervises)."""
        self.task = asyncio.create_task(self._run(), name="orchestrator")

    async def close(self, timeout: float = 5.0) -> None:
        """Stop scheduling cycles; let a cycle in flight finish within `timeout`, so what it
        fetched reaches the stores (idempotent)."""
        self._stopping = True
        task = self.task
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
        polling = asyncio.create_task(self.poller.run(lambda: self.sourcing.poll(self.clock.time())),
                                      name="quote poller") if self.sourcing.quotes else None
        self.sourcing.background = polling is not None
        try:
            async for _tick in self.ticker:
                if self._stopping:
                    break
                self._in_cycle = True
                try:
                    async with self.between_cycles:
                        await self.run_cycle()
                finally:
                    self._in_cycle = False
                if self._stopping:
                    break
        finally:
            self.sourcing.stop_background()
            if polling is not None:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)

    # -- the cycle ----------------------------------------------------------------------------------

    async def run_cycle(self) -> CycleReport:
        """One cycle over every symbol."""
        t, clock = self.table, self.clock
        marks = [clock.monotonic()]
        for g in self.sources:
            g.begin_cycle(marks[0] + 0.8 * self.period)  # retries must leave time for the writes
        now = clock.time()
        fetched = await self.sourcing.fetch(now)
        for g in self.sources:
            g.end_cycle(now, self.period)
        marks.append(clock.monotonic())

        now = clock.time()  # validate against the time the answers arrived
        before_ts, before_close = t.ref_ts.copy(), t.ref_close.copy()
        accepted = self.acceptance.run(fetched.batch, fetched.answered, now)
        self.publisher.quarantine += accepted.quarantine
        if len(fetched.from_history):
            self.sourcing.catch_up.settle(fetched.from_history, accepted.rejected_slots, now)
        synthetic = fill_gaps(accepted.closed, before_ts, before_close, t.asset_class, self.step)
        if len(synthetic):
            self.metrics.synthetic_bars.inc(len(synthetic))
        newest, forming = accepted.newest, accepted.newest.take(accepted.newest.forming)
        set_latest(t, newest)
        stale = self.dead.mark_stale(now, fetched.answered)
        marks.append(clock.monotonic())

        feature_slots, feature_rows = self._features(fetched, accepted, forming)
        marks.append(clock.monotonic())
        redis_ok, lanes = await self.publisher.write(  # the higher timeframes step while Redis applies the minute's part
            accepted, synthetic, stale, (feature_slots, feature_rows), lambda: self.higher.step(
                accepted.closed, forming, self.sourcing.source_clock(now)) if self.higher.lanes else [],
            now, None if self.scan is None else self.scan.reads())
        marks += [marks[-1] + self.publisher.step_s, clock.monotonic()]  # timeframes; Redis: the rest of the write
        if redis_ok:
            await self.dead.update(now)
            await self.publisher.write_quarantine()
        for closed, timeframe in [(accepted.closed, "1m"), *((lane.closed, lane.timeframe) for lane in lanes)]:
            self.sqlite.add_batch(closed, t.symbols, t.source_names, timeframe)
        self.sqlite.add(accepted.revised)
        self._persist_features()
        if accepted.revised:
            self.request_rewarm({b.symbol for b in accepted.revised})
            self.revise_minutes(accepted.revised)
        if self.higher.pending:
            await self.higher.finish(self.sourcing.source_clock(now))
        if self._rewarm and self.on_rewarm is not None and self.sqlite.last_error is None:
            symbols, self._rewarm = self._rewarm, set()
            try:
                await self.on_rewarm(symbols)
            except DurableStoreError as exc:  # the store went away meanwhile: a later cycle retries
                self._rewarm |= symbols
                log.warning("feature re-warm waits for the store: %s", exc)
        if self.sourcing.recovered and self.on_recovered is not None:
            self.on_recovered()
        self.sourcing.recovered = False
        marks.append(clock.monotonic())
        if self.scan is not None and redis_ok:
            await self.scan.run()
        self.metrics.sqlite_buffered.set(self.sqlite.waiting)
        marks.append(clock.monotonic())
        return self._report(fetched, accepted, redis_ok, marks, now)

    def services(self) -> list[FeatureService]:
        """The feature services of every timeframe."""
        lanes = [lane.features for lane in self.higher.lanes if lane.features is not None]
        return lanes if self.features is None else [self.features, *lanes]

    def _persist_features(self) -> None:
        """The features at each bar that closed this cycle, every timeframe, into the features
        table with the bars (when the services record them)."""
        for service in self.services():
            symbols, ts, values = service.take_committed()
            if symbols:
                self.sqlite.add_features(service.timeframe, symbols, ts, values)

    def _features(self, fetched: Fetched, accepted: Accepted, forming: Batch) -> tuple[np.ndarray, Sequence[bytes]]:
        """Commit the closed bars, evaluate the forming ones, refresh the symbols that answered
        with nothing new (so their values stay current)."""
        if self.features is None:
            return np.zeros(0, dtype=np.int64), []
        t, newest = self.table, accepted.newest
        t0 = self.clock.monotonic()
        cols = self.features.columns(t.symbols, t.version)
        skip = np.zeros(len(t.active), dtype=bool)  # masks, not set operations: ~0.3 ms each at 5,000
        skip[newest.slot] = True
        refresh = fetched.answered[~skip[fetched.answered]]
        out = self.features.update_batch(accepted.closed, forming, refresh, t.ref_ts, t.ref_close, cols)
        self.metrics.features_seconds.observe(self.clock.monotonic() - t0)
        return out

    def _report(self, fetched: Fetched, accepted: Accepted, redis_ok: bool, marks: list[float],
                now: float) -> CycleReport:
        """Stage times, per-source counts, the cycle's metrics and trace."""
        fetch, validate, features, timeframes, redis, buffer, scan = np.diff(marks).tolist()
        fetch -= fetched.build_s + (0.0 if self.sourcing.background else fetched.parse_s)  # fetch: waiting for answers
        decoded = 0.0 if self.scan is None else self.scan.decode_s  # the scan's, done in the write
        self.stages = {"fetch": fetch, "parse": fetched.parse_s, "build": fetched.build_s, "validate": validate,
                       "features": features, "timeframes": timeframes, "redis": redis - decoded, "sqlite_buffer": buffer,
                       "scan": scan + decoded}
        t, n = self.table, len(self.table)
        codes = t.source[fetched.answered].astype(np.int64)
        served = np.bincount(codes[codes >= 0], minlength=len(t.source_names))
        for g in self.sources:
            g.state.served_last_cycle = int(served[t.source_code(g.name)])
        duration = marks[-1] - marks[0]
        self.sourcing.pace(duration, self.period)
        self.metrics.cycles.inc()
        self.metrics.cycle_seconds.observe(duration)
        report = CycleReport(duration, len(fetched.answered), n - len(fetched.answered), len(accepted.closed),
                             accepted.rejected, redis_ok)
        self.last_cycle, self.last_cycle_at = report, now
        self.recent.add(now, duration, self.stages)
        if self.trace is not None:
            self.trace({"t": round(now, 3), "cycle_s": round(duration, 6),
                        **{k: round(v, 6) for k, v in self.stages.items()}, "symbols": n,
                        "fetched": report.fetched, "closed": report.closed, "rejected": report.rejected,
                        "history_requests": len(fetched.from_history), "redis_values": self.publisher.values,
                        "unsampled": int(self.sourcing.builder.incomplete[0]), "late": int(self.sourcing.builder.incomplete[1]),
                        **self.sourcing.catch_up.trace(), "overruns": self.ticker.overruns})
        return report

    def health(self, per_symbol: bool = True) -> dict[str, Any]:
        """The loop (cycling, last cycle, overruns) and, with `per_symbol`, each symbol's
        freshness (the status page reads the arrays instead: a map of 5,000 costs ~50 ms)."""
        now = self.clock.time()
        at = self.last_cycle_at
        cycling = at is not None and now - at <= 3 * self.period + 1 and not self._stopping
        fresh, freshness = self.table.freshness(now, self.dead.stale_after_s, self.sourcing.delays, per_symbol)
        return {"state": "ok" if cycling else "down", "cycles": int(self.metrics.total("sidecar_cycles_total")),
                "overruns": self.ticker.overruns, **({"polls_skipped": self.poller.skipped} if self.sourcing.quotes else {}),
                "last_cycle_ms": round(self.last_cycle.duration_s * 1000, 2) if self.last_cycle else None,
                "last_cycle_age_s": None if at is None else round(now - at, 3),
                "fresh_symbols": fresh, "symbols": len(self.table), "freshness": freshness}
