"""The cycle in-process against the exchange over HTTP, a real Redis and a real SQLite file."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import orjson
import pytest

from sidecar.app import Sidecar
from sidecar.bars import Bar, BarFlag
from sidecar.cycle import publish
from sidecar.cycle.acceptance import Accepted
from sidecar.cycle.batch import Batch
from sidecar.cycle.gapfill import fill_gaps
from sidecar.exchange import Exchange
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import RedisServer, start_redis
from .helpers import wait_until


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Sidecar]:
    """A daemon whose parts are started but whose loop is driven by the test, cycle by cycle."""
    sc = Sidecar(settings, handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    yield sc
    await sc.close()  # the daemon's own order: background tasks stop before the stores close


def _db_rows(settings: Settings) -> dict[tuple[str, int], tuple]:
    with sqlite3.connect(settings.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE timeframe='1m'").fetchall()
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


async def test_a_symbol_that_answered_is_not_stale_however_long_its_answer_took(
        settings: Settings, exchange: Exchange, redis_server: RedisServer) -> None:
    """The STALE flag means no answer for `stale_after_s`; a cycle whose answers took longer
    than that (a slow source, a loaded machine) answered for every symbol, and flags none."""
    sc = Sidecar(replace(settings, stale_after_s=0.3), handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    try:
        await sc.orchestrator.run_cycle()  # caught up
        exchange.ledger.slow_s = 0.6  # twice stale_after_s, within the fetch timeout (0.8 s)
        exchange.inject("AAPL", "slow")
        report = await sc.orchestrator.run_cycle()
        assert report.failed == 0 and report.fetched == len(settings.symbols) and report.duration_s > 0.6
        with redis_server.client() as c:
            flags = {sym: msgpack.unpackb(c.get(f"sidecar:{{{sym}}}:bar:1m"))["flags"] for sym in settings.symbols}
        assert not [sym for sym, f in flags.items() if f & BarFlag.STALE]
    finally:
        await sc.close()


async def test_a_transient_error_is_retried_within_the_cycle(app: Sidecar, exchange: Exchange) -> None:
    exchange.inject("AAPL", "http_500")
    exchange.inject("MSFT", "malformed_json")
    report = await app.orchestrator.run_cycle()
    assert report.failed == 0  # both came through on their second try
    assert app.metrics.total("sidecar_fetch_retries_total", source="yahoo") == 2
    assert app.orchestrator.guarded.breaker.state == "closed"


async def test_redis_down_does_not_stop_the_cycle_or_sqlite(settings: Settings, exchange: Exchange, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = Sidecar(replace(settings, redis_url=f"unix://{tmp_path}/none.sock", redis_timeout_s=0.2),
                 handle_signals=False)
    await sc.sqlite.start()
    await sc.fetcher.start()
    try:
        report = await sc.orchestrator.run_cycle()
        assert not report.redis_ok and report.fetched == len(settings.symbols)
        await sc.sqlite.flush()
        assert report.closed > 0
        with closing(sqlite3.connect(settings.db_path)) as db:
            assert db.execute("SELECT count(*) FROM bars WHERE timeframe = '1m'").fetchone()[0] == report.closed
        assert sc.metrics.total("sidecar_redis_errors_total") == 1  # the higher timeframes' rewrites are logged
    finally:
        await sc.close()


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "read-back"])
async def test_closed_bars_of_a_failed_write_reach_redis_once_it_answers(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: bool) -> None:
    """Redis hung (SIGSTOP) through a cycle that closed bars, with its data kept: the next write
    carries them (kept in memory) or, when more failed than may be kept, a catch-up reads them back
    from the store. Either way Redis's histories then hold every closed bar SQLite holds, with its
    values, and no whole re-seed ran."""
    if not kept:
        monkeypatch.setattr(publish, "UNSENT_MAX", 0)
    server = start_redis(tmp_path / "redis")
    with server.client() as c:
        c.set("sidecar:alive", "1")  # a Redis that kept its data, not one that came back empty
    sc = Sidecar(replace(settings, redis_url=server.url, redis_timeout_s=0.3), handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    try:
        server.process.send_signal(signal.SIGSTOP)
        try:
            first = await sc.orchestrator.run_cycle()
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert not first.redis_ok and first.closed > 0
        assert (await sc.orchestrator.run_cycle()).redis_ok
        await wait_until(lambda: sc.reseeder.catch_ups == (0 if kept else 1), 30, "the catch-up")
        await sc.sqlite.flush()
        stored = _db_rows(settings)
        assert len(stored) >= first.closed
        with server.client() as c:
            for (sym, ts), values in stored.items():
                members = c.zrangebyscore(f"sidecar:{{{sym}}}:bars:1m", ts, ts)
                assert len(members) == 1, (sym, ts, members)
                m = msgpack.unpackb(members[0])
                assert (m["open"], m["high"], m["low"], m["close"], m["volume"]) == values, (sym, ts)
        assert sc.reseeder.reseeds == 0
    finally:
        await sc.close()
        server.process.terminate()
        server.process.wait(timeout=10)


async def test_a_one_off_spike_is_held_quarantined_and_the_true_bar_stored(
        app: Sidecar, exchange: Exchange, settings: Settings, redis_server: RedisServer) -> None:
    orch = app.orchestrator
    orch.acceptance.spike_atr = 15.0
    orch.acceptance.settle_s = 0  # the faulted minute is then a new closed bar, not a revision of an unsettled one
    app.features.warm(app.infos, {})  # what start() does (this fixture drives the parts by hand)
    await orch.run_cycle()  # 30 minutes of bars: the ATR is known from here on
    state = orch.states["AAPL"]
    state.cursor -= 300  # ask again for the last five closed minutes, so the fault hits a closed bar
    exchange.inject("AAPL", "spike")
    await orch.run_cycle()
    (fault,) = exchange.fault_log
    assert state.pending is not None and state.pending.ts == fault["ts"]  # held, not stored
    await orch.run_cycle()  # the same minute again: the source sends the true bar
    assert state.pending is None
    assert app.metrics.by_label("sidecar_bars_rejected_total", "reason") == {"spike": 1.0}
    await app.sqlite.flush()
    assert _db_rows(settings) == _served(exchange, settings)  # the true bar, never the spike
    with redis_server.client() as c:
        (entry,) = [orjson.loads(x) for x in c.lrange("sidecar:quarantine", 0, -1)]
    assert entry["ts"] == fault["ts"] and entry["close"] == fault["values"][3] and "corrected" in entry["why"]


def _accept(sc: Sidecar, bars: list[Bar], known_at: float = float("inf")) -> Accepted:
    """One symbol's bars through the acceptance stage, as a cycle would pass them."""
    table = sc.orchestrator.table
    slot = table.slot_of[bars[0].symbol]
    batch = Batch.concat([Batch.from_bars([b], slot, table.source_code(b.source), known_at) for b in bars])
    now = max(b.ts for b in bars) + 120.0
    return sc.orchestrator.acceptance.run(batch.sorted(), np.array([slot]), now)


def _closes(accepted: Accepted) -> list[float]:
    return accepted.closed.close.tolist()


def _reference(sc: Sidecar, bar: Bar) -> None:
    """The symbol's newest accepted closed bar is `bar` (what earlier cycles left)."""
    table = sc.orchestrator.table
    slot = table.slot_of[bar.symbol]
    table.cursor[slot], table.ref_ts[slot], table.ref_close[slot] = bar.ts, bar.ts, bar.close


def _warmed(settings: Settings) -> tuple[Sidecar, list[Bar]]:
    """A daemon with a spike filter of 10 ATRs and BTCUSD warmed from 50 calm minutes, the
    newest of them its reference."""
    sc = Sidecar(replace(settings, spike_atr=10.0), handle_signals=False)
    t0 = 1_795_400_000 // 60 * 60
    history = [Bar("BTCUSD", "1m", t0 + 60 * i, 100.0, 100.1, 99.9, 100.0 + (i % 2) * 0.05, 1.0, "t")
               for i in range(50)]
    sc.features.warm([lookup("BTCUSD")], {"BTCUSD": history})
    _reference(sc, history[-1])
    return sc, history


def test_the_next_bar_decides_whether_a_jump_was_real(settings: Settings) -> None:
    sc, history = _warmed(settings)
    atr = sc.features.book.atr("BTCUSD")
    assert 0.1 < atr < 0.3

    def bar(i: int, close: float) -> Bar:
        return Bar("BTCUSD", "1m", history[-1].ts + 60 * (1 + i), close, close + 0.05, close - 0.05, close, 1.0, "t")

    state = sc.orchestrator.states["BTCUSD"]
    jump, stays = bar(0, 110.0), bar(1, 110.2)  # +50 ATR, and the market stays there: real
    assert _closes(_accept(sc, [jump])) == [] and state.pending == jump  # held
    assert _closes(_accept(sc, [stays])) == [110.0, 110.2]  # confirmed, in order
    spike, back = bar(2, 150.0), bar(3, 110.1)  # a lone print 200 ATR away, then back: a spike
    assert _closes(_accept(sc, [spike])) == []
    out = _accept(sc, [back])
    assert _closes(out) == [110.1] and out.quarantine[0]["close"] == 150.0  # the spike stays out
    assert sc.metrics.by_label("sidecar_bars_rejected_total", "reason") == {"spike": 1.0}
    assert sc.metrics.by_label("sidecar_bars_accepted_total", "kind") == {"spike_confirmed": 1.0, "closed": 3.0}


def test_missing_minutes_inside_a_session_are_filled_flat_and_flagged_never_across_a_close(app: Sidecar) -> None:
    import datetime as dt

    from sidecar.bars import BarFlag

    table = app.orchestrator.table

    def at(text: str) -> int:  # New York wall time on Monday 2026-11-23
        return int(dt.datetime.fromisoformat(f"2026-11-23 {text}-05:00").timestamp())

    def fill(bars: list[tuple[int, float]]) -> list[Bar]:
        """Gap fill between consecutive bars of AAPL: the first is the one before the cycle."""
        slot = table.slot_of["AAPL"]
        before_ts, before_close = np.full(len(table.active), -1, dtype=np.int64), np.full(len(table.active), np.nan)
        before_ts[slot], before_close[slot] = bars[0]
        rows = Batch.concat([Batch.from_bars([Bar("AAPL", "1m", ts, c, c + 1, c - 1, c, 10.0, "yahoo")], slot, 0, 0.0)
                             for ts, c in bars[1:]])
        return fill_gaps(rows, before_ts, before_close, table.asset_class, 60).bars(table.symbols, table.source_names)

    inside = fill([(at("10:00"), 100.0), (at("10:03"), 101.0), (at("10:04"), 102.0)])
    assert [(b.ts, b.open, b.high, b.low, b.close, b.volume) for b in inside] == [
        (at("10:01"), 100.0, 100.0, 100.0, 100.0, 0.0), (at("10:02"), 100.0, 100.0, 100.0, 100.0, 0.0)]
    assert all(b.flags & BarFlag.SYNTHETIC and not b.forming for b in inside)
    # Friday's last minute to Monday's open, and Monday's close to Tuesday: the market was closed
    friday_close = at("15:59") - 3 * 86400
    assert fill([(friday_close, 100.0), (at("09:30"), 101.0)]) == []
    assert fill([(at("15:58"), 100.0), (at("09:31") + 86400, 101.0)]) == []
    # Thanksgiving's early close (13:00 on Friday 2026-11-27): nothing after it
    early = int(dt.datetime.fromisoformat("2026-11-27 12:58-05:00").timestamp())
    assert fill([(early, 100.0), (early + 86400 * 3 + 9000, 101.0)]) == []


async def test_the_cycle_trace_gets_one_line_per_cycle(settings: Settings, tmp_path) -> None:
    trace = tmp_path / "trace" / "cycles.jsonl"
    sc = Sidecar(replace(settings, cycle_trace=str(trace)), handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    try:
        for _ in range(3):
            await sc.orchestrator.run_cycle()
    finally:
        await sc.close()
    records = [orjson.loads(line) for line in trace.read_bytes().splitlines()]
    assert len(records) == 3
    assert records[0]["closed"] >= 25 * len(settings.symbols) and records[1]["fetched"] == len(settings.symbols)
    assert all(r["cycle_s"] >= r["fetch"] + r["redis"] > 0 and r["symbols"] == len(settings.symbols) for r in records)
    stages = ("fetch", "parse", "build", "validate", "features", "timeframes", "redis", "sqlite_buffer", "scan")
    # each stage's time counted once: the scan's decoding, done inside the write, is the scan's
    assert all(abs(sum(r[k] for k in stages) - r["cycle_s"]) < 2e-5 and r["scan"] > 0 for r in records)


def test_a_revision_that_jumps_is_quarantined_and_one_that_does_not_is_stored(settings: Settings) -> None:
    """A bar stored while unsettled and then sent again with other values: a small change is a
    revision, a jump past the spike filter is quarantined like any spike, never stored."""
    sc, history = _warmed(settings)
    state = sc.orchestrator.states["BTCUSD"]
    state.unsettled = {history[-1].ts: history[-1]}
    now = history[-1].ts + 62.0  # fetched 2 s after the bar ended: still unsettling

    def answer(close: float) -> Bar:
        last = history[-1]
        return Bar("BTCUSD", "1m", last.ts, last.open, max(last.high, close), min(last.low, close), close, 2.0, "t")

    out = _accept(sc, [answer(150.0)], known_at=now)  # 200 ATRs away
    assert out.revised == [] and sc.metrics.by_label("sidecar_bars_rejected_total", "reason") == {"spike": 1.0}
    assert state.unsettled[history[-1].ts] == history[-1]  # the stored copy stands, asked for again
    out = _accept(sc, [answer(100.06)], known_at=now)  # a late print
    assert [b.close for b in out.revised] == [100.06] and state.last_closed_close == 100.06


@pytest.mark.parametrize("answered", [1, 50, 400])
def test_an_answer_clears_exactly_the_errors_of_the_slots_that_answered(answered: int) -> None:
    """Whichever is smaller, the slots that answered or the failed ones, an answer clears the
    errors of exactly the slots that answered and reports those that had a last error."""
    from sidecar.cycle.table import CLASSES, SymbolTable

    rng = np.random.default_rng(answered)
    table = SymbolTable({c: (0.0, 1e9) for c in CLASSES}, ["yahoo"])
    failed = set(rng.choice(500, 200, replace=False).tolist())
    erred = set(rng.choice(500, 150, replace=False).tolist())
    table.last_error = {s: "timeout" for s in failed}
    table.errors = {s: {"yahoo": "timeout"} for s in erred}
    slots = rng.choice(500, answered, replace=False)
    recovered = table.clear_errors(slots)
    heard = set(slots.tolist())
    assert sorted(recovered) == sorted(failed & heard)
    assert set(table.last_error) == failed - heard and set(table.errors) == erred - heard
