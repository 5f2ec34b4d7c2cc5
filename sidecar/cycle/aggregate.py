"""Aggregate: one higher timeframe's bars from the cycle's accepted minutes.

Each slot has at most one open bucket, held in arrays (its bar so far and its first and last
minute). A cycle's closed minutes are grouped per (slot, bucket) and merged into it; a bucket
closes when a minute of a later bucket arrives, or when its end has passed on the clock and
the slot's newest minute is not still forming inside it (a bucket whose last minute is late
closes anyway `LATE_CLOSE_S` after its end; the minute then revises it), nor, in quotes mode,
still to come from the catch-up (held at most `CATCH_UP_HOLD_S`). The forming minute
gives the forming bar: the open bucket merged with it, nothing stored.

What the arrays cannot answer exactly goes to a rebuild from the stored minutes (the caller
reads them after the cycle's minutes reached the store): a minute of a bucket already closed
(late, or catch-up after an outage), a minute out of order inside the open bucket, a corrected
minute, and any bucket that began before this process followed the slot (after a restart its
first minutes are in the store, not in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bars import FORMING
from ..timeframes import Buckets, Groups, aggregate
from .batch import Batch
from .table import SymbolTable, grow_columns, reset_columns

LATE_CLOSE_S = 120  # a bucket whose newest minute is still forming this long after its end closes anyway
CATCH_UP_HOLD_S = 5
"""Quotes mode: how long after its end a bucket waits for minutes the catch-up is still to
answer (a cycle no longer waits for those answers; without the hold, the bucket of each symbol
caught up at a close, ~100 at 10,000 symbols, closed without its last minute and was revised a
second later)."""

_STATE: dict[str, tuple[type, float]] = {
    "start": (np.int64, -1),  # the open bucket's start (-1: none)
    "end": (np.int64, -1),
    "open": (np.float64, np.nan),
    "high": (np.float64, np.nan),
    "low": (np.float64, np.nan),
    "close": (np.float64, np.nan),
    "volume": (np.float64, 0.0),
    "first": (np.int64, -1),  # open of its first and last minute
    "last": (np.int64, -1),
    "source": (np.int16, -1),
    "closed_until": (np.int64, -1),  # end of the newest bucket closed
    "known_from": (np.int64, 0),  # buckets starting before this are rebuilt from the store
    "ref_ts": (np.int64, -1),  # the newest closed bar: what its committed features are stamped with
    "ref_close": (np.float64, np.nan),
    "hist_ts": (np.int64, -1),  # open of the newest closed bar this process wrote to the Redis history
}


@dataclass(slots=True)
class Step:
    """What one cycle's minutes did to one timeframe."""

    closed: Batch  # bars closed this cycle, by (slot, ts)
    forming: Batch  # at most one per slot
    rebuild: np.ndarray  # (n, 3) int64 rows: slot, bucket start, bucket end, to rebuild from the store


class Aggregator:
    """One timeframe's open buckets for every slot.

    :param timeframe: the timeframe built.
    :param table: the symbol table (asset classes, each slot's newest minute).
    :param buckets: the bucket rules.
    """

    def __init__(self, timeframe: str, table: SymbolTable, buckets: Buckets) -> None:
        self.timeframe, self.table, self.buckets = timeframe, table, buckets
        grow_columns(self, _STATE, 0)
        self.start: np.ndarray
        self.end: np.ndarray
        self.open: np.ndarray
        self.high: np.ndarray
        self.low: np.ndarray
        self.close: np.ndarray
        self.volume: np.ndarray
        self.first: np.ndarray
        self.last: np.ndarray
        self.source: np.ndarray
        self.closed_until: np.ndarray
        self.known_from: np.ndarray
        self.ref_ts: np.ndarray
        self.ref_close: np.ndarray
        self.hist_ts: np.ndarray

    def _fit(self) -> None:
        """Grow the arrays with the table."""
        if len(self.table.active) > len(self.start):
            grow_columns(self, _STATE, len(self.table.active))

    def reset(self, slots: np.ndarray, since: int) -> None:
        """Fresh state for newly followed slots; buckets starting before `since` are rebuilt
        from the store (the minutes before it were not seen by this process)."""
        self._fit()
        reset_columns(self, _STATE, slots)
        self.known_from[slots] = since

    def bounds(self, slot: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bucket of each (slot, minute)."""
        return self.buckets.bounds_by_class(self.table.asset_class[slot], self.timeframe, ts)

    def step(self, closed: Batch, forming: Batch, now: float | np.ndarray) -> Step:
        """Merge a cycle's closed minutes (by slot, ts; real bars only) and its forming minutes
        (one per slot); return the bars that closed, the forming bars, and the rebuilds. `now`
        closes the buckets that ended (per slot: the clock of its source, delayed or not)."""
        self._fit()
        out: list[Batch] = []
        requests: list[np.ndarray] = []
        if len(closed):  # (59 cycles of 60 have none)
            start, end = self.bounds(closed.slot, closed.ts)
            s = closed.slot
            held = self.start[s]
            rebuild = ((start < self.known_from[s]) | (start < self.closed_until[s]) | ((held >= 0) & (start < held))
                       | ((start == held) & (closed.ts <= self.last[s])))
            live = ~rebuild
            groups = aggregate(s[live], closed.ts[live], closed.open[live], closed.high[live], closed.low[live],
                               closed.close[live], closed.volume[live], start[live], end[live])
            if len(groups):
                out.append(self._merge(groups, closed.source[live]))
            requests.append(np.column_stack([s[rebuild], start[rebuild], end[rebuild]]))
        out.append(self._close_due(now))
        formed, more = self._forming(forming)
        requests.append(more)
        done = Batch.concat(out).sorted()
        wanted = np.vstack(requests)
        return Step(done, formed, np.unique(wanted, axis=0) if len(wanted) else wanted)

    def _merge(self, g: Groups, sources: np.ndarray) -> Batch:
        """Fold groups into the open buckets; return the buckets they closed."""
        slot = g.key
        heads = np.r_[True, slot[1:] != slot[:-1]]
        tails = np.r_[slot[1:] != slot[:-1], True]
        same = heads & (self.start[slot] == g.start)
        i, sl = np.flatnonzero(same), slot[same]  # a group continuing its slot's open bucket
        g.open[i], g.first[i] = self.open[sl], self.first[sl]
        g.high[i] = np.maximum(g.high[i], self.high[sl])
        g.low[i] = np.minimum(g.low[i], self.low[sl])
        g.volume[i] += self.volume[sl]
        superseded = slot[heads & ~same & (self.start[slot] >= 0)]
        out = [self._take(superseded)]
        src = sources[g.tail]
        done = ~tails  # a later bucket of the same slot has minutes: this one is complete
        out.append(_rows(g, done, src))
        self._closed(slot[done], g.start[done], g.end[done], g.close[done])
        last = np.flatnonzero(tails)
        sl = slot[last]
        self.start[sl], self.end[sl], self.first[sl], self.last[sl] = g.start[last], g.end[last], g.first[last], \
            g.last[last]
        self.open[sl], self.high[sl], self.low[sl], self.close[sl] = g.open[last], g.high[last], g.low[last], \
            g.close[last]
        self.volume[sl], self.source[sl] = g.volume[last], src[last]
        return Batch.concat(out)

    def _close_due(self, now: float | np.ndarray) -> Batch:
        """Close the open buckets that ended, unless the newest minute is still forming inside."""
        t = self.table
        n = len(self.start)
        if isinstance(now, np.ndarray):
            now = now[:n]
        due = (self.start >= 0) & (self.end <= now)
        forming_inside = ((t.lt_flags[:n] & FORMING) != 0) & (t.lt_ts[:n] < self.end)
        due &= ~forming_inside | (self.end + LATE_CLOSE_S <= now)
        synced = t.synced_until[:n]  # (quotes mode: minutes before it accounted for; else -1)
        due &= (synced < 0) | (synced >= self.end) | (self.end + CATCH_UP_HOLD_S <= now)
        return self._take(np.flatnonzero(due))

    def _take(self, slots: np.ndarray) -> Batch:
        """Close the open buckets of some slots: their bars, and the state cleared."""
        if not len(slots):
            return Batch.empty()
        rows = Batch(slots, self.start[slots].copy(), self.open[slots], self.high[slots], self.low[slots],
                     self.close[slots], self.volume[slots], np.zeros(len(slots), dtype=np.int64),
                     self.source[slots], np.full(len(slots), np.inf))
        self._closed(rows.slot, rows.ts, self.end[slots], rows.close)
        self.start[slots] = self.end[slots] = -1
        return rows

    def _closed(self, slots: np.ndarray, ts: np.ndarray, end: np.ndarray, close: np.ndarray) -> None:
        """Record closed bars: how far closed, and the newest one's open and close."""
        np.maximum.at(self.closed_until, slots, end)
        newer = ts >= self.ref_ts[slots]
        self.ref_ts[slots[newer]], self.ref_close[slots[newer]] = ts[newer], close[newer]

    def _forming(self, forming: Batch) -> tuple[Batch, np.ndarray]:
        """The forming bars from the forming minutes, and the open buckets to rebuild first."""
        s = forming.slot
        start, end = self.bounds(s, forming.ts)
        held = self.start[s] == start
        fresh = (self.start[s] < 0) & (start >= self.closed_until[s])
        unknown = fresh & (start < self.known_from[s])  # begun before we followed: its minutes are stored
        cont = held & (forming.ts > self.last[s])
        new = fresh & ~unknown
        take = cont | new
        sl = s[take]
        c = cont[take]
        o, h, lo, v = forming.open[take], forming.high[take], forming.low[take], forming.volume[take]
        bars = Batch(sl, start[take], np.where(c, self.open[sl], o), np.where(c, np.fmax(self.high[sl], h), h),
                     np.where(c, np.fmin(self.low[sl], lo), lo), forming.close[take],
                     np.where(c, self.volume[sl] + v, v), np.full(len(sl), FORMING, dtype=np.int64),
                     forming.source[take], np.full(len(sl), np.inf))
        return bars, np.column_stack([s[unknown], start[unknown], end[unknown]])

    def rebuilt(self, requests: np.ndarray, g: Groups, source: np.ndarray, now: float | np.ndarray) -> Batch:
        """Apply rebuilt buckets: `requests` are (slot, start, end) rows and `g` their minutes'
        groups (`g.key` indexes `requests`). A bucket still open by `now` (per slot: its source's
        clock) becomes its slot's open bucket (and later minutes of it are merged); a closed one
        is returned as a bar to store."""
        slots = requests[g.key, 0]
        by_request, by_group = (now[requests[:, 0]], now[slots]) if isinstance(now, np.ndarray) else (now, now)
        still = requests[:, 2] > by_request
        sl = requests[still, 0]
        self.known_from[sl] = np.minimum(self.known_from[sl], requests[still, 1])
        o = np.flatnonzero(g.end > by_group)
        sl = slots[o]
        self.start[sl], self.end[sl], self.first[sl], self.last[sl] = g.start[o], g.end[o], g.first[o], g.last[o]
        self.open[sl], self.high[sl], self.low[sl], self.close[sl] = g.open[o], g.high[o], g.low[o], g.close[o]
        self.volume[sl], self.source[sl] = g.volume[o], source[o]
        done = g.end <= by_group
        sl = slots[done]
        self.start[sl[self.start[sl] == g.start[done]]] = -1  # its bucket, due but not yet closed: closed now
        rows = Batch(sl, g.start[done], g.open[done], g.high[done], g.low[done], g.close[done], g.volume[done],
                     np.zeros(len(sl), dtype=np.int64), source[done], np.full(len(sl), np.inf))
        self._closed(rows.slot, rows.ts, g.end[done], rows.close)
        return rows


def _rows(g: Groups, keep: np.ndarray, source: np.ndarray) -> Batch:
    """Closed bars from some groups."""
    n = int(keep.sum())
    return Batch(g.key[keep], g.start[keep], g.open[keep], g.high[keep], g.low[keep], g.close[keep], g.volume[keep],
                 np.zeros(n, dtype=np.int64), source[keep], np.full(n, np.inf))
