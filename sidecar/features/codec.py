"""Feature values in Redis: one msgpack map per symbol, named fields, readable by any
msgpack decoder:

    {"tf": "1m", "ts": <bar open>, "close": <bar close>, "provisional": <forming bar?>,
     "updated": <wall time written>, "sma_20": ..., ... 28 outputs ...}

An output still warming up is nil. A row whose values are all numbers always has the same
byte layout (map16 header, fixed keys, float64 and uint64 values), so a whole cycle of rows is
encoded as one NumPy structured array (a nil is that layout with the value's marker set to
0xc0 and its 8 bytes cut out: by a few slice copies per pattern of nils, or by one boolean mask
over all rows when the patterns are many), and decoded the same way
when every row has the fixed layout: no per-symbol packing in the per-second path. Rows with
nils are decoded field by field across all rows, and any row off our layout by msgpack.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from ..packed import Packed

_FLOAT, _UINT64, _TRUE, _FALSE, _MAP16, _NIL = 0xCB, 0xCF, 0xC3, 0xC2, 0xDE, 0xC0
_NAN = np.frombuffer(np.array([np.nan], dtype=">f8").tobytes(), dtype=np.uint8)  # a nil's value, decoded
_PATTERNS = 64  # patterns of nils up to which rows are cut per pattern (each costs a few slice copies)


def _key(name: str) -> bytes:
    return msgpack.packb(name)


@dataclass(slots=True)
class FeatureFrame:
    """Decoded feature rows, one column per requested symbol; absent rows have present=False."""

    present: np.ndarray
    ts: np.ndarray
    updated: np.ndarray
    provisional: np.ndarray
    close: np.ndarray
    values: np.ndarray  # (outputs, symbols), NaN where missing


class FeatureCodec:
    """Encodes and decodes the feature map of one timeframe.

    :param outputs: output names, in the engine's row order.
    :param timeframe: stored in every map as "tf".
    """

    def __init__(self, outputs: Sequence[str], timeframe: str) -> None:
        self.outputs = tuple(outputs)
        self.timeframe = timeframe
        fields = [("hdr", "u1"), ("count", ">u2"), ("k_tf", f"S{len(_key('tf'))}"),
                  ("tf", f"S{len(_key(timeframe))}"), ("k_ts", f"S{len(_key('ts'))}"), ("m_ts", "u1"),
                  ("ts", ">u8"), ("k_provisional", f"S{len(_key('provisional'))}"), ("provisional", "u1")]
        for name in ("close", "updated", *self.outputs):
            fields += [(f"k_{name}", f"S{len(_key(name))}"), (f"m_{name}", "u1"), (f"v_{name}", ">f8")]
        self.dtype = np.dtype(fields)
        self._at = {name: int(spec[1]) for name, spec in (self.dtype.fields or {}).items()}  # field -> byte offset
        self.n_fields = 5 + len(self.outputs)
        template = np.zeros(1, dtype=self.dtype)
        template["hdr"], template["count"] = _MAP16, self.n_fields
        template["m_ts"] = _UINT64
        for name in ("tf", "ts", "provisional", "close", "updated", *self.outputs):
            template[f"k_{name}"] = _key(name)
        template["tf"] = _key(timeframe)
        for name in ("close", "updated", *self.outputs):
            template[f"m_{name}"] = _FLOAT
        self._template = template
        self._prefix = template.tobytes()[:3]  # map16 header: identifies the fixed layout
        self._markers = np.array([self._at[f"m_{name}"] for name in ("close", *self.outputs)])  # byte offsets
        # run lengths of the layout: up to the first value, the value, up to the next, ..., the rest
        edges = np.column_stack([self._markers + 1, self._markers + 9]).ravel()
        self._runs = np.diff(np.concatenate([[0], edges, [self.dtype.itemsize]]))
        self._bits = 1 << np.arange(len(self._markers), dtype=np.uint64)  # a row's nils as one number
        self._template_bytes = template.view(np.uint8).copy()
        # what a row in our layout must have where it has it: the map header and each value's
        # marker (what a decode checks before it trusts the offsets)
        self._checked = np.array([0, 1, 2, *(at for name, at in self._at.items() if name.startswith("m_"))])

    def encode(self, ts: np.ndarray, close: np.ndarray, provisional: np.ndarray, updated: float,
               values: np.ndarray) -> Packed:
        """One map per column of `values` (outputs, n); NaN is written as nil."""
        n = values.shape[1]
        rows = np.repeat(self._template, n)
        rows["ts"], rows["provisional"] = ts, np.where(provisional, _TRUE, _FALSE)
        rows["v_close"], rows["v_updated"] = close, updated
        for i, name in enumerate(self.outputs):
            rows[f"v_{name}"] = values[i]
        missing = np.column_stack([np.isnan(close), np.isnan(values).T])  # (n, 1 + outputs)
        if not missing.any():
            return Packed.fixed(rows)
        grid = rows.view(np.uint8).reshape(n, self.dtype.itemsize)
        # A missing value is nil: its marker byte becomes 0xc0 and its 8 bytes go. Rows share a
        # handful of patterns (what is still warming up depends on how much history a symbol
        # has), and a pattern's rows keep the same byte ranges: a few column-slice copies each.
        if missing.shape[1] > 64:
            return self._cut_each(grid, missing)
        patterns, which = np.unique(missing @ self._bits, return_inverse=True)
        if len(patterns) > _PATTERNS:
            return self._cut_each(grid, missing)
        width = self.dtype.itemsize - 8 * missing.sum(axis=1)
        start = np.zeros(n, dtype=np.int64)
        data = np.empty(int(width.sum()), dtype=np.uint8)
        at = 0
        for k in range(len(patterns)):
            rows_k = np.flatnonzero(which.ravel() == k) if len(patterns) > 1 else np.arange(n)
            cut = self._markers[missing[rows_k[0]]]
            block = grid[rows_k] if len(patterns) > 1 else grid  # grid is this call's own buffer
            block[:, cut] = _NIL
            w = int(width[rows_k[0]])
            out = data[at:at + len(rows_k) * w].reshape(len(rows_k), w)
            pos = 0
            for a, b in zip([0, *(cut + 9).tolist()], [*(cut + 1).tolist(), grid.shape[1]], strict=True):
                out[:, pos:pos + b - a] = block[:, a:b]
                pos += b - a
            start[rows_k] = at + np.arange(len(rows_k)) * w
            at += out.size
        return Packed(data, start, width)

    def _cut_each(self, grid: np.ndarray, missing: np.ndarray) -> Packed:
        """Rows with many different patterns of nils: the bytes kept form one mask of runs over
        all rows (the layout: bytes before a value, kept; the value, kept unless missing; ...),
        so the rows come out as one buffer in one boolean selection."""
        n, size = grid.shape
        grid[:, self._markers] = np.where(missing, _NIL, grid[:, self._markers])
        runs = np.ones((n, 2 * len(self._markers) + 1), dtype=bool)
        runs[:, 1:-1:2] = ~missing
        keep = np.repeat(runs, self._runs, axis=1)
        width = size - 8 * missing.sum(axis=1)
        start = np.zeros(n, dtype=np.int64)
        np.cumsum(width[:-1], out=start[1:])
        return Packed(grid[keep], start, width)

    def decode(self, raws: Sequence[bytes | None], fields: Collection[str] | None = None) -> FeatureFrame:
        """Decode rows as returned by MGET (None for a missing key); with `fields`, only those
        outputs' values (the others stay NaN: what a scan does not read, it does not decode)."""
        wanted = [(i, name) for i, name in enumerate(self.outputs) if fields is None or name in fields]
        n = len(raws)
        frame = FeatureFrame(present=np.zeros(n, dtype=bool), ts=np.full(n, -1, dtype=np.int64),
                             updated=np.full(n, np.nan), provisional=np.zeros(n, dtype=bool),
                             close=np.full(n, np.nan), values=np.full((len(self.outputs), n), np.nan))
        left = np.flatnonzero([r is not None for r in raws]) if None in raws else np.arange(n)
        lengths = None  # of the rows left: measured once they turn out not to be all one pattern
        odd = []  # rows that are not what their own pattern says: decoded field by field
        # Rows share a handful of patterns of nils, and all rows of one pattern have one length:
        # the first row left says its pattern, the rows of its length are put back in the full
        # layout as one block, and those whose header and markers check out are decoded at once.
        for _ in range(_PATTERNS):
            if not len(left):
                break
            missing = self._nils(raws[left[0]])
            width = -1 if missing is None else self.dtype.itemsize - 8 * int(missing.sum())
            same = np.ones(len(left), dtype=bool) if lengths is None else lengths == width
            picked = left[same]
            block = None if missing is None or not same[0] else self._block(
                raws if len(picked) == n else [raws[j] for j in picked.tolist()], missing)  # type: ignore[arg-type]
            if block is None and missing is not None and lengths is None:  # rows of other lengths among them
                lengths = np.array([len(raws[j]) for j in left.tolist()], dtype=np.int64)  # type: ignore[arg-type]
                continue
            if block is None or not block[1][0]:  # the first row is off our layout
                odd.append(int(left[0]))
                left = left[1:]
                lengths = None if lengths is None else lengths[1:]
                continue
            rows, matched = block
            where = picked[matched]
            if not matched.all():  # a structured selection copies field by field: only when needed
                rows = rows[matched]
            self._fill(frame, slice(None) if len(where) == n else where, rows, wanted)
            keep = ~same
            keep[np.flatnonzero(same)[~matched]] = True
            left = left[keep]
            lengths = None if lengths is None else lengths[keep]
        rest = np.concatenate([np.array(odd, dtype=np.int64), left])
        if len(rest):
            self._decode_with_nils(raws, rest, frame, {name for _, name in wanted})
        return frame

    def _nils(self, raw: bytes) -> np.ndarray | None:
        """Which of close and the outputs a row in our layout has as nil (None: not our layout)."""
        missing, shift = np.zeros(len(self._markers), dtype=bool), 0
        for k, at in enumerate(self._markers.tolist()):
            if at - shift >= len(raw):
                return None
            if raw[at - shift] == _NIL:
                missing[k], shift = True, shift + 8
        return missing

    def _block(self, parts: Sequence[bytes], missing: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows of one pattern of nils put back in the full layout (a nil's 8 bytes as NaN), and
        which of them check out (their header and markers as expected); None if their lengths
        are not all the pattern's."""
        cut = self._markers[missing]
        width = self.dtype.itemsize - 8 * len(cut)
        joined = b"".join(parts)
        if len(joined) != width * len(parts):
            return None
        packed = np.frombuffer(joined, dtype=np.uint8).reshape(len(parts), width)
        full = packed
        if len(cut):
            full = np.empty((len(parts), self.dtype.itemsize), dtype=np.uint8)
            pos = 0
            for a, b in zip([0, *(cut + 9).tolist()], [*(cut + 1).tolist(), self.dtype.itemsize], strict=True):
                full[:, a:b] = packed[:, pos:pos + b - a]
                pos += b - a
            for at in cut.tolist():
                full[:, at + 1:at + 9] = _NAN
        expected = self._template_bytes.copy()
        expected[cut] = _NIL
        ok = (full[:, self._checked] == expected[self._checked]).all(axis=1)
        return full.view(self.dtype).ravel(), ok

    @staticmethod
    def _fill(frame: FeatureFrame, where: np.ndarray | slice, rows: np.ndarray, wanted: list[tuple[int, str]]) -> None:
        """Decoded rows into the frame's columns `where`."""
        frame.present[where] = True
        frame.ts[where] = rows["ts"]
        frame.provisional[where] = rows["provisional"] == _TRUE
        frame.updated[where], frame.close[where] = rows["v_updated"], rows["v_close"]
        for i, name in wanted:
            frame.values[i, where] = rows[f"v_{name}"]

    def _decode_with_nils(self, raws: Sequence[bytes | None], picked: np.ndarray, frame: FeatureFrame,
                          wanted: set[str]) -> None:
        """Rows in our layout where some values are nil, parsed field by field across all
        rows at once (a nil moves the later fields 8 bytes back); any row that does not check
        out is decoded by msgpack instead."""
        parts = [raws[j] for j in picked]
        lengths = np.array([len(r) for r in parts], dtype=np.int64)
        # padded so that a short row last (another writer's) is read past its end, not past the buffer's
        buf = np.frombuffer(b"".join(parts) + bytes(self.dtype.itemsize + 8), dtype=np.uint8)
        start = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        f = self._at
        ok = (lengths >= 3) & (buf[start] == _MAP16) & (buf[start + f["m_ts"]] == _UINT64)
        ok &= (buf[start + 1].astype(np.int64) << 8 | buf[start + 2]) == self.n_fields

        windows = np.lib.stride_tricks.sliding_window_view(buf, 8)  # windows[i]: the 8 bytes at i

        def float_at(pos: np.ndarray) -> np.ndarray:
            return windows[pos].view(">f8").ravel()

        ts = windows[start + f["ts"]].view(">u8").ravel()
        provisional = buf[start + f["provisional"]] == _TRUE
        shift = np.zeros(len(picked), dtype=np.int64)
        decoded = {}
        for name in ("close", "updated", *self.outputs):
            key_at = start + f[f"k_{name}"] - shift
            marker_at = start + f[f"m_{name}"] - shift
            ok &= buf[key_at] == self._template[f"k_{name}"][0][0]  # the key's fixstr header
            nil = buf[marker_at] == _NIL
            ok &= nil | (buf[marker_at] == _FLOAT)
            if name in ("close", "updated") or name in wanted:
                decoded[name] = np.where(nil, np.nan, float_at(marker_at + 1))
            shift += 8 * nil
        ok &= lengths == self.dtype.itemsize - shift
        good, bad = picked[ok], picked[~ok]
        frame.present[good] = True
        frame.ts[good], frame.provisional[good] = ts[ok], provisional[ok]
        frame.close[good], frame.updated[good] = decoded["close"][ok], decoded["updated"][ok]
        for i, name in enumerate(self.outputs):
            if name in decoded:
                frame.values[i, good] = decoded[name][ok]
        for j in bad.tolist():
            m = self.to_map(raws[j])
            frame.present[j] = True
            frame.ts[j], frame.provisional[j] = int(m["ts"]), bool(m["provisional"])
            frame.updated[j] = float(m["updated"])
            frame.close[j] = np.nan if m.get("close") is None else float(m["close"])
            for i, name in enumerate(self.outputs):
                if name in wanted and m.get(name) is not None:
                    frame.values[i, j] = float(m[name])

    @staticmethod
    def to_map(raw: bytes) -> dict:
        """Any row as a plain dict (what another process's msgpack decoder sees)."""
        return msgpack.unpackb(raw)
