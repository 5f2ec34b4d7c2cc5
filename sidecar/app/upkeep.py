"""The daemon's upkeep beside the live loop: gap scans with the end-of-day check and its events,
and retention. Each runs on its own timer, and a scan also runs when a source recovers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from .. import universes
from ..backfill import Backfiller, end_of_day_events
from ..clock import Clock
from ..errors import DurableStoreError, RedisStoreError
from ..settings import Settings
from ..stores import DurableStore, RedisStore
from ..symbols import SymbolInfo
from ..timeframes import BASE
from .ticker import Ticker

log = logging.getLogger(__name__)


class Upkeep:
    """Gap scans, end-of-day checks and retention for the daemon.

    :param settings: the daemon's settings (scan window and interval, retention, universes).
    :param backfiller: finds and fills gaps, verifies the last session.
    :param sqlite: the durable store (retention, what was published).
    :param redis: where the end-of-day events go.
    :param clock: timers and the day.
    :param symbols: the symbols followed now.
    :param supervise: runs a background task under the daemon's supervision.
    :param stopping: whether the daemon is shutting down.
    :param leads: in a cluster, whether this member runs a singleton job now.
    :param live: returns once a live cycle has reported its demand to the budgets (the first
        gap scan waits for it, as the bootstrap does).
    """

    def __init__(self, *, settings: Settings, backfiller: Backfiller, sqlite: DurableStore, redis: RedisStore,
                 clock: Clock, symbols: Callable[[], Sequence[SymbolInfo]],
                 supervise: Callable[[asyncio.Task[None]], None], stopping: Callable[[], bool],
                 leads: Callable[[str], bool] = lambda _job: True,
                 live: Callable[[], Awaitable[None]] | None = None) -> None:
        self.settings, self.backfiller, self.sqlite, self.redis, self.clock = settings, backfiller, sqlite, redis, clock
        self.symbols, self.supervise, self.stopping = symbols, supervise, stopping
        self.leads, self.live = leads, live
        self._lock = asyncio.Lock()  # one gap scan at a time
        self._universes: dict[str, tuple[str, ...]] | None = None

    def universes_dir(self) -> Path | None:
        """SIDECAR_UNIVERSES_DIR, when set."""
        return Path(self.settings.universes_dir) if self.settings.universes_dir else None

    def known_universes(self) -> dict[str, tuple[str, ...]]:
        """Every known universe's members (read once: the status page's filter asks each time)."""
        if self._universes is None:
            where = self.universes_dir()
            self._universes = {name: universes.members(name, where) for name in universes.known(where)}
        return self._universes

    def schedule_backfill(self) -> None:
        """A source answers again: look for what it missed (unless a scan is already running)."""
        if not self._lock.locked() and self.settings.gap_scan_days > 0 and not self.stopping():
            self.supervise(asyncio.create_task(self.backfill_once(), name="backfill"))

    async def backfill_once(self) -> None:
        """One gap scan, then the end-of-day check."""
        if self._lock.locked():
            return  # a scan is running; it covers this request too
        async with self._lock:
            try:
                await self.backfiller.run(list(self.symbols()), self.settings.gap_scan_days)
                await self.end_of_day_check()
            except DurableStoreError as exc:  # a full disk, say: the next scan tries again
                log.error("gap scan stopped: %s", exc)

    async def backfill_loop(self) -> None:
        """Scan for gaps shortly after start-up, then every SIDECAR_BACKFILL_INTERVAL_S."""
        if self.settings.gap_scan_days <= 0:
            return
        await self.clock.sleep(5.0)  # let the live loop catch up first
        # History takes only what the live loop leaves, which the budgets know once a live cycle
        # has reported: a scan before that (a slow start) could fill the minute and have the
        # live loop refused (test_history_budget caught it on a loaded CI machine).
        if self.live is not None:
            await self.live()
        await self.backfill_once()  # at start-up: the ticker's first deadline is the next whole period
        async for _tick in Ticker(self.clock, self.settings.backfill_interval_s):
            await self.backfill_once()

    async def retention_loop(self) -> None:
        """Delete bars older than their timeframe's retention, at most once a day (across restarts too)."""
        await self.clock.sleep(30.0)  # not during start-up's catch-up
        async for _tick in Ticker(self.clock, 3600):
            if not self.leads("retention"):
                continue  # another member of the cluster runs it
            try:
                await self.apply_retention()
            except DurableStoreError as exc:
                log.error("retention stopped, tried again in an hour: %s", exc)

    async def apply_retention(self, force: bool = False) -> int:
        """One retention pass, unless one ran in the last 24 hours; returns rows deleted."""
        now = self.clock.time()
        last = await self.sqlite.get_meta("retention_last_run")
        if not force and last is not None and now - float(last) < 86400:
            return 0
        t0 = self.clock.monotonic()
        days = {BASE: self.settings.retention_days, **dict(self.settings.retention_higher)}
        deleted = await self.sqlite.delete_older({tf: int(now) - d * 86400 for tf, d in days.items()})
        await self.sqlite.set_meta("retention_last_run", str(now))
        log.info("retention: deleted %d bars (days kept: %s) in %.2fs", deleted, days, self.clock.monotonic() - t0)
        return deleted

    async def end_of_day_check(self) -> None:
        """Verify every symbol's newest settled trading day once (values and completeness), then
        publish each asset class's session summary: when first checked, and again once complete
        (remembered across restarts)."""
        infos = list(self.symbols())
        eod = await self.backfiller.end_of_day(infos)
        named = {name: universes.members(name, self.universes_dir()) for name in self.settings.universe}
        for event in end_of_day_events(eod, infos, named):
            # the first summary of a session, and again once it is complete
            key, state = f"published:{event['id']}", "complete" if event["final"] else "partial"
            if await self.sqlite.get_meta(key) in (state, "complete"):
                continue
            try:
                await self.redis.publish_events([event])
            except RedisStoreError as exc:  # published with the next check
                log.warning("end-of-day event not published: %s", exc)
                continue
            await self.sqlite.set_meta(key, state)
            log.info("end of day %s %s: %d/%d symbols complete", event["asset_class"], event["date"],
                     event["complete"], event["symbols"])
