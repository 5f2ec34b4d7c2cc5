"""Bootstrap: history for symbols with an empty store, at the finest resolution the source
serves at each age (Yahoo: 1m for the last 30 days, 5m back to 60 days, 1h beyond).

The period is cut into windows on a fixed, epoch-aligned grid per timeframe (so a later run
plans the same windows, whatever the time), each no larger than the source accepts in one
request. A window is recorded with how far it is covered only after its bars are committed,
so a bootstrap that is killed resumes where it stopped: a covered window is never fetched
again, and the newest one only from where it was covered to now.

Every window is fetched through the symbol's configured sources in order, each behind the
live loop's breaker and budgets (history takes only what the live loop leaves), so a
bootstrap never bursts past a provider's limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import actions
from .bars import timeframe_seconds
from .clock import Clock
from .errors import DurableStoreError, FetchError
from .sources import GuardedSource, fetch_history
from .stores import DurableStore
from .symbols import SymbolInfo
from .validator import Validator

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Window:
    """One request's worth of history: the grid cell `cell`, clipped to [start, end)."""

    timeframe: str
    cell: int
    start: int
    end: int


@dataclass(slots=True)
class BootstrapReport:
    """What a bootstrap did."""

    symbols: int = 0
    windows: int = 0
    skipped: int = 0  # done by an earlier run
    failed: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # by timeframe
    actions: set[tuple[str, int, str]] = field(default_factory=set)  # dividends and splits reported with the bars
    seconds: float = 0.0


class Bootstrapper:
    """Fetches a symbol's history window by window.

    :param sqlite: where bars and progress go.
    :param sources: the configured sources of a symbol, in order (each behind its gate).
    :param reach: per timeframe, how far back the primary source goes and the window it serves
        at once (the plan's grid).
    :param validator: history passes the same checks as live bars.
    :param clock: now.
    :param concurrency: symbols fetched at once.
    :param timeout_s: deadline of one history request.
    """

    def __init__(self, *, sqlite: DurableStore, sources: Callable[[SymbolInfo], Sequence[GuardedSource]],
                 reach: dict[str, tuple[int, int]], validator: Validator, clock: Clock,
                 concurrency: int = 8, timeout_s: float = 30.0) -> None:
        self.sqlite, self.sources, self.reach, self.validator, self.clock = sqlite, sources, reach, validator, clock
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.progress: dict[str, tuple[int, int]] = {}  # symbol -> (windows done, windows planned)
        self.running = False

    def plan(self, days: float, timeframes: Sequence[str] | None = None) -> list[Window]:
        """Windows covering the last `days`: by default each age at the finest timeframe the
        source serves there (1m for the last 30 days, 5m before, ...); with `timeframes`, each
        of those (that the source serves) over the whole period, as far back as it reaches."""
        now = int(self.clock.time())
        oldest = now - int(days * 86400)
        windows: list[Window] = []
        newer_edge = now + 60  # exclusive end of the finest segment: includes the current minute
        for timeframe, (max_age, size) in self.reach.items():
            if timeframes is not None and timeframe not in timeframes:
                continue
            step = timeframe_seconds(timeframe)
            seg_start = max(oldest, now - max_age) // step * step
            seg_end = -(-newer_edge // step) * step
            if seg_start >= seg_end:
                continue
            for cell in range((seg_end - 1) // size * size, seg_start - size, -size):  # newest first
                windows.append(Window(timeframe, cell, max(seg_start, cell), min(seg_end, cell + size)))
            if timeframes is None:  # the next, coarser timeframe covers what is older
                newer_edge = seg_start
                if seg_start <= oldest:
                    break
        return windows

    def health(self) -> dict[str, object]:
        """Whether a bootstrap runs, and each symbol's windows done of planned."""
        return {"running": self.running,
                "progress": {sym: {"windows_done": d, "windows": n} for sym, (d, n) in self.progress.items()}}

    async def run(self, infos: Sequence[SymbolInfo], days: float,
                  timeframes: Sequence[str] | None = None) -> BootstrapReport:
        """Bootstrap these symbols (resuming any earlier run) and return what was done;
        `timeframes` as for `plan`."""
        t0 = time.perf_counter()
        report = BootstrapReport(symbols=len(infos))
        plan = self.plan(days, timeframes)
        gate = asyncio.Semaphore(self.concurrency)
        await self.sqlite.create(actions.SCHEMA)  # the dividends and splits the windows report
        self.running = True
        try:
            await asyncio.gather(*(self._symbol(info, plan, gate, report) for info in infos))
        finally:
            self.running = False
        report.seconds = time.perf_counter() - t0
        log.info("bootstrap of %d symbols over %g days: %d windows fetched, %d already done, %d failed, rows %s "
                 "in %.1fs", len(infos), days, report.windows, report.skipped, report.failed, report.rows,
                 report.seconds)
        return report

    async def _symbol(self, info: SymbolInfo, plan: list[Window], gate: asyncio.Semaphore,
                      report: BootstrapReport) -> None:
        async with gate:
            covered = await self.sqlite.bootstrap_done(info.symbol)
            todo = [w for w in plan if covered.get((w.timeframe, w.cell), w.start) < w.end]
            report.skipped += len(plan) - len(todo)
            finished = len(plan) - len(todo)
            self.progress[info.symbol] = (finished, len(plan))
            for w in todo:
                start = max(w.start, covered.get((w.timeframe, w.cell), w.start))
                try:
                    result = await fetch_history(self.sources(info), info, w.timeframe, start, w.end,
                                                 timeout_s=self.timeout_s, now=self.clock.time())
                except FetchError as exc:
                    report.failed += 1
                    log.warning("bootstrap of %s %s [%d, %d) failed: %s", info.symbol, w.timeframe, w.start, w.end,
                                exc)
                    continue
                now = self.clock.time()
                bars = [b for b in result.bars if not b.forming and self.validator.check(b, now, info.asset_class) is None]
                self.sqlite.add(bars)
                try:
                    await actions.store(self.sqlite, info.symbol, result.source, result.actions)
                    await self.sqlite.flush()  # committed before the window counts as done
                    await self.sqlite.mark_bootstrapped(info.symbol, w.timeframe, w.cell, w.end)
                except DurableStoreError as exc:  # the bars stay buffered; the window is fetched again next run
                    report.failed += 1
                    log.error("bootstrap of %s %s [%d, %d) not recorded: %s", info.symbol, w.timeframe, w.start,
                              w.end, exc)
                    continue
                report.windows += 1
                report.actions.update((info.symbol, ts, kind) for ts, kind, _ in result.actions)
                report.rows[w.timeframe] = report.rows.get(w.timeframe, 0) + len(bars)
                finished += 1
                self.progress[info.symbol] = (finished, len(plan))
            if finished == len(plan):
                log.info("bootstrap of %s complete (%d windows)", info.symbol, len(plan))
