"""Encode: a batch's bars as the documented Redis value, a msgpack map with named fields,
packed from the arrays without a dict or a bytes object per bar.

    {"tf": "1m", "ts": <open>, "open": .., "high": .., "low": .., "close": .., "volume": ..,
     "flags": <BarFlag bits>, "source": "yahoo", "symbol": "AAPL"}

A value is three parts, in this order: the map header, "tf" and the numbers in a fixed layout
(ts and flags as uint64, prices and volume as float64), made for all rows at once as one NumPy
structured array; the source's field, one per source; the symbol's, cut from the table's
fixed-width column of names. The rows are a `Packed` grid, which the store turns into RESP
without touching a row in Python. Any msgpack reader decodes a value to the same map as
`msgpack.packb(bar.as_map())`.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import numpy as np

from ..arrays import distinct
from ..packed import NameColumn, Packed
from .batch import Batch

_FLOAT, _UINT64, _FIXSTR = 0xCB, 0xCF, 0xA0
_NUMBERS = ("ts", "open", "high", "low", "close", "volume", "flags")


def _packed(value: str) -> bytes:
    return msgpack.packb(value)


class BarEncoder:
    """Packs bar rows into Redis values.

    :param timeframe: the bars' timeframe, stored as "tf".
    """

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        head = b"\x8a" + _packed("tf") + _packed(timeframe)
        fields: list[tuple[str, str]] = [("head", f"S{len(head)}")]
        for name in _NUMBERS:
            fields += [(f"k_{name}", f"S{len(_packed(name))}"), (f"m_{name}", "u1"),
                       (name, ">u8" if name in ("ts", "flags") else ">f8")]
        self.dtype = np.dtype(fields)
        template = np.zeros(1, dtype=self.dtype)
        template["head"] = head
        for name in _NUMBERS:
            template[f"k_{name}"] = _packed(name)
            template[f"m_{name}"] = _UINT64 if name in ("ts", "flags") else _FLOAT
        self._template = template

    def encode(self, rows: Batch, names: NameColumn, source_names: Sequence[str]) -> Packed:
        """One value per row; `names` names its slot, `source_names` its source."""
        n, fixed = len(rows), self.dtype.itemsize
        tails = [np.frombuffer(_packed("source") + _packed(s) + _packed("symbol"), dtype=np.uint8)
                 for s in source_names]
        longest = max((len(t) for t in tails), default=0)
        grid = np.zeros((n, fixed + longest + 1 + names.raw.dtype.itemsize), dtype=np.uint8)
        if n == 0:
            return Packed.grid(grid, np.zeros(0, dtype=np.int64))
        numbers = np.repeat(self._template, n)
        numbers["ts"], numbers["flags"] = rows.ts, rows.flags
        numbers["open"], numbers["high"], numbers["low"] = rows.open, rows.high, rows.low
        numbers["close"], numbers["volume"] = rows.close, rows.volume
        grid[:, :fixed] = numbers.view(np.uint8).reshape(n, fixed)
        length = names.length[rows.slot]
        symbols = names.bytes_of(rows.slot)
        width = np.zeros(n, dtype=np.int64)
        source = rows.source.astype(np.int64) % max(len(source_names), 1)  # -1 (none): the last, as a list would
        for code in distinct(source)[0].tolist():
            sel = np.flatnonzero(source == code)
            at = fixed + len(tails[code])
            grid[sel, fixed:at] = tails[code]
            grid[sel, at] = _FIXSTR | length[sel]  # symbols are at most 17 bytes: a fixstr
            grid[sel, at + 1:at + 1 + symbols.shape[1]] = symbols[sel]
            width[sel] = at + 1 + length[sel]
        return Packed.grid(grid, width)
