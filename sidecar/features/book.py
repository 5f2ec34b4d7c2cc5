"""The feature book: which engine slot each symbol has, what it last committed, and how bars
become vectorized engine steps.

Closed bars are committed exactly once, in time order: a bar at or before a symbol's last
committed bar is skipped. A cycle that brings several closed bars for some symbols runs one
step per bar depth, each masked to the symbols that have a bar at that depth. Symbols are
added while the daemon runs by replaying their history in a scratch engine (vectorized
across the symbols being added) and copying the resulting slots in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..arrays import distinct
from ..bars import Bar, timeframe_seconds
from ..calendars import bars_per_year, session_day
from ..symbols import AssetClass, SymbolInfo
from .engine import Bars, FeatureConfig, FeatureEngine

_CLASSES = list(AssetClass)
ANCHOR_EVERY = 64  # running sums are recomputed at bars whose open is a multiple of 64 bars


class FeatureBook:
    """Feature state for a changing set of symbols.

    :param config: indicator periods.
    :param timeframe: the bars' timeframe (for volatility annualization).
    :param capacity: initial number of slots (grows as needed).
    """

    def __init__(self, config: FeatureConfig | None = None, *, timeframe: str = "1m", capacity: int = 16) -> None:
        self.engine = FeatureEngine(config, capacity)
        self.config = self.engine.config
        self.outputs = self.engine.outputs
        self.timeframe = timeframe
        self.bar_seconds = timeframe_seconds(timeframe)
        self.slots: dict[str, int] = {}
        self.version = 0  # changes whenever a symbol is added, re-warmed or removed
        self._atr_row = self.outputs.index(f"atr_{self.config.atr}")
        self._free: list[int] = []
        self._names: tuple[int, list[str]] = (-1, [])  # (version, names()) cached
        self._grow_tables(capacity)

    def _grow_tables(self, capacity: int) -> None:
        """Per-slot bookkeeping sized to the engine, keeping existing slots' entries."""

        def grown(old: np.ndarray | None, fill: int, dtype: type) -> np.ndarray:
            new: np.ndarray = np.full(capacity, fill, dtype=dtype)
            if old is not None:
                new[: len(old)] = old
            return new

        self.last_ts = grown(getattr(self, "last_ts", None), -1, np.int64)  # open of the last committed bar
        self.last_session = grown(getattr(self, "last_session", None), -1, np.int64)
        self.slot_class = grown(getattr(self, "slot_class", None), 0, np.int8)

    def __contains__(self, symbol: str) -> bool:
        return symbol in self.slots

    def __len__(self) -> int:
        return len(self.slots)

    # -- membership -----------------------------------------------------------------------------

    def add(self, infos: Sequence[SymbolInfo], histories: Mapping[str, Sequence[Bar]]) -> None:
        """Add symbols, each warmed from its closed-bar history (oldest first) in one
        vectorized replay; a symbol already present is re-warmed."""
        infos = list(infos)
        if not infos:
            return
        scratch = FeatureEngine(self.config, capacity=len(infos))
        scratch.hv_scale[:] = [self._hv_scale(i.asset_class) for i in infos]
        series = [sorted(histories.get(i.symbol, ()), key=lambda b: b.ts) for i in infos]
        depth = max((len(s) for s in series), default=0)
        codes = np.array([_CLASSES.index(i.asset_class) for i in infos], dtype=np.int8)
        last_ts = np.full(len(infos), -1, dtype=np.int64)
        last_session = np.full(len(infos), -1, dtype=np.int64)
        for k in range(depth):
            # right-aligned: every symbol's newest bar lands on the last step
            present = [(j, s[len(s) - depth + k]) for j, s in enumerate(series) if len(s) - depth + k >= 0]
            cols = np.array([j for j, _ in present], dtype=np.int64)
            arrays, mask, ts, sessions = self._inputs(cols, _columns([b for _, b in present]), codes, len(infos),
                                                      last_session)
            scratch.step(arrays, mask)
            last_ts[cols], last_session[cols] = ts, sessions
        slots = np.array([self._slot_for(i) for i in infos], dtype=np.int64)
        self.engine.copy_slots(scratch, np.arange(len(infos)), slots)
        self.last_ts[slots], self.last_session[slots], self.slot_class[slots] = last_ts, last_session, codes
        self.version += 1

    def remove(self, symbols: Iterable[str]) -> None:
        """Forget symbols (the unknown ones are skipped) and free their slots, in one reset of
        the engine's arrays: a partition handed over drops thousands at once."""
        slots = np.array([s for s in (self.slots.pop(x, None) for x in symbols) if s is not None], dtype=np.int64)
        if not len(slots):
            return
        self.engine.reset(slots)
        self.last_ts[slots] = self.last_session[slots] = -1
        self._free.extend(slots.tolist())
        self.version += 1

    def _slot_for(self, info: SymbolInfo) -> int:
        if info.symbol in self.slots:
            return self.slots[info.symbol]
        if not self._free:
            old = self.engine.capacity
            self.engine.grow(max(old + 1, len(self.slots) + 1))
            self._grow_tables(self.engine.capacity)
            used = set(self.slots.values())
            self._free = [s for s in range(self.engine.capacity - 1, -1, -1) if s not in used]
        slot = self._free.pop()
        self.slots[info.symbol] = slot
        return slot

    def _hv_scale(self, asset_class: AssetClass) -> float:
        return float(np.sqrt(bars_per_year(asset_class, self.bar_seconds)))

    # -- per cycle ------------------------------------------------------------------------------

    def commit(self, bars: Iterable[Bar]) -> list[str]:
        """Commit closed bars (any order, any symbols in the book); return the symbols updated."""
        known = [b for b in bars if b.symbol in self.slots]
        cols = np.array([self.slots[b.symbol] for b in known], dtype=np.int64)
        done = set(self.commit_columns(cols, _columns(known)).tolist())
        return list(dict.fromkeys(b.symbol for b in known if self.slots[b.symbol] in done))

    def commit_columns(self, cols: np.ndarray, values: np.ndarray,
                       record: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
        """Commit closed bars given as slots and a (6, n) array of open, high, low, close,
        volume, ts (any order); a bar at or before its slot's last committed bar is skipped.
        Returns the slots updated. One engine step per bar depth, masked to the slots that have
        a bar at that depth; `record` gets (slots, bar opens, (outputs, slots) values) after
        each step: the values at every bar's close."""
        new = values[5].astype(np.int64) > self.last_ts[cols]
        cols, values = cols[new], values[:, new]
        if not len(cols):
            return cols
        order = np.lexsort((values[5], cols))
        cols, values = cols[order], values[:, order]
        first = np.flatnonzero(np.append(True, cols[1:] != cols[:-1]))
        depth = np.arange(len(cols)) - np.repeat(first, np.diff(np.append(first, len(cols))))
        for k in range(int(depth.max()) + 1):
            at = depth == k
            arrays, mask, ts, sessions = self._inputs(cols[at], values[:, at], self.slot_class, self.engine.capacity,
                                                      self.last_session)
            self.engine.step(arrays, mask)
            self.last_ts[cols[at]], self.last_session[cols[at]] = ts, sessions
            if record is not None:  # the outputs, then the running sums (fancy indexing: copies)
                record.append((cols[at], ts, np.vstack([self.engine.out[:, cols[at]], self.engine.running(cols[at])])))
        return cols[first]

    def names(self) -> list[str]:
        """The symbol of each column ('' where free); rebuilt only when membership changed."""
        if self._names[0] != self.version:
            out = [""] * self.engine.capacity
            for symbol, col in self.slots.items():
                out[col] = symbol
            self._names = (self.version, out)
        return self._names[1]

    def set_running(self, symbol: str, sums: np.ndarray) -> None:
        """Carry the running sums across a restart: OBV and the session's VWAP sums after the
        symbol's last committed bar, as persisted (a replay of recent bars would restart them)."""
        self.engine.set_running(self.slots[symbol], sums)

    def peek(self, bars: Sequence[Bar]) -> tuple[list[str], np.ndarray]:
        """Provisional values for forming bars (one per symbol): (symbols, (outputs, symbols))."""
        known = [b for b in bars if b.symbol in self.slots]
        cols = np.array([self.slots[b.symbol] for b in known], dtype=np.int64)
        return [b.symbol for b in known], self.peek_columns(cols, _columns(known))

    def peek_columns(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Provisional values (outputs, n) for forming bars at distinct slots, given as for
        `commit_columns`; nothing is committed."""
        if not len(cols):
            return np.empty((len(self.outputs), 0))
        arrays, mask, _, _ = self._inputs(cols, values, self.slot_class, self.engine.capacity, self.last_session)
        return self.engine.peek(arrays, mask, cols)  # only the forming slots: a tenth of them costs a tenth

    def atr(self, symbol: str) -> float:
        """The symbol's committed ATR (NaN while warming up or unknown)."""
        slot = self.slots.get(symbol)
        return math.nan if slot is None else float(self.engine.out[self._atr_row, slot])

    def values(self, symbols: Sequence[str]) -> np.ndarray:
        """The committed values of some symbols, (outputs, symbols)."""
        return self.engine.out[:, [self.slots[s] for s in symbols]]

    def atr_columns(self, cols: np.ndarray) -> np.ndarray:
        """The committed ATR of some slots (NaN while warming up; -1: no slot, NaN)."""
        atr = self.engine.out[self._atr_row, np.maximum(cols, 0)]
        return np.where(cols >= 0, atr, np.nan)

    def replay(self, cols: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Commit whole histories and return the outputs after every bar, (outputs, rows):
        slot cols[k]'s bars are values[:, offsets[k]:offsets[k + 1]] ((6, n) as for
        `commit_columns`, ascending opens after the slot's last committed bar). The same steps
        as `commit_columns` one depth at a time, run by the compiled `FeatureEngine.replay`."""
        counts = np.diff(offsets)
        depth, width = int(counts.max()) if len(counts) else 0, self.engine.capacity
        owner = np.repeat(np.arange(len(cols)), counts)
        at = np.arange(len(owner)) - offsets[owner]  # each row's depth
        rows = np.full((depth, width), -1, dtype=np.int64)
        rows[at, cols[owner]] = np.arange(len(owner))
        mask = rows >= 0
        bars = np.full((4, depth, width), np.nan)
        bars[:, at, cols[owner]] = values[1:5]
        ts = values[5].astype(np.int64)
        sessions = self._sessions(self.slot_class[cols[owner]], ts)
        before = np.where(at > 0, np.roll(sessions, 1), self.last_session[cols[owner]])
        starts = np.zeros((depth, width), dtype=bool)
        starts[at, cols[owner]] = sessions != before
        anchor = np.zeros((depth, width), dtype=bool)
        anchor[at, cols[owner]] = ts // self.bar_seconds % ANCHOR_EVERY == 0
        result = np.empty((len(self.outputs), len(owner)))
        self.engine.replay(mask, bars, starts, anchor, rows, result)
        last = offsets[1:][counts > 0] - 1
        self.last_ts[cols[counts > 0]], self.last_session[cols[counts > 0]] = ts[last], sessions[last]
        return result

    @staticmethod
    def _sessions(classes: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The session day of each bar (asset class code classes[i], open ts[i])."""
        sessions = np.empty(len(ts), dtype=np.int64)
        for code in distinct(classes)[0].tolist():
            sel = classes == code
            # a cycle's bars share a handful of opens: the calendar is asked once per distinct one
            opens, back = distinct(ts[sel])
            sessions[sel] = session_day(_CLASSES[code], opens)[back]
        return sessions

    def _inputs(self, cols: np.ndarray, values: np.ndarray, codes: np.ndarray, width: int,
                last_session: np.ndarray) -> tuple[Bars, np.ndarray, np.ndarray, np.ndarray]:
        """Full-width engine inputs with the bars (`values`, (6, n) as for `commit_columns`)
        placed at `cols`; also the mask, the bars' opens and their session days."""
        ts = values[5].astype(np.int64)
        sessions = self._sessions(codes[cols], ts)
        full = np.full((5, width), np.nan)
        full[:, cols] = values[:5]
        start = np.zeros(width, dtype=bool)
        start[cols] = sessions != last_session[cols]
        mask = np.zeros(width, dtype=bool)
        mask[cols] = True
        anchor = np.zeros(width, dtype=bool)
        anchor[cols] = ts // self.bar_seconds % ANCHOR_EVERY == 0
        return Bars(full[0], full[1], full[2], full[3], full[4], start, anchor), mask, ts, sessions


def _columns(bars: Sequence[Bar]) -> np.ndarray:
    """Bars as the (6, n) array the book takes: open, high, low, close, volume, ts."""
    return np.array([(b.open, b.high, b.low, b.close, b.volume, b.ts) for b in bars], dtype=np.float64).reshape(-1, 6).T
