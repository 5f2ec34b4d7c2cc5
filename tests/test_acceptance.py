"""The acceptance stage's array path decides exactly what the per-bar rules decide.

Random cycles over crypto symbols (24 x 7, so a session starts at each UTC midnight): bad values
of every kind, duplicates, bars out of order and before the cursor, jumps that are real and
jumps that revert, bars fetched while still unsettling and then revised, symbols added and
removed mid-run. Each cycle goes through `Acceptance.run` and through `Reference` below, a
plain per-bar transcription of the rules in the README, and the two must agree bar for bar:
what is stored, what is quarantined, what is published as each symbol's newest bar, what is
revised, what is rejected and why, and where each cursor ends.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from sidecar.bars import FORMING, Bar
from sidecar.cycle.acceptance import Acceptance
from sidecar.cycle.batch import Batch
from sidecar.cycle.table import SymbolTable
from sidecar.metrics import Metrics
from sidecar.symbols import lookup
from sidecar.validator import Validator

STEP, SETTLE, SPIKE_ATR, ATR = 60, 5.0, 10.0, 1.0
LIMIT = SPIKE_ATR * ATR
LOW, HIGH = 1e-3, 1e6  # the plausible price range given to both
UNIVERSE = [f"{b}{q}" for b in "BTC ETH SOL XRP ADA DOGE LTC DOT AVAX LINK BCH XLM".split() for q in ("USD", "USDT")]


def invalid(bar: Bar, now: float) -> str | None:
    """The validator's rules, in their order."""
    o, h, lo, c, v = bar.open, bar.high, bar.low, bar.close, bar.volume
    if not all(math.isfinite(x) for x in (o, h, lo, c, v)):
        return "non_finite"
    if min(o, h, lo, c) <= 0:
        return "non_positive_price"
    if lo < LOW or h > HIGH:
        return "out_of_bounds"
    if h < max(o, c):
        return "high_below_open_close"
    if lo > min(o, c):
        return "low_above_open_close"
    if v < 0:
        return "negative_volume"
    if bar.ts > now + 5:
        return "future_ts"
    if bar.ts % STEP:
        return "misaligned_ts"
    return None


@dataclass
class Symbol:
    """The reference's state of one symbol."""

    cursor: int | None = None
    last: Bar | None = None  # the newest closed bar accepted
    held: Bar | None = None
    unsettled: dict[int, Bar] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    newest_ts: int = -1


class Reference:
    """The per-bar rules: validation, cursor, spike hold, revisions, re-asking for rejected minutes."""

    def __init__(self) -> None:
        self.symbols: dict[str, Symbol] = {}
        self.stored: list[Bar] = []
        self.quarantined: list[Bar] = []
        self.revised: list[Bar] = []
        self.rejected: dict[str, int] = {}
        self.newest: dict[str, Bar] = {}

    def cycle(self, answers: dict[str, list[Bar]], known_at: dict[str, float], now: float) -> dict[str, Bar]:
        """One cycle's answers; returns the bars published as each symbol's newest."""
        self.newest = {}
        for symbol, bars in answers.items():
            self.one(self.symbols[symbol], sorted(bars, key=lambda b: b.ts), known_at[symbol], now)
        return self.newest

    def one(self, s: Symbol, bars: list[Bar], known_at: float, now: float) -> None:
        accepted: list[Bar] = []
        newest: Bar | None = None
        refetch: int | None = None
        for bar in bars:
            why = invalid(bar, now)
            if why is not None:
                self.rejected[why] = self.rejected.get(why, 0) + 1
                if not bar.forming:  # its minute is asked for again, three times at most
                    m = bar.ts // STEP * STEP
                    s.attempts[m] = s.attempts.get(m, 0) + 1
                    if s.attempts[m] <= 3:
                        refetch = m if refetch is None else min(refetch, m)
                continue
            if bar.forming:
                newest = bar
            elif bar.ts in s.unsettled:
                old = s.unsettled[bar.ts]
                if bar.values != old.values:
                    if abs(bar.close - old.close) > LIMIT:
                        self.quarantined.append(bar)
                    else:
                        self.revised.append(bar)
                        s.unsettled[bar.ts] = bar
                        if s.last is not None and s.last.ts == bar.ts:
                            s.last = bar
                        if s.newest_ts == bar.ts:
                            newest = bar
                if bar.ts + STEP <= known_at - SETTLE:
                    del s.unsettled[bar.ts]
            elif s.cursor is None or bar.ts > s.cursor:
                for ok in self.gate(s, bar):
                    accepted.append(ok)
                    newest = ok
                    s.last = ok
                    if ok.ts + STEP > known_at - SETTLE:
                        s.unsettled[ok.ts] = ok
        self.stored += accepted
        if accepted:
            s.cursor = accepted[-1].ts
        if refetch is not None and (s.cursor is None or refetch <= s.cursor):
            s.cursor = refetch - STEP
        if s.cursor is not None:
            s.attempts = {m: n for m, n in s.attempts.items() if m > s.cursor}
        if newest is not None and (not newest.forming or newest.ts >= s.newest_ts):
            self.newest[newest.symbol] = newest
            s.newest_ts = newest.ts

    def gate(self, s: Symbol, bar: Bar) -> list[Bar]:
        out: list[Bar] = []
        held, s.held = s.held, None
        if held is not None:
            if bar.ts == held.ts:
                if s.last is None or abs(bar.close - s.last.close) <= LIMIT:
                    self.quarantined.append(held)
                    return [bar]
                s.held = bar
                return []
            if abs(bar.close - held.close) <= LIMIT:
                out.append(held)
                s.last = held
            else:
                self.quarantined.append(held)
        if s.last is None or abs(bar.close - s.last.close) <= LIMIT or s.last.ts // 86400 != bar.ts // 86400:
            return [*out, bar]
        s.held = bar
        return out


BAD = [("close", math.nan), ("high", math.inf), ("open", 0.0), ("low", -1.0), ("low", 1e-4), ("high", 2e6),
       ("volume", -5.0), ("ts", 7), ("ts", 3600)]


def _bar(symbol: str, ts: int, close: float, rng: random.Random, flags: int = 0) -> Bar:
    o = close + rng.uniform(-0.5, 0.5)
    return Bar(symbol, "1m", ts, o, max(o, close) + rng.uniform(0, 0.3), min(o, close) - rng.uniform(0, 0.3), close,
               rng.uniform(0, 100), "yahoo", flags)


def _spoil(bar: Bar, rng: random.Random) -> Bar:
    name, value = rng.choice(BAD)
    if name == "ts":
        return replace(bar, ts=bar.ts + int(value))
    return replace(bar, **{name: value})


@pytest.mark.parametrize("seed", range(6))
def test_the_array_path_decides_exactly_what_the_per_bar_rules_decide(seed: int) -> None:
    rng = random.Random(seed)
    table = SymbolTable({lookup("BTCUSD").asset_class: (LOW, HIGH)}, ["yahoo"], capacity=4)
    metrics = Metrics()
    stage = Acceptance(table=table, validator=Validator(future_tolerance_s=5), metrics=metrics, step=STEP,
                       settle_s=SETTLE, spike_atr=SPIKE_ATR, atr=lambda slots: np.full(len(slots), ATR))
    ref = Reference()
    price: dict[str, float] = {}
    following: list[str] = []
    t0 = 1_800_000_000 // 86400 * 86400 + 86400 - 90 * STEP  # the run crosses a UTC midnight
    got_stored: list[Bar] = []
    got_quarantined: list[dict[str, object]] = []
    got_revised: list[Bar] = []

    def follow(symbol: str) -> None:
        table.add(lookup(symbol), [])
        ref.symbols[symbol] = Symbol()
        price[symbol] = rng.uniform(50, 150)
        following.append(symbol)

    for symbol in rng.sample(UNIVERSE, 8):
        follow(symbol)
    for cycle in range(180):
        now = t0 + cycle * 20 + rng.uniform(0, 3)
        minute = int(now) // STEP * STEP
        if cycle % 25 == 24:  # membership changes mid-run: one symbol goes, another comes
            gone = following.pop(rng.randrange(len(following)))
            table.remove(gone)
            del ref.symbols[gone]
            follow(rng.choice([s for s in UNIVERSE if s not in following]))
        answers: dict[str, list[Bar]] = {}
        known_at: dict[str, float] = {}
        for symbol in following:
            if rng.random() < 0.2:
                continue  # no answer this cycle
            bars: list[Bar] = []
            for back in sorted(rng.sample(range(1, 5), rng.randint(0, 3)), reverse=True):
                move = rng.choice([0.0] * 12 + [25.0, -25.0])  # now and then a jump
                close = price[symbol] + rng.uniform(-1, 1) + move
                if move and rng.random() < 0.5:
                    price[symbol] = max(close, 30.0)  # a real move: the market stays there
                bar = _bar(symbol, minute - back * STEP, max(close, 1.0), rng)
                if rng.random() < 0.07:
                    bar = _spoil(bar, rng)
                bars.append(bar)
                if rng.random() < 0.1:
                    bars.append(replace(bar, close=bar.close + rng.choice([0.01, 40.0]),
                                        high=bar.high + 40.0))  # a duplicate, revised or jumping
            if rng.random() < 0.8:
                forming = _bar(symbol, minute, price[symbol], rng, FORMING)
                bars.append(_spoil(forming, rng) if rng.random() < 0.05 else forming)
            rng.shuffle(bars)  # out of order, as a careless source sends them
            answers[symbol] = bars
            known_at[symbol] = math.inf if rng.random() < 0.5 else now  # quotes-built, or fetched just now
        published = ref.cycle(answers, known_at, now)
        batch = Batch.concat([Batch.from_bars(bars, table.slot_of[s], 0, known_at[s])
                              for s, bars in answers.items()]).sorted()
        answered = np.array(sorted(table.slot_of[s] for s in answers), dtype=np.int64)
        out = stage.run(batch, answered, now)
        got_stored += out.closed.bars(table.symbols, table.source_names)
        got_quarantined += out.quarantine
        got_revised += out.revised
        newest = out.newest.bars(table.symbols, table.source_names)
        assert {b.symbol: b for b in newest} == published, f"cycle {cycle}: newest bars"
        table.lt_ts[out.newest.slot] = out.newest.ts  # what the loop does with them
        for symbol, s in ref.symbols.items():
            assert table.view(symbol).cursor == s.cursor, f"cycle {cycle}: cursor of {symbol}"
            assert table.view(symbol).pending == s.held, f"cycle {cycle}: held bar of {symbol}"
        assert sorted(got_stored, key=_order) == sorted(ref.stored, key=_order), f"cycle {cycle}: stored"
    assert sorted((q["symbol"], q["ts"], q["close"]) for q in got_quarantined) == sorted(
        (b.symbol, b.ts, b.close) for b in ref.quarantined)
    assert sorted(got_revised, key=_order) == sorted(ref.revised, key=_order)
    rejected = metrics.by_label("sidecar_bars_rejected_total", "reason")
    assert {k: v for k, v in rejected.items() if k != "spike"} == ref.rejected
    assert rejected.get("spike", 0) == len(ref.quarantined)
    # the run exercised what it claims to
    assert len(ref.stored) > 300 and ref.quarantined and ref.revised and len(ref.rejected) >= 5


def _order(bar: Bar) -> tuple[str, int, float]:
    return (bar.symbol, bar.ts, bar.close)
