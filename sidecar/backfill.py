"""Gap detection and backfill against the market calendar.

A gap is a minute the symbol's market traded (per its calendar: NYSE sessions with holidays
and early closes, FX 24x5, futures with their daily break, crypto 24x7) for which SQLite has
no bar. Only settled minutes are scanned (older than an hour: the live loop owns the rest).
Gaps are fetched again, grouped into windows the source serves; a minute that a complete
answer shows had no trades is recorded as empty, so it is neither reported nor asked for
again. What cannot be filled (the source failed, rejected the bar, or no longer serves that
far back at this resolution) is reported with its reason.

Every window fetched is also a verification: a stored bar whose values differ from what the
source serves now (settled) is corrected in SQLite and Redis and counted as a revision. The
end-of-day check does this once per symbol and trading day for the whole session, one request
each. Requests go through the symbol's configured sources in order, each behind its breaker
and budgets (`sources.fetch_history`): history never bypasses the live loop's gate.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .bars import SETTLED_S, Bar, timeframe_seconds
from .calendars import NEW_YORK, is_trading, last_settled_session
from .clock import Clock
from .errors import BeyondReach, FetchError
from .fetchers import FetchResult
from .metrics import Metrics
from .sources import GuardedSource, fetch_history
from .stores import DurableStore
from .symbols import SymbolInfo
from .validator import Validator

log = logging.getLogger(__name__)

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
    revised: int = 0  # stored bars corrected to the source's settled values
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
    """Finds and fills gaps for a set of symbols, and verifies stored values.

    :param sqlite: where bars are and go.
    :param sources: the configured sources of a symbol, in order (each behind its gate).
    :param validator: backfilled bars pass the same checks as live ones.
    :param clock: what "settled" is measured against.
    :param metrics: revisions are counted here.
    :param on_bars: also awaited with every batch of new or corrected bars (the daemon writes
        them to Redis's history).
    :param on_revised: called with the symbols whose stored bars were corrected (their
        features are rebuilt).
    :param timeframe: the bars' timeframe.
    :param timeout_s: deadline of one history request.
    :param max_window_s: the longest window one request asks for.
    """

    def __init__(self, *, sqlite: DurableStore, sources: Callable[[SymbolInfo], Sequence[GuardedSource]],
                 validator: Validator, clock: Clock, metrics: Metrics,
                 on_bars: Callable[[list[Bar]], Awaitable[object]] | None = None,
                 on_revised: Callable[[set[str]], object] | None = None,
                 timeframe: str = "1m", timeout_s: float = 30.0, max_window_s: int = 7 * 86400) -> None:
        self.sqlite, self.sources, self.validator, self.clock = sqlite, sources, validator, clock
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.on_bars, self.on_revised = on_bars, on_revised
        self.timeframe = timeframe
        self.step = timeframe_seconds(timeframe)
        self.max_window_s = max_window_s
        self.last: BackfillReport | None = None
        self.progress = (0, 0)  # symbols scanned of those in the running (or last) pass
        self.eod: dict[str, object] = {}

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
        for k, info in enumerate(infos):
            self.progress = (k, len(infos))
            gone = await self.missing(info, start, end)
            report.missing_minutes += len(gone)
            for a, b in self._windows(runs(gone, self.step)):
                await self.verify(info, a, b, gone[(gone >= a) & (gone < b)], report)
        # No flush here: the daemon's flush schedule persists what was filled (SIDECAR_FLUSH_INTERVAL_S).
        self.progress = (len(infos), len(infos))
        self.last = report
        if report.missing_minutes or report.revised:
            log.info("backfill: %d missing minutes, %d filled, %d revised, %d confirmed without trades, "
                     "%d still missing in %d requests", report.missing_minutes, report.filled, report.revised,
                     report.confirmed_empty, sum(g.minutes for g in report.gaps), report.requests)
        return report

    async def verify(self, info: SymbolInfo, start: int, end: int, want: np.ndarray,
                     report: BackfillReport, stage: str = "gap_scan") -> bool:
        """Fetch [start, end) once, store what is missing, correct stored bars whose values
        differ from the source's, and confirm the minutes of `want` it shows without trades.
        False when the source could not be asked (the gaps are reported with the reason)."""
        try:
            report.requests += 1
            result = await fetch_history(self.sources(info), info, self.timeframe, start, end,
                                         timeout_s=self.timeout_s, now=self.clock.time())
        except FetchError as exc:
            report.requests -= isinstance(exc, BeyondReach)  # refused before any request was made
            reason = "beyond_source_range" if isinstance(exc, BeyondReach) else "fetch_failed"
            report.gaps += [Gap(info.symbol, a, b, (b - a) // self.step, reason) for a, b in runs(want, self.step)]
            log.warning("history of %s [%d, %d) not fetched: %s", info.symbol, start, end, exc)
            return False
        good, rejected = self._checked(result, info)
        stored = await self.sqlite.values_in(info.symbol, self.timeframe, start, end)
        new = [b for b in good if b.ts not in stored]
        changed = [b for b in good if b.ts in stored and stored[b.ts] != b.values]
        got = {b.ts for b in good}
        wanted = set(want.tolist())
        empty = [t for t in wanted if t not in got and t not in rejected]
        self.sqlite.add(new + changed)
        if self.on_bars is not None and (new or changed):
            await self.on_bars(new + changed)
        await self.sqlite.mark_empty(info.symbol, self.timeframe, empty)
        if changed:
            self.metrics.bars_revised.labels(result.source, stage).inc(len(changed))
            log.warning("%s: %d stored bars differed from %s's settled values in [%d, %d); corrected", info.symbol,
                        len(changed), result.source, start, end)
            if self.on_revised is not None:
                self.on_revised({info.symbol})
        report.filled += sum(1 for b in new if b.ts in wanted)
        report.revised += len(changed)
        report.confirmed_empty += len(empty)
        report.gaps += [Gap(info.symbol, a, b, (b - a) // self.step, "rejected")
                        for a, b in runs(np.array(sorted(rejected & wanted), dtype=np.int64), self.step)]
        return True

    def _checked(self, result: FetchResult, info: SymbolInfo) -> tuple[list[Bar], set[int]]:
        """The closed bars that pass validation, and the minutes of those that did not (each
        counted by reason, as the live loop counts its rejections)."""
        now = self.clock.time()
        good, rejected = [], set()
        for bar in result.bars:
            if bar.forming:
                continue
            reason = self.validator.check(bar, now, info.asset_class)
            if reason is None:
                good.append(bar)
            else:
                rejected.add(bar.ts - bar.ts % self.step)
                self.metrics.bars_rejected.labels(result.source, reason).inc()
        return good, rejected

    async def end_of_day(self, infos: Sequence[SymbolInfo]) -> dict[str, object]:
        """Verify each symbol's newest settled trading day once (one request per symbol and day,
        remembered across restarts): fill what is missing, correct what differs, and summarize
        per asset class what is complete. A symbol whose request failed is tried again at the
        next call."""
        report = BackfillReport(self.clock.time(), (0, 0))
        sessions: dict[str, tuple[int, int]] = {}
        left: dict[str, int] = {}
        for info in infos:
            start, end = last_settled_session(info.asset_class, self.clock.time(), SETTLED_S)
            sessions[info.symbol] = (start, end)
            key = f"verified:{self.timeframe}:{info.symbol}"
            done = await self.sqlite.get_meta(key)
            if done is None or int(done) < end:
                if await self.verify(info, start, end, await self.missing(info, start, end), report, "end_of_day"):
                    await self.sqlite.set_meta(key, str(end))
            left[info.symbol] = len(await self.missing(info, start, end))
        complete = sum(1 for n in left.values() if n == 0)
        self.eod = {"checked_at": self.clock.time(), "symbols": len(infos),
                    "complete_share": round(complete / len(infos), 4) if infos else 1.0,
                    "requests": report.requests, "revised": report.revised, "filled": report.filled,
                    "sessions": {s: list(b) for s, b in sessions.items()},
                    "missing_minutes": {s: n for s, n in left.items() if n}}
        if report.requests:
            log.info("end-of-day check: %d/%d symbols complete, %d bars filled, %d revised, missing %s", complete,
                     len(infos), report.filled, report.revised, self.eod["missing_minutes"])
        return self.eod

    def health(self) -> dict[str, object]:
        """The last pass: counts, and the gaps left per symbol (first 20 each)."""
        r = self.last
        if r is None:
            return {"last_run": None}
        left: dict[str, list[dict[str, object]]] = {}
        for gap in r.gaps:
            if len(left.setdefault(gap.symbol, [])) < 20:
                left[gap.symbol].append(gap.as_map())
        return {"last_run": r.started_at, "window": list(r.window), "missing_minutes": r.missing_minutes,
                "filled": r.filled, "revised": r.revised, "confirmed_empty": r.confirmed_empty, "requests": r.requests,
                "minutes_left": sum(g.minutes for g in r.gaps), "gaps": left}

    def _windows(self, gaps: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Merge nearby gaps into requests no longer than the source serves at once."""
        out: list[tuple[int, int]] = []
        pieces = [(a, min(a + self.max_window_s, end)) for start, end in gaps
                  for a in range(start, end, self.max_window_s)]  # a gap longer than one request: split
        for start, end in pieces:
            if out and start - out[-1][1] < MERGE_S and end - out[-1][0] <= self.max_window_s:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out


def end_of_day_events(eod: dict[str, object], infos: Sequence[SymbolInfo],
                      universes: Mapping[str, Sequence[str]]) -> list[dict[str, object]]:
    """The end-of-day check's summary as one event per asset class and session: the session,
    its New York (or UTC) date, how many symbols are complete, the minutes still missing, and
    the same per universe followed, so downstream jobs start on complete data."""
    sessions: dict[str, list[int]] = eod["sessions"]  # type: ignore[assignment]
    missing: dict[str, int] = eod["missing_minutes"]  # type: ignore[assignment]
    groups: dict[tuple[str, int, int], list[str]] = {}
    for info in infos:
        start, end = sessions[info.symbol]
        groups.setdefault((info.asset_class.value, start, end), []).append(info.symbol)
    events = []
    for (asset_class, start, end), symbols in sorted(groups.items()):
        day = dt.datetime.fromtimestamp(start, NEW_YORK if asset_class != "crypto" else dt.UTC).date()
        if asset_class in ("fx", "futures"):  # their day ends at 17:00 New York: named by the end
            day = dt.datetime.fromtimestamp(end, NEW_YORK).date()
        mine = set(symbols)
        events.append({
            "id": f"end_of_day:{asset_class}:{end}", "type": "end_of_day", "asset_class": asset_class,
            "date": day.isoformat(), "session": [start, end], "symbols": len(symbols),
            "complete": sum(1 for s in symbols if not missing.get(s)),
            "final": all(not missing.get(s) for s in symbols),
            "missing_minutes": {s: missing[s] for s in symbols if missing.get(s)},
            "universes": {name: {"symbols": len(mine & set(members)),
                                 "complete": sum(1 for s in mine & set(members) if not missing.get(s))}
                          for name, members in universes.items() if mine & set(members)}})
    return events
