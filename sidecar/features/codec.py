"""Feature values in Redis: one msgpack map per symbol, named fields, readable by any
msgpack decoder:

    {"tf": "1m", "ts": <bar open>, "close": <bar close>, "provisional": <forming bar?>,
     "updated": <wall time written>, "sma_20": ..., ... 28 outputs ...}

An output still warming up is nil. A row whose values are all numbers always has the same
byte layout (map16 header, fixed keys, float64 and uint64 values), so a whole cycle of rows is
encoded as one NumPy structured array (a nil is that layout with the value's marker set to
0xc0 and its 8 bytes cut out, by one boolean mask over all rows), and decoded the same way
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

    def encode(self, ts: np.ndarray, close: np.ndarray, provisional: np.ndarray, updated: float,
               values: np.ndarray) -> Packed:
        """One map per column of `values` (outputs, n); NaN is written as nil."""
        n = values.shape[1]
        rows = np.repeat(self._template, n)
        rows["ts"], rows["provisional"] = ts, np.where(provisional, _TRUE, _FALSE)
        rows["v_close"], rows["v_updated"] = close, updated
        for i, name in enumerate(self.outputs):
            rows[f"v_{name}"] = values[i]
        nulls = np.isnan(values).T  # (n, outputs)
        if not nulls.any() and not np.isnan(close).any():
            return Packed.fixed(rows)
        # A missing value is nil: its marker byte becomes 0xc0 and its 8 bytes go. The bytes
        # kept form one mask of runs over all rows, so the rows come out as one buffer, one after
        # the other, in one boolean selection.
        size = self.dtype.itemsize
        grid = rows.view(np.uint8).reshape(n, size)
        missing = np.column_stack([np.isnan(close), nulls])  # (n, 1 + outputs)
        grid[:, self._markers] = np.where(missing, _NIL, grid[:, self._markers])
        # the layout as runs: the bytes before a value (kept), the value (kept unless missing), ...
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
        rows = None
        if None not in raws:  # the usual cycle: every row present, all in the fixed layout
            joined = b"".join(raws)  # type: ignore[arg-type]
            if len(joined) == self.dtype.itemsize * n:
                candidate = np.frombuffer(joined, dtype=self.dtype)
                if ((candidate["hdr"] == _MAP16) & (candidate["count"] == self.n_fields)
                        & (candidate["m_ts"] == _UINT64)).all():
                    rows = candidate
        if rows is not None:
            frame.present[:] = True
            frame.ts[:] = rows["ts"]
            frame.provisional[:] = rows["provisional"] == _TRUE
            frame.updated[:], frame.close[:] = rows["v_updated"], rows["v_close"]
            for i, name in wanted:
                frame.values[i] = rows[f"v_{name}"]
            return frame
        picked = [j for j, r in enumerate(raws) if r is not None]
        if picked:
            self._decode_with_nils(raws, np.array(picked), frame, {name for _, name in wanted})
        return frame

    def _decode_with_nils(self, raws: Sequence[bytes | None], picked: np.ndarray, frame: FeatureFrame,
                          wanted: set[str]) -> None:
        """Rows in our layout where some values are nil, parsed field by field across all
        rows at once (a nil moves the later fields 8 bytes back); any row that does not check
        out is decoded by msgpack instead."""
        parts = [raws[j] for j in picked]
        lengths = np.array([len(r) for r in parts], dtype=np.int64)
        buf = np.frombuffer(b"".join(parts) + bytes(16), dtype=np.uint8)
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
            frame.values[:, j] = [np.nan if m.get(name) is None else float(m[name]) for name in self.outputs]

    @staticmethod
    def to_map(raw: bytes) -> dict:
        """Any row as a plain dict (what another process's msgpack decoder sees)."""
        return msgpack.unpackb(raw)
