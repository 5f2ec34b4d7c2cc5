"""A deterministic market: every price, volume and missing minute is a pure function of
(seed, symbol, time), so any window can be recomputed exactly, and truth never drifts.

Model, per symbol:
- daily closes are a geometric random walk from a fixed epoch (2024-01-01), forwards and,
  with its own draws, backwards, so decades of daily history exist;
- each UTC day's 1440 minute closes are a Brownian bridge between two daily closes;
- each minute's 60 one-second trades follow a path from the previous minute's close to this
  one's through two excursions (piecewise linear in log price between four knots: seconds 0,
  a, b and 59), so a forming bar at second s aggregates trades 0..s, a quote at second s shows
  trade s, and a bar built from quotes sampled every second equals the chart's bar. A
  minute's high and low lie on its knots, so years of bars cost a few draws per minute;
- a split divides every price from its ex-date on (and multiplies volume): prices are as
  traded; dividends (`actions.py`) do not move them;
- a minute's volume follows an intraday profile (U-shaped for equities, none for FX) with
  noise, spread evenly over its seconds; a quote shows the UTC day's volume so far;
- some trading minutes have no trades: Yahoo shows those as nulls or leaves them out.

Noise comes from a counter-based hash (`noise.py`), vectorized over any set of (symbol, time)
points with no state to keep.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..symbols import AssetClass
from . import sessions
from .names import asset_class_of
from .noise import key, normal, uniform
from .sessions import DAY

EPOCH_DAY = 19723  # 2024-01-01, the first day of every daily walk
MINUTES = 1440


@dataclass(slots=True, frozen=True)
class Profile:
    """Per-symbol parameters of the walk."""

    asset_class: AssetClass
    price: float  # level on the epoch day
    daily_vol: float  # stdev of daily log returns
    decimals: int  # price tick
    minute_volume: float  # mean traded volume per minute (0: the source reports none)
    missing: float  # probability that a trading minute has no trades


_CLASS_DEFAULTS = {
    AssetClass.EQUITY: (0.018, 2, 40_000.0, 0.01),
    AssetClass.INDEX: (0.011, 2, 2_000_000.0, 0.0),
    AssetClass.FX: (0.005, 5, 0.0, 0.002),
    AssetClass.CRYPTO: (0.03, 2, 2_500_000.0, 0.005),  # volume in USD, as Yahoo reports it
    AssetClass.FUTURES: (0.009, 1, 600.0, 0.02),
}
_KNOWN_PRICES = {
    "^NDX": 17000.0, "^DJI": 37500.0, "^GSPC": 4750.0, "GC=F": 2060.0, "SI=F": 23.5,
    "EURUSD=X": 1.10, "BTC-USD": 42000.0, "AAPL": 185.0, "MSFT": 375.0, "TSLA": 245.0,
    "GOOGL": 140.0, "SPY": 475.0,
}


@dataclass(slots=True)
class MinuteBars:
    """Parallel arrays of one-minute bars; `traded` is False where a minute had no trades."""

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    traded: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def select(self, mask: np.ndarray) -> MinuteBars:
        """The bars where `mask` is True."""
        return MinuteBars(*(getattr(self, f)[mask] for f in self.__slots__))


@dataclass(slots=True)
class QuoteRows:
    """Parallel arrays of a batch quote: last trade price, its unix second, day volume so far."""

    price: np.ndarray
    time: np.ndarray
    day_volume: np.ndarray


@dataclass(slots=True)
class _QuoteTable:
    live: np.ndarray  # the symbol trades in this minute
    prices: np.ndarray  # (n, 60) trade price of each second
    cumvol: np.ndarray  # (n, 60) volume of the minute up to each second
    before: np.ndarray  # day volume before the minute
    last_price: np.ndarray  # for the others: their last trade before the minute
    last_time: np.ndarray
    last_volume: np.ndarray


@dataclass(slots=True)
class _Path:
    """Each row's minute of trades: log prices at four knot seconds, linear between them."""

    secs: np.ndarray  # (n, 4) knot seconds: 0, a, b, 59
    vals: np.ndarray  # (n, 4) log prices at the knots
    scale: np.ndarray  # (n,) 10 ** decimals: prices are rounded to the tick
    volume: np.ndarray  # (n,) the minute's volume

    def prices(self, s: np.ndarray) -> np.ndarray:
        """Trade prices at seconds `s` ((n, k), or (1, k) for the same seconds in every row)."""
        s = np.broadcast_to(s, (len(self.secs), np.shape(s)[1])).astype(np.float64)
        logp = np.full(s.shape, np.nan)
        for j in range(3):  # the segment between knots j and j+1 holds the seconds in [s0, s1]
            s0, s1 = self.secs[:, j:j + 1], self.secs[:, j + 1:j + 2]
            v0, v1 = self.vals[:, j:j + 1], self.vals[:, j + 1:j + 2]
            logp = np.where((s >= s0) & (s <= s1), v0 + (s - s0) / (s1 - s0) * (v1 - v0), logp)
        return np.round(np.exp(logp) * self.scale[:, None]) / self.scale[:, None]


class Market:
    """The simulated market for any Yahoo-style symbol, deterministic for a seed.

    :param seed: fixes every path.
    :param always_open: every symbol trades every minute, regardless of its calendar.
    :param day_offset_s: per asset class, where its 24-hour day (Yahoo's regular period, ending
        at 23:59) starts, from its usual midnight; tests move a day's end into their run.
    """

    def __init__(self, seed: int = 42, *, always_open: bool = False,
                 day_offset_s: Mapping[AssetClass, int] | None = None) -> None:
        self.seed = seed
        self.always_open = always_open
        self.day_offset_s = dict(day_offset_s or {})
        self._daily = lru_cache(maxsize=4096)(self._daily_closes)
        self.extra_splits: dict[str, list[tuple[int, float]]] = {}  # splits set through the admin API
        self.halts: dict[str, tuple[int, int]] = {}  # symbol -> [start, end): minute opens without trades
        self._minutes = lru_cache(maxsize=65536)(self._minute_closes)
        self._day_volumes = lru_cache(maxsize=32768)(self._day_volume)
        self._quote_table = lru_cache(maxsize=256)(self._minute_table)
        self._key_cache: dict[str, tuple[int, int, int]] = {}
        self.profile = lru_cache(maxsize=65536)(self._profile)

    def _profile(self, symbol: str) -> Profile:
        """The walk's parameters for a symbol (derived from its name when not listed)."""
        asset_class = asset_class_of(symbol)
        vol, decimals, volume, missing = _CLASS_DEFAULTS[asset_class]
        price = _KNOWN_PRICES.get(symbol)
        if price is None:
            price = 10.0 + (zlib.crc32(symbol.encode()) % 49_000) / 100.0
        return Profile(asset_class, price, vol, decimals, volume, missing)

    def trading(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """Mask of minutes (bar opens) in which the symbol's market is open."""
        if self.always_open:
            return np.ones(np.shape(ts), dtype=bool)
        return sessions.trading(self.profile(symbol).asset_class, ts)

    def regular_period(self, symbol: str, now: int) -> tuple[int, int]:
        """The current (or last) regular session, as Yahoo's `currentTradingPeriod.regular`."""
        asset_class = self.profile(symbol).asset_class
        return sessions.regular_period(asset_class, now, self.day_offset_s.get(asset_class, 0), self.always_open)

    def _daily_closes(self, symbol: str, upto: int, salt: str) -> np.ndarray:
        """Log closes of the walk's first `upto` days away from the epoch, forwards ("day") or
        backwards ("back"); the epoch day's close is the symbol's start level."""
        p = self.profile(symbol)
        n = max(upto, 1)
        steps = normal(key(self.seed, symbol, salt), np.arange(n)) * p.daily_vol
        # A mild pull towards the start level (level_i = 0.99 level_i-1 + step_i) keeps
        # years-long walks in a sensible range; solved in closed form per block.
        logp = np.empty(n)
        level = 0.0
        for b in range(0, n, 256):  # blocks keep 0.99**-k far from overflow
            chunk = steps[b:b + 256]
            k = np.arange(1, len(chunk) + 1)
            logp[b:b + 256] = 0.99 ** k * (level + np.cumsum(chunk * 0.99 ** -(k - 1)) / 0.99)
            level = logp[b + len(chunk) - 1]
        return np.log(p.price) + logp

    def day_close(self, symbol: str, day: int) -> float:
        """The log close of UTC day `day` of the walk."""
        if day >= EPOCH_DAY:
            k = day - EPOCH_DAY  # forwards: day EPOCH_DAY is the first step
            return float(self._daily(symbol, (k // 256 + 1) * 256, "day")[k])
        k = EPOCH_DAY - 1 - day  # backwards: the day before the epoch is the first step back
        return float(self._daily(symbol, (k // 256 + 1) * 256, "back")[k])

    def _minute_closes(self, symbol: str, day: int) -> np.ndarray:
        """Log close of each minute of a UTC day (index 0 = 00:00-00:01), plus the day's open."""
        start, end = self.day_close(symbol, day - 1), self.day_close(symbol, day)
        p = self.profile(symbol)
        sigma = p.daily_vol / np.sqrt(MINUTES)
        w = np.cumsum(normal(key(self.seed, symbol, "min"), day * MINUTES + np.arange(MINUTES))) * sigma
        frac = np.arange(1, MINUTES + 1) / MINUTES
        closes = start + frac * (end - start) + (w - frac * w[-1])
        return np.concatenate(([start], closes))

    def minute_bars(self, symbol: str, ts: np.ndarray, upto_second: np.ndarray | None = None) -> MinuteBars:
        """Bars for minute opens `ts`; with `upto_second`, only trades 0..s of each minute count.

        The result covers every requested minute; `traded` marks the ones with trades.
        """
        ts = np.asarray(ts, dtype=np.int64)
        n = len(ts)
        path = self._path([symbol] * n, ts)
        upto = np.full(n, 59) if upto_second is None else np.asarray(upto_second, dtype=np.int64)
        at = path.prices(upto[:, None])[:, 0]
        knots = path.prices(path.secs)
        live = path.secs <= upto[:, None]
        return MinuteBars(
            ts=ts, open=knots[:, 0] if n else np.empty(0),
            high=np.maximum(np.where(live, knots, -np.inf).max(axis=1, initial=-np.inf), at),
            low=np.minimum(np.where(live, knots, np.inf).min(axis=1, initial=np.inf), at), close=at,
            volume=np.floor(path.volume * (upto + 1) / 60.0), traded=self._traded(symbol, ts),
        )

    def _path(self, symbols: list[str], ts: np.ndarray) -> _Path:
        """The trade path of minute ts[i] of symbols[i] (rows: one per (symbol, minute) pair)."""
        n = len(ts)
        log_open, log_close, sigma, scale = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
        split = np.ones(n)
        key_sec = np.empty(n, dtype=np.uint64)
        day, idx = ts // DAY, (ts % DAY) // 60
        for symbol, rows in self._group(symbols):
            p = self.profile(symbol)
            sigma[rows], scale[rows] = p.daily_vol / np.sqrt(MINUTES * 60), 10.0 ** p.decimals
            key_sec[rows] = self._keys(symbol)[0]
            split[rows] = self.split_factor(symbol, ts[rows])
            sym_days = day[rows]
            for d in np.unique(sym_days).tolist():
                sel = rows[sym_days == d]
                mc = self._minutes(symbol, d)
                log_open[sel], log_close[sel] = mc[idx[sel]], mc[idx[sel] + 1]
        # Knots: the first trade one step from the last close, two excursions at seconds a (1-29)
        # and b (30-58), scaled like a bridge's spread there, and the close at second 59.
        z = normal(key_sec[:, None], ts[:, None] + np.arange(3)[None, :]) if n else np.empty((0, 3))
        u = uniform(key_sec[:, None] ^ np.uint64(0x2545F4914F6CDD1D), ts[:, None] + np.arange(2)[None, :]) if n \
            else np.empty((0, 2))
        a, b = 1 + np.floor(u[:, 0] * 29), 30 + np.floor(u[:, 1] * 29)
        secs = np.stack([np.zeros(n), a, b, np.full(n, 59.0)], axis=1)
        drift = log_close - log_open
        vals = np.stack([log_open + sigma * z[:, 0],
                         log_open + a / 59 * drift + sigma * np.sqrt(np.minimum(a, 59 - a)) * z[:, 1],
                         log_open + b / 59 * drift + sigma * np.sqrt(np.minimum(b, 59 - b)) * z[:, 2],
                         log_close], axis=1) - np.log(split)[:, None]
        return _Path(secs, vals, scale, np.floor(self._minute_volume(symbols, ts) * split))

    def split_factor(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """How many shares of each bar's time one share of the walk's start is (1 before any split)."""
        out = np.ones(len(ts))
        for when, ratio in self.splits(symbol):
            out[ts >= when] *= ratio
        return out

    def splits(self, symbol: str) -> list[tuple[int, float]]:
        """The symbol's splits: (ex-date session open, new shares per old share), oldest first.
        One equity in twenty split once between 2015 and mid-2025 (2, 3 or 4 for 1); the admin
        API adds more."""
        seeded = self._seeded_split(symbol)
        return sorted([*seeded, *self.extra_splits.get(symbol, [])])

    @lru_cache(maxsize=65536)  # noqa: B019  # one Market per exchange, for its whole life
    def _seeded_split(self, symbol: str) -> tuple[tuple[int, float], ...]:
        if self.profile(symbol).asset_class is not AssetClass.EQUITY:
            return ()
        u = uniform(key(self.seed, symbol, "split"), np.arange(3))
        if u[0] >= 0.05:
            return ()
        return ((sessions.first_session_open(16436 + int(u[1] * 3800)), float(2 + int(u[2] * 3))),)

    def _group(self, symbols: list[str]) -> list[tuple[str, np.ndarray]]:
        """Row indices per distinct symbol, in first-seen order."""
        if len(set(symbols)) == 1:
            return [(symbols[0], np.arange(len(symbols)))]
        groups: dict[str, list[int]] = {}
        for i, symbol in enumerate(symbols):
            groups.setdefault(symbol, []).append(i)
        return [(symbol, np.array(rows)) for symbol, rows in groups.items()]

    def _minute_volume(self, symbols: list[str], ts: np.ndarray) -> np.ndarray:
        """Volume of minute ts[i] of symbols[i]: one draw around the intraday profile."""
        n = len(ts)
        mean, key_vol, equity = np.empty(n), np.empty(n, dtype=np.uint64), np.empty(n, dtype=bool)
        for symbol, rows in self._group(symbols):
            p = self.profile(symbol)
            mean[rows], key_vol[rows] = p.minute_volume, self._keys(symbol)[1]
            equity[rows] = p.asset_class in (AssetClass.EQUITY, AssetClass.INDEX)
        x = np.clip(((ts % DAY) - 13.5 * 3600) / (6.5 * 3600), 0.0, 1.0)
        # U shape over the 13:30-21:00 UTC window for stocks: heavy at the open and the close.
        shape = np.where(equity, 0.6 + 2.4 * (2.0 * x - 1.0) ** 2, 0.8 + 0.4 * np.sin(2 * np.pi * (ts % DAY) / DAY))
        return np.floor(mean * shape * (uniform(key_vol, ts) + 0.5))

    def _keys(self, symbol: str) -> tuple[int, int, int]:
        keys = self._key_cache.get(symbol)
        if keys is None:
            keys = self._key_cache[symbol] = (key(self.seed, symbol, "sec"), key(self.seed, symbol, "vol"),
                                              key(self.seed, symbol, "gap"))
        return keys

    def _day_volume(self, symbol: str, day: int) -> np.ndarray:
        """Volume traded in the UTC day before each of its 1440 minutes, and in the whole day (1441
        values): the minutes' bar volumes (split-adjusted, as `_path` makes them), so that a quote's
        day volume moves by exactly its minute bar's volume."""
        ts = day * DAY + 60 * np.arange(MINUTES, dtype=np.int64)
        volume = np.floor(self._minute_volume([symbol] * MINUTES, ts) * self.split_factor(symbol, ts))
        counted = np.where(self._traded(symbol, ts) & self.trading(symbol, ts), volume, 0.0)
        return np.concatenate(([0.0], np.cumsum(counted)))

    def quotes(self, symbols: tuple[str, ...], now: int) -> QuoteRows:
        """What a batch quote endpoint shows for `symbols` at second `now`: each one's last trade
        (price and unix second) and the volume traded so far in its UTC day."""
        minute, second = now // 60 * 60, now % 60
        t = self._quote_table(symbols, minute)
        return QuoteRows(
            price=np.where(t.live, t.prices[:, second], t.last_price),
            time=np.where(t.live, minute + second, t.last_time),
            day_volume=np.where(t.live, t.before + t.cumvol[:, second], t.last_volume),
        )

    def _minute_table(self, symbols: tuple[str, ...], minute: int) -> _QuoteTable:
        """Every second of one minute for a set of symbols, computed together (cached: a quote
        poller asks for the same set every second)."""
        names = list(symbols)
        ts = np.full(len(names), minute, dtype=np.int64)
        keys = np.array([self._keys(s)[2] for s in names], dtype=np.uint64)
        missing = np.array([self.profile(s).missing for s in names])
        live = (uniform(keys, ts) >= missing) & self._trading_many(names, minute)
        if self.halts:
            live &= ~np.array([self._halted(s, ts[:1])[0] for s in names], dtype=bool)
        path = self._path(names, ts)
        prices = path.prices(np.arange(60)[None, :])
        cumvol = np.floor(path.volume[:, None] * np.arange(1, 61)[None, :] / 60.0)
        day, j = minute // DAY, (minute % DAY) // 60
        before = np.array([self._day_volumes(s, day)[j] for s in names])
        last_price, last_time, last_volume = np.zeros(len(names)), np.zeros(len(names), dtype=np.int64), \
            np.zeros(len(names))
        for i in np.flatnonzero(~live).tolist():
            last_price[i], last_time[i], last_volume[i] = self.last_trade(names[i], minute)
        return _QuoteTable(live, prices, cumvol, before, last_price, last_time, last_volume)

    def _trading_many(self, symbols: list[str], minute: int) -> np.ndarray:
        if self.always_open:
            return np.ones(len(symbols), dtype=bool)
        ts = np.array([minute], dtype=np.int64)
        by_class = {c: bool(sessions.trading(c, ts)[0]) for c in AssetClass}
        return np.array([by_class[self.profile(s).asset_class] for s in symbols], dtype=bool)

    def halt(self, symbol: str, start: int, end: int) -> None:
        """No trades in the minutes of `symbol` that open in [start, end): a trading halt. Set
        it before anyone asked for those minutes, or what was served of them stops being true."""
        self.halts[symbol] = (start, end)
        self._day_volumes.cache_clear()
        self._quote_table.cache_clear()

    def _traded(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """Mask of minutes with trades (the market may still be closed then: see `trading`)."""
        return (uniform(self._keys(symbol)[2], ts) >= self.profile(symbol).missing) & ~self._halted(symbol, ts)

    def _halted(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        start, end = self.halts.get(symbol, (0, 0))
        return (ts >= start) & (ts < end)

    def last_trade(self, symbol: str, before: int) -> tuple[float, int, float]:
        """The newest trade before minute `before`: its price, second, and day volume then."""
        for back in range(0, 7):  # a closed market: look back over a long weekend
            day = before // DAY - back
            ts = day * DAY + 60 * np.arange(MINUTES, dtype=np.int64)
            ts = ts[ts < before]
            ok = ts[self.trading(symbol, ts) & self._traded(symbol, ts)]
            if len(ok):
                last = int(ok[-1])
                bar = self.minute_bars(symbol, np.array([last]))
                volume = self._day_volumes(symbol, day)[(last % DAY) // 60 + 1]
                return float(bar.close[0]), last + 59, float(volume)
        return math.nan, 0, 0.0

    def null_style(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """For minutes without trades: True where Yahoo shows nulls, False where it omits them."""
        return uniform(key(self.seed, symbol, "null"), ts) < 0.5
