"""The cycle in-process against the exchange over HTTP, a real Redis and a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace

import msgpack
import pytest

from sidecar.app import Sidecar
from sidecar.exchange import Exchange
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import RedisServer


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Sidecar]:
    """A daemon whose parts are started but whose loop is driven by the test, cycle by cycle."""
    sc = Sidecar(settings, handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    yield sc
    await sc.fetcher.close()
    await sc.sqlite.close()
    await sc.redis.close()


def _db_rows(settings: Settings) -> dict[tuple[str, int], tuple]:
    with sqlite3.connect(settings.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume FROM bars").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def _served(exchange: Exchange, settings: Settings) -> dict[tuple[str, int], tuple]:
    out = {}
    for sym in settings.symbols:
        for ts, values in exchange.served[lookup(sym).yahoo].items():
            out[(sym, ts)] = values
    return out


async def test_a_cycle_stores_every_served_closed_bar_and_the_latest_bar_of_every_symbol(
        app: Sidecar, exchange: Exchange, settings: Settings, redis_server: RedisServer) -> None:
    report = await app.orchestrator.run_cycle()
    assert report.failed == 0 and report.fetched == len(settings.symbols) and report.redis_ok
    assert report.closed >= 25 * len(settings.symbols)  # 30 minutes of lookback, a few without trades
    await app.sqlite.flush()
    assert _db_rows(settings) == _served(exchange, settings)
    with redis_server.client() as c:
        for sym in settings.symbols:
            latest = msgpack.unpackb(c.get(f"sidecar:{{{sym}}}:bar:1m"))
            assert latest["symbol"] == sym and latest["ts"] >= int(exchange.clock.time()) // 60 * 60 - 60


async def test_a_second_cycle_asks_only_for_bars_after_the_cursor(app: Sidecar, exchange: Exchange,
                                                                 settings: Settings) -> None:
    await app.orchestrator.run_cycle()
    cursors = {s: st.cursor for s, st in app.orchestrator.states.items()}
    report = await app.orchestrator.run_cycle()
    assert report.closed <= len(settings.symbols)  # at most one minute closed in between
    assert all(st.cursor is not None and st.cursor >= cursors[s] for s, st in app.orchestrator.states.items())


async def test_an_invalid_bar_is_counted_stored_nowhere_and_its_minute_fetched_again(
        app: Sidecar, exchange: Exchange, settings: Settings, redis_server: RedisServer) -> None:
    exchange.inject("AAPL", "high_below_low")
    exchange.inject("MSFT", "negative_volume")
    await app.orchestrator.run_cycle()
    bad = {(f["symbol"], f["ts"]): f["values"] for f in exchange.fault_log}
    assert app.metrics.by_label("sidecar_bars_rejected_total", "reason") == {
        "high_below_open_close": 1.0, "negative_volume": 1.0}
    await app.orchestrator.run_cycle()  # the cursor was pulled back: the true bars come now
    await app.sqlite.flush()
    rows = _db_rows(settings)
    assert rows == _served(exchange, settings)
    for (sym, ts), values in bad.items():  # equities: the Yahoo symbol is the canonical one
        assert rows[(sym, ts)] != tuple(values)  # the true bar, not the corrupted one
        with redis_server.client() as c:
            members = c.zrange(f"sidecar:{{{sym}}}:bars:1m", ts, ts, byscore=True)
        assert len(members) == 1 and msgpack.unpackb(members[0])["volume"] >= 0


async def test_one_failing_symbol_never_stops_the_cycle(app: Sidecar, exchange: Exchange, settings: Settings) -> None:
    exchange.inject("^NDX", "http_500", count=10)  # fails every retry
    exchange.inject("TSLA", "slow")  # longer than the fetch timeout, and than what is left for a retry
    report = await app.orchestrator.run_cycle()
    assert report.failed == 2 and report.fetched == len(settings.symbols) - 2
    errors = app.metrics.by_label("sidecar_fetch_errors_total", "reason")
    assert errors == {"ProviderError": 3.0, "FetchTimeout": 1.0}  # three tries for the 5xx
    assert app.orchestrator.states["NAS100"].last_error is not None
    assert app.orchestrator.states["AAPL"].cursor is not None
    health = app.health()
    assert health["sources"]["yahoo"]["state"] == "degraded"


async def test_a_transient_error_is_retried_within_the_cycle(app: Sidecar, exchange: Exchange) -> None:
    exchange.inject("AAPL", "http_500")
    exchange.inject("MSFT", "malformed_json")
    report = await app.orchestrator.run_cycle()
    assert report.failed == 0  # both came through on their second try
    assert app.metrics.total("sidecar_fetch_retries_total", source="yahoo") == 2
    assert app.orchestrator.breaker.state == "closed"


async def test_redis_down_does_not_stop_the_cycle_or_sqlite(settings: Settings, exchange: Exchange, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = Sidecar(replace(settings, redis_url=f"unix://{tmp_path}/none.sock", redis_timeout_s=0.2),
                 handle_signals=False)
    await sc.sqlite.start()
    await sc.fetcher.start()
    try:
        report = await sc.orchestrator.run_cycle()
        assert not report.redis_ok and report.fetched == len(settings.symbols)
        assert await sc.sqlite.flush() == report.closed > 0
        assert sc.metrics.total("sidecar_redis_errors_total") == 1
    finally:
        await sc.fetcher.close()
        await sc.sqlite.close()
        await sc.redis.close()
