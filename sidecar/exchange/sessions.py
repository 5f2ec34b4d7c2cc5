"""The exchange's own trading hours: a plain table of NYSE holidays and early closes and the
fixed weekly hours of the other markets.

It deliberately shares nothing with the daemon's `calendars` module (which takes the NYSE from
exchange-calendars): the exchange is the oracle the daemon's calendar is tested against, so a
calendar bug in the daemon shows as a difference instead of passing on both sides.

Also here: Yahoo's `currentTradingPeriod.regular` per asset class (providers.md 8.1). For the
24-hour markets Yahoo ends the "regular" period one minute before the day ends (23:59 UTC for
crypto, 23:59 London for FX, 23:59 New York for futures), so a 23:59 bar is still forming when
the provider's clock is past that end.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from ..symbols import AssetClass

DAY = 86400
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
DAY_END_GAP_S = 60  # Yahoo's 24-hour "regular" period ends at 23:59, a minute before the day does

# NYSE full-day closures (New York dates), from the exchange's published holiday schedules.
NYSE_HOLIDAYS = frozenset({
    "2023-01-02", "2023-01-16", "2023-02-20", "2023-04-07", "2023-05-29", "2023-06-19", "2023-07-04",
    "2023-09-04", "2023-11-23", "2023-12-25",
    "2024-01-01", "2024-01-15", "2024-02-19", "2024-03-29", "2024-05-27", "2024-06-19", "2024-07-04",
    "2024-09-02", "2024-11-28", "2024-12-25",
    "2025-01-01", "2025-01-09", "2025-01-20", "2025-02-17", "2025-04-18", "2025-05-26", "2025-06-19",
    "2025-07-04", "2025-09-01", "2025-11-27", "2025-12-25",
    "2026-01-01", "2026-01-19", "2026-02-16", "2026-04-03", "2026-05-25", "2026-06-19", "2026-07-03",
    "2026-09-07", "2026-11-26", "2026-12-25",
    "2027-01-01", "2027-01-18", "2027-02-15", "2027-03-26", "2027-05-31", "2027-06-18", "2027-07-05",
    "2027-09-06", "2027-11-25", "2027-12-24",
    "2028-01-17", "2028-02-21", "2028-04-14", "2028-05-29", "2028-06-19", "2028-07-04", "2028-09-04",
    "2028-11-23", "2028-12-25",
})
# NYSE early closes at 13:00 New York.
NYSE_EARLY_CLOSES = frozenset({
    "2023-07-03", "2023-11-24",
    "2024-07-03", "2024-11-29", "2024-12-24",
    "2025-07-03", "2025-11-28", "2025-12-24",
    "2026-11-27", "2026-12-24",
    "2027-11-26",
    "2028-07-03", "2028-11-24",
})
OPEN_MIN, CLOSE_MIN, EARLY_CLOSE_MIN = 9 * 60 + 30, 16 * 60, 13 * 60


@lru_cache(maxsize=8192)
def _local_day(day: int, zone: ZoneInfo) -> tuple[int, int, str]:
    """For a UTC day number: the zone's UTC offset at its noon, the weekday there (Mon=0), and
    its date there. DST moves at 02:00 local on a Sunday, outside every session handled here."""
    noon = dt.datetime.fromtimestamp(day * DAY + DAY // 2, tz=zone)
    return int(noon.utcoffset().total_seconds()), noon.weekday(), noon.date().isoformat()  # type: ignore[union-attr]


def _nyse_close_min(date: str, weekday: int) -> int:
    """Minute of the New York day at which the NYSE closes on `date` (0: no session)."""
    if weekday >= 5 or date in NYSE_HOLIDAYS:
        return 0
    return EARLY_CLOSE_MIN if date in NYSE_EARLY_CLOSES else CLOSE_MIN


def trading(asset_class: AssetClass, ts: np.ndarray) -> np.ndarray:
    """Mask of bar opens at which the market of `asset_class` trades."""
    ts = np.atleast_1d(np.asarray(ts, dtype=np.int64))
    if asset_class is AssetClass.CRYPTO:
        return np.ones(ts.shape, dtype=bool)
    if not len(ts):
        return np.zeros(0, dtype=bool)
    days = ts // DAY
    first = int(days.min())  # per-day facts by offset from the first day: no sort over years of minutes
    offsets = np.array([_local_day(d, NEW_YORK)[0] for d in range(first, int(days.max()) + 1)], dtype=np.int64)
    local = ts + offsets[days - first]
    minute = (local % DAY) // 60
    # the weekday and date of the local day (the UTC day's noon can be a different local day)
    local_day = local // DAY
    weekday = ((local_day + 3) % 7)  # 1970-01-01 was a Thursday
    if asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
        low = int(local_day.min())
        closes = np.array([_nyse_close_min(_iso(d), (d + 3) % 7) for d in range(low, int(local_day.max()) + 1)],
                          dtype=np.int64)[local_day - low]
        return (minute >= OPEN_MIN) & (minute < closes)
    five_pm = 17 * 60
    sunday_open = five_pm if asset_class is AssetClass.FX else 18 * 60
    closed = (weekday == 5) | ((weekday == 4) & (minute >= five_pm)) | ((weekday == 6) & (minute < sunday_open))
    if asset_class is AssetClass.FUTURES:  # CME Globex's daily maintenance break, Monday to Thursday
        closed |= (weekday <= 3) & (minute >= five_pm) & (minute < 18 * 60)
    return ~closed


@lru_cache(maxsize=4096)
def _iso(local_day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=local_day)).isoformat()


def _local_midnight(now: int, zone: ZoneInfo) -> int:
    """The epoch second of the local midnight that starts the day containing `now` in `zone`."""
    local = dt.datetime.fromtimestamp(now, tz=zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp())


_DAY_ZONE = {AssetClass.CRYPTO: dt.UTC, AssetClass.FX: LONDON, AssetClass.FUTURES: NEW_YORK}


def first_session_open(day: int) -> int:
    """The open of the first NYSE session on or after UTC day `day`."""
    for d in range(day, day + 15):
        offset, weekday, date = _local_day(d, NEW_YORK)
        if _nyse_close_min(date, weekday):
            return _local_midnight(d * DAY + DAY // 2, NEW_YORK) + OPEN_MIN * 60
    raise AssertionError("no session in 15 days")


def regular_period(asset_class: AssetClass, now: int, day_offset_s: int = 0,
                   always_open: bool = False) -> tuple[int, int]:
    """Yahoo's `currentTradingPeriod.regular` at `now`: for US equities and indices the NYSE
    session `now` is in (or the last one before it); for the 24-hour markets their day in the
    zone Yahoo uses, ending a minute early. `day_offset_s` moves the 24-hour markets' day
    start (tests put a day's end inside their run); `always_open` treats every class as a
    24-hour market (equities and indices on the UTC day)."""
    if always_open or asset_class not in (AssetClass.EQUITY, AssetClass.INDEX):
        zone = _DAY_ZONE.get(asset_class, dt.UTC)
        start = _local_midnight(now - day_offset_s, zone) + day_offset_s  # type: ignore[arg-type]
        return start, start + DAY - DAY_END_GAP_S
    for back in range(0, 15):
        day = now // DAY - back
        offset, weekday, date = _local_day(day, NEW_YORK)
        close = _nyse_close_min(date, weekday)
        if not close:
            continue
        midnight = _local_midnight(day * DAY + DAY // 2, NEW_YORK)
        start, end = midnight + OPEN_MIN * 60, midnight + close * 60
        if start <= now:
            return start, end
    day = now // DAY
    return day * DAY, day * DAY
