"""Reference data: the symbols table and the earnings calendar, kept through the same guarded
sources as bars, and the flags and events the earnings calendar drives.

- Symbols: Yahoo's batch quote (100 symbols a request) gives type, names, exchange, currency
  and fund size and cost; a symbol Yahoo does not know is asked of Polygon's ticker reference;
  funds get their category from Yahoo's quoteSummary and missing size or cost from Alpha
  Vantage's ETF_PROFILE; what no source knows falls back to the shape of its name. Refreshed
  when older than a day.
- Earnings: Alpha Vantage's calendar (one request, every company, 3 months) first, Twelve
  Data's (40 credits) when it fails; synced at start-up and daily. The upcoming rows replace
  the stored upcoming rows (a moved date leaves no stale row); past rows are kept.
- Every minute: a symbol followed whose next release is at most `horizon_days` away has the
  flag `{prefix}:{SYM}:earnings` (TTL a day), an `earnings.upcoming` event once per release,
  and an `earnings.reported` event once the release is out, when its flag goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..calendars import NEW_YORK
from ..clock import Clock
from ..errors import CircuitOpen, DurableStoreError, FetchError, ProviderError, RedisStoreError
from ..fetchers.twelvedata import EARNINGS_CREDITS
from ..sources import GuardedSource
from ..stores import DurableStore, RedisStore
from ..symbols import SymbolInfo
from . import earnings, instruments
from .earnings import Report
from .instruments import Instrument

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS symbols (
    symbol TEXT PRIMARY KEY, asset_class TEXT NOT NULL, type TEXT NOT NULL, name TEXT, exchange TEXT,
    currency TEXT, net_assets REAL, expense_ratio REAL, category TEXT, data_delay_s INTEGER,
    source TEXT NOT NULL, updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS earnings (
    symbol TEXT NOT NULL, report_date TEXT NOT NULL, fiscal_date_ending TEXT, estimate REAL, currency TEXT,
    time_of_day TEXT NOT NULL, source TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (symbol, report_date)
) WITHOUT ROWID;
"""
REFRESH_S = 86400.0  # symbols and the calendar are refreshed daily
RETRY_S = 900.0  # after a failed calendar sync
QUOTE_CHUNK = 100
FLAG_TTL_S = 86400
REPORTED_WINDOW_S = 3 * 86400  # a release out longer ago than this is history, not an event
HORIZON_MONTHS = "3month"
HORIZON_DAYS = 92


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """An insert that replaces the row with the same key, in SQL both durable stores speak."""
    rest = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "  # noqa: S608
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {rest}")


class ReferenceData:
    """The symbols table, the earnings calendar and its flags.

    :param sources: the configured guarded sources by name (Yahoo, Polygon, Alpha Vantage, Twelve Data).
    :param sqlite: where both tables live.
    :param redis: flags and events.
    :param clock: wall time decides what is upcoming and what is out.
    :param symbols: the symbols followed now.
    :param on_earnings: told each symbol's days to its next release after every update (the scanner).
    :param horizon_days: how far ahead a release sets its flag.
    :param timeout_s: per-request timeout.
    :param live: returns once the live loop has had a cycle that worked: the loop waits for it,
        so the budgets know the live demand before reference requests take from them.
    :param leads: in a cluster, whether this member runs the shared calendar sync now.
    """

    def __init__(self, *, sources: Mapping[str, GuardedSource], sqlite: DurableStore, redis: RedisStore, clock: Clock,
                 symbols: Callable[[], Sequence[SymbolInfo]],
                 on_earnings: Callable[[dict[str, float]], None] | None = None, horizon_days: int = 7,
                 timeout_s: float = 30.0, live: Callable[[], Awaitable[None]] | None = None,
                 leads: Callable[[str], bool] = lambda _job: True) -> None:
        self.sources, self.sqlite, self.redis, self.clock = sources, sqlite, redis, clock
        self.symbols, self.on_earnings = symbols, on_earnings
        self.horizon_days, self.timeout_s, self.live = horizon_days, timeout_s, live
        self.leads = leads  # in a cluster, whether this member syncs the shared earnings calendar now
        self._failed = False  # a source failed (not "unknown symbol") during the current refresh
        self.table: dict[str, Instrument] = {}
        self.reports: dict[str, list[Report]] = {}  # symbol -> its releases not yet out, soonest first
        self.flagged: dict[str, str] = {}  # symbol -> report date of its flag
        self.calendar: dict[str, Any] = {"source": None, "synced_at": None, "reports": 0, "skipped": 0,
                                         "last_error": None}
        self.refreshed_at: float | None = None
        self.requests: Counter[str] = Counter()  # per source, for the health and the bench
        self._published: set[str] = set()  # events known to be published (no SQLite read each minute)
        self._swept = False  # whether the flags of every followed symbol were cleared once
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Create the tables and load what is stored."""
        await self.sqlite.create(SCHEMA)
        rows = await self.sqlite.query(f"SELECT {', '.join(instruments.COLUMNS)} FROM symbols")
        self.table = {str(r[0]): Instrument(*r) for r in rows}  # type: ignore[arg-type]
        await self._load_reports()
        synced = await self.sqlite.get_meta("earnings_synced")
        if synced:
            self.calendar["source"], _, at = synced.partition("@")
            self.calendar["synced_at"] = float(at)

    async def close(self) -> None:
        """Stop the loop (idempotent; every write is already committed)."""
        self._stop.set()

    def health(self) -> dict[str, object]:
        """The table by type and source, the calendar's last sync, the flags set."""
        now = self.clock.time()
        followed = {i.symbol for i in self.symbols()}
        mine = [i for s, i in self.table.items() if s in followed]
        synced = self.calendar["synced_at"]
        return {"symbols": len(mine), "unknown": len(followed) - len(mine),
                "by_type": dict(Counter(i.type for i in mine)), "by_source": dict(Counter(i.source for i in mine)),
                "refreshed_age_s": None if self.refreshed_at is None else round(now - self.refreshed_at, 1),
                "earnings": {**self.calendar, "synced_at": None,
                             "synced_age_s": None if synced is None else round(now - synced, 1),
                             "flags": len(self.flagged)},
                "requests": dict(self.requests)}

    async def run(self) -> None:
        """The daemon's loop: refresh and sync when due, update the flags every minute."""
        if self.live is not None:
            await self.live()
        await self.clock.sleep(2.0)
        while not self._stop.is_set():
            try:
                await self.refresh([i for i in self.symbols() if self.due(i.symbol)])
                if self.leads("reference"):
                    await self.sync_if_due()
                else:  # the leader syncs the shared calendar: read what it stored
                    await self._load_reports()
                await self.update_flags()
            except (DurableStoreError, RedisStoreError) as exc:  # tried again next minute
                log.warning("reference data: %s", exc)
            await self.clock.sleep(60.0)

    def due(self, symbol: str) -> bool:
        """Whether a symbol has no row in the table, or one a day old."""
        row = self.table.get(symbol)
        return row is None or self.clock.time() - row.updated >= REFRESH_S

    # -- symbols -------------------------------------------------------------------------------

    async def _ask(self, name: str, label: str, method: str, *args: object, cost: int = 1) -> Any:
        """`fetcher.method(*args)` of one source through its gate; None when the source is not
        configured, cannot fit `cost` in its budgets, or fails (logged)."""
        g = self.sources.get(name)
        if g is None or g.fetcher.disabled_reason is not None or not g.fits(cost):
            return None
        self.requests[name] += 1
        call = getattr(g.fetcher, method)
        try:
            return await g.background(label, lambda: call(*args, timeout_s=self.timeout_s), cost=cost,
                                      max_wait_s=self.timeout_s * 4)
        except FetchError as exc:
            if not (isinstance(exc, ProviderError) and exc.status == 404):
                self._failed = True
                if not isinstance(exc, CircuitOpen):
                    log.info("reference: %s %s: %s", name, label, exc)
            return None

    async def refresh(self, infos: Sequence[SymbolInfo]) -> list[Instrument]:
        """Fetch and store what each symbol is; return the new rows."""
        if not infos:
            return []
        now = self.clock.time()
        self._failed = False
        found: dict[str, Instrument] = {}
        for i in range(0, len(infos), QUOTE_CHUNK):
            chunk = infos[i:i + QUOTE_CHUNK]
            rows = await self._ask("yahoo", f"{len(chunk)} symbols", "fetch_reference", chunk) or []
            by_yahoo = {info.yahoo: info for info in chunk}
            for row in rows:
                info = by_yahoo.get(str(row.get("symbol")))
                if info is not None and (inst := instruments.from_yahoo(row, info, now)) is not None:
                    found[info.symbol] = inst
        for info in infos:
            if info.symbol not in found:
                ticker = await self._ask("polygon", info.symbol, "fetch_ticker", info)
                inst = None if ticker is None else instruments.from_polygon(ticker, info, now)
                # the name's shape only when no source could say; after a failure, asked again soon
                found[info.symbol] = inst or self.table.get(info.symbol) or instruments.by_name(
                    info, now - REFRESH_S + RETRY_S if self._failed else now)
        for info in infos:
            inst = found[info.symbol]
            if inst.fund and inst.category is None:
                summary = await self._ask("yahoo", info.symbol, "fetch_fund_profile", info)
                inst = instruments.with_fund_profile(inst, summary) if summary else inst
            if inst.fund and (inst.net_assets is None or inst.expense_ratio is None):
                profile = await self._ask("alphavantage", info.symbol, "fetch_etf_profile", info)
                inst = instruments.with_etf_profile(inst, profile) if profile else inst
            found[info.symbol] = inst
        rows_out = list(found.values())
        await self.sqlite.execute(upsert("symbols", instruments.COLUMNS, ("symbol",)), [r.row() for r in rows_out])
        self.table.update(found)
        self.refreshed_at = now
        log.info("symbols table: %d refreshed (%s)", len(rows_out), dict(Counter(r.source for r in rows_out)))
        return rows_out

    def listing(self, symbols: Sequence[str] | None = None, kind: str | None = None) -> list[dict[str, object]]:
        """Rows of the table (all, or these symbols), optionally of one type."""
        names = list(self.table) if symbols is None else [s for s in symbols if s in self.table]
        return [self.table[s].doc() for s in sorted(names) if kind is None or self.table[s].type == kind]

    # -- earnings ------------------------------------------------------------------------------

    async def sync_if_due(self) -> None:
        """Sync the calendar unless it was synced within a day (a failed sync is due again in RETRY_S)."""
        synced = self.calendar["synced_at"]
        if synced is None or self.clock.time() - synced >= REFRESH_S:
            await self.sync_earnings()

    async def sync_earnings(self) -> bool:
        """Fetch the calendar (Alpha Vantage, else Twelve Data) and store it; False when both failed."""
        now = self.clock.time()
        today = dt.datetime.fromtimestamp(now, NEW_YORK).date()
        end = today + dt.timedelta(days=HORIZON_DAYS)
        attempts: list[tuple[str, tuple[object, ...], int, Callable[[Any, float], earnings.Parsed]]] = [
            ("alphavantage", (HORIZON_MONTHS,), 1, earnings.parse_alphavantage),
            ("twelvedata", (today.isoformat(), end.isoformat()), EARNINGS_CREDITS, earnings.parse_twelvedata)]
        parsed: earnings.Parsed | None = None
        for name, args, cost, parse in attempts:  # in this order: the first that answers
            body = await self._ask(name, "earnings", "fetch_earnings_calendar", *args, cost=cost)
            if body is not None:
                try:
                    parsed, source = parse(body, now), name
                    break
                except FetchError as exc:
                    log.warning("earnings calendar from %s: %s", name, exc)
        if parsed is None:
            self.calendar["last_error"] = "no source answered (alphavantage, twelvedata)"
            self.calendar["synced_at"] = now - REFRESH_S + RETRY_S  # try again in RETRY_S
            return False
        upcoming = [r for r in parsed.reports if r.report_date >= today.isoformat()]
        await self.sqlite.execute("DELETE FROM earnings WHERE report_date >= ?", [(today.isoformat(),)])
        await self.sqlite.execute(upsert("earnings", earnings.COLUMNS, ("symbol", "report_date")),
                                  [r.row() for r in upcoming])
        await self.sqlite.set_meta("earnings_synced", f"{source}@{now}")
        self.calendar.update(source=source, synced_at=now, reports=len(upcoming), skipped=parsed.skipped,
                             last_error=None)
        await self._load_reports()
        log.info("earnings calendar from %s: %d upcoming releases (%d rows skipped)", source, len(upcoming),
                 parsed.skipped)
        return True

    async def _load_reports(self) -> None:
        since = (dt.datetime.fromtimestamp(self.clock.time() - REPORTED_WINDOW_S, NEW_YORK).date()).isoformat()
        rows = await self.sqlite.query(f"SELECT {', '.join(earnings.COLUMNS)} FROM earnings WHERE report_date >= ? "
                                       "ORDER BY symbol, report_date", (since,))
        self.reports = {}
        for r in rows:
            self.reports.setdefault(str(r[0]), []).append(Report(*r))  # type: ignore[arg-type]

    def next_report(self, symbol: str, now: float) -> Report | None:
        """The symbol's soonest release not yet out."""
        return next((r for r in self.reports.get(symbol, ()) if r.released_at() > now), None)

    def upcoming(self, days: int, symbols: Sequence[str] | None = None) -> list[dict[str, object]]:
        """Releases not yet out within `days` calendar days, soonest first."""
        now = self.clock.time()
        names = [i.symbol for i in self.symbols()] if symbols is None else symbols
        out = []
        for s in names:
            r = self.next_report(s, now)
            if r is not None and r.days_until(now) <= days:
                out.append({**_report_doc(r), "days": r.days_until(now)})
        return sorted(out, key=lambda d: (str(d["report_date"]), str(d["symbol"])))

    async def update_flags(self) -> list[dict[str, object]]:
        """Set and clear the flags, publish the events due; return the events published."""
        now = self.clock.time()
        followed = [i.symbol for i in self.symbols()]
        flags: dict[str, dict[str, object]] = {}
        days: dict[str, float] = {}
        events: list[dict[str, object]] = []
        for s in followed:
            r = self.next_report(s, now)
            if r is not None:
                days[s] = r.days_until(now)
                if days[s] <= self.horizon_days:
                    flags[s] = {**_report_doc(r), "days": days[s]}
                    events.append({"id": f"earnings.upcoming:{s}:{r.report_date}", "type": "earnings.upcoming",
                                   "time": now, **flags[s]})
            for old in self.reports.get(s, ()):
                if now - REPORTED_WINDOW_S < old.released_at() <= now:
                    events.append({"id": f"earnings.reported:{s}:{old.report_date}", "type": "earnings.reported",
                                   "time": now, **_report_doc(old)})
        # a flag left from before a restart is cleared by one sweep over every symbol followed
        clear = [s for s in (self.flagged if self._swept else followed) if s not in flags]
        await self.redis.earnings_flags(flags, clear, FLAG_TTL_S)
        self._swept = True
        self.flagged = {s: str(v["report_date"]) for s, v in flags.items()}
        if self.on_earnings is not None:
            self.on_earnings(days)
        published = []
        for event in events:  # each once: remembered here, and in SQLite across restarts
            key = f"published:{event['id']}"
            if key in self._published or await self.sqlite.get_meta(key) is not None:
                self._published.add(key)
                continue
            await self.redis.publish_events([event])
            await self.sqlite.set_meta(key, str(now))
            self._published.add(key)
            published.append(event)
        return published


def _report_doc(r: Report) -> dict[str, object]:
    return {"symbol": r.symbol, "report_date": r.report_date, "time_of_day": r.time_of_day,
            "estimate": r.estimate, "currency": r.currency, "fiscal_date_ending": r.fiscal_date_ending,
            "source": r.source}
