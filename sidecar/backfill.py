"""Gap detection and backfill against the market calendar.

A gap is a minute the symbol's market traded (per its calendar: NYSE sessions with holidays
and early closes, FX 24x5, futures with their daily break, crypto 24x7) for which SQLite has
no bar. Only settled minutes are scanned (older than an hour: the live loop owns the rest).
Gaps are fetched again, grouped into windows the source serves; a minute that a complete
answer shows had no trades is recorded as empty, so it is neither reported nor asked for
again. What cannot be filled (the source failed, rejected the bar, or no longer serves that
far back at this resolution) is reported with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .bars import Bar, timeframe_seconds
from .calendars import is_trading
from .clock import Clock
from .errors import FetchError
from .fetchers import YahooFetcher
from .stores import SQLiteStore
from .symbols import SymbolInfo
from .validator import Validator

log = logging.getLogger(__name__)

SETTLED_S = 3600
MERGE_S = 6 * 3600  # gaps closer than this are fetched in one request


@dataclass(slots=True, frozen=True)
class Gap:
    """Minutes [start, end) of a symbol that are still missing, and why."""

    symbol: str
    start: int
    end: int
    minutes: int
    reason: str  # fetch_failed | rejected | beyond_source_range

    def as_map(self) -> dict[str, object]:
        """For /health and logs."""
        return {"start": self.start, "end": self.end, "minutes": self.minutes, "reason": self.reason}


@dataclass(slots=True)
class BackfillReport:
    """What one pass found and did."""

    started_at: float
    window: tuple[int, int]
    missing_minutes: int = 0
    filled: int = 0
    confirmed_empty: int = 0
    requests: int = 0
    gaps: list[Gap] = field(default_factory=list)


def expected_minutes(asset_class: object, start: int, end: int, step: int) -> np.ndarray:
    """Bar opens in [start, end) at which the market is open."""
    ts = np.arange(-(-start // step) * step, end, step, dtype=np.int64)
    return ts[is_trading(asset_class, ts)] if len(ts) else ts  # type: ignore[arg-type]


def runs(minutes: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Consecutive bar opens grouped into [start, end) runs."""
    if not len(minutes):
        return []
    breaks = np.flatnonzero(np.diff(minutes) != step) + 1
    return [(int(chunk[0]), int(chunk[-1]) + step) for chunk in np.split(minutes, breaks)]


class Backfiller:
    """Finds and fills gaps for a set of symbols.

    :param sqlite: where bars are and go.
    :param fetcher: the source asked again.
    :param validator: backfilled bars pass the same checks as live ones.
    :param clock: what "settled" is measured against.
    :param on_bars: also awaited with every batch of backfilled bars (the daemon writes them to
        Redis's history).
    :param timeframe: the bars' timeframe.
    :param timeout_s: deadline of one history request.
    """

    def __init__(self, *, sqlite: SQLiteStore, fetcher: YahooFetcher, validator: Validator, clock: Clock,
                 on_bars: Callable[[list[Bar]], Awaitable[object]] | None = None,
                 timeframe: str = "1m", timeout_s: float = 30.0) -> None:
        self.sqlite, self.fetcher, self.validator, self.clock = sqlite, fetcher, validator, clock
        self.timeout_s = timeout_s
        self.on_bars = on_bars
        self.timeframe = timeframe
        self.step = timeframe_seconds(timeframe)
        self.last: BackfillReport | None = None

    async def missing(self, info: SymbolInfo, start: int, end: int) -> np.ndarray:
        """Trading minutes in [start, end) with neither a stored bar nor a confirmed-empty mark."""
        expected = expected_minutes(info.asset_class, start, end, self.step)
        if not len(expected):
            return expected
        have = await self.sqlite.known_minutes(info.symbol, self.timeframe, start, end)
        return np.setdiff1d(expected, have, assume_unique=True)

    def settled_window(self, days: float) -> tuple[int, int]:
        """[start, end) of the settled part of the last `days`, on bar boundaries."""
        end = (int(self.clock.time()) - SETTLED_S) // self.step * self.step
        return end - int(days * 86400), end

    async def run(self, infos: Sequence[SymbolInfo], days: float) -> BackfillReport:
        """Scan the settled part of the last `days` and fill what is missing."""
        return await self.run_window(infos, *self.settled_window(days))

    async def run_window(self, infos: Sequence[SymbolInfo], start: int, end: int) -> BackfillReport:
        """Fill what is missing in [start, end) (its unsettled part is left to the live loop)."""
        now = int(self.clock.time())
        end = min(end, (now - SETTLED_S) // self.step * self.step)
        report = BackfillReport(self.clock.time(), (start, end))
        for info in infos:
            gone = await self.missing(info, start, end)
            report.missing_minutes += len(gone)
            if len(gone):
                await self._fill(info, gone, now, report)
        # No flush here: the daemon's flush schedule persists what was filled (SIDECAR_FLUSH_INTERVAL_S).
        self.last = report
        if report.missing_minutes:
            log.info("backfill: %d missing minutes, %d filled, %d confirmed without trades, %d still missing "
                     "in %d requests", report.missing_minutes, report.filled, report.confirmed_empty,
                     sum(g.minutes for g in report.gaps), report.requests)
        return report

    async def _fill(self, info: SymbolInfo, gone: np.ndarray, now: int, report: BackfillReport) -> None:
        oldest = now - self.fetcher.max_age_s
        for start, end in self._windows(runs(gone, self.step)):
            want = gone[(gone >= start) & (gone < end)]
            if start < oldest:
                report.gaps.append(Gap(info.symbol, start, end, len(want), "beyond_source_range"))
                continue
            report.requests += 1
            try:
                result = await self.fetcher.fetch_bars(info, self.timeframe, start, end, timeout_s=self.timeout_s)
            except FetchError as exc:
                report.gaps += [Gap(info.symbol, a, b, (b - a) // self.step, "fetch_failed")
                                for a, b in runs(want, self.step)]
                log.warning("backfill of %s [%d, %d) failed: %s", info.symbol, start, end, exc)
                continue
            good, rejected = [], set()
            for bar in result.bars:
                if bar.forming:
                    continue
                if self.validator.check(bar, now, info.asset_class) is None:
                    good.append(bar)
                else:
                    rejected.add(bar.ts - bar.ts % self.step)
            got = {b.ts for b in good}
            filled = [b for b in good if b.ts in set(want.tolist())]
            empty = [int(t) for t in want if int(t) not in got and int(t) not in rejected]
            self.sqlite.add(good)
            if self.on_bars is not None and good:
                await self.on_bars(good)
            await self.sqlite.mark_empty(info.symbol, self.timeframe, empty)
            report.filled += len(filled)
            report.confirmed_empty += len(empty)
            report.gaps += [Gap(info.symbol, a, b, (b - a) // self.step, "rejected")
                            for a, b in runs(np.array(sorted(rejected & set(want.tolist())), dtype=np.int64),
                                             self.step)]

    def summary(self) -> dict[str, object]:
        """The last pass, for /health: counts, and the gaps left per symbol (first 20 each)."""
        r = self.last
        if r is None:
            return {"last_run": None}
        left: dict[str, list[dict[str, object]]] = {}
        for gap in r.gaps:
            if len(left.setdefault(gap.symbol, [])) < 20:
                left[gap.symbol].append(gap.as_map())
        return {"last_run": r.started_at, "window": list(r.window), "missing_minutes": r.missing_minutes,
                "filled": r.filled, "confirmed_empty": r.confirmed_empty, "requests": r.requests,
                "minutes_left": sum(g.minutes for g in r.gaps), "gaps": left}

    def _windows(self, gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Merge nearby gaps into requests no longer than the source serves at once."""
        out: list[tuple[int, int]] = []
        for start, end in gaps:
            if out and start - out[-1][1] < MERGE_S and end - out[-1][0] <= self.fetcher.max_window_s:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out
