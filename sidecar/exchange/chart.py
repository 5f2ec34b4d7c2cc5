"""Yahoo's chart rows from the market's minutes: one-minute rows with nulls or gaps for minutes
without trades, and coarser intervals aggregated on Yahoo's bucket grid (session-anchored hours
for US equities, each market's day for daily bars)."""

from __future__ import annotations

import numpy as np

from ..symbols import AssetClass
from .market import Market, MinuteBars
from .sessions import DAY


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
