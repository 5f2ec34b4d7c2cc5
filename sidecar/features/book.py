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

from ..bars import Bar, timeframe_seconds
from ..calendars import bars_per_year, session_day
from ..symbols import AssetClass, SymbolInfo
from .engine import Bars, FeatureConfig, FeatureEngine

_CLASSES = list(AssetClass)


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
        self._atr_row = self.outputs.index(f"atr_{self.config.atr}")
        self._free: list[int] = []
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
            bars = [b for _, b in present]
            arrays, mask, ts, sessions = self._arrays(bars, cols, codes, len(infos), last_session)
            scratch.step(arrays, mask)
            last_ts[cols], last_session[cols] = ts, sessions
        slots = np.array([self._slot_for(i) for i in infos], dtype=np.int64)
        self.engine.copy_slots(scratch, np.arange(len(infos)), slots)
        self.last_ts[slots], self.last_session[slots], self.slot_class[slots] = last_ts, last_session, codes

    def remove(self, symbol: str) -> None:
        """Forget a symbol and free its slot."""
        slot = self.slots.pop(symbol)
        self.engine.reset(np.array([slot]))
        self.last_ts[slot] = self.last_session[slot] = -1
        self._free.append(slot)

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
        per_symbol: dict[str, list[Bar]] = {}
        for bar in bars:
            slot = self.slots.get(bar.symbol)
            if slot is not None and bar.ts > self.last_ts[slot]:
                per_symbol.setdefault(bar.symbol, []).append(bar)
        if not per_symbol:
            return []
        queues = [(self.slots[sym], sorted(bs, key=lambda b: b.ts)) for sym, bs in per_symbol.items()]
        depth = max(len(q) for _, q in queues)
        for k in range(depth):
            present = [(slot, q[k]) for slot, q in queues if len(q) > k]
            cols = np.array([slot for slot, _ in present], dtype=np.int64)
            arrays, mask, ts, sessions = self._arrays([b for _, b in present], cols, self.slot_class,
                                                      self.engine.capacity, self.last_session)
            self.engine.step(arrays, mask)
            self.last_ts[cols], self.last_session[cols] = ts, sessions
        return list(per_symbol)

    def peek(self, bars: Sequence[Bar]) -> tuple[list[str], np.ndarray]:
        """Provisional values for forming bars (one per symbol): (symbols, (outputs, symbols))."""
        known = [b for b in bars if b.symbol in self.slots]
        if not known:
            return [], np.empty((len(self.outputs), 0))
        cols = np.array([self.slots[b.symbol] for b in known], dtype=np.int64)
        arrays, _, _, _ = self._arrays(known, cols, self.slot_class, self.engine.capacity, self.last_session)
        return [b.symbol for b in known], self.engine.peek(arrays)[:, cols]

    def atr(self, symbol: str) -> float:
        """The symbol's committed ATR (NaN while warming up or unknown)."""
        slot = self.slots.get(symbol)
        return math.nan if slot is None else float(self.engine.out[self._atr_row, slot])

    def values(self, symbols: Sequence[str]) -> np.ndarray:
        """The committed values of some symbols, (outputs, symbols)."""
        return self.engine.out[:, [self.slots[s] for s in symbols]]

    def _arrays(self, bars: Sequence[Bar], cols: np.ndarray, codes: np.ndarray, width: int,
                last_session: np.ndarray) -> tuple[Bars, np.ndarray, np.ndarray, np.ndarray]:
        """Full-width engine inputs with `bars` placed at `cols`; also the mask, the bars'
        opens and their session days."""
        values = np.array([(b.open, b.high, b.low, b.close, b.volume, b.ts) for b in bars], dtype=np.float64)
        ts = values[:, 5].astype(np.int64)
        sessions = np.empty(len(bars), dtype=np.int64)
        classes = codes[cols]
        for code in np.unique(classes):
            sel = classes == code
            # a cycle's bars share a handful of opens: the calendar is asked once per distinct one
            opens, back = np.unique(ts[sel], return_inverse=True)
            sessions[sel] = session_day(_CLASSES[code], opens)[back]
        full = np.full((5, width), np.nan)
        full[:, cols] = values[:, :5].T
        start = np.zeros(width, dtype=bool)
        start[cols] = sessions != last_session[cols]
        mask = np.zeros(width, dtype=bool)
        mask[cols] = True
        return Bars(full[0], full[1], full[2], full[3], full[4], start), mask, ts, sessions
