"""Minute bars a quote source sends itself (Polygon's snapshot `min`): closed minutes without a
history request per symbol.

A snapshot's `min` is the bar of the minute of the symbol's last trade, and it can still
change until that minute has passed (late trades are aggregated in), so it is the *forming*
bar while its minute runs. Its last copy is held, and becomes the minute's closed bar once
the minute has ended plus `grace_s` (`../shared/providers.md` §8.5): when a newer minute shows
up, the held copy waits out the grace as the *closing* copy. A closed bar is taken only where it
follows the last minute accounted for (`synced_until`), as with built bars; any other minute
(no trade in it, a missed poll) is left to the history catch-up.
"""

from __future__ import annotations

import numpy as np

from ..bars import FORMING
from .batch import Batch
from .table import SymbolTable


class MinuteBars:
    """Held and closing copies of each slot's source minute bar, in arrays.

    :param table: the symbol table (synced-until).
    :param step: bar length in seconds.
    :param grace_s: how long after its minute ends a copy is taken as final.
    """

    def __init__(self, *, table: SymbolTable, step: int, grace_s: float) -> None:
        self.table, self.step, self.grace_s = table, step, grace_s
        self._held = np.full((0, 6), np.nan)  # per slot: ts, o, h, l, c, v of the newest minute seen
        self._closing = np.full((0, 6), np.nan)  # per slot: the minute before it, waiting out the grace
        self._held_src = np.zeros(0, dtype=np.int16)
        self._closing_src = np.zeros(0, dtype=np.int16)

    def reset(self, slots: np.ndarray) -> None:
        """Forget the copies of slots (a symbol added in a freed slot)."""
        self._grow()
        self._held[slots] = self._closing[slots] = np.nan

    def _grow(self) -> None:
        n = len(self.table.active)
        if len(self._held) < n:
            old = len(self._held)
            self._held = np.vstack([self._held, np.full((n - old, 6), np.nan)])
            self._closing = np.vstack([self._closing, np.full((n - old, 6), np.nan)])
            self._held_src = np.concatenate([self._held_src, np.zeros(n - old, dtype=np.int16)])
            self._closing_src = np.concatenate([self._closing_src, np.zeros(n - old, dtype=np.int16)])

    def take(self, slots: np.ndarray, source: np.ndarray, minute: np.ndarray, now: float, current: int) -> Batch:
        """One poll's minute bars (`minute` (6, n) for `slots`, from `source`): the closed rows
        that follow each symbol's last accounted minute, and the forming rows of `current`."""
        self._grow()
        ok = np.isfinite(minute[0])
        s, m, src = slots[ok], minute[:, ok], source[ok]
        held_ts = self._held[s, 0]
        newer = ~(m[0] <= held_ts)  # no copy held (NaN) counts as newer
        moved = s[newer & np.isfinite(held_ts)]
        # a closing copy still waiting when yet another minute arrives is over a minute old: final
        out = [self._emit(self._closing, self._closing_src, moved[np.isfinite(self._closing[moved, 0])])]
        self._closing[moved], self._closing_src[moved] = self._held[moved], self._held_src[moved]
        same = newer | (m[0] == held_ts)
        self._held[s[same]], self._held_src[s[same]] = m[:, same].T, src[same]
        due = now - self.step - self.grace_s
        out.append(self._emit(self._closing, self._closing_src, np.flatnonzero(self._closing[:, 0] <= due)))
        out.append(self._emit(self._held, self._held_src, np.flatnonzero(self._held[:, 0] <= due)))
        forming = s[self._held[s, 0] == current]
        out.append(_rows(forming, self._held[forming], self._held_src[forming], FORMING))
        return Batch.concat(out)

    def waiting(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Per slot: a copy of its next minute to account for is held, and that minute is still
        within its grace: no need to ask the history for it."""
        self._grow()
        due = self.table.synced_until[slots]
        in_grace = now < due + self.step + self.grace_s
        return in_grace & ((self._held[slots, 0] == due) | (self._closing[slots, 0] == due))

    def _emit(self, copies: np.ndarray, sources: np.ndarray, slots: np.ndarray) -> Batch:
        """Closed rows from the copies of `slots`, which are cleared; only the ones that follow
        the slot's last accounted minute, which then moves on."""
        t = self.table
        if not len(slots):
            return Batch.empty()
        rows, src = copies[slots].copy(), sources[slots].copy()
        copies[slots] = np.nan
        take = (t.synced_until[slots] == rows[:, 0].astype(np.int64)) & t.active[slots]
        slots, rows, src = slots[take], rows[take], src[take]
        t.synced_until[slots] = rows[:, 0].astype(np.int64) + self.step
        return _rows(slots, rows, src, 0)


def _rows(slots: np.ndarray, bars: np.ndarray, source: np.ndarray, flags: int) -> Batch:
    n = len(slots)
    return Batch(slots.astype(np.int64), bars[:, 0].astype(np.int64), bars[:, 1], bars[:, 2], bars[:, 3], bars[:, 4],
                 bars[:, 5], np.full(n, flags, dtype=np.int64), source.astype(np.int16), np.full(n, np.inf))
