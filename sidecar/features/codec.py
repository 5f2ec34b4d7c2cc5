"""Feature values in Redis: one msgpack map per symbol, named fields, readable by any
msgpack decoder:

    {"tf": "1m", "ts": <bar open>, "close": <bar close>, "provisional": <forming bar?>,
     "updated": <wall time written>, "sma_20": ..., ... 28 outputs ...}

An output still warming up is nil. Rows fall into a handful of patterns of nils (what is still
warming up depends on how much history a symbol has), and every row of one pattern has the same
byte layout (map16 header, fixed keys, float64 and uint64 values, a nil's value absent and its
marker 0xc0). So a cycle's rows are encoded as one NumPy structured array per pattern, written in
place in one buffer, and decoded the same way: the first row says its pattern, the rows of that
length are read as one array and kept where header and markers check out. No per-symbol packing
in the per-second path. Many patterns (scattered nils) are cut by one boolean mask over all rows;
rows another writer packed its own way are decoded field by field, and failing that by msgpack.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from ..arrays import distinct
from ..packed import Packed

log = logging.getLogger(__name__)

_FLOAT, _UINT64, _TRUE, _FALSE, _MAP16, _NIL = 0xCB, 0xCF, 0xC3, 0xC2, 0xDE, 0xC0
_PATTERNS = 64  # patterns of nils up to which rows are written and read per pattern (each costs ~30 field copies)
_LAYOUTS = 1024  # layouts kept per codec


def _key(name: str) -> bytes:
    return msgpack.packb(name)


@dataclass(slots=True, frozen=True)
class _Layout:
    """The rows of one pattern of nils: a template row of their structured dtype, the names
    whose values are nil (and have no bytes), and what a decode checks: byte offsets, and the
    bytes expected there."""

    template: np.ndarray
    nil: set[str]
    checked: np.ndarray
    expected: np.ndarray


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
        self.n_fields = 5 + len(self.outputs)
        self._nullable = ("close", *self.outputs)  # what may be nil, bit k of a pattern is _nullable[k]
        self._bits = 1 << np.arange(len(self._nullable), dtype=np.uint64)  # a row's nils as one number
        self._layouts: dict[int, _Layout] = {}
        self._warned = False  # about a value that is not a features map
        full = self._layout(0)
        self.dtype, self._template = full.template.dtype, full.template
        self._at = {name: int(spec[1]) for name, spec in (self.dtype.fields or {}).items()}  # field -> byte offset
        self._markers = np.array([self._at[f"m_{name}"] for name in self._nullable])  # byte offsets
        # run lengths of the layout: up to the first value, the value, up to the next, ..., the rest
        edges = np.column_stack([self._markers + 1, self._markers + 9]).ravel()
        self._runs = np.diff(np.concatenate([[0], edges, [self.dtype.itemsize]]))

    def _layout(self, code: int) -> _Layout:
        """The byte layout of rows with a pattern of nils (bit k: `_nullable[k]` is nil): the
        fixed layout without those values' 8 bytes, their markers nil."""
        layout = self._layouts.get(code)
        if layout is not None:
            return layout
        if len(self._layouts) >= _LAYOUTS:  # bounded: scattered nils could bring ever new patterns
            self._layouts.clear()
        nil = {name for k, name in enumerate(self._nullable) if code >> k & 1}
        fields = [("hdr", "u1"), ("count", ">u2"), ("k_tf", f"S{len(_key('tf'))}"),
                  ("tf", f"S{len(_key(self.timeframe))}"), ("k_ts", f"S{len(_key('ts'))}"), ("m_ts", "u1"),
                  ("ts", ">u8"), ("k_provisional", f"S{len(_key('provisional'))}"), ("provisional", "u1")]
        for name in ("close", "updated", *self.outputs):
            fields += [(f"k_{name}", f"S{len(_key(name))}"), (f"m_{name}", "u1")]
            if name not in nil:
                fields.append((f"v_{name}", ">f8"))
        template = np.zeros(1, dtype=np.dtype(fields))
        template["hdr"], template["count"], template["m_ts"] = _MAP16, self.n_fields, _UINT64
        template["tf"] = _key(self.timeframe)
        for name in ("tf", "ts", "provisional", "close", "updated", *self.outputs):
            template[f"k_{name}"] = _key(name)
        for name in ("close", "updated", *self.outputs):
            template[f"m_{name}"] = _NIL if name in nil else _FLOAT
        offsets: dict[str, tuple[np.dtype, int]] = template.dtype.fields or {}  # type: ignore[assignment]
        # what a decode checks before it trusts the layout: the map header and every marker
        checked = np.array([0, 1, 2, *(int(spec[1]) for name, spec in offsets.items() if name.startswith("m_"))])
        layout = self._layouts[code] = _Layout(template, nil, checked, template.view(np.uint8)[checked].copy())
        return layout

    def encode(self, ts: np.ndarray, close: np.ndarray, provisional: np.ndarray, updated: float,
               values: np.ndarray) -> Packed:
        """One map per column of `values` (outputs, n); NaN is written as nil."""
        n = values.shape[1]
        columns = {"ts": ts, "provisional": np.where(provisional, _TRUE, _FALSE), "v_close": close,
                   **{f"v_{name}": values[i] for i, name in enumerate(self.outputs)}}
        missing = np.column_stack([np.isnan(close), np.isnan(values).T])  # (n, 1 + outputs)
        codes, which = np.zeros(1, dtype=np.uint64), np.zeros(n, dtype=np.int64)
        if missing.any():
            if missing.shape[1] <= 64:
                codes, which = distinct(missing @ self._bits)
            if missing.shape[1] > 64 or len(codes) > _PATTERNS:
                full = self._put(np.repeat(self._template, n), slice(None), columns, updated)
                return self._cut_each(full.view(np.uint8).reshape(n, self.dtype.itemsize), missing)
        # Rows share a handful of patterns of nils (what is still warming up depends on how much
        # history a symbol has): each pattern's rows are one structured array of its own layout,
        # written in place, one pattern after the other, in the one buffer all rows share.
        layouts = [self._layout(int(code)) for code in codes.tolist()]
        width = np.array([layout.template.dtype.itemsize for layout in layouts])[which]
        order = np.argsort(which, kind="stable") if len(layouts) > 1 else slice(None)
        start = np.zeros(n, dtype=np.int64)
        start[order] = np.concatenate([[0], np.cumsum(width[order])[:-1]])
        data = np.empty(int(width.sum()), dtype=np.uint8)
        at = 0
        for k, layout in enumerate(layouts):
            rows: slice | np.ndarray = slice(None) if len(layouts) == 1 else np.flatnonzero(which == k)
            size = layout.template.dtype.itemsize * (n if isinstance(rows, slice) else len(rows))
            raw = data[at:at + size]
            raw.reshape(-1, layout.template.dtype.itemsize)[:] = layout.template.view(np.uint8)  # as bytes: fast
            self._put(raw.view(layout.template.dtype), rows, columns, updated, layout.nil)
            at += size
        return Packed(data, start, width)

    @staticmethod
    def _put(block: np.ndarray, rows: slice | np.ndarray, columns: dict[str, np.ndarray], updated: float,
             nil: Collection[str] = ()) -> np.ndarray:
        """The values of `rows` into the structured `block` (fields of nil values left out)."""
        block["v_updated"] = updated
        for field, column in columns.items():
            if field[2:] not in nil:
                block[field] = column[rows]
        return block

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
        # the first row left says its pattern, the rows of that length are read as one structured
        # array of the pattern's layout, and those whose header and markers check out are taken.
        for _ in range(_PATTERNS):
            if not len(left):
                break
            code = self._nils(raws[left[0]])
            layout = None if code is None else self._layout(code)
            width = -1 if layout is None else layout.template.dtype.itemsize
            same = np.ones(len(left), dtype=bool) if lengths is None else lengths == width
            matched = None
            if layout is not None and same[0]:
                picked = left[same]
                joined = b"".join(raws if len(picked) == n else [raws[j] for j in picked.tolist()])  # type: ignore[arg-type]
                if len(joined) != width * len(picked):  # rows of other lengths among them
                    lengths = np.array([len(raws[j]) for j in left.tolist()], dtype=np.int64)  # type: ignore[arg-type]
                    continue
                matched = self._checks(layout, joined, len(picked))
            if layout is None or matched is None or not matched[0]:  # the first row is off our layout
                odd.append(int(left[0]))
                left = left[1:]
                lengths = None if lengths is None else lengths[1:]
                continue
            rows = np.frombuffer(joined, dtype=layout.template.dtype)
            where = picked[matched]
            if not matched.all():  # a structured selection copies field by field: only when needed
                rows = rows[matched]
            self._fill(frame, slice(None) if len(where) == n else where, rows, wanted, layout.nil)
            keep = ~same
            keep[np.flatnonzero(same)[~matched]] = True
            left = left[keep]
            lengths = None if lengths is None else lengths[keep]
        rest = np.concatenate([np.array(odd, dtype=np.int64), left])
        if len(rest):
            self._decode_with_nils(raws, rest, frame, {name for _, name in wanted})
        return frame

    def _nils(self, raw: bytes) -> int | None:
        """The pattern of nils of a row in our layout (bit k: `_nullable[k]`; None: not our layout)."""
        code, shift = 0, 0
        for k, at in enumerate(self._markers.tolist()):
            if at - shift >= len(raw):
                return None
            if raw[at - shift] == _NIL:
                code, shift = code | 1 << k, shift + 8
        return code

    @staticmethod
    def _checks(layout: _Layout, joined: bytes, count: int) -> np.ndarray:
        """Which of `count` rows of one layout have its header and markers."""
        grid = np.frombuffer(joined, dtype=np.uint8).reshape(count, layout.template.dtype.itemsize)
        return (grid[:, layout.checked] == layout.expected).all(axis=1)

    @staticmethod
    def _fill(frame: FeatureFrame, where: np.ndarray | slice, rows: np.ndarray, wanted: list[tuple[int, str]],
              nil: set[str]) -> None:
        """Decoded rows into the frame's columns `where` (nil values stay NaN)."""
        frame.present[where] = True
        frame.ts[where] = rows["ts"]
        frame.provisional[where] = rows["provisional"] == _TRUE
        frame.updated[where] = rows["v_updated"]
        if "close" not in nil:
            frame.close[where] = rows["v_close"]
        for i, name in wanted:
            if name not in nil:
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
            try:
                m = self.to_map(raws[j])
                ts, provisional, updated = int(m["ts"]), bool(m["provisional"]), float(m["updated"])
                close = np.nan if m.get("close") is None else float(m["close"])
                values = {i: float(m[name]) for i, name in enumerate(self.outputs)
                          if name in wanted and m.get(name) is not None}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not a features map at all
                # left absent, as a missing key is; said once per codec, not every second
                log.log(logging.DEBUG if self._warned else logging.WARNING,
                        "a %s features value that is not a features map is read as absent: %r", self.timeframe, exc)
                self._warned = True
                continue
            frame.present[j] = True
            frame.ts[j], frame.provisional[j], frame.updated[j], frame.close[j] = ts, provisional, updated, close
            for i, value in values.items():
                frame.values[i, j] = value

    @staticmethod
    def to_map(raw: bytes) -> dict:
        """Any row as a plain dict (what another process's msgpack decoder sees)."""
        return msgpack.unpackb(raw)
