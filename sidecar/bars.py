"""The one bar type every provider's payload is normalized into, and timeframe helpers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

TIMEFRAMES: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}
"""Supported timeframes and their length in seconds; bars are labelled by their start."""


class BarFlag(IntFlag):
    """Bits of `Bar.flags`; the same integer is stored in Redis and SQLite."""

    NONE = 0
    FORMING = 1  # the bar's bucket has not ended yet; its values will still change
    SYNTHETIC = 2  # made by gap filling, not received from a source
    STALE = 4  # the last good value kept while every source for the symbol fails
    UNALIGNED = 8  # a higher-timeframe bar of bucket rules no longer configured, with no finer history to rebuild it


# The flags as plain ints: IntFlag arithmetic costs ~1 us per bar in the per-bar paths.
FORMING = int(BarFlag.FORMING)
SYNTHETIC = int(BarFlag.SYNTHETIC)
STALE = int(BarFlag.STALE)
UNALIGNED = int(BarFlag.UNALIGNED)
SETTLED_S = 3600
"""A source's bar older than this no longer changes (delayed feeds included): the live loop
owns the minutes after it, gap scans and verification the ones before."""


Row = tuple[str, str, int, float, float, float, float, float, str, int]
"""A bar as the `bars` table's columns, in `Bar`'s field order: symbol, timeframe, ts, open,
high, low, close, volume, source, flags (`Bar(*row)` is the bar)."""


@dataclass(slots=True, frozen=True)
class Bar:
    """One OHLCV bar: canonical symbol, timeframe, UTC epoch second of the bar's open."""

    symbol: str
    timeframe: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    source: str
    flags: int = 0

    @property
    def forming(self) -> bool:
        """True while the bar's bucket is still open."""
        return bool(int.__and__(self.flags, FORMING))  # int's &, not IntFlag's (1 us per call)

    @property
    def stale(self) -> bool:
        """The last good value of a symbol whose sources all fail (or, read through
        `sidecar.client`, any value while the daemon's heartbeat is missing)."""
        return bool(int.__and__(self.flags, STALE))

    @property
    def values(self) -> tuple[float, float, float, float, float]:
        """(open, high, low, close, volume): what a revision compares."""
        return (self.open, self.high, self.low, self.close, self.volume)

    @property
    def row(self) -> Row:
        """The bar as the `bars` table's columns (`Bar(*bar.row)` is the bar again)."""
        return (self.symbol, self.timeframe, self.ts, self.open, self.high, self.low, self.close, self.volume,
                self.source, self.flags)

    @property
    def key(self) -> tuple[str, str, int]:
        """The identity of a bar in every store: (symbol, timeframe, ts)."""
        return (self.symbol, self.timeframe, self.ts)

    def as_map(self) -> dict[str, object]:
        """Named fields for msgpack and JSON; the documented Redis value format."""
        return {
            "symbol": self.symbol,
            "tf": self.timeframe,
            "ts": self.ts,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "source": self.source,
            "flags": self.flags,
        }

    @classmethod
    def from_map(cls, m: dict[str, object]) -> Bar:
        """Inverse of `as_map`."""
        return cls(
            symbol=str(m["symbol"]),
            timeframe=str(m["tf"]),
            ts=int(m["ts"]),  # type: ignore[call-overload]
            open=float(m["open"]),  # type: ignore[arg-type]
            high=float(m["high"]),  # type: ignore[arg-type]
            low=float(m["low"]),  # type: ignore[arg-type]
            close=float(m["close"]),  # type: ignore[arg-type]
            volume=float(m["volume"]),  # type: ignore[arg-type]
            source=str(m["source"]),
            flags=int(m["flags"]),  # type: ignore[call-overload]
        )


def timeframe_seconds(timeframe: str) -> int:
    """Length of a timeframe in seconds; KeyError names the unknown timeframe."""
    return TIMEFRAMES[timeframe]


def bucket_start(ts: float, seconds: int) -> int:
    """The open of the bucket of length `seconds` that contains `ts` (epoch-aligned)."""
    return int(ts // seconds) * seconds
