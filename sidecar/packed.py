"""Packed rows: a cycle's Redis values as runs of one byte buffer, its symbols as slots into
one column of names, and the RESP of thousands of rows built by NumPy instead of a Python
expression per row.

A cycle writes one value per symbol and timeframe. Held as Python bytes objects, every one of
them costs a slice, a key lookup and a format per row (about a third of the cycle at 5,000
symbols). Held as runs of one buffer (row i is `data[start[i]:start[i] + width[i]]`) with the
symbols cut from one fixed-width array, the rows fall into a handful of groups of equal shape
(symbol length, value width); each group becomes one NumPy structured array whose bytes are
exactly that group's RESP, key and value bulks included.

`Packed` and `SlotNames` are also plain sequences (of bytes, of str), so anything that takes
lists of values and symbols takes them too, row by row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

import numpy as np


@dataclass(slots=True, frozen=True, eq=False)
class NameColumn:
    """Every slot's symbol as text, and as bytes in one fixed-width array (free slots empty).

    :param text: symbols by slot.
    """

    text: Sequence[str]
    raw: np.ndarray  # S{longest}, by slot
    length: np.ndarray  # bytes of each symbol

    @classmethod
    def of(cls, text: Sequence[str]) -> NameColumn:
        """The column of `text` (symbols by slot)."""
        raw = np.array([s.encode() for s in text] or [b""], dtype=np.bytes_)[:len(text)]  # at least S1
        # a copy: the table's list changes in place, a column handed out must not
        return cls(list(text), raw, np.char.str_len(raw).astype(np.int64))

    def bytes_of(self, slots: np.ndarray) -> np.ndarray:
        """The symbols of `slots` as a (n, width) uint8 grid, zero-padded."""
        return np.ascontiguousarray(self.raw[slots]).view(np.uint8).reshape(len(slots), self.raw.dtype.itemsize)


class SlotNames(Sequence[str]):
    """The symbols of some slots, as a sequence of str backed by a `NameColumn`."""

    __slots__ = ("column", "slots")

    def __init__(self, column: NameColumn, slots: np.ndarray) -> None:
        self.column, self.slots = column, slots

    def __len__(self) -> int:
        return len(self.slots)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self.column.text[s] for s in self.slots[i].tolist()]
        return self.column.text[int(self.slots[i])]

    def take(self, rows: np.ndarray) -> SlotNames:
        """Some of the rows (indices or a mask)."""
        return SlotNames(self.column, self.slots[rows])

    def __iter__(self) -> Iterator[str]:
        text = self.column.text
        return iter([text[s] for s in self.slots.tolist()])


class Packed(Sequence[bytes]):
    """Values as runs of one byte buffer: row i is `data[start[i]:start[i] + width[i]]`."""

    __slots__ = ("data", "start", "width")

    def __init__(self, data: np.ndarray, start: np.ndarray, width: np.ndarray) -> None:
        self.data, self.start, self.width = data, start, width

    @classmethod
    def grid(cls, grid: np.ndarray, width: np.ndarray) -> Packed:
        """Row i is `grid[i, :width[i]]` ((n, w) uint8)."""
        n, w = grid.shape
        return cls(grid.reshape(-1), np.arange(n, dtype=np.int64) * w, width)

    @classmethod
    def fixed(cls, rows: np.ndarray) -> Packed:
        """Rows of one structured array (all the same width)."""
        n = len(rows)
        return cls.grid(rows.view(np.uint8).reshape(n, rows.dtype.itemsize), np.full(n, rows.dtype.itemsize))

    @classmethod
    def digits(cls, values: np.ndarray) -> Packed:
        """Non-negative integers as their decimal text."""
        values = np.asarray(values, dtype=np.int64)
        width = np.ones(len(values), dtype=np.int64)
        for power in range(1, 19):
            width += values >= 10 ** power
        most = int(width.max()) if len(values) else 1
        # digit j of the most a row has, left-aligned: the row's first digit goes to column 0
        shift = (width[:, None] - 1 - np.arange(most)).clip(0)
        return cls.grid((values[:, None] // 10 ** shift % 10 + 48).astype(np.uint8), width)

    def take(self, rows: np.ndarray) -> Packed:
        """Some of the rows (indices or a mask), sharing the buffer."""
        return Packed(self.data, self.start[rows], self.width[rows])

    def widest(self) -> int:
        """The longest row's width."""
        return int(self.width.max()) if len(self.width) else 0

    def block(self, rows: np.ndarray, width: int) -> np.ndarray:
        """Some rows, all `width` long, as an (n, width) array."""
        # every window of `width` bytes, as a view by strides: as_strided and sliding_window_view
        # check their arguments for 10-30 us a call, and this runs once per shape of row
        data, windows = self.data, max(0, len(self.data) - width + 1)
        if data.flags.c_contiguous:
            return np.ndarray((windows, width), np.uint8, data, 0, (1, 1))[self.start[rows]]
        return np.lib.stride_tricks.as_strided(data, (windows, width), (data.strides[0],) * 2,
                                               writeable=False)[self.start[rows]]

    def __len__(self) -> int:
        return len(self.width)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        at = int(self.start[i])
        return self.data[at:at + int(self.width[i])].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        raw = self.data.tobytes()
        return iter([raw[a:a + w] for a, w in zip(self.start.tolist(), self.width.tolist(), strict=True)])


def resp_rows(names: SlotNames, pres: Sequence[bytes], suf: bytes, fields: Sequence[Packed],
              group: np.ndarray | None = None) -> bytes:
    """RESP arguments, row after row: the key `pres[group[i]] + symbol + suf` (`pres[0]` without
    groups; a cluster member's keys carry the symbol's partition) as a bulk string, then each
    field's value as one. Rows come out grouped by shape, not in their order (MSET pairs and a
    script's rows do not depend on it); the prefix's length is part of a row's shape."""
    n = len(names)
    if n == 0:
        return b""
    group = np.zeros(n, dtype=np.int64) if group is None else group
    pre_len = np.array([len(p) for p in pres], dtype=np.int64)
    pre_text = np.array(pres, dtype=np.bytes_)
    code = pre_len[group] * (int(names.column.length.max()) + 1) + names.column.length[names.slots]
    radix = [f.widest() + 1 for f in fields]
    for f, r in zip(fields, radix, strict=True):
        code = code * r + f.width
    symbols = names.column.raw[names.slots]
    out: list[memoryview] = []
    for rows in _groups(code):
        first = int(rows[0])
        length = int(names.column.length[names.slots[first]])
        widths = tuple(int(f.width[first]) for f in fields)
        key_len = int(pre_len[group[first]]) + length + len(suf)
        block = np.empty(len(rows), dtype=_layout(key_len, int(pre_len[group[first]]), length, len(suf), widths))
        block["kh"], block["kt"] = b"$%d\r\n" % key_len, suf + b"\r\n"
        block["pre"] = pre_text[group[rows]] if len(pres) > 1 else pres[0]
        if length:
            block["sym"] = symbols[rows]  # S{longest} into S{length}: every symbol of the group is that long
        for j, (f, w) in enumerate(zip(fields, widths, strict=True)):
            block[f"h{j}"], block[f"c{j}"] = b"$%d\r\n" % w, b"\r\n"
            block[f"v{j}"] = f.block(rows, w)
        out.append(block.data)
    return b"".join(out)  # the blocks' buffers, copied once


def _groups(code: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by equal `code`, each group in row order. A cycle's rows come in a
    few shapes: each is peeled off the rows left by one comparison (a sort of 5,000 rows costs
    what a dozen comparisons do); past 16 shapes, the rest by one stable sort."""
    rows, out = np.arange(len(code)), list[np.ndarray]()
    while len(rows) and len(out) < 16:
        same = code == code[0]
        if same.all():
            return [*out, rows]
        out.append(rows[same])
        rows, code = rows[~same], code[~same]
    if len(rows):
        order = np.argsort(code, kind="stable")
        out += np.split(rows[order], np.flatnonzero(np.diff(code[order])) + 1)
    return out


@lru_cache(maxsize=4096)
def _layout(key_len: int, pre_len: int, length: int, suf_len: int, widths: tuple[int, ...]) -> np.dtype:
    """The structured dtype of one shape of RESP row (a dtype costs ~20 us to make; a cycle's
    rows come in the same few shapes every second)."""
    layout: list[tuple[str, str | tuple[str, tuple[int]]]] = [
        ("kh", f"S{len(b'$%d' % key_len) + 2}"), ("pre", f"S{pre_len}"), ("sym", f"S{length}"),
        ("kt", f"S{suf_len + 2}")]
    for j, w in enumerate(widths):
        layout += [(f"h{j}", f"S{len(b'$%d' % w) + 2}"), (f"v{j}", ("u1", (w,))), (f"c{j}", "S2")]
    return np.dtype(layout)
