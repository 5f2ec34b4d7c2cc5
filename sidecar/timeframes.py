"""Timeframes above the minute: which bucket each minute belongs to, by asset class, and how
a bucket's minutes become one bar.

The rules (the README shows each with an example):

- **US equities and indices**: intraday buckets are anchored at the NYSE session open and never
  span the close: 1h bars 09:30-10:30 ... 15:30-16:00 New York, 4h bars 09:30-13:30 and
  13:30-16:00; on an early close (13:00) the last bucket ends at 13:00. DST and holidays come
  from the exchange calendar. The daily bar is the session, stamped at its open (as Yahoo
  stamps its own daily bars). Minutes outside a regular session fall on the UTC grid.
- **Crypto, FX and futures**: intraday buckets on the UTC grid (epoch-aligned). The day starts
  at a per-class local time, by default the one the primary source uses for its daily bars
  (Yahoo: FX 00:00 London, futures 00:00 New York, crypto 00:00 UTC; providers.md section 8.2),
  so days fetched as daily history and days aggregated live are the same bars.
  `SIDECAR_DAY_START` changes it (e.g. `fx=17:00 America/New_York`).

A bucket's bar: the first minute's open, the highest high, the lowest low, the last minute's
close, the summed volume, stamped at the bucket's start. A bucket cut short (a close, missing
minutes) is still one bar; a bucket without a minute is no bar.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from .arrays import distinct
from .bars import TIMEFRAMES
from .calendars import DAY, nyse_sessions
from .symbols import AssetClass

BASE = "1m"
ALL = tuple(TIMEFRAMES)
"""Every timeframe the daemon can build, finest first."""


@dataclass(slots=True, frozen=True)
class DayStart:
    """The local time a trading day starts at, in an IANA time zone."""

    hour: int
    minute: int
    zone: str

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d} {self.zone}"


DEFAULT_DAY_STARTS: dict[AssetClass, DayStart] = {
    AssetClass.FX: DayStart(0, 0, "Europe/London"),
    AssetClass.FUTURES: DayStart(0, 0, "America/New_York"),
    AssetClass.CRYPTO: DayStart(0, 0, "UTC"),
}


def parse_timeframes(raw: str, with_base: bool = True) -> tuple[str, ...]:
    """`1m,5m,1h` -> the timeframes, finest first, 1m included unless not `with_base`;
    ValueError otherwise."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in TIMEFRAMES]
    if bad or not names:
        raise ValueError(f"unknown timeframe {bad[0] if bad else raw!r}: expected some of {', '.join(ALL)}")
    return tuple(tf for tf in ALL if tf in names or (with_base and tf == BASE))


def parse_day_starts(raw: str) -> tuple[tuple[str, str], ...]:
    """`fx=17:00 America/New_York,crypto=00:00 UTC` -> ((class, "HH:MM zone"), ...); the
    classes not named keep their default. Equities and indices have sessions, not a setting."""
    out: dict[str, str] = {}
    for part in filter(str.strip, raw.split(",")):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in {c.value for c in DEFAULT_DAY_STARTS}:
            raise ValueError(f"expected fx, futures or crypto before '=', got {name!r}")
        out[name] = str(day_start(value))
    return tuple(out.items())


def day_start(text: str) -> DayStart:
    """`HH:MM Zone` -> DayStart; ValueError naming what is wrong."""
    clock, _, zone = text.strip().partition(" ")
    try:
        hour, minute = (int(x) for x in clock.split(":"))
    except ValueError:
        raise ValueError(f"expected 'HH:MM Zone', got {text.strip()!r}") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise ValueError(f"expected a time of day, got {clock!r}")
    try:
        ZoneInfo(zone.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone.strip()!r}") from None
    return DayStart(hour, minute, zone.strip())


@lru_cache(maxsize=8192)
def _day_edges(start: DayStart, utc_day: int) -> np.ndarray:
    """The day starts around a UTC day: local dates utc_day-1 .. utc_day+2 at `start`'s time
    (every timestamp of the UTC day lies between the first and the last)."""
    zone = ZoneInfo(start.zone)
    base = dt.date(1970, 1, 1)
    return np.array([int(dt.datetime.combine(base + dt.timedelta(days=d), dt.time(start.hour, start.minute),
                                             tzinfo=zone).timestamp()) for d in range(utc_day - 1, utc_day + 3)],
                    dtype=np.int64)


class Buckets:
    """The bucket rules for every asset class.

    :param day_starts: where the day starts for FX, futures and crypto (others: the defaults).
    """

    def __init__(self, day_starts: Mapping[AssetClass, DayStart] | None = None) -> None:
        self.day_starts = {**DEFAULT_DAY_STARTS, **(day_starts or {})}

    def bounds(self, asset_class: AssetClass, timeframe: str, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of the bucket of `timeframe` each minute (by its open) belongs to."""
        ts = np.asarray(ts, dtype=np.int64)
        step = TIMEFRAMES[timeframe]
        grid = ts // step * step
        start, end = grid, grid + step
        if timeframe == BASE:
            return start, end
        if asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
            opens, closes = nyse_sessions(ts)
            inside = opens >= 0
            if timeframe == "1d":
                day = ts // DAY * DAY  # outside a session: the UTC day
                return np.where(inside, opens, day), np.where(inside, closes, day + DAY)
            anchored = opens + (ts - opens) // step * step
            return (np.where(inside, anchored, start), np.where(inside, np.minimum(anchored + step, closes), end))
        if timeframe != "1d":
            return start, end
        first = self.day_starts[asset_class]
        days = ts // DAY
        start, end = np.empty_like(ts), np.empty_like(ts)
        for d in distinct(days)[0].tolist():
            sel = days == d
            edges = _day_edges(first, d)
            at = np.searchsorted(edges, ts[sel], side="right") - 1
            start[sel], end[sel] = edges[at], edges[at + 1]
        return start, end

    def bounds_by_class(self, classes: np.ndarray, timeframe: str, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`bounds` for rows of mixed asset classes (`classes`: index into AssetClass order)."""
        start, end = np.empty_like(ts), np.empty_like(ts)
        members = list(AssetClass)
        for code in distinct(classes)[0].tolist():
            sel = classes == code
            start[sel], end[sel] = self.bounds(members[code], timeframe, ts[sel])
        return start, end


@dataclass(slots=True)
class Groups:
    """Rows aggregated per (key, bucket): one bar per group, with its first and last minute."""

    key: np.ndarray  # int64: the slot (or any grouping key) of the group
    start: np.ndarray  # int64: the bucket's start (the bar's ts)
    end: np.ndarray  # int64: the bucket's end
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    first: np.ndarray  # int64: the first minute's open
    last: np.ndarray  # int64: the last minute's open
    tail: np.ndarray  # int64: the input row of the last minute

    def __len__(self) -> int:
        return len(self.key)


def aggregate(key: np.ndarray, ts: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray,
              v: np.ndarray, start: np.ndarray, end: np.ndarray) -> Groups:
    """One bar per (key, bucket start) from minutes in any order: first open, max high, min low,
    last close, summed volume. Every aggregation (live, rebuild, history) goes through here."""
    if not len(ts):
        i = np.zeros(0, dtype=np.int64)
        f = np.zeros(0)
        return Groups(i, i, i, f, f, f, f, f, i, i, i)
    order = np.lexsort((ts, start, key))
    key, ts, start, end = key[order], ts[order], start[order], end[order]
    heads = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (start[1:] != start[:-1])])
    tails = np.r_[heads[1:], len(ts)] - 1
    return Groups(key[heads], start[heads], end[heads], o[order][heads], np.maximum.reduceat(h[order], heads),
                  np.minimum.reduceat(lo[order], heads), c[order][tails], np.add.reduceat(v[order], heads),
                  ts[heads], ts[tails], order[tails])
