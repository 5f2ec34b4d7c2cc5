"""Publish: a cycle's bars and features, of every timeframe, as the parts of its one Redis write.

The minute's part: the newest bar of each slot that changed (and the stale rewrites), the new
closed and gap-filled bars for the histories, the revised ones, and the features. A history
entry replaces an older copy at the same open only where one can exist (a bar newer than any
this process wrote has none), and each history is capped every TRIM_EVERY minutes, spread over
the symbols. A higher timeframe's part: its newest bars, its closed bars, its features.
"""

from __future__ import annotations

import numpy as np

from ..bars import timeframe_seconds
from ..stores.redis_wire import REPLACE, TRIM, TimeframeWrite, pack
from .acceptance import Accepted
from .batch import Batch
from .encode import BarEncoder
from .higher import LaneOutput
from .table import SymbolTable

TRIM_EVERY = 8  # minutes between caps of a symbol's Redis history (it holds up to this many more)


def set_latest(t: SymbolTable, rows: Batch) -> None:
    """The newest bar of each slot in `rows` becomes its latest."""
    s = rows.slot
    t.lt_ts[s], t.lt_open[s], t.lt_high[s], t.lt_low[s] = rows.ts, rows.open, rows.high, rows.low
    t.lt_close[s], t.lt_volume[s], t.lt_flags[s], t.lt_source[s] = rows.close, rows.volume, rows.flags, rows.source


def latest_rows(t: SymbolTable, slots: np.ndarray) -> Batch:
    """The latest bars of some slots, as rows."""
    return Batch(slots, t.lt_ts[slots], t.lt_open[slots], t.lt_high[slots], t.lt_low[slots], t.lt_close[slots],
                 t.lt_volume[slots], t.lt_flags[slots], t.lt_source[slots], np.full(len(slots), np.inf))


def minute_write(t: SymbolTable, encoder: BarEncoder, accepted: Accepted, synthetic: Batch, stale: np.ndarray,
                 features: tuple[np.ndarray, list[bytes]]) -> tuple[TimeframeWrite, Batch]:
    """The minute's part of the cycle's write, and the rows it adds to the histories."""
    step = timeframe_seconds(encoder.timeframe)
    latest = accepted.newest.slot if not len(stale) else np.union1d(accepted.newest.slot, stale)
    history = Batch.concat([accepted.closed, synthetic])
    revised = accepted.revised
    names = t.symbols
    known = t.hist_ts[history.slot]
    modes = np.where((known < 0) | (history.ts <= known), REPLACE, 0)
    modes |= np.where((history.ts // step + history.slot) % TRIM_EVERY == 0, TRIM, 0)
    write = TimeframeWrite(
        encoder.timeframe,
        latest=([names[s] for s in latest.tolist()], encoder.encode(latest_rows(t, latest), names, t.source_names)),
        history=([names[s] for s in history.slot.tolist()] + [b.symbol for b in revised],
                 history.ts.tolist() + [b.ts for b in revised],
                 encoder.encode(history, names, t.source_names) + [pack(b) for b in revised],
                 modes.tolist() + [REPLACE | TRIM] * len(revised)),
        features=([names[s] for s in features[0].tolist()], features[1]),
        quiet=[names[s] for s in stale.tolist()])
    return write, history


def lane_write(t: SymbolTable, encoder: BarEncoder, lane: LaneOutput) -> TimeframeWrite:
    """A higher timeframe's part of the cycle's write: newest bars, closed bars, features."""
    names, closed = t.symbols, Batch.concat([lane.closed, lane.rebuilt])
    return TimeframeWrite(
        lane.timeframe,
        latest=([names[s] for s in lane.latest.slot.tolist()], encoder.encode(lane.latest, names, t.source_names)),
        history=([names[s] for s in closed.slot.tolist()], closed.ts.tolist(),
                 encoder.encode(closed, names, t.source_names), [REPLACE | TRIM] * len(closed)),
        features=([names[s] for s in lane.feature_slots.tolist()], lane.feature_rows))
