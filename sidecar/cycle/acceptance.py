"""Acceptance: which of a cycle's bars are stored, as what, and where each symbol's cursor goes.

Every row is validated at once (`Validator.check_arrays`); a rejected bar is counted by source
and reason and stored nowhere, and a rejected closed bar pulls the cursor back so its minute is
asked for again (at most `REJECT_RETRIES` times). Valid closed bars after the cursor pass the
gate: a close more than `spike_atr` ATRs from the previous close is held until the next bar
says whether the jump was real (stored) or a one-off print (quarantined). A closed bar fetched
within `settle_s` of the source's clock is stored but kept as *unsettled* and compared when it
is fetched again: a changed bar is a revision (a jump again quarantined).

Most symbols in most cycles have none of that: valid bars, no held bar, nothing unsettled, no
jump. Their rows are accepted in a few array operations. A symbol with any of it goes through
`_accept_slot`, the same rules one bar at a time; the two paths are held equal by
tests/test_acceptance.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..bars import SETTLED_S, Bar, bucket_start
from ..calendars import session_day
from ..metrics import Metrics
from ..validator import REASONS, Validator
from .batch import Batch, previous_in_slot
from .table import CLASSES, SymbolTable

log = logging.getLogger(__name__)

REJECT_RETRIES = 3
LOGGED_PER_CYCLE = 10  # rejected bars logged one by one per cycle; the rest are counted


@dataclass(slots=True)
class Accepted:
    """What acceptance decided for one cycle."""

    closed: Batch  # new closed bars to store, by (slot, ts)
    newest: Batch  # per slot at most one row: its newest bar to write to Redis
    revised: list[Bar] = field(default_factory=list)  # stored bars the source corrected
    rejected: int = 0
    rejected_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    quarantine: list[dict[str, object]] = field(default_factory=list)


class Acceptance:
    """The validator, the cursor and the spike gate over a batch.

    :param table: the symbol table (cursor, reference close, held and unsettled bars).
    :param validator: the per-bar rules.
    :param metrics: accepted/rejected/revised counters.
    :param step: bar length in seconds.
    :param settle_s: a closed bar ending later than this before the source's clock may change.
    :param spike_atr: the gate's threshold in ATRs (0: no gate).
    :param atr: the committed ATR of some slots (NaN while unknown).
    """

    def __init__(self, *, table: SymbolTable, validator: Validator, metrics: Metrics, step: int,
                 settle_s: float, spike_atr: float, atr: Callable[[np.ndarray], np.ndarray]) -> None:
        self.table = table
        self.validator = validator
        self.metrics = metrics
        self.step = step
        self.settle_s = settle_s
        self.spike_atr = spike_atr
        self.atr = atr
        self._children: dict[tuple[str, str], object] = {}

    # -- the batch ------------------------------------------------------------------------------

    def run(self, batch: Batch, answered: np.ndarray, now: float) -> Accepted:
        """Accept a cycle's rows (sorted by slot, ts); `answered` are the slots whose source
        answered this cycle, with or without bars."""
        t = self.table
        reasons = self.validator.check_arrays(self.step, batch.ts, batch.open, batch.high, batch.low, batch.close,
                                              batch.volume, t.lo[batch.slot], t.hi[batch.slot], now)
        bad = reasons >= 0
        forming = batch.forming
        out = Accepted(closed=Batch.empty(), newest=Batch.empty(), rejected=int(bad.sum()))
        if out.rejected:
            self._count_rejected(batch, reasons, bad)
            out.rejected_slots = np.unique(batch.slot[bad])
        new = ~bad & ~forming & (batch.ts > t.cursor[batch.slot])
        at = np.flatnonzero(new)
        # each new closed bar against the one accepted before it (the previous new row, else the reference)
        prev = previous_in_slot(batch.slot[at], batch.close[at], t.ref_close)
        jump = np.abs(batch.close[at] - prev) > self._limits(batch.slot[at])  # NaN (no reference): no jump
        # a minute sent twice: the second copy may be a revision of the first (bar by bar)
        twice = np.flatnonzero((np.diff(batch.slot[at]) == 0) & (np.diff(batch.ts[at]) == 0))
        slow_slots = set(np.unique(np.concatenate([batch.slot[bad & ~forming], batch.slot[at][jump],
                                                   batch.slot[at][twice]])).tolist())
        if t.pending or t.unsettled:
            # Bar by bar: a held bar's slot when a closed row came (the gate decides the two), and
            # an unsettled bar's slot when its minute came again (a revision?). Forming rows and
            # new minutes meet neither and take the array path: after a catch-up thousands of
            # slots hold an unsettled bar each until it is asked for again.
            rows = np.flatnonzero(~forming)
            if t.pending:
                held = np.fromiter(t.pending, dtype=np.int64, count=len(t.pending))
                slow_slots |= set(held[np.isin(held, batch.slot[rows])].tolist())
            if t.unsettled:
                waiting = np.fromiter(t.unsettled, dtype=np.int64, count=len(t.unsettled))
                rows = rows[np.isin(batch.slot[rows], waiting)]
                slow_slots |= {s for s, ts in zip(batch.slot[rows].tolist(), batch.ts[rows].tolist(), strict=True)
                               if ts in t.unsettled[s]}
        slow = np.zeros(len(batch), dtype=bool)
        if slow_slots:
            slow = np.isin(batch.slot, np.fromiter(slow_slots, dtype=np.int64, count=len(slow_slots)))

        # the fast path: every new closed bar accepted, the newest valid row published
        fast_new = new & ~slow
        closed = batch.take(fast_new)
        if len(closed):
            self._count(closed, "closed")
            last = _last_per_slot(closed.slot)
            t.cursor[closed.slot[last]] = closed.ts[last]
            t.ref_ts[closed.slot[last]], t.ref_close[closed.slot[last]] = closed.ts[last], closed.close[last]
            self._note_unsettled(closed)
        fast_forming = ~bad & forming & ~slow
        if fast_forming.any():
            self._count(batch.take(fast_forming), "forming")
        newest = batch.take(fast_new | fast_forming)

        # the slow path: symbol by symbol, bar by bar
        parts, newest_parts = [closed], [newest]
        for slot in sorted(slow_slots):
            rows = np.flatnonzero(batch.slot == slot)
            accepted, latest, revised, refetch = self._accept_slot(batch, rows, reasons, slot, out.quarantine)
            out.revised += revised
            if accepted:
                parts.append(self._rows(accepted, slot))
            if latest is not None:
                newest_parts.append(self._rows([latest], slot))
            self._refetch(slot, refetch, now)
        # the batch's rows are in (slot, ts) order, and so is what the fast path took from them
        out.closed = Batch.concat(parts).sorted() if len(parts) > 1 else closed
        newest = Batch.concat(newest_parts).sorted() if len(newest_parts) > 1 else newest
        newest = newest.take(_last_per_slot(newest.slot)) if len(newest) else newest
        keep = ~newest.forming | (newest.ts >= t.lt_ts[newest.slot])  # a forming bar never goes back in time
        out.newest = newest.take(keep)
        self._after(answered, slow_slots, now)
        return out

    def _limits(self, slots: np.ndarray) -> np.ndarray:
        """Per row, how far a close may move from the previous one before it is held."""
        if not self.spike_atr or not len(slots):
            return np.full(len(slots), np.inf)
        atr = self.atr(slots)
        with np.errstate(invalid="ignore"):
            return np.where(atr > 0, self.spike_atr * atr, np.inf)

    def _note_unsettled(self, closed: Batch) -> None:
        """Closed bars that ended within `settle_s` of the source's clock are asked for again."""
        recent = closed.ts + self.step > closed.known_at - self.settle_s
        if not recent.any():
            return
        t = self.table
        for row in np.flatnonzero(recent).tolist():
            bar = closed.bar(row, t.symbols, t.source_names)
            t.unsettled.setdefault(int(closed.slot[row]), {})[bar.ts] = bar

    def _after(self, answered: np.ndarray, slow: set[int], now: float) -> None:
        """Per answered symbol: forget unsettled bars nobody will send again, step over a settled
        window that came back complete, forget rejected minutes the cursor has passed."""
        t, step = self.table, self.step
        horizon = bucket_start(now, step) - SETTLED_S
        asked = set(answered.tolist()) if t.unsettled or t.reject_attempts else set()
        for slot in [s for s in t.unsettled if s in asked]:
            kept = {ts: b for ts, b in t.unsettled[slot].items() if ts > horizon}
            if kept:
                t.unsettled[slot] = kept
            else:
                del t.unsettled[slot]  # never asked again for an hour: the end-of-day check verifies
        plain = answered[~np.isin(answered, np.fromiter(slow, dtype=np.int64, count=len(slow)))] if slow else answered
        self._step_over(plain, horizon)  # the slow ones did it in _refetch
        for slot in [s for s in t.reject_attempts if s in asked]:
            cursor = int(t.cursor[slot])
            if cursor >= 0:
                left = {m: n for m, n in t.reject_attempts[slot].items() if m > cursor}
                if left:
                    t.reject_attempts[slot] = left
                else:
                    del t.reject_attempts[slot]

    def _step_over(self, slots: np.ndarray, horizon: int) -> None:
        """A window wholly in the settled past came back complete: minutes it lacks had no
        trades, so step over it (a catch-up would otherwise ask for an empty week forever)."""
        t = self.table
        we = t.window_end[slots]
        over = slots[(we > 0) & (we <= horizon)]
        t.cursor[over] = np.maximum(t.cursor[over], t.window_end[over] - self.step)

    def _refetch(self, slot: int, refetch_from: int | None, now: float) -> None:
        """After one symbol's bars were accepted one by one: pull the cursor back to a rejected
        minute, or else step over a settled window."""
        t = self.table
        if refetch_from is None:
            self._step_over(np.array([slot]), bucket_start(now, self.step) - SETTLED_S)
        elif t.cursor[slot] < 0 or refetch_from <= t.cursor[slot]:
            t.cursor[slot] = refetch_from - self.step

    # -- one symbol, bar by bar -------------------------------------------------------------------

    def _accept_slot(self, batch: Batch, rows: np.ndarray, reasons: np.ndarray, slot: int,
                     quarantine: list[dict[str, object]]) -> tuple[list[Bar], Bar | None, list[Bar], int | None]:
        """(new closed bars, newest bar, revised bars, minute to ask for again) for one symbol."""
        t = self.table
        closed: list[Bar] = []
        revised: list[Bar] = []
        newest: Bar | None = None
        refetch_from: int | None = None
        cursor = int(t.cursor[slot])
        unsettled = t.unsettled.get(slot, {})
        for row in rows.tolist():
            bar = batch.bar(row, t.symbols, t.source_names)
            if reasons[row] >= 0:
                if not bar.forming:
                    refetch_from = self._refetch_point(slot, bar, refetch_from)
                continue
            settled_by = float(batch.known_at[row]) - self.settle_s
            if bar.forming:
                newest = bar
                self._child(bar.source, "forming").inc()
            elif bar.ts in unsettled:
                stored = unsettled[bar.ts]
                limit = self._limit(slot)
                if bar.values != stored.values and abs(bar.close - stored.close) > limit:
                    # the gate holds for revisions too: a jump is quarantined, never stored
                    self._quarantine(bar, slot, limit / self.spike_atr, "a revision that jumped", quarantine)
                elif bar.values != stored.values:
                    revised.append(bar)
                    self.metrics.bars_revised.labels(bar.source, "live").inc()
                    unsettled[bar.ts] = bar
                    if t.ref_ts[slot] == bar.ts:
                        t.ref_close[slot] = bar.close
                    if t.lt_ts[slot] == bar.ts:
                        newest = bar
                if bar.ts + self.step <= settled_by:
                    del unsettled[bar.ts]  # settled: no need to ask again
            elif cursor < 0 or bar.ts > cursor:
                for ok in self._gate(slot, bar, quarantine):
                    closed.append(ok)
                    newest = ok
                    t.ref_ts[slot], t.ref_close[slot] = ok.ts, ok.close
                    self._child(ok.source, "closed").inc()
                    if ok.ts + self.step > settled_by:
                        unsettled[ok.ts] = ok
        if unsettled:
            t.unsettled[slot] = unsettled
        else:
            t.unsettled.pop(slot, None)
        if closed:
            t.cursor[slot] = closed[-1].ts
        return closed, newest, revised, refetch_from

    def _limit(self, slot: int) -> float:
        return float(self._limits(np.array([slot]))[0])

    def _gate(self, slot: int, bar: Bar, quarantine: list[dict[str, object]]) -> list[Bar]:
        """The closed bars to accept now, given a new one: a jump of more than `spike_atr` ATRs
        from the previous close waits one bar; the next bar decides whether it was real."""
        limit = self._limit(slot)
        if limit == math.inf:
            return [bar]
        t = self.table
        atr = limit / self.spike_atr
        out: list[Bar] = []
        held = t.pending.pop(slot, None)
        if held is not None:
            if bar.ts == held.ts:  # the source sent that minute again
                ref = float(t.ref_close[slot])
                if ref != ref or abs(bar.close - ref) <= limit:
                    self._quarantine(held, slot, atr, "corrected by the source", quarantine)
                    return [bar]
                t.pending[slot] = bar
                return []
            if abs(bar.close - held.close) <= limit:
                out.append(held)  # the next bar confirms the new level: the jump was real
                self.metrics.bars_accepted.labels(held.source, "spike_confirmed").inc()
                t.ref_ts[slot], t.ref_close[slot] = held.ts, held.close
            else:
                self._quarantine(held, slot, atr, "reverted by the next bar", quarantine)
        ref, ref_ts = float(t.ref_close[slot]), int(t.ref_ts[slot])
        # the calendar is asked only about a jump (a numpy call per bar is ~10 us x every symbol a minute)
        if ref != ref or abs(bar.close - ref) <= limit or self._new_session(slot, ref_ts, bar.ts):
            return [*out, bar]
        t.pending[slot] = bar
        return out

    def _new_session(self, slot: int, before: int, after: int) -> bool:
        days = session_day(CLASSES[self.table.asset_class[slot]], np.array([before, after], dtype=np.int64))
        return bool(days[0] != days[1])

    def _quarantine(self, bar: Bar, slot: int, atr: float, why: str, out: list[dict[str, object]]) -> None:
        self.metrics.bars_rejected.labels(bar.source, "spike").inc()
        ref = float(self.table.ref_close[slot])
        prev = None if ref != ref else ref
        log.warning("quarantined %s bar ts=%d close=%s (previous close %s, ATR %.6g): %s", bar.symbol, bar.ts,
                    bar.close, prev, atr, why)
        out.append({**bar.as_map(), "previous_close": prev, "atr": atr, "why": why})

    def _refetch_point(self, slot: int, bar: Bar, current: int | None) -> int | None:
        """The minute to ask for again after a closed bar was rejected, within the retry budget."""
        minute = bucket_start(bar.ts, self.step)
        attempts = self.table.reject_attempts.setdefault(slot, {})
        attempts[minute] = attempts.get(minute, 0) + 1
        if attempts[minute] > REJECT_RETRIES:
            log.warning("giving up on %s ts=%d after %d rejected copies", bar.symbol, minute, REJECT_RETRIES)
            return current
        return minute if current is None else min(current, minute)

    # -- counting ---------------------------------------------------------------------------------

    def _rows(self, bars: list[Bar], slot: int) -> Batch:
        return Batch.concat([Batch.from_bars([b], slot, self.table.source_code(b.source), math.inf) for b in bars])

    def _child(self, source: str, kind: str):  # noqa: ANN202 - a prometheus child
        """The accepted-bars counter's child (labels() costs microseconds: looked up once)."""
        child = self._children.get((source, kind))
        if child is None:
            child = self._children[(source, kind)] = self.metrics.bars_accepted.labels(source, kind)
        return child

    def _count(self, rows: Batch, kind: str) -> None:
        counts = np.bincount(rows.source.astype(np.int64))
        for code in np.flatnonzero(counts).tolist():
            self._child(self.table.source_names[code], kind).inc(int(counts[code]))

    def _count_rejected(self, batch: Batch, reasons: np.ndarray, bad: np.ndarray) -> None:
        keys = batch.source[bad].astype(np.int64) * len(REASONS) + reasons[bad]
        found, counts = np.unique(keys, return_counts=True)
        for key, n in zip(found.tolist(), counts.tolist(), strict=True):
            source, reason = self.table.source_names[key // len(REASONS)], REASONS[key % len(REASONS)]
            self.metrics.bars_rejected.labels(source, reason).inc(n)
        rows = np.flatnonzero(bad)
        t = self.table
        for row in rows[:LOGGED_PER_CYCLE].tolist():
            log.warning("rejected %s bar ts=%d from %s: %s", t.symbols[batch.slot[row]], batch.ts[row],
                        t.source_names[batch.source[row]], REASONS[reasons[row]])
        if len(rows) > LOGGED_PER_CYCLE:
            log.warning("... and %d more rejected bars this cycle", len(rows) - LOGGED_PER_CYCLE)


def _last_per_slot(slot: np.ndarray) -> np.ndarray:
    """Index of the last row of each run of equal slots (rows sorted by slot)."""
    if not len(slot):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.append(slot[1:] != slot[:-1], True))
