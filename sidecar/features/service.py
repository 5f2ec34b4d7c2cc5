"""Features in the cycle: commit closed bars, evaluate forming bars, encode for Redis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..bars import Bar
from ..clock import Clock
from ..symbols import SymbolInfo
from .book import FeatureBook
from .codec import FeatureCodec
from .engine import FeatureConfig


class FeatureService:
    """Keeps the book in step with the bars and turns its values into Redis values.

    :param config: indicator periods.
    :param timeframe: the bars' timeframe.
    :param clock: stamps each value's `updated` field.
    """

    def __init__(self, config: FeatureConfig, *, timeframe: str, clock: Clock) -> None:
        self.book = FeatureBook(config, timeframe=timeframe)
        self.codec = FeatureCodec(self.book.outputs, timeframe)
        self.timeframe = timeframe
        self.clock = clock

    def warm(self, infos: Sequence[SymbolInfo], histories: Mapping[str, Sequence[Bar]]) -> None:
        """Build symbols' state from their stored closed bars (oldest first)."""
        self.book.add(infos, histories)

    def update(self, closed: Sequence[Bar], forming: Sequence[Bar],
               unchanged: Sequence[Bar] = ()) -> list[tuple[str, str, bytes]]:
        """Commit a cycle's closed bars, evaluate its forming bars, and return (symbol,
        timeframe, value) for every symbol updated: provisional where a bar is forming. Symbols
        in `unchanged` (the newest closed bar of a symbol whose source answered with nothing new,
        e.g. a minute without trades) get their committed values again, so they do not expire."""
        committed = self.book.commit(closed)
        peeked, values = self.book.peek(forming)
        forming_bars = {b.symbol: b for b in forming}
        newest_closed: dict[str, Bar] = {}
        for bar in [*unchanged, *closed]:
            if bar.symbol not in newest_closed or bar.ts > newest_closed[bar.symbol].ts:
                newest_closed[bar.symbol] = bar
        refreshed = [b.symbol for b in unchanged if b.symbol not in forming_bars and b.symbol in self.book.slots]
        only_closed = list(dict.fromkeys(s for s in [*committed, *refreshed] if s not in forming_bars))
        symbols = peeked + only_closed
        if not symbols:
            return []
        if only_closed:
            values = np.hstack([values, self.book.values(only_closed)])
        source = [forming_bars[s] for s in peeked] + [newest_closed[s] for s in only_closed]
        rows = self.codec.encode(
            ts=np.array([b.ts for b in source], dtype=np.int64),
            close=np.array([b.close for b in source]),
            provisional=np.array([b.forming for b in source]),
            updated=self.clock.time(), values=values)
        return [(s, self.timeframe, row) for s, row in zip(symbols, rows, strict=True)]
