"""Quotes mode polls every second on its own schedule: a cycle held up for seconds (Redis
stopped with SIGSTOP, so the cycle's write waits out its timeout) costs no second of samples.
The minute it happened in is still built from the quotes, equal to the truth, and no history
request is made for it. Before, the next cycle started seconds late and its poll skipped the
seconds in between, so every symbol's minute went to the history catch-up. And the quotes have
their own connections: they never wait behind the catch-up's history requests."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.clock import SystemClock
from sidecar.exchange import Exchange
from sidecar.exchange.ledger import QUOTE_ENDPOINT
from sidecar.fetchers import YahooFetcher
from sidecar.sources import GuardedSource
from sidecar.symbols import lookup

from .conftest import start_redis
from .helpers import DaemonProcess, wait_until

pytestmark = pytest.mark.e2e

SYMBOLS = ("AAPL", "MSFT", "NVDA", "EURUSD", "BTCUSD", "ETHUSD")
REDIS_TIMEOUT_S = 3.0  # a write waits this long for Redis before the cycle goes on
STOP_S = 5.0


async def test_a_cycle_held_up_for_seconds_costs_no_second_of_quotes(tmp_path: Path, exchange: Exchange) -> None:
    server = start_redis(tmp_path / "redis")
    db = tmp_path / "bars.db"
    daemon = await DaemonProcess.start(
        tmp_path, SIDECAR_REDIS_URL=server.url, SIDECAR_YAHOO_BASE_URL=exchange.url or "", SIDECAR_DB_PATH=str(db),
        SIDECAR_SYMBOLS=",".join(SYMBOLS), SIDECAR_LIVE_MODE="quotes", SIDECAR_LOOKBACK_MINUTES="5",
        SIDECAR_BOOTSTRAP_DAYS="0", SIDECAR_FLUSH_INTERVAL_S="1", SIDECAR_REDIS_TIMEOUT_S=str(REDIS_TIMEOUT_S),
        SIDECAR_REFERENCE_DATA="false")
    stopped = False
    try:
        await daemon.wait_ready()
        # The first full minute the poller sees from its start (and the second before it, the
        # volume baseline); the stop falls in its middle.
        minute = (int(time.time()) // 60 + 1) * 60
        if minute - time.time() < 3:
            minute += 60
        await wait_until(lambda: time.time() >= minute + 20, 90, "the middle of the minute", every=0.2)
        before = await daemon.health()
        asked_before = len(exchange.chart_log)
        server.process.send_signal(signal.SIGSTOP)
        stopped, t_stop = True, time.monotonic()
        await wait_until(lambda: time.monotonic() - t_stop >= STOP_S, STOP_S + 2, "Redis stopped long enough", every=0.1)
        server.process.send_signal(signal.SIGCONT)
        stopped = False

        def stored() -> dict[str, tuple]:
            with sqlite3.connect(db) as c:
                rows = c.execute("SELECT symbol, open, high, low, close, volume FROM bars WHERE timeframe='1m' "
                                 "AND ts=?", (minute,)).fetchall()
            return {r[0]: tuple(r[1:]) for r in rows}

        traded = {s for s in SYMBOLS if exchange.traded(lookup(s).yahoo, minute)}
        assert traded, "no symbol traded in the minute: pick another seed"
        await wait_until(lambda: set(stored()) >= traded and time.time() >= minute + 75, 120,
                         "the minute stored and its catch-up due", every=0.5, detail=daemon.text)
        after = await daemon.health()
        # the stop did hold a cycle up past the next second's poll (else this shows nothing)
        assert after["loop"]["overruns"] > before["loop"]["overruns"], (before["loop"], after["loop"])
        assert after["loop"]["polls_skipped"] == 0, after["loop"]
        truth = {}
        for s in traded:
            t = exchange.truth(lookup(s).yahoo, minute, minute + 60)
            truth[s] = (t.open[0], t.high[0], t.low[0], t.close[0], t.volume[0])
        assert stored() == truth
        asked = {sym for sym, start, end in exchange.chart_log[asked_before:] if start <= minute < end}
        assert not asked & {lookup(s).yahoo for s in traded}, \
            f"history asked for the held-up minute of {sorted(asked)}: its quotes were missed"
    finally:
        if stopped:
            server.process.send_signal(signal.SIGCONT)
        await daemon.stop()
        server.process.kill()
        server.process.wait()


@pytest.fixture
async def yahoo(exchange: Exchange) -> AsyncIterator[GuardedSource]:
    """Yahoo on the exchange behind its guard: a pool of 2 connections, a 5 s live timeout."""
    fetcher = YahooFetcher(base_url=exchange.url or "", user_agent="test", timeout_s=5.0, max_connections=2)
    await fetcher.start()
    yield GuardedSource.build(fetcher, clock=SystemClock())
    await fetcher.close()


async def test_a_batch_quote_never_waits_for_a_connection_behind_history_requests(
        exchange: Exchange, yahoo: GuardedSource) -> None:
    """Both connections of the pool held by history requests the exchange answers slowly (2 s):
    a batch quote is answered while they still wait (it has its own pool)."""
    errors: list[tuple[str, str]] = []
    now = int(time.time()) // 60 * 60
    held = ("AAPL", "MSFT")
    for symbol in held:
        exchange.inject(symbol, "slow")
    history = [asyncio.create_task(yahoo.fetch(lookup(s), "1m", now - 600, now, on_error=lambda *e: errors.append(e)))
               for s in held]
    await wait_until(lambda: exchange.requests["chart"] >= len(held), 5, "both history requests at the exchange")
    quotes = await yahoo.fetch_quotes([lookup("NVDA"), lookup("BTCUSD")], on_error=lambda *e: errors.append(e))
    assert quotes is not None and len(quotes) == 2, errors
    assert not any(t.done() for t in history), "the quote waited for the history requests' connections"
    assert all(r is not None and r.bars for r in await asyncio.gather(*history)), errors


async def test_a_polls_batch_quote_gives_up_at_its_deadline_not_the_live_timeout(
        exchange: Exchange, yahoo: GuardedSource) -> None:
    """A poll's answer is of use only within its second: a batch quote the exchange holds for
    2 s fails at the poll's deadline (0.5 s here), not at the 5 s live timeout, so one slow
    answer never holds the poller past the next seconds."""
    errors: list[tuple[str, str]] = []
    infos = [lookup("NVDA"), lookup("BTCUSD")]
    assert await yahoo.fetch_quotes(infos, on_error=lambda *e: errors.append(e)) is not None  # crumb and cookie
    exchange.inject(QUOTE_ENDPOINT, "slow", count=10)
    t0 = yahoo.clock.monotonic()
    quotes = await yahoo.fetch_quotes(infos, on_error=lambda *e: errors.append(e), deadline=t0 + 0.5)
    took = yahoo.clock.monotonic() - t0
    assert quotes is None and errors and errors[-1][0] == "FetchTimeout", errors
    assert took < exchange.ledger.slow_s, f"waited {took:.2f}s: for the slow answer, not the deadline"
