"""Feature values in Redis: one msgpack map per symbol, named fields, readable by any
msgpack decoder:

    {"tf": "1m", "ts": <bar open>, "close": <bar close>, "provisional": <forming bar?>,
     "updated": <wall time written>, "sma_20": ..., ... 28 outputs ...}

An output still warming up is nil. A row whose values are all numbers always has the same
byte layout (map16 header, fixed keys, float64 and uint64 values), so a whole cycle of such
rows is encoded and decoded as one NumPy structured array: no per-symbol packing in the
per-second path. Other rows fall back to msgpack itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

_FLOAT, _UINT64, _TRUE, _FALSE, _MAP16 = 0xCB, 0xCF, 0xC3, 0xC2, 0xDE


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

    def encode(self, ts: np.ndarray, close: np.ndarray, provisional: np.ndarray, updated: float,
               values: np.ndarray) -> list[bytes]:
        """One map per column of `values` (outputs, n)."""
        n = values.shape[1]
        rows = np.repeat(self._template, n)
        rows["ts"], rows["provisional"] = ts, np.where(provisional, _TRUE, _FALSE)
        rows["v_close"], rows["v_updated"] = close, updated
        for i, name in enumerate(self.outputs):
            rows[f"v_{name}"] = values[i]
        raw, size = rows.tobytes(), self.dtype.itemsize
        out = [raw[j * size:(j + 1) * size] for j in range(n)]
        for j in np.flatnonzero(np.isnan(values).any(axis=0) | np.isnan(close)):
            out[j] = msgpack.packb(self._map(int(ts[j]), float(close[j]), bool(provisional[j]), updated, values[:, j]))
        return out

    def _map(self, ts: int, close: float, provisional: bool, updated: float, column: np.ndarray) -> dict:
        m: dict[str, object] = {"tf": self.timeframe, "ts": ts, "close": None if close != close else close,
                                "provisional": provisional, "updated": updated}
        m.update({name: (None if x != x else x) for name, x in zip(self.outputs, column.tolist(), strict=True)})
        return m

    def decode(self, raws: Sequence[bytes | None]) -> FeatureFrame:
        """Decode rows as returned by MGET (None for a missing key)."""
        n = len(raws)
        frame = FeatureFrame(present=np.zeros(n, dtype=bool), ts=np.full(n, -1, dtype=np.int64),
                             updated=np.full(n, np.nan), provisional=np.zeros(n, dtype=bool),
                             close=np.full(n, np.nan), values=np.full((len(self.outputs), n), np.nan))
        size = self.dtype.itemsize
        fixed: np.ndarray | slice
        rows = None
        if None not in raws:  # the usual cycle: every row present, all in the fixed layout
            joined = b"".join(raws)  # type: ignore[arg-type]
            if len(joined) == size * n:
                candidate = np.frombuffer(joined, dtype=self.dtype)
                if ((candidate["hdr"] == _MAP16) & (candidate["count"] == self.n_fields)
                        & (candidate["m_ts"] == _UINT64)).all():
                    rows, fixed = candidate, slice(None)
        if rows is None:
            picked = [j for j, r in enumerate(raws) if r is not None and len(r) == size and r[:3] == self._prefix]
            rows = np.frombuffer(b"".join([raws[j] for j in picked]), dtype=self.dtype)  # type: ignore[misc]
            fixed = np.array(picked, dtype=np.int64)
        if len(rows):
            frame.present[fixed] = True
            frame.ts[fixed] = rows["ts"]
            frame.provisional[fixed] = rows["provisional"] == _TRUE
            frame.updated[fixed], frame.close[fixed] = rows["v_updated"], rows["v_close"]
            for i, name in enumerate(self.outputs):
                frame.values[i, fixed] = rows[f"v_{name}"]
        if isinstance(fixed, slice):
            return frame
        taken = set(fixed.tolist())
        for j, raw in enumerate(raws):
            if raw is None or j in taken:
                continue
            m = self.to_map(raw)
            frame.present[j] = True
            frame.ts[j], frame.provisional[j] = int(m["ts"]), bool(m["provisional"])
            frame.updated[j] = float(m["updated"])
            frame.close[j] = np.nan if m.get("close") is None else float(m["close"])
            frame.values[:, j] = [np.nan if m.get(name) is None else float(m[name]) for name in self.outputs]
        return frame

    @staticmethod
    def to_map(raw: bytes) -> dict:
        """Any row as a plain dict (what another process's msgpack decoder sees)."""
        return msgpack.unpackb(raw)
