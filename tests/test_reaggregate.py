"""History into the higher timeframes: 90 bootstrapped days (1m for the last 30, the source's 5m
and 1h bars before) re-aggregated by the live rules equal the exchange's minutes aggregated by
the test's own reference; a changed day start rebuilds the days it can and marks the rest."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from sidecar.bars import TIMEFRAMES, UNALIGNED, Bar
from sidecar.bootstrap import Bootstrapper
from sidecar.clock import ManualClock
from sidecar.exchange import Exchange, Market
from sidecar.fetchers import YahooFetcher
from sidecar.reaggregate import reaggregate
from sidecar.sources import GuardedSource
from sidecar.stores import SQLiteStore
from sidecar.symbols import AssetClass, lookup
from sidecar.timeframes import Buckets, DayStart
from sidecar.validator import Validator

from .conftest import SEED
from .test_timeframes import HIGHER, reference

NOW = int(dt.datetime(2026, 11, 30, 20, 0, tzinfo=dt.UTC).timestamp())
KIND = {"AAPL": "equity", "EURUSD": "fx", "BTCUSD": "utc"}
DAY = {"AAPL": (0, 0, "UTC"), "EURUSD": (0, 0, "Europe/London"), "BTCUSD": (0, 0, "UTC")}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Exchange, SQLiteStore]]:
    clock = ManualClock(start=NOW)
    exchange = Exchange(Market(SEED), clock=clock)  # real sessions
    await exchange.start()
    sqlite = SQLiteStore(path=tmp_path / "bars.db", synchronous="NORMAL", clock=clock)
    await sqlite.start()
    fetcher = YahooFetcher(base_url=exchange.url or "", user_agent="t", timeout_s=60, max_connections=4)
    await fetcher.start()
    boot = Bootstrapper(sqlite=sqlite, sources=lambda info: [GuardedSource.build(fetcher, clock=clock)],
                        reach=fetcher.reach, validator=Validator(future_tolerance_s=5), clock=clock, concurrency=2)
    report = await boot.run([lookup(s) for s in KIND], days=90)
    assert report.failed == 0
    yield exchange, sqlite
    await fetcher.close()
    await sqlite.close()
    await exchange.close()


def _stored(db: Path, symbol: str, timeframe: str) -> dict[int, tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            "SELECT ts, open, high, low, close, volume, flags FROM bars WHERE symbol = ? AND timeframe = ?",
            (symbol, timeframe))}


async def test_ninety_bootstrapped_days_reaggregate_to_the_reference(world: tuple[Exchange, SQLiteStore]) -> None:
    exchange, sqlite = world
    for symbol, kind in KIND.items():
        before = {tf: _stored(sqlite.path, symbol, tf) for tf in ("1m", "5m", "1h")}
        assert all(before.values())  # the three resolutions of the bootstrap
        counts = await reaggregate(sqlite, Buckets(), lookup(symbol), HIGHER, 0, NOW)
        await sqlite.flush()
        for tf in HIGHER:
            # from where the stored history is fine enough for this timeframe
            seconds = {"1m": 60, "5m": 300, "1h": 3600}
            first = min(min(rows) for t, rows in before.items() if seconds[t] <= TIMEFRAMES[tf])
            truth = exchange.truth(lookup(symbol).yahoo, first, NOW)
            want = reference(truth, tf, kind, DAY[symbol])
            ends = Buckets().bounds(lookup(symbol).asset_class, tf, np.array(sorted(want)))[1]
            # buckets wholly inside the history: one the history begins inside is not built from it
            want = {ts: v for (ts, v), e in zip(sorted(want.items()), ends.tolist(), strict=True)
                    if e <= NOW and ts >= first}
            got = {ts: v[:5] for ts, v in _stored(sqlite.path, symbol, tf).items() if ts >= first - 86400}
            assert sorted(got) == sorted(want), (symbol, tf, len(got), len(want))
            bad = [ts for ts in want if not np.allclose(got[ts], want[ts], rtol=1e-9)]
            assert not bad, (symbol, tf, bad[:3], got[bad[0]], want[bad[0]])
            assert counts[tf].written > 0 and counts[tf].unaligned == 0
        again = await reaggregate(sqlite, Buckets(), lookup(symbol), HIGHER, 0, NOW)
        assert all(r.written == 0 for r in again.values())  # idempotent


async def test_a_changed_fx_day_start_rebuilds_the_days_it_can_and_marks_the_others(
        world: tuple[Exchange, SQLiteStore]) -> None:
    exchange, sqlite = world
    info = lookup("EURUSD")
    await reaggregate(sqlite, Buckets(), info, HIGHER, 0, NOW)  # London days
    await sqlite.flush()
    london = _stored(sqlite.path, "EURUSD", "1d")
    # Only minutes are kept for the last 30 days: the older days' hours are gone (e.g. retention).
    cutoff = NOW - 30 * 86400
    with closing(sqlite3.connect(sqlite.path)) as db:
        db.execute("DELETE FROM bars WHERE symbol = 'EURUSD' AND timeframe IN ('5m', '15m', '1h', '4h') AND ts < ?",
                   (cutoff,))
        db.commit()
    rollover = Buckets({AssetClass.FX: DayStart(17, 0, "America/New_York")})
    report = await reaggregate(sqlite, rollover, info, ("1d",), 0, NOW)
    await sqlite.flush()
    days = _stored(sqlite.path, "EURUSD", "1d")
    first_minute = min(_stored(sqlite.path, "EURUSD", "1m"))
    truth = exchange.truth(info.yahoo, first_minute, NOW)
    want = reference(truth, "1d", "fx", (17, 0, "America/New_York"))
    rebuilt = {ts: v[:5] for ts, v in days.items() if not v[5] & UNALIGNED and ts >= first_minute}
    complete = {ts: v for ts, v in want.items() if ts >= first_minute and ts + 86400 <= NOW - 3600}
    for ts, values in complete.items():
        assert np.allclose(rebuilt[ts], values, rtol=1e-9), ts
    marked = {ts for ts, v in days.items() if v[5] & UNALIGNED}
    assert marked and marked == {ts for ts in london if ts < first_minute} and report["1d"].unaligned == len(marked)


async def test_a_history_begun_inside_a_bucket_leaves_that_bucket_to_the_coarser_bar(tmp_path: Path) -> None:
    """A 5m history whose first window began half an hour into a session (a `history` load run
    during US hours: 60 days back falls inside that day's session). That session's daily bar
    stays the source's, not the sum of the half it has minutes for, and the hour the history
    begins inside is not built at all; every bucket it covers is its 5-minute bars aggregated."""
    day = int(dt.datetime(2026, 10, 6, 13, 30, tzinfo=dt.UTC).timestamp())  # a session: 13:30-20:00 UTC
    nxt = day + 86400
    sqlite = SQLiteStore(path=tmp_path / "bars.db", synchronous="NORMAL", clock=ManualClock(start=nxt + 86400))
    await sqlite.start()
    daily = Bar("AAPL", "1d", day, 100.0, 110.0, 90.0, 105.0, 5_000_000.0, "yahoo")
    opens = [*range(day + 1800, day + 23400, 300), *range(nxt, nxt + 23400, 300)]  # from 14:00 on the first day
    fives = [Bar("AAPL", "5m", t, 100.0 + k % 7, 101.0 + k % 11, 99.0 - k % 5, 100.5 + k % 3, 1000.0 + k, "yahoo")
             for k, t in enumerate(opens)]
    sqlite.add([daily, *fives])
    await sqlite.flush()
    await reaggregate(sqlite, Buckets(), lookup("AAPL"), ("15m", "1h", "1d"), 0, nxt + 86400)
    await sqlite.flush()

    def made(bars: list[Bar]) -> tuple[float, ...]:  # the reference aggregate, written out here
        return (bars[0].open, max(b.high for b in bars), min(b.low for b in bars), bars[-1].close,
                sum(b.volume for b in bars))

    days, hours = _stored(sqlite.path, "AAPL", "1d"), _stored(sqlite.path, "AAPL", "1h")
    assert days[day][:5] == daily.values  # not the afternoon's 5-minute bars
    assert days[nxt][:5] == pytest.approx(made([b for b in fives if b.ts >= nxt]), rel=1e-12)
    assert day not in hours  # 13:30-14:30: the history has only its second half
    for start in (day + 3600, nxt, nxt + 3600):
        assert hours[start][:5] == pytest.approx(made([b for b in fives if start <= b.ts < start + 3600]), rel=1e-12)
    await sqlite.close()
