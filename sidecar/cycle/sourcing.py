"""Sourcing: where each symbol's bars come from this cycle, fetched and parsed into one batch.

Two ways to fetch. `chart`: one history request per symbol per cycle, for the bars after its
cursor. `quotes`: a few batch quote requests for all symbols, turned into bars by the bar
builder; a closed bar the builder saw completely, right after the last minute accounted for
(`synced_until`), is taken as it is, and a symbol whose minutes the builder cannot vouch for
is caught up from the history endpoint (`catchup`).

Quotes are polled every second on their own schedule (`poll`, run by the loop's poller) and kept
until a cycle builds them, in order: a cycle that runs seconds long costs no second of samples.
Without a poller (tests driving `run_cycle`) a cycle polls itself.

Each request goes down the symbol's sources in the configured order: a source whose breaker is
open or whose budget is spent passes the symbol to the next without waiting, and a failing one
reports its error (counted, logged on the transition) before the next is tried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..barbuilder import BarBuilder
from ..bars import FORMING, bucket_start
from ..clock import Clock
from ..fetchers import FetchResult, HttpFetcher, QuoteBatch
from ..metrics import Metrics
from ..sources import GuardedSource
from ..symbols import SymbolInfo
from .batch import Batch
from .catchup import CatchUp
from .minutes import MinuteBars
from .table import SymbolTable

log = logging.getLogger(__name__)
TIMEFRAME = "1m"
EARLY_WAKE_S = 0.02
CATCH_UP_S = 86400


@dataclass(slots=True)
class Poll:
    """One second's batch quotes, kept until a cycle builds them."""

    label: int  # the whole second it samples
    now: float  # when it was made
    version: int  # the table's membership version its chunks were cut for
    got: list[tuple[np.ndarray, list[SymbolInfo], QuoteBatch]]  # each chunk that answered: slots, symbols, quotes


@dataclass(slots=True)
class Fetched:
    """One cycle's answers."""

    batch: Batch  # every bar received, sorted by (slot, ts)
    answered: np.ndarray  # slots whose source answered (with or without bars)
    from_history: np.ndarray  # quotes mode: slots caught up from the history endpoint
    parse_s: float = 0.0  # quotes mode: turning bodies into arrays (by the poller, outside the cycle, if one runs)
    build_s: float = 0.0  # quotes mode: the bar builder


class Sourcing:
    """Source selection, windows, fallback, and the quote poller.

    :param table: the symbol table.
    :param sources: every configured source, in order of preference.
    :param primary: the source that names quotes (its name labels built bars).
    :param metrics: fetch error counters.
    :param clock: wall and monotonic time.
    :param lookback_s: how far back a symbol's first fetch reaches.
    :param quotes: poll batch quotes (else one chart request per symbol).
    :param quote_batch: symbols per batch quote request.
    :param catchup_per_cycle: quotes mode: at most this many history requests in flight.
    :param settle_s: an unsettled bar is asked for again once this has passed after its end.
    :param period: seconds between polls (a poll gives up when the next one begins).
    """

    def __init__(self, *, table: SymbolTable, sources: Sequence[GuardedSource], primary: GuardedSource,
                 metrics: Metrics, clock: Clock, lookback_s: int, quotes: bool, quote_batch: int,
                 catchup_per_cycle: int, settle_s: float, period: float = 1.0) -> None:
        self.table = table
        self.sources = list(sources)
        self.primary = primary
        self.metrics = metrics
        self.clock = clock
        self.lookback_s = lookback_s
        self.quotes = quotes
        self.quote_batch = quote_batch
        self.step = 60
        self.builder = BarBuilder(self.step)
        self.minutes = MinuteBars(table=table, step=self.step, grace_s=settle_s)
        self.catch_up = CatchUp(table=table, minutes=self.minutes, fetch=self._fetch, per_cycle=catchup_per_cycle,
                                settle_s=settle_s, step=self.step)
        self.recovered = False  # a symbol's source answered again this cycle (one event, not one per symbol)
        # each source's plan delay, by source code (the last entry: no source yet)
        self.delays = np.array([g.fetcher.delay_s for g in self.sources] + [0.0])
        self.period = period
        self._chunks: tuple[int, list[tuple[np.ndarray, list[SymbolInfo]]]] = (-1, [])
        self.polls: list[Poll] = []  # made and not yet built, oldest first
        self._polled = asyncio.Event()  # set when a poll is added
        self._built_through = -1  # the second of the newest poll a cycle took
        self.quote_failures = 0  # batch quotes that got no answer since the last cycle's `pace`
        self.background = False  # a poller runs `poll` every second: a cycle waits for its second's

    def pace(self, cycle_s: float, period: float) -> None:
        """Adapt the catch-up's allowance to the cycle just run (and the batch quotes that failed since)."""
        failed, self.quote_failures = self.quote_failures, 0
        self.catch_up.pace(cycle_s, period, failed)

    def stop_background(self) -> None:
        """The loop's poller stopped: a cycle polls itself again, and no catch-up request stays in flight."""
        self.background = False
        self.catch_up.stop()

    def source_clock(self, now: float) -> float | np.ndarray:
        """Per slot, the clock of the source of its newest bars: a delayed plan's buckets end by
        its delayed clock, not the local one (else each would close before its last minutes came)."""
        if not self.delays.any():
            return now
        return now - self.delays[self.table.source]

    def reset(self, slots: np.ndarray) -> None:
        """Forget what the builder, the minute bars and the catch-up hold for slots (a symbol
        added in a freed slot)."""
        self.builder.reset(slots)
        self.minutes.reset(slots)
        self.catch_up.reset(slots)

    def serving(self, info: SymbolInfo) -> list[GuardedSource]:
        """The configured, enabled sources that serve a symbol, in order."""
        return [g for g in self.sources if g.fetcher.disabled_reason is None and g.fetcher.serves(info)]

    async def fetch(self, now: float) -> Fetched:
        """This cycle's bars for every symbol."""
        slots = self.table.slots()
        if self.quotes:
            return await self._poll_quotes(slots, now)
        results = await asyncio.gather(*(self._fetch(slot, now) for slot in slots.tolist()))
        got = [(slot, r) for slot, r in zip(slots.tolist(), results, strict=True) if r is not None]
        return Fetched(self._batch(got), np.array([s for s, _ in got], dtype=np.int64), np.zeros(0, dtype=np.int64))

    def _batch(self, results: list[tuple[int, FetchResult]]) -> Batch:
        t = self.table
        return Batch.concat([Batch.from_bars(r.bars, slot, t.source_code(r.source), r.provider_time)
                             for slot, r in results]).sorted()

    # -- one symbol's history request --------------------------------------------------------------

    def _window(self, slot: int, now: float, fetcher: HttpFetcher) -> tuple[int, int]:
        """The bars to ask `fetcher` for: after the cursor (or `lookback` back), within what it
        serves at this timeframe; a long gap is caught up one window per cycle."""
        t = self.table
        current = bucket_start(now, self.step)
        cursor = int(t.cursor[slot])
        start = cursor + self.step if cursor >= 0 else current - self.lookback_s
        unsettled = t.unsettled.get(slot)
        if unsettled:  # closed bars stored while they could still change: ask for them again
            start = min(start, min(unsettled))
        oldest = current - fetcher.max_age_s
        if start < oldest:
            if slot not in t.beyond_reach_logged:
                log.warning("%s: bars before %d are older than %s serves at %s; bootstrap fills them coarser",
                            t.symbols[slot], oldest, fetcher.name, TIMEFRAME)
                t.beyond_reach_logged.add(slot)
            start = oldest
        # exclusive end: the forming bar too. A catch-up asks for at most a day per cycle, so
        # one lagging symbol never holds the cycle past the live timeout.
        end = min(start + min(fetcher.max_window_s, CATCH_UP_S), current + self.step)
        return start, end

    async def _fetch(self, slot: int, now: float) -> FetchResult | None:
        """A symbol's window from the first of its sources that is usable and answers."""
        t = self.table
        info, sources = t.info(slot), t.sources[slot]
        for g in sources:
            if not g.usable() and g is not sources[-1]:
                # open, out of budget: the next source, without waiting for this one
                t.errors.setdefault(slot, {}).setdefault(g.name, f"{g.name} {info.symbol}: " + (
                    "circuit open" if not g.breaker.would_allow() else "rate budget spent"))
                continue
            start, end = self._window(slot, now, g.fetcher)
            t.window_end[slot] = end
            result = await g.fetch(info, TIMEFRAME, start, end,
                                   on_error=functools.partial(self._failed, [slot], g))
            if result is not None:
                code = t.source_code(g.name)
                if t.source[slot] >= 0 and t.source[slot] != code:
                    log.info("%s now from %s (was %s)", info.symbol, g.name, t.source_names[t.source[slot]])
                t.source[slot] = code
                self._answered(np.array([slot]), now)
                return result
        if sources and sources[0].breaker.state == "open" and slot not in t.last_error:
            t.last_error[slot] = f"{sources[0].name} circuit open"
        return None

    def _failed(self, slots: list[int], source: GuardedSource, reason: str, message: str) -> None:
        t = self.table
        self.metrics.fetch_errors.labels(source.name, reason).inc(len(slots))
        # Log transitions, not every second of an outage; and a request once, not once for each
        # of its symbols (a failed batch quote of 500 wrote 500 equal lines, 9,000 in a second).
        if any(slot not in t.last_error for slot in slots):
            log.warning("fetch failed: %s", message)
        for slot in slots:
            t.last_error[slot] = message
            t.errors.setdefault(slot, {})[source.name] = message
        source.state.last_error, source.state.last_error_at = message, self.clock.time()

    def _answered(self, slots: np.ndarray, now: float) -> None:
        t = self.table
        t.last_update[slots] = now
        recovered = t.clear_errors(slots)
        if recovered:  # one line for an answer, however many of its symbols had failed
            self.recovered = True
            sources = sorted({t.source_names[t.source[slot]] for slot in recovered})
            log.info("%d recovered on %s: %s%s", len(recovered), ", ".join(sources),
                     " ".join(t.symbols[slot] for slot in recovered[:10]), " ..." if len(recovered) > 10 else "")

    # -- quotes mode ----------------------------------------------------------------------------

    async def poll(self, now: float) -> None:
        """This second's batch quotes for every symbol, kept in `polls` for the next cycle to build."""
        t = self.table
        # A timer may wake a fraction of a millisecond before the second turns (wall and monotonic
        # time drift apart): such a poll belongs to the coming second, and must not reach the source before it.
        label = math.floor(now + EARLY_WAKE_S)
        if now < label:
            await self.clock.sleep(label - now)
            now = self.clock.time()
        deadline = self.clock.monotonic() + self.period  # an answer after the next poll began is late
        if self._chunks[0] != t.version:  # the chunks and their symbols, rebuilt when membership changes
            slots = t.slots()
            parts = [slots[i:i + self.quote_batch] for i in range(0, len(slots), self.quote_batch)]
            self._chunks = (t.version, [(c, [t.info(s) for s in c.tolist()]) for c in parts])
        version, chunks = self._chunks
        answers = await asyncio.gather(*(self._quote_chunk(c, infos, deadline) for c, infos in chunks))
        got = [(c, infos, b) for (c, infos), b in zip(chunks, answers, strict=True) if b is not None]
        self.polls.append(Poll(label, now, version, got))
        self._polled.set()

    async def _polls_up_to(self, label: int) -> list[Poll]:
        """The polls not yet built, through second `label`'s (made here without a poller, else waited for)."""
        if not self.background:
            await self.poll(self.clock.time())
        else:  # (a late cycle may have built this second's poll already)
            deadline = self.clock.monotonic() + 2 * self.period
            while max(self._built_through, self.polls[-1].label if self.polls else -1) < label \
                    and self.clock.monotonic() < deadline:
                self._polled.clear()
                try:
                    await asyncio.wait_for(self._polled.wait(), max(0.0, deadline - self.clock.monotonic()))
                except TimeoutError:
                    log.warning("no poll for second %d within %.1fs; the cycle goes on", label, 2 * self.period)
        polls, self.polls = self.polls, []
        if polls:
            self._built_through = polls[-1].label
        return polls

    async def _poll_quotes(self, slots: np.ndarray, now: float) -> Fetched:
        """The polls' quotes through the bar builder, each in its order, then history for the
        symbols whose minutes the builder cannot vouch for."""
        t = self.table
        label = math.floor(now + EARLY_WAKE_S)
        polls = await self._polls_up_to(label)
        now = max(now, self.clock.time())
        t_build = self.clock.monotonic()
        seen = np.zeros(len(t.active), dtype=bool)  # the slots whose source answered
        parts = []
        for p in polls:
            got = self._current(p)
            parts.append(self._build(p.label, [(s, b) for s, b in got if b.minute is None], p.now, seen))
            with_bars = [(s, b, b.minute) for s, b in got if b.minute is not None]
            if with_bars:  # the source's own minute bars (Polygon's snapshot): no bar builder, no catch-up
                rows, source = self._rows([(s, b) for s, b, _ in with_bars])
                minute = np.hstack([m for _, _, m in with_bars])
                parts.append(self.minutes.take(rows, source, minute, p.now, bucket_start(p.label, self.step)))
                live = rows[t.active[rows]]
                t.source[live] = source[t.active[rows]]
                self._answered(live, p.now)
                seen[live] = True
        built = Batch.concat(parts) if parts else Batch.empty()
        if len(polls) > 1:  # several seconds built at once: each symbol's newest forming bar only
            forming = np.flatnonzero(built.forming)
            _, last = np.unique(built.slot[forming][::-1], return_index=True)
            keep = ~built.forming
            keep[forming[len(forming) - 1 - last]] = True
            built = built.take(keep)
        build_s = self.clock.monotonic() - t_build
        answers = await self.catch_up.run(slots, bucket_start(label, self.step), now, wait=not self.background)
        history, fetched = self._batch(answers), np.array([s for s, _ in answers], dtype=np.int64)
        if len(fetched):  # the source's own bars replace what the builder had
            built = built.take(~np.isin(built.slot, fetched))
        batch = Batch.concat([built, history]).sorted()
        seen[fetched] = True
        answered = np.flatnonzero(seen)
        return Fetched(batch, answered, fetched, sum(b.parse_s for p in polls for _, _, b in p.got), build_s)

    def _current(self, poll: Poll) -> list[tuple[np.ndarray, QuoteBatch]]:
        """A poll's answered chunks as (slots, quotes), without the rows of symbols removed since
        it was made (their slots may hold other symbols now)."""
        t = self.table
        if poll.version == t.version:
            return [(chunk[b.index], b) for chunk, _, b in poll.got]
        out = []
        for chunk, infos, b in poll.got:
            keep = np.array([t.symbols[chunk[i]] == infos[i].symbol for i in b.index.tolist()], dtype=bool)
            out.append((chunk[b.index[keep]], b.take(keep)))
        return out

    def _rows(self, got: list[tuple[np.ndarray, QuoteBatch]]) -> tuple[np.ndarray, np.ndarray]:
        """The slots of several quote batches' rows, and each row's source code."""
        t = self.table
        return (np.concatenate([s for s, _ in got]),
                np.concatenate([np.full(len(s), t.source_code(b.source), dtype=np.int16) for s, b in got]))

    def _build(self, label: int, got: list[tuple[np.ndarray, QuoteBatch]], now: float, seen: np.ndarray) -> Batch:
        """Quotes through the bar builder: its complete closed bars that follow the last minute
        accounted for, and its forming bars; the slots heard are marked in `seen`."""
        t = self.table
        built = Batch.empty()
        if got:
            rows, source = self._rows(got)
            result = self.builder.update(label, rows, np.concatenate([b.price for _, b in got]),
                                         np.concatenate([b.time for _, b in got]),
                                         np.concatenate([b.day_volume for _, b in got]))
            by_slot = np.full(len(t.active), -1, dtype=np.int16)
            by_slot[rows] = source
            if len(result.rejected):
                self.metrics.bars_rejected.labels(self.primary.name, "bad_quote").inc(len(result.rejected))
            c, f = result.closed, result.forming
            # a closed bar is taken only where it follows the last minute accounted for
            take = c.complete & (t.synced_until[c.slot] == c.ts) & t.active[c.slot]
            t.synced_until[c.slot[take]] = c.ts[take] + self.step
            live = t.active[f.slot]
            n_c, n_f = int(take.sum()), int(live.sum())
            built = Batch.concat([
                Batch(c.slot[take], c.ts[take], c.open[take], c.high[take], c.low[take], c.close[take],
                      c.volume[take], np.zeros(n_c, dtype=np.int64), by_slot[c.slot[take]], np.full(n_c, np.inf)),
                Batch(f.slot[live], f.ts[live], f.open[live], f.high[live], f.low[live], f.close[live],
                      f.volume[live], np.full(n_f, FORMING, dtype=np.int64), by_slot[f.slot[live]],
                      np.full(n_f, np.inf))])
            heard = np.zeros(len(t.active), dtype=bool)
            heard[c.slot] = heard[f.slot] = True
            live = np.flatnonzero(heard & t.active)
            t.source[live] = by_slot[live]
            self._answered(live, now)
            seen[live] = True
        return built

    async def _quote_chunk(self, chunk: np.ndarray, infos: list[SymbolInfo], deadline: float) -> QuoteBatch | None:
        """One chunk's batch quote from the first quote source that is usable and answers (retries
        until `deadline`, monotonic)."""
        sources = [g for g in self.sources if g.quotes and g.fetcher.disabled_reason is None]
        for g in sources:
            if not g.usable(g.fetcher.quote_cost(infos)) and g is not sources[-1]:  # type: ignore[attr-defined]
                continue
            batch = await g.fetch_quotes(infos, on_error=functools.partial(self._failed, chunk.tolist(), g),
                                         deadline=deadline)
            if batch is not None:
                return batch
        self.quote_failures += 1
        return None
