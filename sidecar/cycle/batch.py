"""The batch: one cycle's bars as parallel arrays, the unit every stage takes and gives.

A row is one bar of the symbol at `slot` (an index into the symbol table). Rows are kept
sorted by (slot, ts) where a stage needs a symbol's bars in time order; `known_at` is the
source's clock when the bar was fetched (infinity for bars built from quotes, which are final
when their minute ends) and decides whether a closed bar may still change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..bars import FORMING, Bar, Row


def previous_in_slot(slot: np.ndarray, values: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Per row (rows sorted by slot): the value of the row before it of the same slot, or for a
    slot's first row `before[slot]` (what the slot had before this batch)."""
    prev = before[slot].copy()
    if len(slot) > 1:
        same = slot[1:] == slot[:-1]
        prev[1:][same] = values[:-1][same]
    return prev


@dataclass(slots=True)
class Batch:
    """Parallel arrays, one row per bar."""

    slot: np.ndarray  # int64
    ts: np.ndarray  # int64, the bar's open
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    flags: np.ndarray  # int64, BarFlag bits
    source: np.ndarray  # int16, index into the table's source names
    known_at: np.ndarray  # float64, the source's clock when fetched

    def __len__(self) -> int:
        return len(self.slot)

    @classmethod
    def empty(cls) -> Batch:
        """No rows."""
        i, f = np.zeros(0, dtype=np.int64), np.zeros(0)
        return cls(i, i, f, f, f, f, f, i, np.zeros(0, dtype=np.int16), f)

    @classmethod
    def concat(cls, parts: Sequence[Batch]) -> Batch:
        """The rows of several batches, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def take(self, rows: np.ndarray) -> Batch:
        """The rows selected by an index or boolean mask (a mask is turned into an index once,
        not scanned again for each of the ten columns)."""
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        return Batch(self.slot[rows], self.ts[rows], self.open[rows], self.high[rows], self.low[rows],
                     self.close[rows], self.volume[rows], self.flags[rows], self.source[rows], self.known_at[rows])

    def sorted(self) -> Batch:
        """Rows by slot, then time (stable: duplicates keep their order)."""
        if len(self) < 2:
            return self
        order = np.lexsort((self.ts, self.slot))
        return self.take(order)

    @property
    def forming(self) -> np.ndarray:
        """Rows of bars still forming."""
        return (self.flags & FORMING) != 0

    @classmethod
    def from_bars(cls, bars: Sequence[Bar], slot: int, source: int, known_at: float) -> Batch:
        """One symbol's bars (an edge: a chart answer)."""
        n = len(bars)
        if n == 0:
            return cls.empty()
        values = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype=np.float64).T
        return cls(np.full(n, slot, dtype=np.int64), np.array([b.ts for b in bars], dtype=np.int64), values[0],
                   values[1], values[2], values[3], values[4], np.array([b.flags for b in bars], dtype=np.int64),
                   np.full(n, source, dtype=np.int16), np.full(n, known_at))

    def bars(self, symbols: Sequence[str], source_names: Sequence[str], timeframe: str = "1m") -> list[Bar]:
        """The rows as Bars (an edge: logs, tests, what is handed to other components)."""
        return [Bar(*row) for row in self.rows(symbols, source_names, timeframe)]

    def rows(self, symbols: Sequence[str], source_names: Sequence[str], timeframe: str = "1m") -> list[Row]:
        """The rows as the `bars` table's columns (the durable buffer's), without a Bar each."""
        n = len(self)
        return list(zip([symbols[s] for s in self.slot.tolist()], [timeframe] * n, self.ts.tolist(),
                        self.open.tolist(), self.high.tolist(), self.low.tolist(), self.close.tolist(),
                        self.volume.tolist(), [source_names[s] for s in self.source.tolist()], self.flags.tolist(),
                        strict=True))

    def bar(self, row: int, symbols: Sequence[str], source_names: Sequence[str], timeframe: str = "1m") -> Bar:
        """One row as a Bar."""
        return Bar(symbols[int(self.slot[row])], timeframe, int(self.ts[row]), float(self.open[row]),
                   float(self.high[row]), float(self.low[row]), float(self.close[row]), float(self.volume[row]),
                   source_names[int(self.source[row])], int(self.flags[row]))
