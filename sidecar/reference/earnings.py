"""Earnings releases: parsing both calendars (providers.md 8.4) and when a release counts as out.

Alpha Vantage's EARNINGS_CALENDAR is CSV, read by its header (the newer `timeOfTheDay` column
is optional, an empty estimate allowed); Twelve Data's `/earnings_calendar` is JSON grouped by
date. Both become `Report`s; a row whose symbol or date is not valid is skipped and counted,
never stored.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass

from ..calendars import NEW_YORK
from ..errors import MalformedResponse, SymbolError
from ..symbols import parse_symbol

COLUMNS = ("symbol", "report_date", "fiscal_date_ending", "estimate", "currency", "time_of_day", "source", "updated")
_TIMES = {"pre-market": "pre-market", "post-market": "post-market", "pre market": "pre-market",
          "after hours": "post-market", "before market open": "pre-market", "after market close": "post-market"}
# When a release counts as out, New York time on its date: before the open, after the close
# (releases come 16:05-16:30), or, when the time is not given, at the end of the day.
RELEASED_AT = {"pre-market": dt.time(9, 30), "post-market": dt.time(17, 0), "": None}


@dataclass(slots=True, frozen=True)
class Report:
    """One scheduled earnings release."""

    symbol: str
    report_date: str  # YYYY-MM-DD
    fiscal_date_ending: str | None
    estimate: float | None  # EPS estimate
    currency: str | None
    time_of_day: str  # pre-market, post-market, or "" (not given)
    source: str
    updated: float

    def row(self) -> tuple[object, ...]:
        """The values in COLUMNS order."""
        return tuple(getattr(self, c) for c in COLUMNS)

    def released_at(self) -> float:
        """Unix time from which this release counts as out."""
        day = dt.date.fromisoformat(self.report_date)
        at = RELEASED_AT.get(self.time_of_day)
        if at is None:
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), NEW_YORK).timestamp()
        return dt.datetime.combine(day, at, NEW_YORK).timestamp()

    def days_until(self, now: float) -> int:
        """Calendar days from today (New York) to the report date: 0 on the day."""
        today = dt.datetime.fromtimestamp(now, NEW_YORK).date()
        return (dt.date.fromisoformat(self.report_date) - today).days


@dataclass(slots=True)
class Parsed:
    """A calendar's reports, and how many rows were skipped as invalid."""

    reports: list[Report]
    skipped: int = 0


def _time_of_day(raw: object) -> str:
    return _TIMES.get(str(raw or "").strip().lower(), "")


def _date(raw: object) -> str | None:
    try:
        return dt.date.fromisoformat(str(raw).strip()).isoformat()
    except ValueError:
        return None


def _estimate(raw: object) -> float | None:
    if raw is None or isinstance(raw, bool) or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value == value else None


def _report(source: str, now: float, symbol: object, date: object, fiscal: object, estimate: object,
            currency: object, time: object) -> Report | None:
    try:
        sym = parse_symbol(str(symbol or ""))
    except SymbolError:
        return None
    day = _date(date)
    if day is None:
        return None
    cur = str(currency).strip().upper() if isinstance(currency, str) and currency.strip() else None
    return Report(sym, day, _date(fiscal) if fiscal else None, _estimate(estimate), cur, _time_of_day(time), source,
                  now)


def parse_alphavantage(text: str, now: float) -> Parsed:
    """EARNINGS_CALENDAR CSV, by header: `symbol` and `reportDate` are required; `name`,
    `fiscalDateEnding`, `estimate`, `currency` and `timeOfTheDay` are read when present."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = set(reader.fieldnames or ())
    if not {"symbol", "reportDate"} <= header:
        raise MalformedResponse("alphavantage", "earnings", f"no symbol/reportDate columns in {sorted(header)[:6]}")
    out = Parsed([])
    for row in reader:
        r = _report("alphavantage", now, row.get("symbol"), row.get("reportDate"), row.get("fiscalDateEnding"),
                    row.get("estimate"), row.get("currency"), row.get("timeOfTheDay"))
        if r is None:
            out.skipped += 1
        else:
            out.reports.append(r)
    return out


def parse_twelvedata(payload: dict, now: float) -> Parsed:
    """`/earnings_calendar` JSON: `{"earnings": {"YYYY-MM-DD": [{symbol, currency, time,
    eps_estimate, ...}]}}`."""
    days = payload.get("earnings")
    if not isinstance(days, dict):
        raise MalformedResponse("twelvedata", "earnings", "no earnings object")
    out = Parsed([])
    for date, entries in days.items():
        for e in entries if isinstance(entries, list) else []:
            r = _report("twelvedata", now, e.get("symbol"), date, None, e.get("eps_estimate"), e.get("currency"),
                        e.get("time")) if isinstance(e, dict) else None
            if r is None:
                out.skipped += 1
            else:
                out.reports.append(r)
    return out
