"""The durable buffer's flusher: every SIDECAR_FLUSH_INTERVAL_S, what the cycles buffered (closed
bars of every timeframe and the features at their close) goes to the durable store in one
transaction, off the event loop. A flush that fails keeps its rows buffered for the next one and
is counted; the buffer's bound drops the oldest rows, counted too, never silently. On close the
loop stops and one last flush (with one retry) gets everything into the store: the daemon closes
it before anything else that holds data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..clock import Clock
from ..errors import DurableStoreError
from ..metrics import Metrics
from ..stores import DurableStore
from .ticker import Ticker

log = logging.getLogger(__name__)


class Flusher:
    """Flushes a durable store's buffer on a fixed period.

    :param store: the durable store (SQLite or PostgreSQL) whose buffer is flushed.
    :param metrics: flush duration, rows written, failures, buffered and dropped rows.
    :param clock: the period's deadlines and the flush timings.
    :param interval_s: seconds between flushes.
    :param phase: seconds after each whole `interval_s` that a flush starts (read at every flush):
        half a cycle period after this daemon's cycles begin, so that a flush (a minute's bars
        and features, encoded on the event loop for PostgreSQL) does not fall in a cycle: at
        2 x 10,000 symbols, flushes that began with the cycle at the whole second cost the first
        member's cycle 200-250 ms every tenth second.
    """

    def __init__(self, *, store: DurableStore, metrics: Metrics, clock: Clock, interval_s: float,
                 phase: Callable[[], float] | None = None) -> None:
        self.store, self.metrics, self.clock, self.interval_s = store, metrics, clock, interval_s
        self.phase = phase
        self.task: asyncio.Task[None] | None = None  # the loop, once started (the daemon supervises it)
        self.flushes = 0  # that wrote rows
        self.failures = 0
        self._dropped_counted = 0
        self._closed = False

    async def start(self) -> None:
        """Start flushing every `interval_s` (`task`)."""
        self.task = asyncio.create_task(self._run(), name="sqlite-flush")

    async def _run(self) -> None:
        async for _tick in Ticker(self.clock, self.interval_s, phase=self.phase):
            await self.flush()

    async def flush(self) -> int:
        """Flush the buffer now; the rows written (0 on failure: they stay buffered, and the
        failure is logged and counted)."""
        t0 = self.clock.monotonic()
        store = self.store
        try:
            rows = await store.flush()
        except DurableStoreError as exc:
            self.failures += 1
            self.metrics.sqlite_errors.inc()
            log.error("%s (kept in the buffer: %d bars)", exc, store.buffered)
            return 0
        finally:
            self.metrics.sqlite_buffered.set(store.buffered)
            if store.dropped > self._dropped_counted:  # the buffer's bound: counted, never silent
                self.metrics.sqlite_dropped.inc(store.dropped - self._dropped_counted)
                self._dropped_counted = store.dropped
        if rows:
            self.flushes += 1
            self.metrics.sqlite_flush_seconds.observe(self.clock.monotonic() - t0)
            self.metrics.sqlite_rows.inc(rows)
            log.debug("flush rows=%d in %.1fms", rows, (self.clock.monotonic() - t0) * 1000)
        return rows

    async def close(self) -> None:
        """Stop the loop and flush what is buffered, retrying once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for _attempt in range(2):
            if await self.flush() or not self.store.buffered:
                break
        if self.store.buffered:
            log.error("shutdown left %d bars unflushed; start-up backfill must recover them", self.store.buffered)
        log.info("persisted_through %s", self.store.persisted_through)

    def health(self) -> dict[str, object]:
        """Flushes that wrote rows, failed ones, and the rows waiting."""
        return {"every_s": self.interval_s, "flushes": self.flushes, "failures": self.failures,
                "buffered": self.store.buffered}
