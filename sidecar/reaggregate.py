"""Re-aggregation of stored history into the higher timeframes, by the live loop's rules.

The live loop builds higher bars from the minutes it accepts. History reaches SQLite other
ways: the bootstrap stores 1m bars for the last 30 days and the source's own 5m and 1h bars
before that, a database from before this round holds only minutes, and a changed
`SIDECAR_DAY_START` makes the stored daily bars follow the old rule. This pass rebuilds every
higher timeframe of a symbol from the finest stored bars (a bar is used only if it lies wholly
inside one bucket, and a coarser one only where no finer bar lies inside it; a bucket a finer
history begins inside of is not built from it), stores what differs, and flags UNALIGNED
the stored bars that do not start a bucket under the current rules and cannot be rebuilt
(a day of the old rule older than any finer history).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from .bars import TIMEFRAMES, UNALIGNED, Bar
from .clock import Clock
from .cycle.higher import HigherTimeframes
from .errors import RedisStoreError
from .stores import DurableStore, RedisStore
from .symbols import SymbolInfo
from .timeframes import Buckets, aggregate

log = logging.getLogger(__name__)

FLUSH_AFTER = 100_000  # buffered bars after which a re-aggregation flushes before the next symbol


@dataclass(slots=True)
class Rebuilt:
    """What re-aggregation did to one timeframe of one symbol."""

    written: int = 0  # bars added or changed
    revised: int = 0  # of which changed a stored bar
    unaligned: int = 0  # stored bars of the old rules that no finer history could rebuild
    replaced: list[int] = field(default_factory=list)  # opens of stored bars of the old rules, deleted


async def reaggregate(sqlite: DurableStore, buckets: Buckets, info: SymbolInfo, timeframes: Sequence[str],
                      start: int, end: int) -> dict[str, Rebuilt]:
    """Rebuild `info`'s bars of `timeframes` (those above 1m) with buckets ending in
    (start, end] from the finest stored bars; store them (buffered), delete the stored bars of
    old rules they replace, and return the counts."""
    stored = {tf: await sqlite.between([info.symbol], tf, start, end) for tf in TIMEFRAMES}
    out: dict[str, Rebuilt] = {}
    for tf in timeframes:
        if tf == "1m":
            continue
        bars, report = _rebuild(buckets, info, tf, stored, end)
        old = {b.ts: b for b in stored[tf]}
        changed = [b for b in bars if b.ts not in old or (old[b.ts].values, old[b.ts].flags) != (b.values, b.flags)]
        report.written, report.revised = len(changed), sum(b.ts in old for b in changed)
        sqlite.add(changed)
        await sqlite.delete_bars(info.symbol, tf, report.replaced)
        built = {b.ts for b in bars}
        gone = set(report.replaced)
        stored[tf] = [*bars, *(b for b in stored[tf] if b.ts not in built and b.ts not in gone)]  # coarser ones use them
        out[tf] = report
    return out


def _rebuild(buckets: Buckets, info: SymbolInfo, tf: str, stored: dict[str, list[Bar]],
             end: int) -> tuple[list[Bar], Rebuilt]:
    """The bars of `tf` from the stored bars of it and every finer timeframe. History is
    finer the newer it is (the bootstrap: 1m for 30 days, the source's 5m before, 1h before
    that), so each timeframe's bars are used where they begin before the finer history does;
    where a coarser bar overlaps the first finer bars, it wins (it holds the whole interval)."""
    cls = info.asset_class
    boundary = np.iinfo(np.int64).max  # where the finer history begins
    parts: list[list] = []
    for source in (t for t in TIMEFRAMES if TIMEFRAMES[t] <= TIMEFRAMES[tf]):
        rows = stored[source]
        if not rows:
            continue
        ts = np.array([b.ts for b in rows], dtype=np.int64)
        own_start, own_end = buckets.bounds(cls, source, ts)
        b_start, b_end = buckets.bounds(cls, tf, ts)
        # a bar of the current rules, wholly inside a bucket that has ended, before the finer history
        use = (own_start == ts) & (own_end <= b_end) & (b_end <= end) & (ts < boundary)
        use &= np.array([not b.flags & UNALIGNED for b in rows])
        idx = np.flatnonzero(use)
        first = idx[np.argmin(ts[idx])] if len(idx) else None
        if first is not None and ts[first] > b_start[first]:
            # this history begins inside a bucket (a window that started mid-session): the
            # bars before it were never fetched, so that bucket is not built from it; a
            # coarser bar holds it, or none does
            idx = idx[b_start[idx] != b_start[first]]
        if not len(idx):
            continue
        cut = int(own_end[idx].max())
        for part in parts:  # the finer bars a coarser one already holds
            keep = part[0] >= cut
            part[:] = [part[0][keep], part[1][keep], part[2][keep], part[3][keep],
                       [x for x, k in zip(part[4], keep.tolist(), strict=True) if k]]
        values = np.array([rows[i].values for i in idx.tolist()], dtype=np.float64).reshape(-1, 5)
        parts.append([ts[idx], values, b_start[idx], b_end[idx], [rows[i].source for i in idx.tolist()]])
        boundary = int(ts[idx].min())
    report = Rebuilt()
    if not parts:
        return [], report
    ts = np.concatenate([p[0] for p in parts])
    o, h, lo, c, v = np.vstack([p[1] for p in parts]).T
    sources = [s for p in parts for s in p[4]]
    g = aggregate(np.zeros(len(ts), dtype=np.int64), ts, o, h, lo, c, v, np.concatenate([p[2] for p in parts]),
                  np.concatenate([p[3] for p in parts]))
    bars = [Bar(info.symbol, tf, t0, o_, h_, l_, c_, v_, sources[t]) for t0, o_, h_, l_, c_, v_, t in zip(
        g.start.tolist(), g.open.tolist(), g.high.tolist(), g.low.tolist(), g.close.tolist(), g.volume.tolist(),
        g.tail.tolist(), strict=True)]
    built = {b.ts for b in bars}
    own = [b for b in stored[tf] if b.ts not in built]
    if own:  # stored bars no bucket rebuilt: do they still start a bucket?
        ts = np.array([b.ts for b in own], dtype=np.int64)
        aligned = buckets.bounds(cls, tf, ts)[0] == ts
        replaced = ts >= g.start[0]  # the rebuilt history is contiguous from its first bucket on
        report.replaced = [b.ts for b, ok, r in zip(own, aligned.tolist(), replaced.tolist(), strict=True)
                           if not ok and r]
        marked = [Bar(b.symbol, b.timeframe, b.ts, *b.values, b.source, b.flags | UNALIGNED)
                  for b, ok, r in zip(own, aligned.tolist(), replaced.tolist(), strict=True)
                  if not ok and not r and not b.flags & UNALIGNED]
        report.unaligned = len(marked)
        bars += marked
    return bars, report


class Reaggregator:
    """Runs `reaggregate` over symbols beside the live loop, one symbol at a time.

    :param sqlite: the stored history (and where the rebuilt bars go).
    :param redis: the replaced bars are removed from its histories.
    :param higher: the loop's higher timeframes: their rules, and their re-warm after the pass.
    :param clock: timing for the log.
    :param flush: flushes the SQLite buffer (months of rebuilt bars never near its bound).
    """

    def __init__(self, *, sqlite: DurableStore, redis: RedisStore, higher: HigherTimeframes, clock: Clock,
                 flush: Callable[[], Awaitable[int]]) -> None:
        self.sqlite, self.redis, self.higher, self.clock, self.flush = sqlite, redis, higher, clock, flush

    async def run(self, infos: Sequence[SymbolInfo], why: str) -> bool:
        """Rebuild the higher timeframes of some symbols from their stored history; their
        features are rebuilt after the loop's next cycle. True if there was anything to do."""
        names = [lane.timeframe for lane in self.higher.lanes]
        if not names or not infos:
            return False
        t0, now = self.clock.monotonic(), int(self.clock.time())
        totals = {tf: [0, 0, 0] for tf in names}
        for info in infos:
            for tf, r in (await reaggregate(self.sqlite, self.higher.buckets, info, names, 0, now)).items():
                totals[tf] = [totals[tf][0] + r.written, totals[tf][1] + r.revised, totals[tf][2] + r.unaligned]
                try:
                    await self.redis.remove_history(info.symbol, tf, r.replaced)
                except RedisStoreError as exc:
                    log.warning("replaced %s bars of %s stay in redis: %s", tf, info.symbol, exc)
            if self.sqlite.buffered > FLUSH_AFTER:
                await self.flush()
        self.higher.request_rewarm({i.symbol for i in infos})
        log.info("higher timeframes of %d %s symbols re-aggregated in %.1fs: %s", len(infos), why,
                 self.clock.monotonic() - t0, ", ".join(f"{tf} {w} written ({r} revised, {u} unaligned)"
                                                        for tf, (w, r, u) in totals.items()))
        return True

    async def at_start(self, infos: Sequence[SymbolInfo], last: dict[str, int]) -> bool:
        """Symbols with minutes (`last`: newest stored minute per symbol) but no bars of a higher
        timeframe (a database from before the timeframes, a newly configured one), and every
        symbol of an asset class whose day start changed since the last run, are re-aggregated;
        then the day starts are remembered. True if any symbol was."""
        days = {c.value: str(d) for c, d in self.higher.buckets.day_starts.items()}
        before = orjson.loads(await self.sqlite.get_meta("day_starts") or "{}")
        moved = {c for c, d in days.items() if before.get(c, d) != d}
        todo: dict[str, SymbolInfo] = {}
        for lane in self.higher.lanes:
            have = await self.sqlite.last_stored(lane.timeframe)
            todo.update({i.symbol: i for i in infos if i.symbol in last and i.symbol not in have})
        todo.update({i.symbol: i for i in infos if i.asset_class.value in moved})
        if moved:
            log.warning("SIDECAR_DAY_START changed for %s: their daily bars are re-aggregated", ", ".join(sorted(moved)))
        done = await self.run(list(todo.values()), "stored")
        await self.sqlite.set_meta("day_starts", orjson.dumps(days).decode())
        return done
