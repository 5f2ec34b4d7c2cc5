"""A deterministic market: every price, volume and missing minute is a pure function of
(seed, symbol, time), so any window can be recomputed exactly, and truth never drifts.

Model, per symbol:
- daily closes are a geometric random walk from a fixed epoch (2024-01-01);
- each UTC day's 1440 minute closes are a Brownian bridge between two daily closes;
- each minute's 60 one-second trades are a bridge from the previous minute's close to this
  one's, so a forming bar at second s aggregates trades 0..s;
- volume follows an intraday profile (U-shaped for equities, none for FX) with noise;
- some trading minutes have no trades: Yahoo shows those as nulls or leaves them out.

Noise comes from a counter-based hash (splitmix64), vectorized over any set of
(symbol, time) points with no state to keep.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..calendars import DAY, is_trading, regular_period
from ..symbols import AssetClass, yahoo_asset_class

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


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(key: int, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers, one per counter, fixed for a key."""
    c = np.asarray(counter, dtype=np.int64).astype(np.uint64)
    h = _splitmix(_splitmix(c) ^ np.uint64(key))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def normal(key: int, counter: np.ndarray) -> np.ndarray:
    """Standard normal numbers (Box-Muller), one per counter, fixed for a key."""
    u1 = uniform(key, counter)
    u2 = uniform(key ^ 0x5DEECE66D, counter)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _key(seed: int, symbol: str, salt: str) -> int:
    return zlib.crc32(f"{seed}|{symbol}|{salt}".encode()) | (zlib.crc32(f"{salt}|{symbol}".encode()) << 32)


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
        return MinuteBars(*(getattr(self, f)[mask] for f in self.__slots__))  # type: ignore[attr-defined]


class Market:
    """The simulated market for any Yahoo-style symbol, deterministic for a seed.

    :param seed: fixes every path.
    :param always_open: every symbol trades every minute, regardless of its calendar.
    """

    def __init__(self, seed: int = 42, *, always_open: bool = False) -> None:
        self.seed = seed
        self.always_open = always_open
        self._daily = lru_cache(maxsize=65536)(self._daily_closes)
        self._minutes = lru_cache(maxsize=65536)(self._minute_closes)

    def profile(self, symbol: str) -> Profile:
        """The walk's parameters for a symbol (derived from its name when not listed)."""
        asset_class = yahoo_asset_class(symbol)
        vol, decimals, volume, missing = _CLASS_DEFAULTS[asset_class]
        price = _KNOWN_PRICES.get(symbol)
        if price is None:
            price = 10.0 + (zlib.crc32(symbol.encode()) % 49_000) / 100.0
        return Profile(asset_class, price, vol, decimals, volume, missing)

    def trading(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """Mask of minutes (bar opens) in which the symbol's market is open."""
        if self.always_open:
            return np.ones(np.shape(ts), dtype=bool)
        return is_trading(self.profile(symbol).asset_class, ts)

    def regular_period(self, symbol: str, now: int) -> tuple[int, int]:
        """The current (or last) regular session, as Yahoo's `currentTradingPeriod.regular`."""
        if self.always_open:
            start = now // DAY * DAY
            return (start, start + DAY)
        return regular_period(self.profile(symbol).asset_class, now)

    def _daily_closes(self, symbol: str, upto_day: int) -> np.ndarray:
        p = self.profile(symbol)
        n = max(upto_day - EPOCH_DAY + 1, 1)
        z = normal(_key(self.seed, symbol, "day"), np.arange(n))
        # A mild pull towards the start level keeps years-long walks in a sensible range.
        logp = np.empty(n)
        level = 0.0
        for i, step in enumerate(z * p.daily_vol):  # per day, cached: cheap
            level += step - 0.01 * level
            logp[i] = level
        return np.log(p.price) + logp

    def _minute_closes(self, symbol: str, day: int) -> np.ndarray:
        """Log close of each minute of a UTC day (index 0 = 00:00-00:01), plus the day's open."""
        daily = self._daily(symbol, (day // 256 + 1) * 256)  # cache by blocks of days
        start = daily[day - EPOCH_DAY - 1] if day > EPOCH_DAY else daily[0]
        end = daily[day - EPOCH_DAY]
        p = self.profile(symbol)
        sigma = p.daily_vol / np.sqrt(MINUTES)
        w = np.cumsum(normal(_key(self.seed, symbol, "min"), day * MINUTES + np.arange(MINUTES))) * sigma
        frac = np.arange(1, MINUTES + 1) / MINUTES
        closes = start + frac * (end - start) + (w - frac * w[-1])
        return np.concatenate(([start], closes))

    def minute_bars(self, symbol: str, ts: np.ndarray, upto_second: np.ndarray | None = None) -> MinuteBars:
        """Bars for minute opens `ts`; with `upto_second`, only trades 0..s of each minute count.

        The result covers every requested minute; `traded` marks the ones with trades.
        """
        ts = np.asarray(ts, dtype=np.int64)
        p = self.profile(symbol)
        n = len(ts)
        day, idx = ts // DAY, (ts % DAY) // 60
        log_open, log_close = np.empty(n), np.empty(n)
        for d in np.unique(day):
            sel = day == d
            mc = self._minutes(symbol, int(d))
            log_open[sel] = mc[idx[sel]]
            log_close[sel] = mc[idx[sel] + 1]
        # 60 one-second trades per minute: a bridge from the previous close to this close.
        counters = ts[:, None] + np.arange(60)[None, :]
        sigma = p.daily_vol / np.sqrt(MINUTES * 60)
        w = np.cumsum(normal(_key(self.seed, symbol, "sec"), counters), axis=1) * sigma
        frac = np.arange(1, 61)[None, :] / 60.0
        logp = log_open[:, None] + frac * (log_close - log_open)[:, None] + (w - frac * w[:, -1:])
        prices = np.round(np.exp(logp), p.decimals)
        vol_share = uniform(_key(self.seed, symbol, "vol"), counters) + 0.5
        minute_volume = p.minute_volume * self._volume_profile(p, ts)
        volumes = np.floor(vol_share * (minute_volume / 60.0)[:, None])

        if upto_second is not None:
            upto = np.asarray(upto_second, dtype=np.int64)
            live = np.arange(60)[None, :] <= upto[:, None]
            prices_hi = np.where(live, prices, -np.inf)
            prices_lo = np.where(live, prices, np.inf)
            close = prices[np.arange(n), upto]
            volume = np.where(live, volumes, 0.0).sum(axis=1)
        else:
            prices_hi = prices_lo = prices
            close = prices[:, -1]
            volume = volumes.sum(axis=1)
        traded = uniform(_key(self.seed, symbol, "gap"), ts) >= p.missing
        return MinuteBars(
            ts=ts, open=prices[:, 0], high=prices_hi.max(axis=1), low=prices_lo.min(axis=1),
            close=close, volume=volume, traded=traded,
        )

    @staticmethod
    def _volume_profile(p: Profile, ts: np.ndarray) -> np.ndarray:
        if p.asset_class in (AssetClass.EQUITY, AssetClass.INDEX):
            # U shape over the 13:30-21:00 UTC window: heavy at the open and the close.
            x = np.clip(((ts % DAY) - 13.5 * 3600) / (6.5 * 3600), 0.0, 1.0)
            return 0.6 + 2.4 * (2.0 * x - 1.0) ** 2
        return 0.8 + 0.4 * np.sin(2 * np.pi * (ts % DAY) / DAY)

    def null_style(self, symbol: str, ts: np.ndarray) -> np.ndarray:
        """For minutes without trades: True where Yahoo shows nulls, False where it omits them."""
        return uniform(_key(self.seed, symbol, "null"), ts) < 0.5
