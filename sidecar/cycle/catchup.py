"""Catch-up: quotes mode's history requests for the symbols the bar builder cannot vouch for.

A symbol's minutes come from the bar builder while it saw them whole, right after the last minute
accounted for (`synced_until`). Otherwise (start-up, a missed poll, a stale or bad quote, a minute
without trades, a bar still unsettled) they come from the history endpoint: the longest-lagging
symbols first, at most `allowance` requests in flight, one per symbol at a time.

A request runs beside the cycles. With a poller running, a cycle takes the answers that came
and does not wait for the others (but for all of a symbol's first: a reader finds its history and
newest bar once the daemon is up); they are taken by the next cycle. At 10,000 symbols each
minute-closing cycle asks ~100 chart requests, and waiting for them all made its fetch stage
150-290 ms against 40 (bench/cluster.py, traces kept with --keep); waiting 20 ms for the early
ones still added 20 ms to every minute-closing cycle at 5,000 symbols (the exchange, busy with
the second's batch quotes, answered none of ~50 within it), for the sake of 1 % of the
symbols' bars a second sooner. Without a poller (tests driving `run_cycle`) a cycle waits for
all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

from ..bars import bucket_start
from ..fetchers import FetchResult
from .minutes import MinuteBars
from .table import SymbolTable

MIN_SHARE = 0.05
"""The share of SIDECAR_CATCHUP_PER_CYCLE (at least one request) the allowance keeps however slow
the cycles are: the catch-up always progresses."""


class CatchUp:
    """History requests in flight across cycles, and their pace.

    :param table: the symbol table.
    :param minutes: the source's own minute bars (a symbol waiting for one is not caught up).
    :param fetch: one symbol's history request, `fetch(slot, now)`.
    :param per_cycle: at most this many requests in flight (SIDECAR_CATCHUP_PER_CYCLE).
    :param settle_s: an unsettled bar is asked for again once this has passed after its end.
    :param step: the bar length in seconds.

    The allowance adapts (`pace`): halved after a cycle that overran or a failed batch quote,
    grown back by a tenth of the maximum after a cycle with room. A missed second sends every
    symbol to the catch-up; at the full allowance its requests made the next cycles overrun too
    (bench/cluster.py: 130 overruns in 500 cycles at 3 x 2,500 symbols).
    """

    def __init__(self, *, table: SymbolTable, minutes: MinuteBars,
                 fetch: Callable[[int, float], Awaitable[FetchResult | None]], per_cycle: int, settle_s: float,
                 step: int) -> None:
        self.table = table
        self.minutes = minutes
        self.fetch = fetch
        self.per_cycle = per_cycle
        self.allowance = float(per_cycle)
        self.settle_s = settle_s
        self.step = step
        self.asked: dict[int, tuple[str, asyncio.Task[FetchResult | None]]] = {}  # by slot: the symbol, the request

    def pace(self, cycle_s: float, period: float, failed: int) -> None:
        """Adapt the allowance to the cycle just run (additive increase, multiplicative
        decrease): the live quotes must keep their second, and their source its capacity for
        them (`failed`: batch quotes that got no answer since the last call)."""
        if cycle_s > period or failed:
            self.allowance = max(1.0, MIN_SHARE * self.per_cycle, self.allowance / 2)
        elif cycle_s < 0.6 * period:
            self.allowance = min(float(self.per_cycle), self.allowance + max(1.0, self.per_cycle / 10))

    async def run(self, slots: np.ndarray, current: int, now: float, wait: bool) -> list[tuple[int, FetchResult]]:
        """Ask for the lagging symbols among `slots` not asked for yet; with `wait`, wait until
        all answer (else only for the symbols' first), and hand back the answers come, by slot."""
        t = self.table
        lag = t.synced_until[slots] < current
        lag &= ~self.minutes.waiting(slots, now)  # the source's own bar of that minute comes within its grace
        if t.unsettled:
            due = now - self.step - self.settle_s  # an unsettled bar opening before this can be asked again
            lag |= np.isin(slots, [s for s, bars in t.unsettled.items() if min(bars) <= due])
        if self.asked:
            lag &= ~np.isin(slots, list(self.asked))
        lagging = slots[lag]
        order = np.argsort(np.maximum(t.synced_until[lagging], 0), kind="stable")
        for slot in lagging[order][: max(0, int(self.allowance) - len(self.asked))].tolist():
            self.asked[slot] = (t.symbols[slot], asyncio.ensure_future(self.fetch(slot, now)))
        first = [task for slot, (_, task) in self.asked.items() if t.synced_until[slot] < 0]
        if first:  # a symbol never caught up (start-up, a partition taken over): its bars before all else
            await asyncio.wait(first)
        if self.asked and wait:
            await asyncio.wait([task for _, task in self.asked.values()])
        got = []
        for slot, (symbol, task) in sorted(self.asked.items()):
            if task.done():
                del self.asked[slot]
                result = task.result()
                if result is not None and t.symbols[slot] == symbol:  # (not removed meanwhile)
                    got.append((slot, result))
        return got

    def settle(self, fetched: np.ndarray, rejected_slots: np.ndarray, now: float) -> None:
        """After acceptance: what a history answer vouched for, unless it must be asked again
        (rejected, or its window ends before this cycle's minute: it was asked in an earlier one)."""
        t = self.table
        current = bucket_start(now, self.step)
        reached = (t.window_end[fetched] >= current + self.step) & ~np.isin(fetched, rejected_slots)
        cursor = t.cursor[fetched]
        t.synced_until[fetched] = np.where(reached, current, np.where(cursor >= 0, cursor + self.step, -1))

    def reset(self, slots: np.ndarray) -> None:
        """Drop the requests for slots whose symbol changed."""
        for slot in slots.tolist():
            if slot in self.asked:
                self.asked.pop(slot)[1].cancel()

    def trace(self) -> dict[str, int]:
        """For the cycle trace: the allowance, and the requests in flight."""
        return {"catchup_allowance": int(self.allowance), "history_in_flight": len(self.asked)}

    def stop(self) -> None:
        """Cancel every request in flight (the loop stops; a later cycle asks again)."""
        for _, task in self.asked.values():
            task.cancel()
        self.asked.clear()
