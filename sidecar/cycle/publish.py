"""Publish: a cycle's bars and features, of every timeframe, as the parts of its one Redis write.

The minute's part: the newest bar of each slot that changed (or whose STALE flag did), the new
closed and gap-filled bars for the histories, the revised ones, and the features. A history
entry replaces an older copy at the same open only where one can exist (a bar newer than any
this process wrote has none), and each history is capped every TRIM_EVERY minutes, spread over
the symbols. A higher timeframe's part: its newest bars, its closed bars, its features.
`Publisher` sends them all in one round trip and, once Redis took them, the quarantined spikes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import RedisStoreError
from ..metrics import Metrics
from ..stores import RedisStore
from ..stores.redis_wire import REPLACE, TRIM, FeatureReads, Ints, TimeframeWrite, pack
from .acceptance import Accepted
from .batch import Batch
from .deadletters import Staleness
from .encode import BarEncoder
from .higher import LaneOutput
from .table import SymbolTable

log = logging.getLogger(__name__)

TRIM_EVERY = 8  # minutes between caps of a symbol's Redis history (it holds up to this many more)
UNSENT_PER_WRITE = 20_000  # closed bars of failed writes sent again with one cycle's write, at most
UNSENT_MAX = 250_000  # kept in memory at most (~50 MB); beyond, the store is read back instead


@dataclass(slots=True, frozen=True)
class Unsent:
    """The closed bars of a write that failed, to send again: one timeframe's history rows, and
    for the minute's the rows' slots and opens (which the history marks once they are sent)."""

    write: TimeframeWrite
    minute: Batch | None


def set_latest(t: SymbolTable, rows: Batch) -> None:
    """The newest bar of each slot in `rows` becomes its latest."""
    s = rows.slot
    t.lt_ts[s], t.lt_open[s], t.lt_high[s], t.lt_low[s] = rows.ts, rows.open, rows.high, rows.low
    t.lt_close[s], t.lt_volume[s], t.lt_flags[s], t.lt_source[s] = rows.close, rows.volume, rows.flags, rows.source


def latest_rows(t: SymbolTable, slots: np.ndarray) -> Batch:
    """The latest bars of some slots, as rows."""
    return Batch(slots, t.lt_ts[slots], t.lt_open[slots], t.lt_high[slots], t.lt_low[slots], t.lt_close[slots],
                 t.lt_volume[slots], t.lt_flags[slots], t.lt_source[slots], np.full(len(slots), np.inf))


def minute_write(t: SymbolTable, encoder: BarEncoder, accepted: Accepted, synthetic: Batch, stale: Staleness,
                 features: tuple[np.ndarray, Sequence[bytes]], every: bool = False) -> tuple[TimeframeWrite, Batch]:
    """The minute's part of the cycle's write, and the rows it adds to the histories; with
    `every`, every symbol's newest bar, not only those that changed."""
    step = timeframe_seconds(encoder.timeframe)
    if every:
        slots = t.slots()
        latest = slots[t.lt_ts[slots] >= 0]
    else:
        rewrite = stale.rewrite()
        latest = accepted.newest.slot if not len(rewrite) else np.union1d(accepted.newest.slot, rewrite)
    history = Batch.concat([accepted.closed, synthetic])
    names = t.names()
    modes = history_modes(t.hist_ts, history, step)
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
        quiet=[t.symbols[s] for s in stale.marked.tolist()])
    return write, history


def history_modes(known: np.ndarray, rows: Batch, step: int) -> np.ndarray:
    """Each closed bar's history write mode: it replaces an older copy at its open only where
    one can exist (this process wrote none to that history yet, by `known` per slot, or one at
    or after its open), and caps the history every TRIM_EVERY bars, spread over the symbols.
    Removing and capping every time cost Redis twice the ZADD alone (10,000 rows of 170 bytes:
    ~150 against ~75 ms)."""
    before = known[rows.slot]
    modes = np.where((before < 0) | (rows.ts <= before), REPLACE, 0)
    return modes | np.where((rows.ts // step + rows.slot) % TRIM_EVERY == 0, TRIM, 0)


def lane_write(t: SymbolTable, encoder: BarEncoder, lane: LaneOutput) -> TimeframeWrite:
    """A higher timeframe's part of the cycle's write: newest bars, closed bars, features."""
    closed, column = Batch.concat([lane.closed, lane.rebuilt]), t.names().column
    return TimeframeWrite(
        lane.timeframe,
        latest=(t.names(lane.latest.slot), encoder.encode(lane.latest, column, t.source_names)),
        history=(t.names(closed.slot), closed.ts, encoder.encode(closed, column, t.source_names),
                 np.concatenate([history_modes(lane.hist_ts, lane.closed, timeframe_seconds(lane.timeframe)),
                                 np.full(len(lane.rebuilt), REPLACE | TRIM)])),  # a rebuilt bar rewrites one
        features=(t.names(lane.feature_slots), lane.feature_rows))


class Publisher:
    """The cycle's one Redis write, of every timeframe, and the quarantined spikes after it.

    :param table: the symbol table.
    :param redis: the hot store.
    :param encoder: packs the minute's bars.
    :param lane_encoders: pack each higher timeframe's bars, by timeframe.
    :param metrics: Redis errors and write times.
    :param clock: times the write.
    :param on_redis_lost: called when Redis needs writing again from the store: with 0 when a
        write finds that it lost its data (to re-seed it); with the oldest open among the closed
        bars of failed writes when they were more than are kept to send again (to catch up from
        there on).
    """

    def __init__(self, *, table: SymbolTable, redis: RedisStore, encoder: BarEncoder,
                 lane_encoders: dict[str, BarEncoder], metrics: Metrics, clock: Clock,
                 on_redis_lost: Callable[[float], object] | None) -> None:
        self.table, self.redis, self.encoder, self.lane_encoders = table, redis, encoder, lane_encoders
        self.metrics, self.clock, self.on_redis_lost = metrics, clock, on_redis_lost
        self.failing_since: float | None = None  # when the writes began failing (None: they do not)
        self.unsent: list[Unsent] = []  # the closed bars of failed writes, oldest first
        self.missed_from: int | None = None  # more failed than `unsent` holds: the oldest open among them
        self.values = 0  # values the last write sent (the cycle trace's)
        self.step_s = 0.0  # seconds the last write's `step` took (the cycle's timeframes stage)
        self.quarantine: list[dict[str, object]] = []  # spikes not yet written to Redis

    async def write(self, accepted: Accepted, synthetic: Batch, stale: Staleness,
                    features: tuple[np.ndarray, Sequence[bytes]], step: Callable[[], Sequence[LaneOutput]],
                    now: float, reads: FeatureReads | None = None) -> tuple[bool, Sequence[LaneOutput]]:
        """Newest bars (and those whose STALE flag changed), histories and features of every
        timeframe in one round trip; whether Redis took them, and the higher timeframes' output.

        The minute's part goes first; `step` (the higher timeframes' step) runs while Redis
        applies it, and its parts follow on the same connection. `step` runs once, whatever
        becomes of the write. `reads`: features read back with the write (`RedisStore.write_timeframes`).

        If Redis did not take them, SQLite keeps recording, and the next write carries every
        symbol's newest bar (a write sent before an outage may land after a newer one when Redis
        wakes) and the closed bars of the failed writes, oldest first, UNSENT_PER_WRITE at most
        each time."""
        t = self.table
        recovering = self.failing_since is not None
        minute, history = minute_write(t, self.encoder, accepted, synthetic, stale, features, every=recovering)
        lanes: list[Sequence[LaneOutput]] = []
        lane_writes: list[TimeframeWrite] = []

        def stepped() -> list[TimeframeWrite]:
            if not lanes:
                t0 = self.clock.monotonic()
                lanes.append(step())
                self.step_s = self.clock.monotonic() - t0
                lane_writes.extend(lane_write(t, self.lane_encoders[lane.timeframe], lane) for lane in lanes[0])
            return lane_writes

        again = self._unsent_part()
        t0 = self.clock.monotonic()
        try:
            # the kept bars first: a revision in this write of a bar among them must win
            result = await self.redis.write_timeframes([*(u.write for u in again), minute], now, then=stepped,
                                                       reads=reads)
        except RedisStoreError as exc:
            self.metrics.redis_errors.inc()
            if self.failing_since is None:
                log.warning("redis write failed (SQLite keeps recording): %s", exc)
                self.failing_since = now
            self._keep([minute, *stepped()], history)
            return False, lanes[0]
        stepped()  # (it ran once the minute's part was sent)
        self.metrics.redis_write_seconds.observe(self.clock.monotonic() - t0 - self.step_s)
        self.values = result.written
        for rows in [*(u.minute for u in again if u.minute is not None), history]:
            np.maximum.at(t.hist_ts, rows.slot, rows.ts)
        for lane in lanes[0]:
            np.maximum.at(lane.hist_ts, lane.closed.slot, lane.closed.ts)
        del self.unsent[:len(again)]
        since, self.failing_since = self.failing_since, None
        if since is not None:
            log.info("redis writes recovered after %.1fs", now - since)
        if self.on_redis_lost is not None:
            # A Redis Cluster that failed over may have lost writes its old master acknowledged
            # (replication is asynchronous): re-seed as after a restart. Closed bars too many to
            # keep: read back from the store, from when the writes began failing.
            if result.fresh or (since is not None and self.redis.cluster_client):
                self.on_redis_lost(0.0)
            elif self.missed_from is not None:
                self.on_redis_lost(self.missed_from)
        self.missed_from = None
        return True, lanes[0]

    def _unsent_part(self) -> list[Unsent]:
        """The oldest kept parts, up to UNSENT_PER_WRITE rows (one part at least)."""
        rows = 0
        for k, u in enumerate(self.unsent):
            rows += len(u.write.history[0])
            if rows > UNSENT_PER_WRITE and k:
                return self.unsent[:k]
        return list(self.unsent)

    def _keep(self, writes: list[TimeframeWrite], history: Batch) -> None:
        """Keep a failed write's closed bars (its newest bars and features are rewritten anyway)."""
        # each replacing any copy at its open: a copy may have landed since (a revision, say)
        kept = [Unsent(replace(w, latest=((), ()), features=((), ()), quiet=(),
                               history=(*w.history[:3], np.asarray(w.history[3]) | REPLACE)),
                       history if k == 0 else None)
                for k, w in enumerate(writes) if len(w.history[0])]
        if self.missed_from is not None:  # too many kept already: only the oldest open counts now
            self.missed_from = min([self.missed_from, *(_oldest(u) for u in kept)])
            return
        self.unsent += kept
        if sum(len(u.write.history[0]) for u in self.unsent) > UNSENT_MAX:  # a long outage: the store has them all
            log.warning("redis missed more than %d closed bars: they are read back from the store once it answers",
                        UNSENT_MAX)
            self.missed_from = min(_oldest(u) for u in self.unsent)
            self.unsent = []

    async def write_quarantine(self) -> None:
        """The spikes held since the last successful write, onto Redis's quarantine list."""
        if self.quarantine:
            try:
                await self.redis.quarantine(self.quarantine)
                self.quarantine = []
            except RedisStoreError as exc:
                log.warning("%s", exc)


def _oldest(u: Unsent) -> int:
    """The oldest open among a kept part's bars."""
    return int(np.min(u.write.history[1]))
