"""Trading calendars per asset class: which minutes trade and when the current session ends.

US equities and indices follow the NYSE (XNYS) regular session with holidays and early
closes, from `exchange-calendars`; FX trades 24x5 (Sunday 17:00 to Friday 17:00 New York);
futures follow CME Globex (Sunday 18:00 to Friday 17:00 New York, daily 17:00-18:00 break);
crypto never closes. Timestamps are UTC epoch seconds, vectorized with NumPy.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from .arrays import distinct
from .symbols import AssetClass

NEW_YORK = ZoneInfo("America/New_York")
DAY = 86400


@lru_cache(maxsize=1)
def _xnys_sessions() -> dict[int, tuple[int, int]]:
    """UTC day number -> (open, close) epoch seconds of the NYSE regular session that day."""
    import exchange_calendars  # slow import; only equity calendars need it

    today = dt.date.today()
    with warnings.catch_warnings():
        # exchange-calendars 4.13 uses a pandas accessor that pandas 3.1 deprecates; harmless.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        cal = exchange_calendars.get_calendar(
            "XNYS", start="2020-01-02", end=(today + dt.timedelta(days=800)).isoformat()
        )
    opens = cal.schedule["open"].astype("int64").to_numpy() // 10**9
    closes = cal.schedule["close"].astype("int64").to_numpy() // 10**9
    return {int(o) // DAY: (int(o), int(c)) for o, c in zip(opens, closes, strict=True)}


def nyse_sessions(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NYSE regular session (open, close) containing each timestamp, or (-1, -1)."""
    sessions = _xnys_sessions()
    opens = np.full(len(ts), -1, dtype=np.int64)
    closes = np.full(len(ts), -1, dtype=np.int64)
    days = ts // DAY
    for d in distinct(days)[0].tolist():
        bounds = sessions.get(d)
        if bounds is not None:
            sel = (days == d) & (ts >= bounds[0]) & (ts < bounds[1])
            opens[sel], closes[sel] = bounds
    return opens, closes


def prepare() -> None:
    """Load the NYSE session table now (~0.5 s), so the first cycle that needs it does not pay."""
    _xnys_sessions()


@lru_cache(maxsize=4096)
def _ny_offset(day: int) -> int:
    """New York's UTC offset in seconds at noon UTC of a UTC day.

    DST switches at 02:00 New York on a Sunday, when FX and futures are closed anyway,
    so one offset per day is exact for every minute those markets trade.
    """
    noon = dt.datetime.fromtimestamp(day * DAY + DAY // 2, tz=NEW_YORK)
    return int(noon.utcoffset().total_seconds())  # type: ignore[union-attr]


def _ny_seconds(ts: np.ndarray) -> np.ndarray:
    """Each UTC timestamp as New York wall-clock seconds (the offset asked once per UTC day)."""
    uniq, inv = distinct(ts // DAY)
    return ts + np.array([_ny_offset(int(d)) for d in uniq], dtype=np.int64)[inv]


def _ny_local(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weekday Mon=0, minute of day) in New York time for each UTC timestamp."""
    local = _ny_seconds(ts)
    weekday = ((local // DAY) + 3) % 7  # 1970-01-01 was a Thursday
    minute = (local % DAY) // 60
    return weekday, minute


def is_trading(asset_class: AssetClass, ts: np.ndarray | int) -> np.ndarray:
    """Boolean mask: does the bar starting at each timestamp fall inside a trading session?"""
    ts = np.atleast_1d(np.asarray(ts, dtype=np.int64))
    if asset_class is AssetClass.CRYPTO:
        return np.ones(ts.shape, dtype=bool)
    if asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
        return nyse_sessions(ts)[0] >= 0
    weekday, minute = _ny_local(ts)
    five_pm = 17 * 60
    opens_sunday = five_pm if asset_class is AssetClass.FX else 18 * 60
    closed = (
        (weekday == 5)
        | ((weekday == 4) & (minute >= five_pm))
        | ((weekday == 6) & (minute < opens_sunday))
    )
    if asset_class is AssetClass.FUTURES:
        closed |= (weekday <= 3) & (minute >= five_pm) & (minute < 18 * 60)
    return ~closed


def regular_period(asset_class: AssetClass, now: int) -> tuple[int, int]:
    """(start, end) of the regular session that `now` is in, or of the last one before it.

    Equities use the NYSE session; other classes use the UTC day, as Yahoo reports them.
    """
    if asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
        sessions = _xnys_sessions()
        day = now // DAY
        for d in range(day, day - 15, -1):
            bounds = sessions.get(d)
            if bounds is not None and bounds[0] <= now:
                return bounds
        return (day * DAY, day * DAY)
    start = now // DAY * DAY
    return (start, start + DAY)


def session_bounds(asset_class: AssetClass, ts: int) -> tuple[int, int]:
    """[start, end) of the trading day `ts` belongs to, as `session_day` counts days: the NYSE
    regular session for equities and indices (empty on a day without one), 17:00 to 17:00 New
    York for FX and futures, the UTC day for crypto."""
    if asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
        bounds = _xnys_sessions().get(ts // DAY)
        return bounds if bounds is not None else (ts // DAY * DAY, ts // DAY * DAY)
    if asset_class is AssetClass.CRYPTO:
        return ts // DAY * DAY, ts // DAY * DAY + DAY
    day = int(session_day(asset_class, ts)[0])  # the New York date whose session ends at its 17:00
    end = dt.datetime.combine(dt.date(1970, 1, 1) + dt.timedelta(days=day), dt.time(17), tzinfo=NEW_YORK)
    start = dt.datetime.combine(end.date() - dt.timedelta(days=1), dt.time(17), tzinfo=NEW_YORK)
    return int(start.timestamp()), int(end.timestamp())


def last_settled_session(asset_class: AssetClass, now: float, settle_s: int) -> tuple[int, int]:
    """The newest trading day with trading minutes that ended at least `settle_s` before `now`
    (searching back over weekends and holidays)."""
    ts = int(now) - settle_s
    for _ in range(15):
        start, end = session_bounds(asset_class, ts)
        if start < end <= int(now) - settle_s and is_trading(asset_class, np.arange(start, end, 60)).any():
            return start, end
        ts = min(start, ts // DAY * DAY) - 1  # the day before (an equity day's session may start after ts)
    return ts, ts


# Hours in a trading day and trading days in a year, per asset class: the annualization of
# historical volatility (sqrt of bars per year) and the length of a session.
_YEAR = {
    AssetClass.EQUITY: (6.5, 252),
    AssetClass.INDEX: (6.5, 252),
    AssetClass.FX: (24.0, 260),
    AssetClass.FUTURES: (23.0, 252),
    AssetClass.CRYPTO: (24.0, 365),
}


def bars_per_year(asset_class: AssetClass, bar_seconds: int) -> float:
    """Bars of `bar_seconds` in a trading year of the asset class (for annualizing volatility)."""
    hours, days = _YEAR[asset_class]
    # a session's last bar may be cut short (15:30-16:00 is an hourly bar): whole bars per day
    return math.ceil(hours * 3600 / bar_seconds) * days


def session_day(asset_class: AssetClass, ts: np.ndarray | int) -> np.ndarray:
    """The trading day each bar belongs to (days since 1970), where a session VWAP restarts.

    Equities and indices: the New York date. FX and futures: the New York date of the next
    day once 17:00 New York has passed (their day rolls at 17:00). Crypto: the UTC date.
    """
    ts = np.atleast_1d(np.asarray(ts, dtype=np.int64))
    if asset_class is AssetClass.CRYPTO:
        return ts // DAY
    local = _ny_seconds(ts)
    if asset_class in (AssetClass.FX, AssetClass.FUTURES):
        local = local + 7 * 3600  # 17:00 New York becomes midnight
    return local // DAY
