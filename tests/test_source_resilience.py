"""A failing or rate-limiting source, through the running daemon over real HTTP: the breaker
opens, probes once per reset timeout and closes on recovery with nothing lost; Retry-After is
honoured; a request budget is never exceeded (counted at the exchange)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import replace

import msgpack
import orjson

from sidecar.app import Sidecar
from sidecar.bars import BarFlag
from sidecar.exchange import Exchange
from sidecar.exchange.ledger import RETRY_AFTER_S
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import RedisServer
from .helpers import wait_until

SYMBOLS = ("AAPL", "MSFT", "EURUSD")


async def _running(settings: Settings, **changes: object) -> Sidecar:
    sc = Sidecar(replace(settings, symbols=SYMBOLS, cycle_interval_s=0.25, **changes), handle_signals=False)
    await sc.start()
    await wait_until(lambda: sc.orchestrator.last_cycle_at is not None, 30, "a first cycle")
    return sc


async def test_breaker_opens_probes_once_per_reset_and_closes_with_nothing_lost(
        settings: Settings, exchange: Exchange) -> None:
    sc = await _running(settings, breaker_threshold=3, breaker_reset_s=1.0, flush_interval_s=0.5)
    breaker = sc.orchestrator.guarded.breaker
    moves: list[tuple[str, int]] = []  # (new state, requests the exchange had seen at that moment)
    keep = breaker.on_transition
    breaker.on_transition = lambda old, new: (moves.append((new, exchange.requests["chart"])), keep(old, new))
    try:
        exchange.outage(5.0)
        await wait_until(lambda: breaker.state == "open", 15, "the breaker open")
        assert sc.health()["sources"]["yahoo"]["state"] == "down"
        opened = exchange.requests["chart"]
        # Inside the reset timeout nothing reaches the source: the count is the same when it half-opens.
        await wait_until(lambda: breaker.state != "open", 15, "the breaker half-open")
        assert moves[1] == ("half_open", opened)
        # probes fail until the outage ends, then close
        await wait_until(lambda: breaker.state == "closed", 30, "the breaker closed")
        states = [m[0] for m in moves]
        assert states[0] == "open" and states[-1] == "closed" and states.count("half_open") >= 2
        assert states == ["open"] + ["half_open", "open"] * (states.count("half_open") - 1) + ["half_open", "closed"]
        # between opening and closing, the only requests were the probes: one per half-open
        assert moves[-1][1] - moves[0][1] == states.count("half_open")
        async def caught_up() -> bool:  # the minutes of the outage came with the catch-up
            await sc.flusher.flush()
            with closing(sqlite3.connect(settings.db_path)) as db:
                stored = {(r[0], r[1]) for r in db.execute("SELECT symbol, ts FROM bars WHERE timeframe='1m'")}
            return {(s, ts) for s in SYMBOLS for ts in exchange.served[lookup(s).yahoo]} <= stored

        await wait_until(caught_up, 30, "every served bar stored", every=0.25)
        assert sc.metrics.total("sidecar_breaker_transitions_total", source="yahoo", to="open") >= 2
    finally:
        await sc.close()


async def test_retry_after_is_honoured(settings: Settings, exchange: Exchange) -> None:
    sc = await _running(settings)
    try:
        exchange.inject("MSFT", "http_429_retry_after")
        await wait_until(lambda: sc.orchestrator.guarded.limiter.blocked_until > 0, 15, "the source blocked")
        hit = time.time()
        await wait_until(lambda: any(t > hit + RETRY_AFTER_S - 0.1 for t in exchange.request_times), 30,
                         "requests again after Retry-After")
        quiet = [t for t in exchange.request_times if hit + 0.05 < t < hit + RETRY_AFTER_S - 0.1]
        assert quiet == []  # no request to the source while it asked us to wait
        assert any(t > hit + RETRY_AFTER_S - 0.1 for t in exchange.request_times)  # and then we are back
        assert sc.orchestrator.guarded.breaker.state == "closed"  # a 429 is not an outage
    finally:
        await sc.close()


async def test_a_request_budget_is_never_exceeded(settings: Settings, exchange: Exchange) -> None:
    sc = await _running(settings, yahoo_rate_per_min=10)
    try:
        await wait_until(lambda: exchange.requests["chart"] >= 10, 15, "the budget used")
        # Watching for absence takes a window: 12 more cycles x 3 symbols would be 36 requests.
        await wait_until(lambda: sc.metrics.total("sidecar_cycles_total") >= 12, 30, "12 cycles")
        assert exchange.requests["chart"] == 10
        assert sc.metrics.total("sidecar_fetch_skipped_total", source="yahoo", reason="rate_limit") > 0
        assert sc.health()["sources"]["yahoo"]["rate_limit"]["used_today"] == 10
    finally:
        await sc.close()


async def test_a_failing_symbol_is_flagged_stale_and_dead_lettered_until_it_recovers(
        settings: Settings, exchange: Exchange, redis_server: RedisServer) -> None:
    # MSFT has no trade from this minute on (a halt, set before anything asked for the minute):
    # back from the outage its source answers with nothing newer, and the bar it had must come
    # back without the STALE flag (it kept it until the next trade, which failed CI once).
    halted = int(time.time()) // 60 * 60
    exchange.market.halt("MSFT", halted, halted + 3600)
    sc = await _running(settings, stale_after_s=0.6, breaker_threshold=1000)
    states = sc.orchestrator.states
    try:
        exchange.outage(4.0)
        await wait_until(lambda: all(st.dead_since is not None for st in states.values()), 15, "all dead-lettered")
        with redis_server.client() as c:
            # the last good bar, still readable, marked stale; the hash written in the same cycle
            await wait_until(lambda: len(c.hgetall("sidecar:deadletter")) == len(SYMBOLS), 5, "the dead-letter hash")
            for sym in SYMBOLS:
                latest = msgpack.unpackb(c.get(f"sidecar:{{{sym}}}:bar:1m"))
                assert latest["flags"] & BarFlag.STALE
            dead = {k.decode(): orjson.loads(v) for k, v in c.hgetall("sidecar:deadletter").items()}
            before_halt = msgpack.unpackb(c.get("sidecar:{MSFT}:bar:1m"))
        assert set(dead) == set(SYMBOLS) and all("503" in d["error"] for d in dead.values())
        assert before_halt["ts"] == halted - 60
        await wait_until(lambda: all(st.dead_since is None for st in states.values()), 30, "all recovered")
        with redis_server.client() as c:
            def latest_bars() -> dict[str, dict]:
                return {sym: msgpack.unpackb(c.get(f"sidecar:{{{sym}}}:bar:1m")) for sym in SYMBOLS}

            await wait_until(lambda: c.hgetall("sidecar:deadletter") == {} and not any(
                bar["flags"] & BarFlag.STALE for bar in latest_bars().values()),
                15, "dead letters cleared and fresh bars in Redis", detail=lambda: repr(latest_bars()))
            # the halted symbol's bar is the one it had, fresh again: no bar was made up for it
            assert latest_bars()["MSFT"] == {**before_halt, "flags": before_halt["flags"] & ~BarFlag.STALE}
    finally:
        await sc.close()
