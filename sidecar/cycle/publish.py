"""Publish: a cycle's bars and features, of every timeframe, as the parts of its one Redis write.

The minute's part: the newest bar of each slot that changed (and the stale rewrites), the new
closed and gap-filled bars for the histories, the revised ones, and the features. A history
entry replaces an older copy at the same open only where one can exist (a bar newer than any
this process wrote has none), and each history is capped every TRIM_EVERY minutes, spread over
the symbols. A higher timeframe's part: its newest bars, its closed bars, its features.
`Publisher` sends them all in one round trip and, once Redis took them, the quarantined spikes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import RedisStoreError
from ..metrics import Metrics
from ..stores import RedisStore
from ..stores.redis_wire import REPLACE, TRIM, Ints, TimeframeWrite, pack
from .acceptance import Accepted
from .batch import Batch
from .encode import BarEncoder
from .higher import LaneOutput
from .table import SymbolTable

log = logging.getLogger(__name__)

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


class Publisher:
    """The cycle's one Redis write, of every timeframe, and the quarantined spikes after it.

    :param table: the symbol table.
    :param redis: the hot store.
    :param encoder: packs the minute's bars.
    :param lane_encoders: pack each higher timeframe's bars, by timeframe.
    :param metrics: Redis errors and write times.
    :param clock: times the write.
    :param on_redis_lost: called when a write finds that Redis lost its data (to re-seed it).
    """

    def __init__(self, *, table: SymbolTable, redis: RedisStore, encoder: BarEncoder,
                 lane_encoders: dict[str, BarEncoder], metrics: Metrics, clock: Clock,
                 on_redis_lost: Callable[[], object] | None) -> None:
        self.table, self.redis, self.encoder, self.lane_encoders = table, redis, encoder, lane_encoders
        self.metrics, self.clock, self.on_redis_lost = metrics, clock, on_redis_lost
        self.failing = False  # for logging the transitions only; the store's health() says more
        self.values = 0  # values the last write sent (the cycle trace's)
        self.quarantine: list[dict[str, object]] = []  # spikes not yet written to Redis

    async def write(self, accepted: Accepted, synthetic: Batch, stale: np.ndarray,
                    features: tuple[np.ndarray, Sequence[bytes]], lanes: Sequence[LaneOutput], now: float) -> bool:
        """Newest bars (and stale rewrites), histories and features of every timeframe in one
        round trip; whether Redis took them (if not, SQLite keeps recording and the next cycle
        writes the newest values again)."""
        t = self.table
        minute, history = minute_write(t, self.encoder, accepted, synthetic, stale, features)
        writes = [minute, *(lane_write(t, self.lane_encoders[lane.timeframe], lane) for lane in lanes)]
        t0 = self.clock.monotonic()
        try:
            result = await self.redis.write_timeframes(writes, now)
        except RedisStoreError as exc:
            self.metrics.redis_errors.inc()
            if not self.failing:
                log.warning("redis write failed (SQLite keeps recording): %s", exc)
            self.failing = True
            return False
        self.metrics.redis_write_seconds.observe(self.clock.monotonic() - t0)
        self.values = result.written
        np.maximum.at(t.hist_ts, history.slot, history.ts)
        recovered = self.failing
        if recovered:
            log.info("redis writes recovered")
        self.failing = False
        # A Redis Cluster that failed over may have lost writes its old master acknowledged
        # (replication is asynchronous): re-seed as after a restart.
        lost = result.fresh or (recovered and self.redis.cluster_client)
        if lost and self.on_redis_lost is not None:
            self.on_redis_lost()
        return True

    async def write_quarantine(self) -> None:
        """The spikes held since the last successful write, onto Redis's quarantine list."""
        if self.quarantine:
            try:
                await self.redis.quarantine(self.quarantine)
                self.quarantine = []
            except RedisStoreError as exc:
                log.warning("%s", exc)
