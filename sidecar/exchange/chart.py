"""Yahoo's chart answer from the market's minutes: one-minute rows with nulls or gaps for
minutes without trades, coarser intervals aggregated on Yahoo's bucket grid (session-anchored
hours for US equities, each market's day for daily bars), the `meta` with its trading periods,
the request's window, and what the bar faults make of a row."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import numpy as np
import orjson
from aiohttp import web

from ..symbols import AssetClass
from .market import Market, MinuteBars
from .sessions import DAY

NAN_MARK = 987654321.125
"""A value no bar has, written where a value is to be NaN (orjson writes none): the body's text
is patched to a bare NaN token after."""

META_BY_CLASS = {
    AssetClass.EQUITY: ("NMS", "NasdaqGS", "EQUITY", "America/New_York"),
    AssetClass.INDEX: ("NIM", "Nasdaq GIDS", "INDEX", "America/New_York"),
    AssetClass.FX: ("CCY", "CCY", "CURRENCY", "Europe/London"),
    AssetClass.CRYPTO: ("CCC", "CCC", "CRYPTOCURRENCY", "UTC"),
    AssetClass.FUTURES: ("CMX", "COMEX", "FUTURE", "America/New_York"),
}
"""Per asset class: Yahoo's exchange code, exchange name, instrument type and time zone."""

# the intervals Yahoo accepts; those the local exchange serves, in seconds; how far back each reaches
INTERVALS = ("1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo")
SERVED_INTERVALS = {"1m": 60, "2m": 120, "5m": 300, "15m": 900, "30m": 1800, "60m": 3600, "90m": 5400, "1h": 3600,
                    "1d": DAY}
HOW_FAR_BACK_DAYS = {"1m": 30, "1h": 730, "60m": 730, "1d": 100 * 365}  # others: 60 days
_RANGE_UNITS = {"d": 86400, "mo": 30 * 86400, "y": 365 * 86400}


def rows_1m(market: Market, symbol: str, bars: MinuteBars) -> dict[str, list]:
    """Column lists for Yahoo: nulls or nothing for minutes without trades."""
    keep = bars.traded | market.null_style(symbol, bars.ts)
    b = bars.select(keep)
    rows: dict[str, list] = {"ts": b.ts.tolist()}
    for name in ("open", "high", "low", "close", "volume"):
        col = getattr(b, name)
        values = col.astype(np.int64).tolist() if name == "volume" else col.tolist()
        rows[name] = [v if t else None for v, t in zip(values, b.traded.tolist(), strict=True)]
    return rows


def rows_aggregated(bars: MinuteBars, step: int, grid: np.ndarray) -> dict[str, list]:
    """Column lists of `step`-second bars from the minutes with trades; `grid` is where each
    minute's bucket grid starts (`anchors`)."""
    traded = bars.traded
    b, grid = bars.select(traded), grid[traded]
    buckets = grid if step >= DAY else grid + (b.ts - grid) // step * step  # a day: its start
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]) if len(b) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(b)] if len(b) else starts
    return {
        "ts": buckets[starts].tolist(),
        "open": b.open[starts].tolist(),
        "high": np.maximum.reduceat(b.high, starts).tolist() if len(b) else [],
        "low": np.minimum.reduceat(b.low, starts).tolist() if len(b) else [],
        "close": b.close[ends - 1].tolist() if len(b) else [],
        "volume": np.add.reduceat(b.volume, starts).astype(np.int64).tolist() if len(b) else [],
    }


def anchors(market: Market, symbol: str, ts: np.ndarray, step: int) -> np.ndarray:
    """Where each minute's bucket grid starts: Yahoo's hourly (and longer) US equity bars
    start at the session open, 09:30, 10:30, ... (providers.md 8.2); others on the epoch grid.
    A daily bar starts at its day's start: the session open, or for the 24-hour markets the
    midnight of Yahoo's zone for them (FX London, futures New York, crypto UTC)."""
    out = np.zeros(len(ts), dtype=np.int64)
    m = market
    if step >= DAY and len(ts):
        days, first = np.unique(ts // DAY, return_index=True)  # `ts` ascends: a slice per UTC day
        for day, a, b in zip(days.tolist(), first.tolist(), [*first[1:].tolist(), len(ts)], strict=True):
            # at most one local day start lies inside a UTC day
            early, late = m.regular_period(symbol, day * DAY)[0], m.regular_period(symbol, day * DAY + DAY - 1)[0]
            out[a:b] = np.where(ts[a:b] >= late, late, early)
        return out
    if step < 3600 or m.always_open or m.profile(symbol).asset_class not in (AssetClass.EQUITY, AssetClass.INDEX):
        return out
    days = ts // 86400
    for day in np.unique(days).tolist():
        out[days == day] = m.regular_period(symbol, day * 86400 + 86399)[0]
    return out


def window(q: object, now: int) -> tuple[int, int, str]:
    """The request's (start, end, range name), from `period1`/`period2` or `range`; ValueError
    when they do not parse."""
    get = q.get  # type: ignore[attr-defined]
    if get("period1") is not None:
        try:
            start = int(get("period1"))
            end = int(get("period2", now))
        except ValueError:
            raise ValueError("period1 and period2 must be unix seconds") from None
        return start, min(end, now + 1), ""
    rng = get("range", "1d")
    match = re.fullmatch(r"(\d+)(d|mo|y)", rng)
    if not match:
        raise ValueError(f"range={rng} is not supported")
    return now - int(match[1]) * _RANGE_UNITS[match[2]], now + 1, rng


def meta(m: Market, symbol: str, interval: str, range_name: str, now: int, price: float | None,
         bare: bool) -> dict[str, object]:
    """The answer's `meta`: the instrument, its trading periods of the day (24-hour markets per
    providers.md 8.1), the provider's clock and last price; `bare` leaves out the optional
    fields a real answer may lack."""
    profile = m.profile(symbol)
    session_start, session_end = m.regular_period(symbol, now)
    exchange_name, full_name, instrument, tz_name = META_BY_CLASS[profile.asset_class]
    tz = ZoneInfo(tz_name)
    offset = int(dt.datetime.fromtimestamp(now, tz).utcoffset().total_seconds())  # type: ignore[union-attr]
    tz_abbr = dt.datetime.fromtimestamp(now, tz).tzname()
    period = {"timezone": tz_abbr, "gmtoffset": offset}
    if m.always_open or profile.asset_class not in (AssetClass.EQUITY, AssetClass.INDEX):
        # 24-hour markets (providers.md 8.1): the regular period ends at 23:59 while trades go
        # on through that minute, so the provider's clock passes the period's end; pre and
        # post are empty.
        market_time = now
        pre, post = (session_start, session_start), (session_end, session_end)
    else:
        market_time = min(now, session_end)
        pre, post = (session_start - 19800, session_start), (session_end, session_end + 14400)
    meta = {
        "currency": "USD", "symbol": symbol, "exchangeName": exchange_name, "fullExchangeName": full_name,
        "instrumentType": instrument, "firstTradeDate": 345479400, "regularMarketTime": market_time,
        "hasPrePostMarketData": profile.asset_class is AssetClass.EQUITY, "gmtoffset": offset,
        "timezone": tz_abbr, "exchangeTimezoneName": tz_name, "regularMarketPrice": price,
        "priceHint": profile.decimals, "scale": 3,
        "currentTradingPeriod": {
            "pre": {**period, "start": pre[0], "end": pre[1]},
            "regular": {**period, "start": session_start, "end": session_end},
            "post": {**period, "start": post[0], "end": post[1]},
        },
        "dataGranularity": interval, "range": range_name,
        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
    }
    if bare:
        del meta["currentTradingPeriod"], meta["regularMarketTime"]
    return meta


def corrupt(rows: dict[str, list], i: int, kind: str, now: int) -> None:
    """Row `i` as a bar fault of `kind` serves it (ledger.py BAR_FAULTS)."""
    ts = rows["ts"][i]
    if kind == "high_below_low":
        rows["high"][i], rows["low"][i] = rows["low"][i] - 1.0, rows["high"][i] + 1.0
    elif kind == "negative_price":
        rows["close"][i] = -abs(rows["close"][i])
    elif kind == "zero_price":
        rows["open"][i] = 0.0
    elif kind == "negative_volume":
        rows["volume"][i] = -1 - rows["volume"][i]
    elif kind == "misaligned_ts":
        rows["ts"][i] = ts + 17
    elif kind == "future_ts":
        rows["ts"][i] = (now // 60 + 60) * 60
    elif kind == "string_price":
        rows["close"][i] = "n/a"
    elif kind == "nan_price":
        rows["close"][i] = NAN_MARK
    elif kind == "spike":  # a valid-looking bar 50% away: only the spike filter can tell
        rows["close"][i] *= 1.5
        rows["high"][i] = max(rows["high"][i], rows["close"][i])


def error(status: int, code: str, description: str) -> web.Response:
    """An error answer as Yahoo sends one: a `chart.error` body."""
    body = {"chart": {"result": None, "error": {"code": code, "description": description}}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
