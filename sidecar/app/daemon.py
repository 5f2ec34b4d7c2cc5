"""The Sidecar: builds every component from one Settings object, starts them in order,
supervises the background tasks, and on SIGTERM/SIGINT shuts down in a fixed order that
gets every closed bar into SQLite before anything else closes."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from .. import calendars, universes
from ..backfill import Backfiller
from ..bars import Bar
from ..bootstrap import Bootstrapper
from ..clock import Clock, SystemClock
from ..cluster.coordinator import Coordinator, default_shard_id
from ..errors import PostgresStoreError, RedisStoreError, SettingsError
from ..features.service import FeatureService
from ..metrics import Metrics
from ..reaggregate import Reaggregator
from ..reference import ReferenceData
from ..resilience import STATES
from ..scanner import Scanner, parse_rules
from ..settings import Settings
from ..stores import DurableStore, PostgresStore, RedisStore, SQLiteStore
from ..symbols import AssetClass, SymbolInfo, lookup
from ..timeframes import Buckets
from ..validator import Validator
from .flusher import Flusher
from .following import Following
from .gauges import end_of_day_gauges
from .health import compose
from .http import HttpServer
from .orchestrator import TIMEFRAME, Orchestrator
from .providers import Providers
from .reseed import Reseeder
from .shutdown import Shutdown
from .status import document, grid
from .upkeep import Upkeep

log = logging.getLogger(__name__)


def tune_gc(gen0_threshold: int) -> None:
    """Freeze what start-up built out of the cyclic collector and collect the young generation
    less often (0: leave the interpreter's defaults).

    With the defaults, every second's bars outlive a few hundred young collections, reach the
    oldest generation, and set off full collections that walk the whole heap: 60-120 ms pauses
    every few seconds at 5,000 symbols, most of the p95 cycle (bench/quotes.py)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


class Sidecar:
    """The daemon. `await run()` serves until a signal (or `request_stop()`), then closes.

    :param settings: the validated settings.
    :param clock: injected time (SystemClock by default).
    :param handle_signals: install SIGINT/SIGTERM handlers (off in in-process tests).
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None, handle_signals: bool = True) -> None:
        self.settings = s = settings
        self.clock = clock or SystemClock()
        self.handle_signals = handle_signals
        self.metrics = Metrics()
        self.redis = RedisStore(url=s.redis_url, prefix=s.redis_prefix, max_connections=s.redis_max_connections,
                                timeout_s=s.redis_timeout_s, history_len=s.redis_history_len,
                                features_ttl_s=s.feature_ttl_s, signals_maxlen=s.signals_maxlen,
                                partitions=s.partitions if s.cluster else 0)
        # The durable record (named `sqlite` since it was only that): PostgreSQL when a store URL is set.
        self.sqlite: DurableStore = (
            PostgresStore(url=s.store_url, clock=self.clock, max_buffered=s.sqlite_buffer_max) if s.store_url
            else SQLiteStore(path=s.db_path, synchronous=s.sqlite_synchronous, clock=self.clock,
                             max_buffered=s.sqlite_buffer_max))
        # Every symbol of the settings; in a cluster this member follows only its partitions'
        # (`self.infos`, `self.symbols`), starting with none until its leases say which.
        self.universe = [lookup(sym) for sym in s.symbols]
        self.symbols: dict[str, SymbolInfo] = {} if s.cluster else {info.symbol: info for info in self.universe}
        self.cluster: Coordinator | None = None
        if s.cluster:
            self.cluster = Coordinator(redis=self.redis, shard_id=s.shard_id or default_shard_id(),
                                       partitions=s.partitions, lease_s=s.lease_s, clock=self.clock,
                                       info={"pid": os.getpid(), "http": f"{s.http_host}:{s.http_port}",
                                             "started": self.clock.time()},
                                       on_change=lambda gained, lost: self.following.partitions_moved(gained, lost))
            self.redis.fence = self.cluster.token
            self.redis.on_fenced = self._fenced
        self.features = FeatureService(s.feature_periods, timeframe=TIMEFRAME, clock=self.clock)
        self._broker = dict(s.broker_symbols)
        self.scanner = Scanner(symbols=s.symbols, broker_symbols=[self._broker.get(x, x) for x in s.symbols],
                               codec=self.features.codec, rules=parse_rules(s.signal_rules, self.features.book.outputs,
                                                                   timeframes=s.timeframes),
                               max_age_s=s.signal_max_age_s,
                               higher_refresh_s=s.higher_forming_s)
        self.providers = Providers.build(s, clock=self.clock, metrics=self.metrics, redis=self.redis,
                                         cluster=self.cluster, on_breaker=self._breaker_moved)
        self.fetcher, self.fallbacks = self.providers.fetcher, self.providers.fallbacks
        self.orchestrator = Orchestrator(
            primary=self.providers.primary,
            fallbacks=self.providers.guarded, source_order=s.sources, trace=self._trace_cycle if s.cycle_trace else None,
            symbols=self.infos, features=self.features, scanner=self.scanner,
            on_redis_lost=self._schedule_reseed, on_recovered=lambda: self.upkeep.schedule_backfill(),
            stale_after_s=s.stale_after_s,
            spike_atr=s.spike_atr, quotes=s.live_mode == "quotes", quote_batch=s.quote_batch,
            catchup_per_cycle=s.catchup_per_cycle,
            validator=Validator(future_tolerance_s=s.future_tolerance_s,
                                bounds={AssetClass(a): (lo, hi) for a, lo, hi in s.price_bounds}),
            redis=self.redis, sqlite=self.sqlite,
            metrics=self.metrics, clock=self.clock, period=s.cycle_interval_s, lookback_minutes=s.lookback_minutes,
            settle_s=s.settle_s, on_rewarm=self.rewarm, timeframes=s.timeframes, buckets=Buckets(s.day_starts()),
            warmup_bars=s.feature_warmup_bars,
            forming_every=max(1, round(s.higher_forming_s / s.cycle_interval_s)))
        self.following = Following(settings=s, symbols=self.symbols, universe=self.universe,
                                   orchestrator=self.orchestrator, features=self.features, scanner=self.scanner,
                                   store=self.sqlite, broker_symbols=self._broker, bootstrap=self._start_bootstrap)
        self.update_symbols = self.following.update
        # cluster members take turns within each second (README: "Turns within the second"); one daemon's is 0
        turn = functools.partial(self.cluster.phase, s.cycle_interval_s) if self.cluster is not None else lambda: 0.0
        self.orchestrator.ticker.phase, self.orchestrator.poller.phase = turn, lambda: turn() / 2
        for service in self.orchestrator.services():
            service.record = s.persist_features
        primary = self.orchestrator.sources[0].fetcher  # history's grid follows the first configured source
        self.backfiller = Backfiller(sqlite=self.sqlite, sources=self.orchestrator.sources_for,
                                     validator=self.orchestrator.validator, clock=self.clock, metrics=self.metrics,
                                     on_bars=self._backfilled, on_revised=self.orchestrator.request_rewarm,
                                     timeframe=TIMEFRAME, timeout_s=s.history_timeout_s,
                                     max_window_s=primary.max_window_s)
        self.metrics.at_scrape(lambda: end_of_day_gauges(
            self.backfiller.eod, {sym: info.asset_class.value for sym, info in self.symbols.items()}))
        self.bootstrapper = Bootstrapper(sqlite=self.sqlite, sources=self.orchestrator.sources_for,
                                         reach=primary.reach, validator=self.orchestrator.validator, clock=self.clock,
                                         timeout_s=s.history_timeout_s, concurrency=2)
        self.reseeder = Reseeder(redis=self.redis, sqlite=self.sqlite, clock=self.clock,
                                 latest_bars=self.orchestrator.latest_bars, symbols=lambda: list(self.symbols),
                                 timeframes=s.timeframes, history_len=s.redis_history_len, supervise=self._supervise)
        self.flusher = Flusher(store=self.sqlite, metrics=self.metrics, clock=self.clock,
                               interval_s=s.flush_interval_s, phase=lambda: turn() + s.cycle_interval_s / 2)
        self.reaggregator = Reaggregator(sqlite=self.sqlite, redis=self.redis, higher=self.orchestrator.higher,
                                         clock=self.clock, flush=self.flusher.flush)
        self.reference = ReferenceData(sources={g.name: g for g in self.orchestrator.sources}, sqlite=self.sqlite,
                                       redis=self.redis, clock=self.clock, symbols=lambda: list(self.symbols.values()),
                                       on_earnings=self.scanner.set_earnings, horizon_days=s.earnings_days,
                                       timeout_s=s.history_timeout_s, live=self._live_first, leads=self._leads)
        self.upkeep = Upkeep(settings=s, backfiller=self.backfiller, sqlite=self.sqlite, redis=self.redis,
                             clock=self.clock, symbols=lambda: list(self.symbols.values()), supervise=self._supervise,
                             stopping=lambda: self.stopping, leads=self._leads, live=self._live_first)
        self.http = HttpServer(host=s.http_host, port=s.http_port, health=self.health, metrics=self.metrics,
                               redis=self.redis, symbols=self.symbols, clock=self.clock,
                               update_symbols=self.update_symbols, broker_symbols=self._broker,
                               timeframes=s.timeframes, reference=self.reference,
                               universe=lambda name: universes.members(name, self.upkeep.universes_dir()),
                               status=self.status,
                               readable=frozenset(i.symbol for i in self.universe) if s.cluster else None)
        self.stopping = False
        self.failure: BaseException | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def infos(self) -> list[SymbolInfo]:
        """The followed symbols (in a cluster, this member's partitions' share)."""
        return list(self.symbols.values())

    def health(self, per_symbol: bool = True) -> dict[str, Any]:
        """The /health document, composed from each component's own snapshot (without the
        per-symbol freshness map unless `per_symbol`)."""
        orch = self.orchestrator
        loop = orch.health(per_symbol)
        if self.stopping:
            loop["state"] = "down"
        redis = {**self.redis.health(), "errors_total": int(self.metrics.total("sidecar_redis_errors_total")),
                 **self.reseeder.health()}
        return compose(now=self.clock.time(), loop=loop, sources={g.name: g.health() for g in orch.sources},
                       primary=orch.guarded.name, redis=redis, sqlite=self.sqlite.health(), sections={
                           "validator": {"rejected": self.metrics.by_label("sidecar_bars_rejected_total", "reason")},
                           "backfill": self.backfiller.health(), "bootstrap": self.bootstrapper.health(),
                           "end_of_day": self.backfiller.eod, "http": self.http.health(),
                           "flush": self.flusher.health(),
                           "timeframes": orch.higher.health(), "reference": self.reference.health(),
                           **({"cluster": self.cluster.health()} if self.cluster is not None else {})})

    async def status(self) -> dict[str, Any]:
        """The status page's document: the health snapshot, the last ten minutes of cycles, the
        freshness grid with the universes its symbols belong to, and the newest signals."""
        now, orch = self.clock.time(), self.orchestrator
        try:
            signals = await self.redis.newest_signals(20)
        except RedisStoreError:
            signals = []
        table_grid = grid(orch.table, now, orch.dead.stale_after_s, self.upkeep.known_universes())
        table_grid["universes"] = {k: v for k, v in table_grid["universes"].items() if v}
        return document(self.health(per_symbol=False), orch.recent, table_grid, now, signals)

    # -- the cluster ---------------------------------------------------------------------------

    def _leads(self, job: str) -> bool:
        """Whether this daemon runs a singleton job now (always, outside a cluster)."""
        return self.cluster is None or self.cluster.leads(job)

    def _fenced(self, partitions: set[int]) -> None:
        """Redis refused this member's writes for some partitions: a newer owner has them."""
        assert self.cluster is not None
        self.metrics.fenced_writes.inc(len(partitions))
        self._supervise(asyncio.create_task(self.cluster.refused(partitions), name="fenced"))

    def _trace_cycle(self, record: dict[str, object]) -> None:
        """Append a cycle's record to SIDECAR_CYCLE_TRACE: opened per line (a line a second costs
        ~20 us), so a crash or a rotation never leaves it half-written or held open."""
        path = Path(self.settings.cycle_trace)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")

    def _breaker_moved(self, source: str, state: str) -> None:
        self.metrics.breaker_state.labels(source).set(STATES.index(state))
        self.metrics.breaker_transitions.labels(source, state).inc()
        if state == "closed":
            self.upkeep.schedule_backfill()  # the source is back: look for what it missed

    async def _backfilled(self, bars: list[Bar]) -> None:
        """Backfilled bars also go into Redis's history (best effort: SQLite has them), and
        their buckets in the higher timeframes are rebuilt."""
        self.orchestrator.revise_minutes(bars)
        try:
            await self.redis.write_bars(closed=bars)
        except RedisStoreError as exc:
            log.warning("backfilled bars not written to redis: %s", exc)

    def _schedule_reseed(self, since: float = 0.0) -> None:
        """Redis came back empty (restart, flush, first start): re-seed it in the background; or
        it kept its data through an outage that began at `since`: catch up what it missed."""
        if not self.stopping:
            self.reseeder.schedule(since)

    @property
    def reseeds(self) -> int:
        """Re-seeds completed."""
        return self.reseeder.reseeds

    def request_stop(self) -> None:
        """Ask the daemon to shut down (what the signal handlers call)."""
        self._stop.set()

    async def start(self) -> None:
        """Open the stores and the fetcher, start the HTTP server, the loop and the flusher."""
        s = self.settings
        log.info("starting sidecar settings=%s", s.redacted())
        try:
            await self.sqlite.start()
        except (OSError, sqlite3.Error) as exc:
            raise SettingsError("SIDECAR_DB_PATH", f"cannot open {s.db_path}: {exc}") from exc
        except PostgresStoreError as exc:
            raise SettingsError("SIDECAR_STORE_URL", str(exc)) from exc
        last = await self.resume()
        await self.reference.start()
        await self.redis.start()
        if self.cluster is not None:
            await self.cluster.start()  # takes this member's partitions: their symbols are followed
        await self.providers.start()
        try:
            await self.http.start()
        except OSError as exc:
            raise SettingsError("SIDECAR_HTTP_PORT", f"cannot listen on {s.http_host}:{s.http_port}: {exc}") from exc
        log.info("http listening on http://%s:%d", self.http.host, self.http.port)
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # PM2 stops with SIGINT, systemd with SIGTERM
                loop.add_signal_handler(sig, self.request_stop)
        await self.orchestrator.start()
        assert self.orchestrator.task is not None
        self._supervise(self.orchestrator.task)
        await self.flusher.start()
        assert self.flusher.task is not None
        self._supervise(self.flusher.task)
        self._supervise(asyncio.create_task(self.upkeep.backfill_loop(), name="backfill-loop"))
        self._supervise(asyncio.create_task(self.upkeep.retention_loop(), name="retention"))
        if s.reference_data:
            self._supervise(asyncio.create_task(self.reference.run(), name="reference"))
        self._start_bootstrap([i for i in self.infos if i.symbol not in last])
        self._supervise(asyncio.create_task(self._reaggregate_at_start(last), name="reaggregate"))
        log.info("following %d symbols every %.2fs from %s", len(s.symbols), s.cycle_interval_s, self.fetcher.name)

    async def _reaggregate_at_start(self, last: dict[str, int]) -> None:
        """Bring the stored history's higher timeframes in line with the rules (Reaggregator.at_start)."""
        if await self.reaggregator.at_start(self.infos, last):
            self._schedule_reseed()

    async def resume(self) -> dict[str, int]:
        """Continue after the stored bars (SQLite open): each symbol's cursor after its newest
        minute, every timeframe's features warmed from its stored bars. Returns the newest
        stored minute per symbol."""
        s = self.settings
        last = await self.sqlite.last_stored(TIMEFRAME)
        self.orchestrator.resume(last, overlap_s=s.restart_overlap_minutes * 60)
        log.info("resuming %d symbols after their last stored bar", len(last))
        t0 = self.clock.monotonic()
        self.features.book.engine.prepare()
        calendars.prepare()  # loaded once here, not inside the first cycle
        histories = await self.features.warm_from(self.sqlite, self.infos, s.feature_warmup_bars)
        await self.orchestrator.higher.warm()
        log.info("features warmed from %d stored 1m bars and the higher timeframes' in %.2fs",
                 sum(map(len, histories.values())), self.clock.monotonic() - t0)
        return last

    def _start_bootstrap(self, infos: list[SymbolInfo]) -> None:
        """Fetch the history of symbols with no stored bars, beside the live loop."""
        if infos and self.settings.bootstrap_days > 0:
            self._supervise(asyncio.create_task(self._bootstrap(infos), name="bootstrap"))

    async def _live_first(self) -> None:
        """Return once a source has answered the live loop: history and reference data wait for
        it, since the budgets know the live loop's demand only from its first cycle on."""
        while not any(g.state.last_success_at is not None for g in self.orchestrator.sources):
            await self.clock.sleep(0.5)

    async def _bootstrap(self, infos: list[SymbolInfo]) -> None:
        # Live data first: history waits for a healthy cycle, then goes two symbols at a time.
        await self._live_first()
        await self.clock.sleep(2.0)
        await self.bootstrapper.run(infos, self.settings.bootstrap_days)
        # Re-warm the features from the whole history, in the loop's next cycle (so the bars it
        # commits meanwhile are part of the replay), and Redis's history too.
        self.orchestrator.request_rewarm({i.symbol for i in infos if i.symbol in self.symbols})
        if await self.reaggregator.run([i for i in infos if i.symbol in self.symbols], "bootstrapped"):
            self._schedule_reseed()

    async def rewarm(self, symbols: set[str]) -> None:
        """Rebuild symbols' features from their newest stored bars, the unflushed buffer's
        copies winning (they are newer: a revision, or bars not yet flushed)."""
        infos = [self.symbols[s] for s in symbols if s in self.symbols]
        await self.features.warm_from(self.sqlite, infos, self.settings.feature_warmup_bars)
        log.info("features of %d symbols rebuilt from their stored history", len(infos))

    async def run(self) -> int:
        """Start, wait for a stop request, close; return the process exit code."""
        try:
            await self.start()
        except BaseException:
            await self.close()  # release what did start; every close() tolerates "never started"
            raise
        tune_gc(self.settings.gc_gen0_threshold)  # the process's, so not in start(): tests embed the daemon
        await self._stop.wait()
        await self.close()
        return 0 if self.failure is None else 1

    def _supervise(self, task: asyncio.Task[Any]) -> None:
        """A background task that dies takes the daemon down (PM2 restarts it), never silently."""
        self._tasks.append(task)

        def done(t: asyncio.Task[Any]) -> None:
            if not t.cancelled() and t.exception() is not None and not self.stopping:
                self.failure = t.exception()
                log.error("task %s died; stopping", t.get_name(), exc_info=self.failure)
                self.request_stop()

        task.add_done_callback(done)

    async def close(self) -> None:
        """Shut down in order, within SIDECAR_SHUTDOWN_TIMEOUT_S (`Shutdown`): stop the loop
        (finishing a cycle in flight), flush the durable store, then close the HTTP server, the
        fetchers' sessions, the durable store and Redis."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: finishing the cycle in flight")
        shutdown = Shutdown(self.settings.shutdown_timeout_s)
        # 1. No new cycles; a cycle in flight finishes, so what it fetched gets buffered.
        await self.orchestrator.close(timeout=shutdown.left(0.4))
        await self.reference.close()
        # A task that ignored its cancellation must not hold up the flush below.
        await shutdown.cancel(self._tasks, share=0.3)
        # 2. The durable store is the record: flush before anything else closes (one retry).
        await shutdown.step("the final flush", self.flusher.close())
        # 3. In a cluster, give the leases back now that the bars are stored: the others take
        #    over at once and continue after them.
        if self.cluster is not None:
            await shutdown.step("leaving the cluster", self.cluster.close())
        # 4. Nothing else holds data: close the edges.
        for name, component in (("the http server", self.http), ("the sources' sessions", self.providers),
                                ("the durable store", self.sqlite), ("redis", self.redis)):
            await shutdown.step(f"closing {name}", component.close())
        if shutdown.overran:
            log.warning("stopped, having given up on: %s", ", ".join(shutdown.overran))
        else:
            log.info("stopped")
