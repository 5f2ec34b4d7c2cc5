"""Gap fill: flat bars for the minutes a market was open and a symbol did not trade.

Between two consecutive accepted closed bars of a symbol, each minute inside the same trading
session (never across a close, never longer than `MAX_FILL_S`) gets a bar at the previous
close with volume 0, flagged SYNTHETIC. They go to Redis's history only, so a consumer sees a
regular grid: SQLite keeps what sources served, and the indicators see real bars.
"""

from __future__ import annotations

import numpy as np

from ..bars import SYNTHETIC
from ..calendars import is_trading, session_day
from .batch import Batch, previous_in_slot
from .table import CLASSES

MAX_FILL_S = 6 * 3600  # a longer silence inside a session is an outage to report, not minutes to fill


def fill_gaps(closed: Batch, before_ts: np.ndarray, before_close: np.ndarray, asset_class: np.ndarray,
              step: int) -> Batch:
    """The synthetic bars between each accepted closed bar and the one before it (the previous
    row of its slot, else the slot's last closed bar before this cycle: `before_ts`/`before_close`,
    indexed by slot, -1 where none). `closed` is sorted by (slot, ts)."""
    n = len(closed)
    if n == 0:
        return Batch.empty()
    prev_ts = previous_in_slot(closed.slot, closed.ts, before_ts)
    prev_close = previous_in_slot(closed.slot, closed.close, before_close)
    gap = closed.ts - prev_ts
    rows = np.flatnonzero((prev_ts >= 0) & (gap > step) & (gap <= MAX_FILL_S))
    if not len(rows):
        return Batch.empty()
    counts = gap[rows] // step - 1 + (gap[rows] % step > 0)  # whole minutes strictly between the two bars
    owner = np.repeat(rows, counts)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    minutes = prev_ts[owner] + step * (offset + 1)
    keep = np.zeros(len(minutes), dtype=bool)
    classes = asset_class[closed.slot[owner]]
    for code in np.unique(classes).tolist():
        sel = np.flatnonzero(classes == code)
        cls = CLASSES[code]
        days = session_day(cls, minutes[sel])
        keep[sel] = (is_trading(cls, minutes[sel]) & (days == session_day(cls, prev_ts[owner[sel]]))
                     & (days == session_day(cls, closed.ts[owner[sel]])))
    owner, minutes = owner[keep], minutes[keep]
    price = prev_close[owner]
    return Batch(closed.slot[owner], minutes, price, price, price, price, np.zeros(len(owner)),
                 np.full(len(owner), SYNTHETIC, dtype=np.int64), closed.source[owner], np.full(len(owner), np.inf))
