"""Bars from quote snapshots: one vectorized update per poll for every symbol.

A batch quote gives, per symbol, the last trade (price and second) and the day's volume so
far. Sampled every second, the trades of a minute give its bar: the first price is the open,
the highest and lowest the high and low, the last the close, and the volume is the day volume
at the end of the minute minus the day volume before it (zero after a day roll-over: the
trade's UTC day changed).

A built bar is only as good as its samples, so each closed bar says whether it is *complete*:
the symbol was sampled at every second of its minute and the second before it (the volume
baseline), and every sample showed a trade at that very second. A missed poll, a late answer,
a stale feed (the same trade shown again), a rejected quote, a minute the poller joined
half-way, or a day volume that fell within the day (a source's correction: the minute's volume
is then unknown) all make it incomplete, and the caller takes that minute from the source's history
instead. On a source that does not print every second, bars are never complete; quotes then
give the live forming bar only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY = 86400


@dataclass(slots=True)
class BuiltBars:
    """Bars of the symbols at `slot`: parallel arrays."""

    slot: np.ndarray
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    complete: np.ndarray  # closed bars only: every second was seen (see the module doc)

    def __len__(self) -> int:
        return len(self.slot)


@dataclass(slots=True)
class BuildResult:
    """What one poll produced: bars whose minute ended, the forming bars, and rejected quotes."""

    closed: BuiltBars
    forming: BuiltBars
    rejected: np.ndarray  # slots whose quote was not a usable trade (non-positive or NaN price, no time)


class BarBuilder:
    """Per-symbol bar state in arrays, one slot per symbol, updated once per poll.

    :param step: bar length in seconds.
    :param capacity: initial number of slots (grows as needed).
    """

    _INT_FIELDS = ("bucket", "last_time", "last_label", "run_start", "dense_start")
    _FLOAT_FIELDS = ("o", "h", "l", "c", "base_vol", "last_vol")
    # per-slot state, one array per field (made by __init__ from the two lists above)
    bucket: np.ndarray
    last_time: np.ndarray
    last_label: np.ndarray
    run_start: np.ndarray
    dense_start: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray
    c: np.ndarray
    base_vol: np.ndarray
    last_vol: np.ndarray

    def __init__(self, step: int = 60, capacity: int = 64) -> None:
        self.step = step
        self._n = 0
        for name in self._INT_FIELDS:
            setattr(self, name, np.full(capacity, -(2**62), dtype=np.int64))
        for name in self._FLOAT_FIELDS:
            setattr(self, name, np.zeros(capacity))
        self.bucket[:] = -1
        # closed bars not complete, by why: a second not sampled (a missed or failed poll, joined
        # late), or every second sampled but one sample not showing a trade at its own second
        # (a late answer, a stale feed, a quiet second); what the catch-up then asks history for
        self.incomplete = np.zeros(2, dtype=np.int64)

    def reset(self, slots: np.ndarray) -> None:
        """Forget what was seen for these slots (a symbol removed, or its slot reused)."""
        self._grow(int(slots.max()) + 1 if len(slots) else 0)
        for name in self._INT_FIELDS:
            getattr(self, name)[slots] = -(2**62)
        for name in self._FLOAT_FIELDS:
            getattr(self, name)[slots] = 0.0
        self.bucket[slots] = -1

    def _grow(self, n: int) -> None:
        size = len(self.bucket)
        if n <= size:
            return
        new = max(n, 2 * size)
        for name in self._INT_FIELDS:
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.full(new - size, -1 if name == "bucket" else -(2**62),
                                                             dtype=np.int64)]))
        for name in self._FLOAT_FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(new - size)]))

    def update(self, label: int, slots: np.ndarray, price: np.ndarray, time: np.ndarray,
               day_volume: np.ndarray) -> BuildResult:
        """Apply the quotes of the poll made at whole second `label`; each slot at most once."""
        self._grow(int(slots.max()) + 1 if len(slots) else 0)
        step = self.step
        s = slots
        ok = np.isfinite(price) & (price > 0) & (time > 0) & np.isfinite(day_volume) & (day_volume >= 0)
        s_ok, price, time, day_volume = s[ok], price[ok], time[ok], day_volume[ok]

        # 1. bars whose minute is over: the wall clock passed it, or a trade of a later minute came
        over = np.flatnonzero((self.bucket >= 0) & (label >= self.bucket + step))
        bucket = self.bucket[s_ok]
        later = s_ok[(bucket >= 0) & (time // step * step > bucket)]
        closed = self._close(np.union1d(over, later))

        # 2. sampling continuity, judged before this sample changes it
        prev_label = self.last_label[s_ok]
        consecutive = prev_label == label - 1
        dense = time == label
        self.run_start[s_ok] = np.where(consecutive, self.run_start[s_ok], label)
        # dense: every sample of the run showed a trade at its own second; a run that was dense
        # through the previous second stays dense from where it began
        kept = np.where(consecutive & (self.dense_start[s_ok] <= label), self.dense_start[s_ok], label)
        self.dense_start[s_ok] = np.where(dense, kept, label + 1)
        self.last_label[s_ok] = label

        # 3. the trade itself
        new_trade = time > self.last_time[s_ok]
        tb = time // step * step
        starts = new_trade & (tb != self.bucket[s_ok])
        same_day = time // DAY == self.last_time[s_ok] // DAY
        # A day volume below the last one within the same day is no roll-over: taken as one, it
        # made a complete bar of the whole day's volume. The run of samples restarts here, so the
        # bar of this second's minute (whose baseline is before the fall) is incomplete and comes
        # from history; the next minute's baseline is after it.
        fell = same_day & (day_volume < self.last_vol[s_ok])
        self.run_start[s_ok[fell]] = label
        a = s_ok[starts]
        self.bucket[a] = tb[starts]
        self.base_vol[a] = np.where(same_day[starts], self.last_vol[a], 0.0)
        # The fall's minute is left to history, but its forming bar stays live: the baseline goes
        # down by the fall, so the forming volume keeps what it had instead of going negative.
        taken = fell & new_trade  # a fall without a new trade is not taken (see last_vol below)
        self.base_vol[s_ok[taken]] -= (self.last_vol[s_ok] - day_volume)[taken]
        self.o[a] = self.h[a] = self.l[a] = price[starts]
        b, pb = s_ok[new_trade], price[new_trade]
        self.h[b] = np.maximum(self.h[b], pb)
        self.l[b] = np.minimum(self.l[b], pb)
        self.c[b] = pb
        self.last_time[b] = time[new_trade]
        self.last_vol[s_ok] = np.where(new_trade | (day_volume >= self.last_vol[s_ok]), day_volume,
                                       self.last_vol[s_ok])

        # 4. forming: the bar of the current wall minute, if it has a trade
        current = label // step * step
        f = s_ok[self.bucket[s_ok] == current]
        forming = self._bars(f, np.zeros(len(f), dtype=bool))
        return BuildResult(closed, forming, s[~ok])

    def _close(self, s: np.ndarray) -> BuiltBars:
        m = self.bucket[s]
        sampled = (self.last_label[s] == m + self.step - 1) & (self.run_start[s] <= m - 1)
        dense = self.dense_start[s] <= m
        complete = sampled & dense
        self.incomplete += (int(len(s) - sampled.sum()), int((sampled & ~dense).sum()))
        bars = self._bars(s, complete)
        self.bucket[s] = -1
        return bars

    def _bars(self, s: np.ndarray, complete: np.ndarray) -> BuiltBars:
        return BuiltBars(s, self.bucket[s].copy(), self.o[s], self.h[s], self.l[s], self.c[s],
                         self.last_vol[s] - self.base_vol[s], complete)
