"""Encode: a batch's bars as the documented Redis value, a msgpack map with named fields,
packed from the arrays without a dict per bar.

    {"symbol": "AAPL", "tf": "1m", "ts": <open>, "open": .., "high": .., "low": .., "close": ..,
     "volume": .., "flags": <BarFlag bits>, "source": "yahoo"}

A value is three parts: the symbol's (the map header, "symbol" and "tf"), made once per symbol;
the numbers in a fixed layout (ts and flags as uint64, prices and volume as float64), made for
all rows at once as one NumPy structured array; and the source's, made once per source. Any
msgpack reader decodes it to the same map as `msgpack.packb(bar.as_map())`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from .batch import Batch

_FLOAT, _UINT64 = 0xCB, 0xCF
_NUMBERS = ("ts", "open", "high", "low", "close", "volume", "flags")


def _packed(value: str) -> bytes:
    return msgpack.packb(value)


class BarEncoder:
    """Packs bar rows into Redis values.

    :param timeframe: the bars' timeframe, stored as "tf".
    """

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        fields: list[tuple[str, str]] = []
        for name in _NUMBERS:
            fields += [(f"k_{name}", f"S{len(_packed(name))}"), (f"m_{name}", "u1"),
                       (name, ">u8" if name in ("ts", "flags") else ">f8")]
        self.dtype = np.dtype(fields)
        template = np.zeros(1, dtype=self.dtype)
        for name in _NUMBERS:
            template[f"k_{name}"] = _packed(name)
            template[f"m_{name}"] = _UINT64 if name in ("ts", "flags") else _FLOAT
        self._template = template
        self._heads: dict[str, bytes] = {}
        self._tails: dict[str, bytes] = {}

    def head(self, symbol: str) -> bytes:
        """The map header and the symbol's own fields (cached)."""
        head = self._heads.get(symbol)
        if head is None:
            head = self._heads[symbol] = (b"\x8a" + _packed("symbol") + _packed(symbol) + _packed("tf")
                                          + _packed(self.timeframe))
        return head

    def tail(self, source: str) -> bytes:
        """The source field (cached)."""
        tail = self._tails.get(source)
        if tail is None:
            tail = self._tails[source] = _packed("source") + _packed(source)
        return tail

    def encode(self, rows: Batch, symbols: Sequence[str], source_names: Sequence[str]) -> list[bytes]:
        """One value per row; `symbols` and `source_names` name its slot and source."""
        n = len(rows)
        if n == 0:
            return []
        packed = np.repeat(self._template, n)
        packed["ts"], packed["flags"] = rows.ts, rows.flags
        packed["open"], packed["high"], packed["low"] = rows.open, rows.high, rows.low
        packed["close"], packed["volume"] = rows.close, rows.volume
        raw, size = packed.tobytes(), self.dtype.itemsize
        head, tail = self.head, self.tail
        tails = [tail(name) for name in source_names]
        return [head(symbols[s]) + raw[i * size:(i + 1) * size] + tails[src]
                for i, (s, src) in enumerate(zip(rows.slot.tolist(), rows.source.tolist(), strict=True))]
