"""Publish: a cycle's bars and features, of every timeframe, as the parts of its one Redis write.

The minute's part: the newest bar of each slot that changed (and the stale rewrites), the new
closed and gap-filled bars for the histories, the revised ones, and the features. A history
entry replaces an older copy at the same open only where one can exist (a bar newer than any
this process wrote has none), and each history is capped every TRIM_EVERY minutes, spread over
the symbols. A higher timeframe's part: its newest bars, its closed bars, its features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..bars import timeframe_seconds
from ..stores.redis_wire import REPLACE, TRIM, Ints, TimeframeWrite, pack
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
                 features: tuple[np.ndarray, Sequence[bytes]]) -> tuple[TimeframeWrite, Batch]:
    """The minute's part of the cycle's write, and the rows it adds to the histories."""
    step = timeframe_seconds(encoder.timeframe)
    latest = accepted.newest.slot if not len(stale) else np.union1d(accepted.newest.slot, stale)
    history = Batch.concat([accepted.closed, synthetic])
    names = t.names()
    known = t.hist_ts[history.slot]
    modes = np.where((known < 0) | (history.ts <= known), REPLACE, 0)
    modes |= np.where((history.ts // step + history.slot) % TRIM_EVERY == 0, TRIM, 0)
    rows: tuple[Sequence[str], Ints, Sequence[bytes], Ints] = (
        t.names(history.slot), history.ts, encoder.encode(history, names.column, t.source_names), modes)
    if revised := accepted.revised:  # rare: as lists, with the revisions' values packed one by one
        rows = ([*rows[0], *(b.symbol for b in revised)], [*history.ts.tolist(), *(b.ts for b in revised)],
                [*rows[2], *(pack(b) for b in revised)], [*modes.tolist(), *[REPLACE | TRIM] * len(revised)])
    write = TimeframeWrite(
        encoder.timeframe,
        latest=(t.names(latest), encoder.encode(latest_rows(t, latest), names.column, t.source_names)),
        history=rows,
        features=(t.names(features[0]), features[1]),
        quiet=[t.symbols[s] for s in stale.tolist()])
    return write, history


def lane_write(t: SymbolTable, encoder: BarEncoder, lane: LaneOutput) -> TimeframeWrite:
    """A higher timeframe's part of the cycle's write: newest bars, closed bars, features."""
    closed, column = Batch.concat([lane.closed, lane.rebuilt]), t.names().column
    return TimeframeWrite(
        lane.timeframe,
        latest=(t.names(lane.latest.slot), encoder.encode(lane.latest, column, t.source_names)),
        history=(t.names(closed.slot), closed.ts, encoder.encode(closed, column, t.source_names),
                 np.full(len(closed), REPLACE | TRIM)),
        features=(t.names(lane.feature_slots), lane.feature_rows))
