"""Gap detection against the market calendar, and backfill over real HTTP from the exchange."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from sidecar.backfill import Backfiller, expected_minutes
from sidecar.bars import Bar
from sidecar.calendars import is_trading
from sidecar.clock import ManualClock
from sidecar.exchange import Exchange, Market
from sidecar.fetchers import YahooFetcher
from sidecar.metrics import Metrics
from sidecar.sources import GuardedSource
from sidecar.stores import SQLiteStore
from sidecar.symbols import lookup
from sidecar.validator import Validator

from .conftest import SEED

NOW = int(dt.datetime(2026, 11, 30, 20, 0, tzinfo=dt.UTC).timestamp())  # Monday after Thanksgiving week
SYMBOLS = ["AAPL", "EURUSD", "BTCUSD", "XAUUSD"]
DAYS = 7


class Setup:
    """Exchange with real sessions, a SQLite file holding the truth, and a backfiller."""

    def __init__(self, exchange: Exchange, sqlite: SQLiteStore, fetcher: YahooFetcher, clock: ManualClock) -> None:
        self.exchange, self.sqlite, self.fetcher, self.clock = exchange, sqlite, fetcher, clock
        self.source = GuardedSource.build(fetcher, clock=clock)
        self.backfiller = Backfiller(sqlite=sqlite, sources=lambda info: [self.source],
                                     validator=Validator(future_tolerance_s=5), clock=clock, metrics=Metrics())

    def truth(self, symbol: str, start: int, end: int) -> list[Bar]:
        t = self.exchange.truth(lookup(symbol).yahoo, start, end)
        return [Bar(symbol, "1m", int(ts), o, h, lo, c, v, "yahoo") for ts, o, h, lo, c, v in zip(
            t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(), t.close.tolist(), t.volume.tolist(),
            strict=True)]

    def rows(self, symbol: str) -> dict[int, tuple]:
        with closing(sqlite3.connect(self.sqlite.path)) as db:
            return {r[0]: tuple(r[1:]) for r in db.execute(
                "SELECT ts, open, high, low, close, volume FROM bars WHERE timeframe='1m' AND symbol = ?", (symbol,))}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    clock = ManualClock(start=NOW)
    exchange = Exchange(Market(SEED), clock=clock)  # real sessions: NYSE, FX 24x5, futures, crypto
    await exchange.start()
    sqlite = SQLiteStore(path=tmp_path / "bars.db", synchronous="NORMAL", clock=clock)
    await sqlite.start()
    fetcher = YahooFetcher(base_url=exchange.url or "", user_agent="t", timeout_s=5, max_connections=4)
    await fetcher.start()
    s = Setup(exchange, sqlite, fetcher, clock)
    start = NOW - 3600 - DAYS * 86400 - 86400
    for sym in SYMBOLS:
        s.sqlite.add(s.truth(sym, start, NOW))
    await s.sqlite.flush()
    yield s
    await fetcher.close()
    await sqlite.close()
    await exchange.close()


async def test_closed_markets_are_not_gaps_and_minutes_without_trades_are_confirmed_once(setup: Setup) -> None:
    report = await setup.backfiller.run([lookup(s) for s in SYMBOLS], days=DAYS)
    assert report.gaps == [] and report.filled == 0
    # What was missing were only the minutes without trades, each confirmed once...
    start, end = report.window
    no_trades = sum(len(expected_minutes(lookup(s).asset_class, start, end, 60)) - len(
        [b for b in setup.truth(s, start, end)]) for s in SYMBOLS)
    assert report.missing_minutes == report.confirmed_empty == no_trades > 0
    # ...never a weekend, Thanksgiving, or the afternoon after the early close: every request
    # starts and ends on a minute the symbol's market traded.
    for yahoo, a, b in setup.exchange.chart_log:
        asset_class = next(lookup(s).asset_class for s in SYMBOLS if lookup(s).yahoo == yahoo)
        assert is_trading(asset_class, np.array([a, b - 60])).all(), (yahoo, a, b)
    thanksgiving = int(dt.datetime(2026, 11, 26, 15, 0, tzinfo=dt.UTC).timestamp())
    assert not any(y == "AAPL" and a <= thanksgiving < b for y, a, b in setup.exchange.chart_log)
    again = await setup.backfiller.run([lookup(s) for s in SYMBOLS], days=DAYS)
    assert again.missing_minutes == 0 and again.requests == 0  # confirmed minutes are not asked for again


async def test_a_real_missing_minute_inside_a_session_is_found_and_filled(setup: Setup) -> None:
    truth = setup.truth("AAPL", NOW - 3 * 86400, NOW - 3600)
    lost = truth[len(truth) // 2]
    with closing(sqlite3.connect(setup.sqlite.path)) as db:
        db.execute("DELETE FROM bars WHERE symbol = 'AAPL' AND ts = ?", (lost.ts,))
        db.commit()
    report = await setup.backfiller.run([lookup("AAPL")], days=DAYS)
    assert report.filled == 1 and report.gaps == []
    await setup.sqlite.flush()  # the daemon's flush schedule would do it
    assert setup.rows("AAPL")[lost.ts] == (lost.open, lost.high, lost.low, lost.close, lost.volume)


async def test_gaps_that_cannot_be_filled_are_reported_with_the_reason(setup: Setup) -> None:
    truth = setup.truth("BTCUSD", NOW - 2 * 86400, NOW - 3600)
    lost = truth[100]
    with closing(sqlite3.connect(setup.sqlite.path)) as db:
        db.execute("DELETE FROM bars WHERE symbol = 'BTCUSD' AND ts = ?", (lost.ts,))
        db.commit()
    setup.exchange.outage(60)
    report = await setup.backfiller.run([lookup("BTCUSD")], days=DAYS)
    assert [(g.symbol, g.start, g.minutes, g.reason) for g in report.gaps
            if g.start == lost.ts] == [("BTCUSD", lost.ts, 1, "fetch_failed")]

    assert setup.source.breaker.state == "open"  # history fails through the live loop's breaker too
    setup.exchange.outage(0)
    setup.clock.advance(setup.source.breaker.reset_timeout_s)  # the breaker lets a probe through again
    old = NOW - 35 * 86400  # older than Yahoo serves 1m bars
    report = await setup.backfiller.run([lookup("BTCUSD")], days=40)
    assert report.filled >= 1 and any(g.reason == "beyond_source_range" and g.start <= old for g in report.gaps)


async def test_end_of_day_check_verifies_the_session_backfills_and_summarizes(
        setup: Setup, tmp_path: Path, redis_url: str) -> None:
    from dataclasses import replace

    from sidecar.app import Sidecar
    from sidecar.settings import Settings

    setup.clock.advance(5 * 3600)  # Tuesday 01:00 UTC: Monday's session closed at 21:00
    settings = replace(Settings(), symbols=("AAPL", "MSFT", "EURUSD"), yahoo_base_url=setup.exchange.url or "",
                       db_path=tmp_path / "eod.db", redis_url=redis_url, bootstrap_days=0.0,
                       universe=("dev_top_10", "fx_majors"))
    stream = redis.Redis.from_url(redis_url)

    def events() -> list[dict]:
        return [orjson.loads(f[b"event"]) for _, f in stream.xrange("sidecar:signals") if b"event" in f]

    sc = Sidecar(settings, clock=setup.clock, handle_signals=False)
    await sc.sqlite.start()
    await sc.fetcher.start()
    try:
        open_, close = NOW - 5.5 * 3600, NOW + 3600  # Monday 14:30-21:00 UTC
        aapl = setup.truth("AAPL", int(open_), int(close))
        msft = setup.truth("MSFT", int(open_), int(close))
        lost = aapl[200]
        sc.sqlite.add([b for b in aapl if b.ts != lost.ts] + msft)
        await sc.sqlite.flush()
        session = len(expected_minutes(lookup("AAPL").asset_class, int(open_), int(close), 60))
        assert session == 390

        setup.exchange.outage(60)
        await sc.upkeep.end_of_day_check()
        eod = sc.backfiller.eod
        assert eod["symbols"] == 3 and eod["complete_share"] == 0.0
        fx_start, fx_end = NOW + 2 * 3600 - 86400, NOW + 2 * 3600  # Sunday 17:00 to Monday 17:00 New York
        assert eod["sessions"] == {"AAPL": [int(open_), int(close)], "MSFT": [int(open_), int(close)],
                                   "EURUSD": [fx_start, fx_end]}
        fx_session = len(expected_minutes(lookup("EURUSD").asset_class, fx_start, fx_end, 60))
        first = events()  # the day's first summary, per asset class: nothing complete yet
        assert [(e["asset_class"], e["date"], e["complete"], e["symbols"], e["final"]) for e in first] == [
            ("equity", "2026-11-30", 0, 2, False), ("fx", "2026-11-30", 0, 1, False)]
        assert first[0]["universes"] == {"dev_top_10": {"symbols": 2, "complete": 0}}
        assert first[1]["session"] == [fx_start, fx_end] and first[1]["universes"] == {
            "fx_majors": {"symbols": 1, "complete": 0}}
        # what is left: the lost minute, and minutes without trades that nothing could confirm
        assert eod["missing_minutes"] == {"AAPL": session - len(aapl) + 1, "MSFT": session - len(msft),
                                          "EURUSD": fx_session}

        setup.exchange.outage(0)
        requests = setup.exchange.requests["chart"]
        await sc.upkeep.end_of_day_check()  # an incomplete day is tried again
        assert sc.backfiller.eod["complete_share"] == 1.0 and sc.backfiller.eod["missing_minutes"] == {}
        assert setup.exchange.requests["chart"] - requests == 3  # one request per symbol and day
        done = events()[2:]  # and again once complete, then never again
        assert [(e["asset_class"], e["complete"], e["final"], e["missing_minutes"]) for e in done] == [
            ("equity", 2, True, {}), ("fx", 1, True, {})]
        await sc.upkeep.end_of_day_check()  # a verified day is not asked for again
        assert setup.exchange.requests["chart"] - requests == 3
        assert len(events()) == 4
        await sc.sqlite.flush()
        with closing(sqlite3.connect(tmp_path / "eod.db")) as db:
            assert db.execute("SELECT close FROM bars WHERE symbol='AAPL' AND ts=?", (lost.ts,)).fetchone() == (
                lost.close,)
        assert sc.health()["end_of_day"]["complete_share"] == 1.0
    finally:
        await sc.close()


async def test_a_bar_revised_after_it_settled_is_repaired_by_the_next_verification(setup: Setup) -> None:
    """The source corrects a bar long after it settled: the end-of-day check (one request per
    symbol and day) finds the stored values differ, stores the source's, and counts it."""
    friday_open, friday_close = int(dt.datetime(2026, 11, 27, 14, 30, tzinfo=dt.UTC).timestamp()), \
        int(dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC).timestamp())  # the early close after Thanksgiving
    before = setup.truth("AAPL", friday_open, friday_close)[42]
    setup.exchange.revise("AAPL", before.ts)
    after = setup.truth("AAPL", friday_open, friday_close)[42]
    assert after.ts == before.ts and after.close != before.close
    requests = setup.exchange.requests["chart"]
    eod = await setup.backfiller.end_of_day([lookup("AAPL")])
    assert eod["sessions"] == {"AAPL": [friday_open, friday_close]} and eod["revised"] == 1
    assert setup.exchange.requests["chart"] - requests == 1
    await setup.sqlite.flush()
    assert setup.rows("AAPL")[before.ts] == (after.open, after.high, after.low, after.close, after.volume)
    assert setup.backfiller.metrics.total("sidecar_bars_revised_total", source="yahoo", stage="end_of_day") == 1
    again = await setup.backfiller.end_of_day([lookup("AAPL")])
    assert again["requests"] == 0 and setup.exchange.requests["chart"] - requests == 1  # once per day
