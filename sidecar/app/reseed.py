"""Re-seeding Redis: after it comes back empty (a restart, a flush, the first start), every
symbol's newest bar and every timeframe's history are written back from the loop's state and
SQLite (with its unflushed buffer); the features come back with the next cycle.

After an outage Redis survived with its data (hung, unreachable), the loop sends the closed
bars of its failed writes again (`cycle/publish.py`); when they were more than it keeps, a
catch-up writes every symbol's newest bar and each timeframe's bars from the outage on, read
back from the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..bars import Bar, timeframe_seconds
from ..clock import Clock
from ..errors import DurableStoreError, RedisStoreError
from ..stores import DurableStore, RedisStore

log = logging.getLogger(__name__)

CHUNK = 2_000  # bars per script call when re-seeding Redis: well inside its timeout under load


class Reseeder:
    """One re-seed at a time, retried while Redis fails.

    :param redis: the hot store to fill.
    :param sqlite: where the histories come from.
    :param clock: pauses between attempts, and timing.
    :param latest_bars: every symbol's newest bar as the loop wrote it.
    :param symbols: the symbols followed now.
    :param timeframes: the timeframes whose histories are written.
    :param history_len: bars per symbol and timeframe.
    :param supervise: registers the background task (a task that dies stops the daemon).
    """

    def __init__(self, *, redis: RedisStore, sqlite: DurableStore, clock: Clock, latest_bars: Callable[[], list[Bar]],
                 symbols: Callable[[], list[str]], timeframes: Sequence[str], history_len: int,
                 supervise: Callable[[asyncio.Task[None]], None]) -> None:
        self.redis, self.sqlite, self.clock = redis, sqlite, clock
        self.latest_bars, self.symbols, self.timeframes = latest_bars, symbols, tuple(timeframes)
        self.history_len, self.supervise = history_len, supervise
        self.reseeds = 0  # whole ones
        self.catch_ups = 0
        self.reseeded_at: float | None = None
        self._since: float | None = None  # what the next run writes (0: everything)
        self._task: asyncio.Task[None] | None = None

    def health(self) -> dict[str, object]:
        """Re-seeds and catch-ups done and how long ago the last one finished."""
        return {"reseeds": self.reseeds, "catch_ups": self.catch_ups,
                "last_reseed_age_s": None if self.reseeded_at is None else round(self.clock.time() - self.reseeded_at, 3)}

    def schedule(self, since: float = 0.0) -> None:
        """Re-seed in the background: everything (`since` 0), or a catch-up of what Redis missed
        from `since` (epoch seconds) on. A request while one runs is merged into the next run
        (the earlier `since` wins)."""
        self._ask(since)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._until_done(), name="redis-reseed")
            self.supervise(self._task)

    def _ask(self, since: float) -> None:
        """Merge a request into the next run's: the earlier `since` wins (0: everything)."""
        self._since = since if self._since is None else min(self._since, since)

    async def _until_done(self) -> None:
        """Re-seed until none is asked for, again after a growing pause while Redis fails or is
        too slow for a write: a busy Redis must not stop the daemon (the loop and SQLite carry on
        without it)."""
        delay = 1.0
        while self._since is not None:
            since, self._since = self._since, None
            try:
                await self.reseed(since)
                delay = 1.0
            except (RedisStoreError, DurableStoreError) as exc:  # either side: Redis, or the store read
                self._ask(since)
                log.warning("redis re-seed failed, trying again in %.0fs: %s", delay, exc)
                await self.clock.sleep(delay)
                delay = min(2 * delay, 30.0)

    async def reseed(self, since: float = 0.0) -> None:
        """Write every symbol's newest bar back into Redis, and every timeframe's history: whole
        (`since` 0), or its bars opening from the one before `since` on (a catch-up)."""
        t0, total = self.clock.monotonic(), 0
        # A symbol without a new bar this minute (no trades yet) would otherwise stay missing.
        newest = self.latest_bars()
        # In chunks, like the history below: one call for 20,000 symbols outlasted SIDECAR_REDIS_TIMEOUT_S.
        for i in range(0, len(newest), CHUNK):
            await self.redis.write_bars(latest=newest[i:i + CHUNK])
        symbols = self.symbols()
        for i in range(0, len(symbols), 100):
            chunk = symbols[i:i + 100]
            for timeframe in self.timeframes:
                if since > 0:  # the bar open when the outage began may have closed during it
                    step = timeframe_seconds(timeframe)
                    bars = await self.sqlite.between(chunk, timeframe, (int(since) // step - 1) * step,
                                                     int(self.clock.time()) + step)
                else:
                    stored = await self.sqlite.recent(chunk, timeframe, self.history_len)
                    bars = [b for sym in chunk for b in stored[sym]]
                for j in range(0, len(bars), CHUNK):
                    await self.redis.write_bars(closed=bars[j:j + CHUNK])
                total += len(bars)
        if since > 0:
            self.catch_ups += 1
        else:
            self.reseeds += 1
        self.reseeded_at = self.clock.time()
        log.info("redis %s with %d bars of %d symbols in %.2fs", "caught up" if since > 0 else "re-seeded", total,
                 len(symbols), self.clock.monotonic() - t0)
