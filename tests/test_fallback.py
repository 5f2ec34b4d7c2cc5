"""Fallback down each symbol's sources: the daemon in-process, its cycles driven on the
exchange's virtual clock, all four providers over real HTTP, a real Redis and SQLite."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace

import msgpack
import pytest

from sidecar.app import Sidecar
from sidecar.clock import ManualClock
from sidecar.exchange import Exchange, Market
from sidecar.exchange.providers import Limits
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import SEED, RedisServer

START = 1_795_000_000 // 60 * 60 + 30
SYMBOLS = ("AAPL", "EURUSD", "BTCUSD")
TD_PER_MIN = 240  # three symbols a second need 180


@pytest.fixture
async def rig(tmp_path, redis_url: str) -> AsyncIterator[tuple[Sidecar, Exchange, ManualClock]]:
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock,
                  limits={"twelvedata": Limits(per_minute=TD_PER_MIN, per_day=100_000), "polygon": Limits(per_minute=5)})
    await ex.start()
    s = replace(Settings(), redis_url=redis_url, db_path=tmp_path / "f.db", http_port=0, lookback_minutes=10,
                bootstrap_days=0.0, symbols=SYMBOLS, yahoo_base_url=ex.url, twelvedata_base_url=ex.url,
                polygon_base_url=ex.url, alphavantage_base_url=ex.url, twelvedata_api_key="local",
                polygon_api_key="local", alphavantage_api_key="", twelvedata_rate_per_min=TD_PER_MIN,
                twelvedata_rate_per_day=100_000, breaker_threshold=3, breaker_reset_s=10.0, spike_atr=0.0)
    sc = Sidecar(s, clock=clock, handle_signals=False)
    # Cycles run by hand on a virtual clock: a gap scan set off in the background by a recovery
    # would move that clock with its own retry and budget waits.
    sc._schedule_backfill = sc.orchestrator.on_recovered = lambda: None  # type: ignore[method-assign]  # noqa: SLF001
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    for f in sc.fallbacks:
        await f.start()
    yield sc, ex, clock
    await sc.close()  # the daemon's own order: background tasks stop before the stores close
    await ex.close()


async def _cycles(sc: Sidecar, clock: ManualClock, n: int) -> list[dict[str, str | None]]:
    sources = []
    for _ in range(n):
        await sc.orchestrator.run_cycle()
        sources.append({sym: st.source for sym, st in sc.orchestrator.states.items()})
        clock.advance(1.0 - clock.time() % 1.0)  # to the next whole second, as the ticker does
    return sources


def _per_minute_max(ex: Exchange, provider: str) -> int:
    log = ex.providers.key_log.get((provider, "local"), [])
    per_minute: dict[int, int] = {}
    for t, cost in log:
        per_minute[int(t // 60)] = per_minute.get(int(t // 60), 0) + cost
    return max(per_minute.values(), default=0)


async def test_a_yahoo_outage_falls_back_to_twelve_data_and_returns_when_yahoo_recovers(
        rig, redis_server: RedisServer) -> None:
    sc, ex, clock = rig
    orch = sc.orchestrator
    assert [g.name for g in orch.sources] == ["yahoo", "twelvedata", "polygon", "alphavantage"]
    assert [g.name for g in orch.states["AAPL"].sources] == ["yahoo", "twelvedata", "polygon"]  # AV disabled

    before = await _cycles(sc, clock, 20)
    assert all(v == "yahoo" for v in before[-1].values())

    ex.outage(90, "yahoo")
    outage_began = clock.monotonic()
    during = await _cycles(sc, clock, 80)
    yahoo = orch.sources[0]
    assert all(v == "twelvedata" for v in during[0].values())  # the very first cycle of the outage
    assert all(all(v == "twelvedata" for v in c.values()) for c in during)
    assert yahoo.breaker.state in ("open", "half_open") and yahoo.breaker.transitions >= 1
    with redis_server.client() as c:
        latest = msgpack.unpackb(c.get("sidecar:{AAPL}:bar:1m"))
    assert latest["source"] == "twelvedata"
    outage_ended = outage_began + 90

    after_began = clock.monotonic()
    after = await _cycles(sc, clock, 40)
    back = next(i for i, c in enumerate(after) if all(v == "yahoo" for v in c.values()))
    # back on yahoo within one breaker reset timeout (+ the cycle the probe runs in) of the recovery
    assert 0 < after_began + back - outage_ended <= sc.settings.breaker_reset_s + 1
    assert yahoo.breaker.state == "closed"

    await sc.sqlite.flush()
    with sqlite3.connect(sc.settings.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume, source FROM bars WHERE timeframe='1m'").fetchall()
    stored = {(r[0], r[1]): r[2:7] for r in rows}
    now = int(clock.time()) // 60 * 60
    for sym in SYMBOLS:
        t = ex.truth(lookup(sym).yahoo, START // 60 * 60 - 600, now)
        truth = {(sym, ts): v for ts, *v in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(),
                                                t.close.tolist(), t.volume.tolist(), strict=True)}
        # (the gap scan run on recovery also filled older history: outside this window)
        mine = {k: v for k, v in stored.items() if k[0] == sym and START // 60 * 60 - 600 <= k[1] < now}
        if sym == "EURUSD":  # Twelve Data sends no FX volume: compare prices
            truth = {k: v[:4] for k, v in truth.items()}
            mine = {k: v[:4] for k, v in mine.items()}
        assert mine == {k: tuple(v) for k, v in truth.items()}, sym
    assert {r[7] for r in rows} == {"yahoo", "twelvedata"}
    assert _per_minute_max(ex, "twelvedata") <= TD_PER_MIN and ex.providers.refused["twelvedata"] == 0

    health = sc.health()
    assert health["sources"]["alphavantage"]["state"] == "disabled"
    assert health["sources"]["twelvedata"]["symbols_served_last_cycle"] == 0
    assert health["sources"]["yahoo"]["breaker"]["state"] == "closed"


async def test_budgets_are_never_exceeded_when_every_symbol_needs_a_fallback(rig) -> None:
    """Twelve Data at its free 8 credits a minute, Polygon at 5 requests: three symbols asking
    every second during a Yahoo outage still never make the exchange refuse a request."""
    sc, ex, clock = rig
    ex.providers.limits["twelvedata"] = Limits(per_minute=8, per_day=800)
    for g in sc.orchestrator.sources:
        if g.name == "twelvedata":
            g.limiter.per_minute, g.limiter.per_day = 8, 800
    ex.outage(150, "yahoo")
    await _cycles(sc, clock, 150)
    assert 0 < _per_minute_max(ex, "twelvedata") <= 8 and 0 < _per_minute_max(ex, "polygon") <= 5
    assert ex.providers.refused["twelvedata"] == 0 and ex.providers.refused["polygon"] == 0
    skipped = sc.metrics.by_labels("sidecar_fetch_skipped_total", ("source", "reason"))
    assert skipped.get(("twelvedata", "rate_limit"), 0) == 0  # usable() skipped them before asking
    assert {st.source for st in sc.orchestrator.states.values()} <= {"twelvedata", "polygon"}


async def test_a_source_without_a_key_is_disabled_with_one_log_line(tmp_path, redis_url: str, caplog) -> None:
    s = replace(Settings(), redis_url=redis_url, db_path=tmp_path / "d.db", http_port=0, bootstrap_days=0.0,
                symbols=("AAPL",), twelvedata_api_key="", polygon_api_key="", alphavantage_api_key="")
    sc = Sidecar(s, handle_signals=False)
    with caplog.at_level(logging.INFO):
        sc.providers.announce()
    assert [g.name for g in sc.orchestrator.states["AAPL"].sources] == ["yahoo"]
    lines = [r.getMessage() for r in caplog.records]
    for name, setting in (("twelvedata", "TWELVEDATA"), ("polygon", "POLYGON"), ("alphavantage", "ALPHAVANTAGE")):
        assert lines.count(f"source {name} disabled: no API key (SIDECAR_{setting}_API_KEY)") == 1
    assert sum(line.startswith("source yahoo enabled") for line in lines) == 1
    assert sc.health()["sources"]["polygon"] == {"state": "disabled",
                                                 "reason": "no API key (SIDECAR_POLYGON_API_KEY)"}


async def test_a_symbol_is_dead_lettered_only_when_every_source_fails(rig, redis_server: RedisServer) -> None:
    import orjson

    from sidecar.bars import BarFlag

    sc, ex, clock = rig
    await _cycles(sc, clock, 5)
    ex.outage(30, "yahoo")
    await _cycles(sc, clock, 10)  # Twelve Data serves: nothing stale, nothing dead
    with redis_server.client() as c:
        assert c.hgetall("sidecar:deadletter") == {}
    for provider in ("twelvedata", "polygon"):
        ex.outage(20, provider)
    await _cycles(sc, clock, 10)
    with redis_server.client() as c:
        dead = {k.decode(): orjson.loads(v) for k, v in c.hgetall("sidecar:deadletter").items()}
        stale = [msgpack.unpackb(c.get(f"sidecar:{{{s}}}:bar:1m"))["flags"] & BarFlag.STALE for s in SYMBOLS]
    assert set(dead) == set(SYMBOLS) and all(stale)  # the last good bars stay readable, marked stale
    assert all(d["reason"] == "every source failing" and d["sources"] == ["yahoo", "twelvedata", "polygon"]
               and sorted(d["errors"]) == ["polygon", "twelvedata", "yahoo"]
               and all("HTTP 503" in e or "circuit open" in e for e in d["errors"].values()) for d in dead.values())
    # The outages end 10 s from here; each breaker then lets its probe through within its reset timeout
    await _cycles(sc, clock, 10 + int(sc.settings.breaker_reset_s) + 3)
    with redis_server.client() as c:
        assert c.hgetall("sidecar:deadletter") == {}


async def test_quotes_fall_back_to_polygons_snapshot_while_yahoo_is_down(rig) -> None:
    sc, ex, clock = rig
    orch = sc.orchestrator
    orch.sourcing.quotes = True
    ex.providers.limits["polygon"] = Limits(per_minute=600)
    for g in orch.sources:
        if g.name == "polygon":
            g.limiter.per_minute = 600
        if g.name == "twelvedata":  # a batch quote of 3 symbols costs 3 credits: more than it has
            g.limiter.per_minute = 2
    await _cycles(sc, clock, 70)
    assert {st.source for st in orch.states.values()} == {"yahoo"}
    before = ex.requests["polygon_snapshot"]
    ex.outage(130, "yahoo")
    await _cycles(sc, clock, 125)
    assert {st.source for st in orch.states.values()} == {"polygon"}
    assert ex.providers.key_log.get(("twelvedata", "local"), []) == []  # never asked beyond its budget
    assert ex.requests["polygon_snapshot"] - before >= 100  # one per chunk per second
    await sc.sqlite.flush()
    with sqlite3.connect(sc.settings.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume, source FROM bars WHERE timeframe='1m'").fetchall()
    now = int(clock.time()) // 60 * 60
    built = {(r[0], r[1]): r[2:7] for r in rows if r[7] == "polygon" and r[1] < now}
    assert len(built) >= 3  # minutes built from Polygon's quotes, each equal to the truth
    for (sym, ts), values in built.items():
        t = ex.truth(lookup(sym).yahoo, ts, ts + 60)
        assert values == (t.open[0], t.high[0], t.low[0], t.close[0], t.volume[0]), (sym, ts)


@pytest.mark.parametrize("provider", ["twelvedata", "polygon", "alphavantage"])
@pytest.mark.parametrize("fault", ["high_below_low", "nan_price", "negative_price", "duplicate", "out_of_order"])
async def test_bad_bars_from_any_provider_are_never_stored(tmp_path, redis_url: str, provider: str, fault: str) -> None:
    """The daemon on one provider alone, with a fault in its answer about AAPL: what SQLite holds
    is exactly the truth (the bad copy rejected and its minute fetched again; duplicates and
    out-of-order rows stored once)."""
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock,
                  limits={p: Limits() for p in ("twelvedata", "polygon", "alphavantage")})
    await ex.start()
    s = replace(Settings(), redis_url=redis_url, db_path=tmp_path / "p.db", http_port=0, lookback_minutes=10,
                bootstrap_days=0.0, symbols=("AAPL", "BTCUSD"), sources=(provider,), spike_atr=0.0,
                yahoo_base_url=ex.url, twelvedata_base_url=ex.url, polygon_base_url=ex.url,
                alphavantage_base_url=ex.url, twelvedata_api_key="local", polygon_api_key="local",
                alphavantage_api_key="local", twelvedata_rate_per_min=0, twelvedata_rate_per_day=0,
                polygon_rate_per_min=0, alphavantage_rate_per_min=0, alphavantage_rate_per_day=0)
    sc = Sidecar(s, clock=clock, handle_signals=False)
    # Cycles run by hand on a virtual clock: a gap scan set off in the background by a recovery
    # would move that clock with its own retry and budget waits.
    sc._schedule_backfill = sc.orchestrator.on_recovered = lambda: None  # type: ignore[method-assign]  # noqa: SLF001
    await sc.sqlite.start()
    await sc.redis.start()
    for f in sc.fallbacks:
        await f.start()
    try:
        await _cycles(sc, clock, 70)
        while int(clock.time()) % 60:  # a minute has just closed: its bar is new to the daemon
            await _cycles(sc, clock, 1)
        ex.inject(f"{provider}:AAPL", fault)
        await _cycles(sc, clock, 70)
        await sc.sqlite.flush()
    finally:
        await sc.close()
        await ex.close()
    assert [f["kind"] for f in ex.fault_log] == [fault]
    with sqlite3.connect(s.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, source FROM bars WHERE timeframe='1m'").fetchall()
    assert {r[6] for r in rows} == {provider}
    now = int(clock.time()) // 60 * 60
    for sym in ("AAPL", "BTCUSD"):
        t = ex.truth(lookup(sym).yahoo, START // 60 * 60 - 600, now)
        truth = {ts: v for ts, *v in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(),
                                         t.close.tolist(), strict=True)}
        mine = {r[1]: r[2:6] for r in rows if r[0] == sym and r[1] < now - 60}
        assert mine == {ts: tuple(v) for ts, v in truth.items() if ts < now - 60}, sym
    rejected = sc.metrics.by_label("sidecar_bars_rejected_total", "reason")
    expected = {"high_below_low": "high_below_open_close", "nan_price": "non_finite",
                "negative_price": "non_positive_price"}.get(fault)
    assert (rejected.get(expected, 0) >= 1) if expected else not rejected, (rejected, ex.fault_log)


async def test_closed_minutes_come_from_polygons_snapshot_without_a_request_per_symbol(tmp_path, redis_url: str) -> None:
    """Polygon first in quotes mode: after the first catch-up, every closed minute of every symbol
    is the snapshot's `min` bar, taken once its minute has passed plus the grace (SIDECAR_SETTLE_S),
    equal to the truth; no aggregates request per symbol, one snapshot per market per cycle."""
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock, limits={"polygon": Limits(per_minute=100_000)})
    await ex.start()
    s = replace(Settings(), redis_url=redis_url, db_path=tmp_path / "p.db", http_port=0, lookback_minutes=10,
                bootstrap_days=0.0, symbols=SYMBOLS, sources=("polygon", "yahoo"), yahoo_base_url=ex.url,
                polygon_base_url=ex.url, polygon_api_key="local", polygon_rate_per_min=0, live_mode="quotes",
                spike_atr=0.0, settle_s=3.0, gap_scan_days=0.0)
    sc = Sidecar(s, clock=clock, handle_signals=False)
    sc._schedule_backfill = sc.orchestrator.on_recovered = lambda: None  # type: ignore[method-assign]  # noqa: SLF001
    await sc.sqlite.start()
    await sc.redis.start()
    for f in (sc.fetcher, *sc.fallbacks):
        await f.start()
    try:
        while int(clock.time()) % 60 != 10:  # the catch-up of the first minutes, and of the minute joined half-way
            await _cycles(sc, clock, 1)
        await _cycles(sc, clock, 60)
        aggregates, snapshots, t0 = ex.requests["polygon"], ex.requests["polygon_snapshot"], int(clock.time())
        minute = t0 // 60 * 60  # runs now: its bar is forming, and stays forming until it ended + 3 s
        await _cycles(sc, clock, 52)  # to 2 s after the minute ended
        assert sc.orchestrator.states["AAPL"].cursor == minute - 60
        await _cycles(sc, clock, 2)  # 4 s after: taken
        assert sc.orchestrator.states["AAPL"].cursor == minute
        await _cycles(sc, clock, 180)
        assert ex.requests["polygon"] == aggregates  # no history request at all
        markets = 3  # stocks, forex, crypto: one snapshot each per cycle
        assert ex.requests["polygon_snapshot"] - snapshots == markets * 234
        await sc.sqlite.flush()
    finally:
        await sc.close()
        await ex.close()
    with sqlite3.connect(s.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume, source FROM bars WHERE timeframe='1m' AND ts >= ?",
                          (t0 // 60 * 60,)).fetchall()
    assert {r[7] for r in rows} == {"polygon"} and len(rows) >= 3 * 3
    for sym, ts, *values, _src in rows:
        t = ex.truth(lookup(sym).yahoo, ts, ts + 60)
        assert tuple(values) == (t.open[0], t.high[0], t.low[0], t.close[0], t.volume[0]), (sym, ts)
