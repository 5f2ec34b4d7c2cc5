"""Yahoo's batch quote over real HTTP (cookie, crumb, faults) and the bar builder against the
exchange's ground truth, on a virtual clock so that minutes pass in milliseconds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from sidecar.barbuilder import BarBuilder, BuildResult
from sidecar.clock import ManualClock
from sidecar.errors import RateLimited
from sidecar.exchange import Exchange, Market
from sidecar.exchange.ledger import QUOTE_ENDPOINT
from sidecar.fetchers import YahooFetcher
from sidecar.symbols import lookup

from .conftest import SEED

SYMBOLS = ["AAPL", "EURUSD", "BTCUSD", "MSFT", "XAUUSD"]
START = 1_795_000_000 // 60 * 60 + 30  # a Monday afternoon in UTC; the market is open around the clock below


@pytest.fixture
async def manual() -> AsyncIterator[tuple[Exchange, YahooFetcher, ManualClock]]:
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock)
    await ex.start()
    f = YahooFetcher(base_url=ex.url, user_agent="test", timeout_s=2.0, max_connections=4)
    await f.start()
    yield ex, f, clock
    await f.close()
    await ex.close()


async def _poll(f: YahooFetcher, builder: BarBuilder, label: int, infos: list) -> BuildResult:
    batch = await f.fetch_quotes(infos)
    return builder.update(label, batch.index, batch.price, batch.time, batch.day_volume)


async def test_quotes_need_cookie_and_crumb_and_match_the_market(exchange: Exchange) -> None:
    f = YahooFetcher(base_url=exchange.url, user_agent="test", timeout_s=2.0, max_connections=2)
    await f.start()
    try:
        infos = [lookup(s) for s in SYMBOLS]
        batch = await f.fetch_quotes([*infos, lookup("NOSUCH.X")])
        # without the cookie and crumb Yahoo says 401 Invalid Crumb
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"{exchange.url}/v7/finance/quote", params={"symbols": "AAPL"}) as resp:
                assert resp.status == 401 and "Invalid Crumb" in await resp.text()
        assert sorted(batch.index.tolist()) == [0, 1, 2, 3, 4, 5]  # NOSUCH.X is served like any ticker
        market = exchange.market
        for row, i in enumerate(batch.index.tolist()[:5]):
            truth = market.quotes((infos[i].yahoo,), int(batch.time[row]))
            assert batch.price[row] == truth.price[0] and batch.day_volume[row] == truth.day_volume[0]
        await f.fetch_quotes(infos)
        assert exchange.requests["getcrumb"] == 1  # the crumb is reused

        exchange.inject(QUOTE_ENDPOINT, "invalid_crumb")  # e.g. the crumb expired
        again = await f.fetch_quotes(infos)
        assert len(again) == 5 and exchange.requests["getcrumb"] == 2

        exchange.inject(QUOTE_ENDPOINT, "http_429_retry_after")
        with pytest.raises(RateLimited) as caught:
            await f.fetch_quotes(infos)
        assert caught.value.retry_after == 2
    finally:
        await f.close()


async def test_bars_built_from_quotes_every_second_equal_the_truth(manual) -> None:
    ex, f, clock = manual
    infos = [lookup(s) for s in SYMBOLS]
    builder = BarBuilder()
    closed: list[tuple[int, int, float, float, float, float, float, bool]] = []
    forming_seen = 0
    for _ in range(4 * 60):
        label = int(clock.time())
        out = await _poll(f, builder, label, infos)
        c = out.closed
        closed += zip(c.slot.tolist(), c.ts.tolist(), c.open.tolist(), c.high.tolist(), c.low.tolist(),
                      c.close.tolist(), c.volume.tolist(), c.complete.tolist(), strict=True)
        forming_seen += len(out.forming)
        clock.advance(1)
    first_full = START // 60 * 60 + 60  # the poller joined half-way through the first minute
    complete = [b for b in closed if b[7]]
    assert {b[1] for b in closed if not b[7]} == {START // 60 * 60}  # only the joined-late minute
    assert forming_seen >= 4 * 60 * 4  # a forming bar each second for (nearly) every symbol
    for slot, info in enumerate(infos):
        truth = ex.truth(info.yahoo, first_full, first_full + 180)
        mine = [b for b in complete if b[0] == slot]
        assert [b[1] for b in mine] == truth.ts.tolist(), info.symbol
        assert [b[2:7] for b in mine] == list(zip(truth.open.tolist(), truth.high.tolist(), truth.low.tolist(),
                                                   truth.close.tolist(), truth.volume.tolist(), strict=True))


@pytest.mark.parametrize("fault", ["missed_poll", "stale", "nan_price", "negative_price"])
async def test_a_minute_with_a_gap_in_its_samples_is_not_complete(manual, fault: str) -> None:
    ex, f, clock = manual
    infos = [lookup("AAPL"), lookup("EURUSD")]
    builder = BarBuilder()
    clock.advance(60 - START % 60)  # to a whole minute
    target = int(clock.time()) + 60  # the second minute polled is hit by the fault at its 20th second
    complete: dict[tuple[int, int], bool] = {}
    rejected = 0
    for _ in range(3 * 60 + 1):
        label = int(clock.time())
        if label == target + 20:
            if fault == "missed_poll":
                clock.advance(1)
                continue
            ex.inject("AAPL", fault, count=3 if fault == "stale" else 1)
        out = await _poll(f, builder, label, infos)
        rejected += int((out.rejected == 0).sum())
        complete.update({(s, t): c for s, t, c in zip(out.closed.slot.tolist(), out.closed.ts.tolist(),
                                                      out.closed.complete.tolist(), strict=True)})
        clock.advance(1)
    assert complete[(0, target)] is False  # AAPL's faulted minute must come from history
    assert complete[(1, target)] is (fault != "missed_poll")  # a fault of one symbol leaves the others alone
    assert complete[(0, target + 60)] is True  # the next minute is fine again
    assert rejected == (1 if fault in ("nan_price", "negative_price") else 0)
    # why, as the trace counts it: a second not sampled (both symbols' first minute, which lacks
    # the second before it; a missed poll; a rejected quote), or a sample without its own trade
    unsampled, late = {"missed_poll": (4, 0), "stale": (2, 1)}.get(fault, (3, 0))
    assert builder.incomplete.tolist() == [unsampled, late]


def test_day_roll_over_starts_volume_from_zero() -> None:
    b = BarBuilder()
    day = 1_795_000_000 // 86400 * 86400 + 86400
    slots = np.array([0])
    labels = list(range(day - 120, day + 61))
    volume = 0.0
    out = None
    bars = []
    for t in labels:
        volume = volume + 10 if t < day else (t - day + 1) * 5.0  # the day volume resets at midnight
        out = b.update(t, slots, np.array([100.0 + (t % 7)]), np.array([t]), np.array([volume]))
        bars += list(zip(out.closed.ts.tolist(), out.closed.volume.tolist(), out.closed.complete.tolist(), strict=True))
    assert (day - 60, 600.0, True) in bars
    assert (day, 300.0, True) in bars  # 60 seconds x 5 after the reset, not (300 - 1200)


@pytest.mark.parametrize("fall_at", [60, 90])  # as the 2nd minute starts, and half-way through it
def test_a_day_volume_falling_within_the_day_leaves_its_minute_to_history(fall_at: int) -> None:
    """A source's day volume that falls within the day (a correction) is no roll-over: the
    minute it falls in is incomplete (its baseline is from before the fall), not a complete bar
    of the whole day's volume; the next minute, measured from after the fall, is complete. The
    forming bar stays valid through the fall: its volume never goes negative or backwards."""
    b = BarBuilder()
    day = 1_795_000_000 // 86400 * 86400 + 86400
    start = day + 3600  # an hour into the day
    slots = np.array([0])
    bars = {}
    forming: dict[int, list[float]] = {}
    for t in range(start - 61, start + 181):
        volume = 1000.0 + 10 * (t - start) - (500 if t >= start + fall_at else 0)
        out = b.update(t, slots, np.array([100.0 + (t % 7)]), np.array([t]), np.array([volume]))
        bars.update(zip(out.closed.ts.tolist(), zip(out.closed.volume.tolist(), out.closed.complete.tolist(), strict=True),
                        strict=True))
        for ts, v in zip(out.forming.ts.tolist(), out.forming.volume.tolist(), strict=True):
            forming.setdefault(ts, []).append(v)
    assert bars[start] == (600.0, True)
    assert bars[start + 60][1] is False  # with the fall read as a roll-over: complete, the day's volume
    assert bars[start + 120] == (600.0, True)
    assert forming[start + 120] == [10.0 * (i + 1) for i in range(60)]
    # the fall's minute: the fall's own second adds nothing (its trade is inside the fall), every
    # other second 10; with the baseline from before the fall it went to -490 and stayed negative
    fallen = forming[start + 60]
    assert len(fallen) == 60 and fallen[-1] == 590.0
    assert all(v >= 0 for v in fallen) and all(b >= a for a, b in zip(fallen, fallen[1:], strict=False))


async def test_bars_built_from_the_quotes_of_a_split_stock_equal_the_truth(manual) -> None:
    """KO split 2:1 (seeded): the quotes' day volume moves by the split-adjusted minute volumes,
    as the bars do, so built bars are complete and equal the truth, volume included."""
    ex, f, clock = manual
    assert ex.market.splits("KO")
    builder = BarBuilder()
    clock.advance(60 - START % 60)
    got = []
    for _ in range(3 * 60 + 1):
        out = await _poll(f, builder, int(clock.time()), [lookup("KO")])
        c = out.closed
        got += [(t, v) for t, v, ok in zip(c.ts.tolist(), c.volume.tolist(), c.complete.tolist(), strict=True) if ok]
        clock.advance(1)
    first = START // 60 * 60 + 120  # the first minute sampled from the second before it
    truth = ex.truth("KO", first, first + 120)
    assert got == list(zip(truth.ts.tolist(), truth.volume.tolist(), strict=True))


@pytest.fixture
async def quotes_app(tmp_path, redis_url: str, manual, request) -> AsyncIterator[tuple]:
    """A daemon in quotes mode whose cycles the test drives on the exchange's virtual clock."""
    from dataclasses import replace

    from sidecar.app import Sidecar
    from sidecar.settings import Settings

    ex, _f, clock = manual
    settings = replace(Settings(), redis_url=redis_url, yahoo_base_url=ex.url, db_path=tmp_path / "q.db",
                       http_port=0, lookback_minutes=10, bootstrap_days=0.0, live_mode="quotes", quote_batch=2,
                       symbols=tuple(SYMBOLS), spike_atr=0.0, catchup_per_cycle=getattr(request, "param", 200))
    sc = Sidecar(settings, clock=clock, handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    yield sc, ex, clock, settings
    await sc.close()  # the daemon's own order: background tasks stop before the stores close


async def _run_minutes(sc, clock: ManualClock, seconds: int, each=None) -> None:
    for _ in range(seconds):
        if each is not None:
            each(int(clock.time()))
        await sc.orchestrator.run_cycle()
        clock.advance(1)


async def test_quotes_mode_stores_exactly_the_truth_with_few_history_requests(quotes_app, redis_server) -> None:
    import sqlite3

    import msgpack

    sc, ex, clock, settings = quotes_app
    begin = int(clock.time())
    faults = {begin + 100: ("AAPL", "stale"), begin + 130: ("BTC-USD", "nan_price"), begin + 170: ("MSFT", "negative_price")}
    await _run_minutes(sc, clock, 5 * 60, each=lambda t: faults.get(t) and ex.inject(faults[t][0], faults[t][1],
                                                                                       count=2))
    await sc.sqlite.flush()
    now = int(clock.time())
    with sqlite3.connect(settings.db_path) as db:
        rows = db.execute("SELECT symbol, ts, open, high, low, close, volume FROM bars WHERE timeframe='1m'").fetchall()
    stored = {(r[0], r[1]): r[2:] for r in rows}
    truth = {}
    for sym in SYMBOLS:
        t = ex.truth(lookup(sym).yahoo, begin // 60 * 60 - 600, now // 60 * 60)
        truth.update({(sym, ts): v for ts, *v in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(),
                                                      t.close.tolist(), t.volume.tolist(), strict=True)})
    assert stored == {k: tuple(v) for k, v in truth.items()}  # nothing missing, nothing extra, every value equal
    # 6 faulted symbol-minutes, the first minute of each symbol and minutes without trades came from
    # history; everything else from the quotes: 300 cycles x 3 chunk requests
    assert ex.requests["quote"] == 300 * 3
    assert ex.requests["chart"] <= 5 + 6 + 10, ex.requests
    assert sc.metrics.by_label("sidecar_bars_rejected_total", "reason").get("bad_quote") == 4.0
    stages = sc.orchestrator.stages  # the quote path's own stages (all 0 on this virtual clock; bench/ times them)
    assert {"fetch", "parse", "build", "validate", "features", "redis", "scan"} <= set(stages)
    assert all(v >= 0 for v in stages.values()), stages
    with redis_server.client() as c:
        for sym in SYMBOLS:
            latest = msgpack.unpackb(c.get(f"sidecar:{{{sym}}}:bar:1m"))
            assert latest["ts"] >= now // 60 * 60 - 60 and latest["source"] == "yahoo"


@pytest.mark.parametrize("quotes_app", [1], indirect=True)
async def test_symbols_waiting_for_their_catch_up_keep_their_lookback(quotes_app) -> None:
    """One history request per cycle: the others show forming bars from quotes meanwhile, and
    their first history window still starts at the lookback, not at the source's oldest bar."""
    sc, ex, clock, settings = quotes_app
    begin = int(clock.time())
    await _run_minutes(sc, clock, 20)
    assert all(st.synced_until is not None for st in sc.orchestrator.states.values())
    assert ex.requests["chart"] == len(SYMBOLS)  # one each, one per cycle
    assert all(end - start <= (settings.lookback_minutes + 1) * 60 for _sym, start, end in ex.chart_log)
    assert all(start >= begin // 60 * 60 - settings.lookback_minutes * 60 for _sym, start, _end in ex.chart_log)


@pytest.mark.parametrize("quotes_app", [4], indirect=True)
async def test_a_cycle_that_overran_halves_the_catch_up_and_cycles_with_room_grow_it_back(quotes_app) -> None:
    """The catch-up's allowance follows the cycles (AIMD): after an overrun the next cycle asks
    for half of it, and each cycle that left room adds a tenth of the maximum (at least one)."""
    sc, ex, clock, settings = quotes_app
    orch = sc.orchestrator
    orch.sourcing.pace(1.5 * orch.period, orch.period)  # what the cycle's report does after an overrun
    await orch.run_cycle()  # all five symbols lag at the start
    assert ex.requests["chart"] == 2  # half of 4
    clock.advance(1)
    await orch.run_cycle()  # the manual clock makes the last cycle take no time: room, so 2 + 1
    assert ex.requests["chart"] == 2 + 3
    for _ in range(3):
        clock.advance(1)
        await orch.run_cycle()
    assert orch.sourcing.catch_up.allowance == 4  # back at the maximum, never above it


async def test_a_failed_batch_quote_is_logged_once_per_request_not_once_per_symbol(quotes_app, caplog) -> None:
    """A batch quote that fails writes one line, not one for each of its symbols (at 10,000
    symbols a second's failed polls wrote 9,000 equal lines, from the event loop), and only when
    its symbols start failing: the next failed second of the outage writes none."""
    import logging

    sc, ex, clock, settings = quotes_app
    orch = sc.orchestrator
    await orch.run_cycle()
    clock.advance(1)
    chunks = -(-len(SYMBOLS) // settings.quote_batch)  # 3 requests of at most 2 symbols
    ex.inject(QUOTE_ENDPOINT, "http_500", count=2 * chunks * settings.fetch_retries)  # every try of two polls
    with caplog.at_level(logging.WARNING, logger="sidecar.cycle.sourcing"):
        await orch.run_cycle()
        clock.advance(1)
        failed_first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fetch failed")]
        await orch.run_cycle()
        clock.advance(1)
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fetch failed")]
    assert len(failed_first) == chunks, failed_first
    assert failed == failed_first  # the outage's second failed second: nothing new to say


@pytest.mark.parametrize("quotes_app", [4], indirect=True)
async def test_a_failed_batch_quote_halves_the_catch_up_like_an_overrun(quotes_app) -> None:
    """Live before history: a batch quote that got no answer (the source struggling) halves the
    next cycle's history allowance, however quick the cycle was."""
    sc, ex, clock, settings = quotes_app
    orch = sc.orchestrator
    for _ in range(3):  # quick cycles: the allowance stays at its maximum
        await orch.run_cycle()
        clock.advance(1)
    assert orch.sourcing.catch_up.allowance == 4
    chunks = -(-len(SYMBOLS) // settings.quote_batch)
    ex.inject(QUOTE_ENDPOINT, "http_500", count=chunks * settings.fetch_retries)  # every try of the next poll
    await orch.run_cycle()
    assert sc.metrics.by_label("sidecar_fetch_errors_total", "reason").get("ProviderError", 0) >= chunks
    assert orch.sourcing.catch_up.allowance == 2


def _answered(ex: Exchange, yahoo: str) -> int:
    """Chart requests for a symbol the exchange answered (it logs a request when it answers)."""
    return [sym for sym, _start, _end in ex.chart_log].count(yahoo)


async def _cycle(orch, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    """One second of the loop on the virtual clock: the poll first when a poller is taken to run."""
    if orch.sourcing.background:  # as the loop's poller would have
        await orch.sourcing.poll(clock.time())
    await orch.run_cycle()
    clock.advance(1)


async def test_a_slow_catch_up_answer_does_not_hold_the_cycle_and_is_taken_by_a_later_one(quotes_app) -> None:
    """With a poller running, a cycle waits for its catch-up answers only a fiftieth of a period:
    a slow answer is taken by the first cycle after it came, and its symbol is not asked for again
    while its request is in flight."""
    from .helpers import wait_until

    sc, ex, clock, settings = quotes_app
    orch, t = sc.orchestrator, sc.orchestrator.table
    aapl = t.slot_of["AAPL"]

    def asked() -> int:
        return _answered(ex, "AAPL")

    def cycle():  # type: ignore[no-untyped-def]
        return _cycle(orch, clock)

    await cycle()  # every symbol caught up, waited for (and the indicator kernels compiled)
    orch.sourcing.background = True
    while int(clock.time()) % 60:  # the rest of a minute the bar builder joined half-way
        await cycle()
    before, current = asked(), int(clock.time())
    ex.ledger.slow_s = 0.4  # real seconds: 20 times the cycle's wait, within the fetch timeout (0.8 s)
    ex.inject("AAPL", "slow")
    await cycle()  # the minute-closing cycle asks for AAPL's minute and does not wait for the answer
    assert int(t.synced_until[aapl]) < current and asked() == before
    await cycle()  # nor does the next (AAPL is not asked for again: see the count below)
    await wait_until(lambda: asked() == before + 1, 10, "AAPL's slow answer")
    await cycle()
    assert int(t.synced_until[aapl]) == current and int(t.cursor[aapl]) == current - 60, (t.cursor[aapl], current)
    assert asked() == before + 1
    orch.sourcing.stop_background()


async def test_a_higher_timeframe_bar_waits_for_its_last_minute_from_the_catch_up(quotes_app) -> None:
    """A 5-minute bucket whose last minute is still to come from the catch-up (asked at the close,
    answered after the cycle) is held, not closed without it and revised a second later: the
    stored bar equals the exchange's minutes aggregated, and no revision is counted."""
    import sqlite3

    from .helpers import wait_until

    sc, ex, clock, settings = quotes_app
    orch = sc.orchestrator

    def asked() -> int:
        return _answered(ex, "AAPL")

    def cycle():  # type: ignore[no-untyped-def]
        return _cycle(orch, clock)

    await cycle()  # every symbol caught up, waited for
    orch.sourcing.background = True
    while int(clock.time()) % 300 != 270:
        await cycle()
    ex.inject("AAPL", "nan_price", count=2)  # the bucket's last minute of AAPL: not vouched for by the quotes
    while int(clock.time()) % 300:
        await cycle()
    end, before = int(clock.time()), asked()
    ex.ledger.slow_s = 0.4
    ex.inject("AAPL", "slow")
    await cycle()  # the close: AAPL's last minute asked for, not waited for
    await wait_until(lambda: asked() > before, 10, "AAPL's slow answer")
    for _ in range(3):
        await cycle()
    await sc.sqlite.flush()
    with sqlite3.connect(settings.db_path) as db:
        stored = db.execute("SELECT open, high, low, close, volume FROM bars WHERE symbol='AAPL' AND timeframe='5m'"
                            " AND ts=?", (end - 300,)).fetchone()
    m = ex.truth("AAPL", end - 300, end)
    assert len(m.ts) and m.ts[-1] == end - 60  # (its last minute traded)
    assert stored == (m.open[0], m.high.max(), m.low.min(), m.close[-1], m.volume.sum())
    assert sc.metrics.by_label("sidecar_timeframe_revisions_total", "timeframe").get("5m", 0) == 0
    orch.sourcing.stop_background()
