"""The local exchange answers Yahoo's chart endpoint in Yahoo's format, deterministically,
with real trading sessions unless told to stay open, and records what it served."""

from __future__ import annotations

import datetime as dt

import aiohttp
import numpy as np
import orjson
import pytest

from sidecar.clock import ManualClock
from sidecar.exchange import Exchange, Market

from .conftest import SEED


def _ts(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp())


async def _get(url: str, **params: object) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, params={k: str(v) for k, v in params.items()}) as r:
        return r.status, r.content_type, await r.read()


async def _chart(ex: Exchange, symbol: str, **params: object) -> dict:
    status, _, body = await _get(f"{ex.url}/v8/finance/chart/{symbol}", **params)
    assert status == 200, body
    return orjson.loads(body)["chart"]["result"][0]


async def _exchange_at(iso: str, *, always_open: bool = False) -> Exchange:
    ex = Exchange(Market(SEED, always_open=always_open), clock=ManualClock(start=_ts(iso)))
    await ex.start()
    return ex


async def test_chart_has_yahoo_shape_with_nulls_missing_minutes_and_the_forming_bar_last() -> None:
    ex = await _exchange_at("2026-11-24T15:30:20+00:00")  # Tuesday, NYSE open
    try:
        now = int(ex.clock.time())
        result = await _chart(ex, "AAPL", interval="1m", period1=now - 6 * 3600, period2=now + 60)
        meta, stamps = result["meta"], result["timestamp"]
        quote = result["indicators"]["quote"][0]
        assert set(quote) == {"open", "high", "low", "close", "volume"}
        assert all(len(quote[k]) == len(stamps) for k in quote)
        assert meta["symbol"] == "AAPL" and meta["dataGranularity"] == "1m"
        assert meta["regularMarketTime"] == now
        assert meta["exchangeTimezoneName"] == "America/New_York"
        assert stamps[0] == _ts("2026-11-24T14:30:00+00:00")  # the session's first minute, no pre-market
        assert stamps[-1] == now // 60 * 60  # the forming minute is served
        assert all(t % 60 == 0 for t in stamps) and stamps == sorted(stamps)
        # The forming bar holds trades up to second 20; its close is the current price.
        forming = Market(SEED).minute_bars("AAPL", np.array([stamps[-1]]), upto_second=np.array([20]))
        assert quote["close"][-1] == forming.close[0] == meta["regularMarketPrice"]
    finally:
        await ex.close()


async def test_minutes_without_trades_are_nulls_or_left_out() -> None:
    ex = await _exchange_at("2026-11-24T21:30:00+00:00")  # Tuesday after the close
    try:
        result = await _chart(ex, "AAPL", interval="1m", period1=_ts("2026-11-24T14:30:00+00:00"),
                              period2=_ts("2026-11-24T21:00:00+00:00"))
        stamps, quote = result["timestamp"], result["indicators"]["quote"][0]
        nulls = [i for i, c in enumerate(quote["close"]) if c is None]
        assert nulls and all(quote[k][i] is None for i in nulls for k in quote)
        assert len(stamps) < 390  # ... and some minutes are absent altogether
        assert stamps[0] == _ts("2026-11-24T14:30:00+00:00")
    finally:
        await ex.close()


async def test_a_halted_symbol_has_no_trades_in_its_chart_quotes_or_truth_until_the_halt_ends() -> None:
    ex = await _exchange_at("2026-11-24T15:30:20+00:00")  # Tuesday, NYSE open
    start, end = _ts("2026-11-24T15:30:00+00:00"), _ts("2026-11-24T15:33:00+00:00")
    ex.market.halt("AAPL", start, end)
    try:
        now = int(ex.clock.time())
        result = await _chart(ex, "AAPL", interval="1m", period1=now - 3600, period2=now + 60)
        traded = [t for t, c in zip(result["timestamp"], result["indicators"]["quote"][0]["close"], strict=True)
                  if c is not None]
        before = ex.truth("AAPL", start - 3600, start)  # the closed minutes before the halt
        assert traded[-1] == before.ts[-1]  # no forming bar
        quotes = ex.market.quotes(("AAPL", "MSFT"), now)
        assert quotes.time.tolist() == [before.ts[-1] + 59, now] and quotes.price[0] == before.close[-1]
        ex.clock.advance(end + 30 - now)  # type: ignore[attr-defined]
        now = int(ex.clock.time())
        assert ex.truth("AAPL", start - 3600, now).ts.tolist() == before.ts.tolist()
        result = await _chart(ex, "AAPL", interval="1m", period1=now - 3600, period2=now + 60)
        assert result["timestamp"][-1] == end and result["indicators"]["quote"][0]["close"][-1] is not None
        assert ex.market.quotes(("AAPL",), now).time.tolist() == [now]  # trading again
    finally:
        await ex.close()


async def test_served_closed_bars_are_the_truth_and_the_same_for_the_same_seed() -> None:
    a = await _exchange_at("2026-11-24T15:30:20+00:00")
    b = await _exchange_at("2026-11-24T15:30:20+00:00")
    try:
        now = int(a.clock.time())
        ra = await _chart(a, "MSFT", interval="1m", period1=now - 3600, period2=now)
        rb = await _chart(b, "MSFT", interval="1m", period1=now - 3600, period2=now)
        assert ra == rb
        truth = a.truth("MSFT", now - 3600, now)
        served = a.served["MSFT"]
        assert sorted(served) == truth.ts.tolist()
        for i, ts in enumerate(truth.ts.tolist()):
            assert served[ts] == (truth.open[i], truth.high[i], truth.low[i], truth.close[i], truth.volume[i])
    finally:
        await a.close()
        await b.close()


async def test_sessions_per_asset_class_and_the_empty_weekend_day() -> None:
    ex = await _exchange_at("2026-11-28T15:00:00+00:00")  # Saturday
    try:
        now = int(ex.clock.time())
        equity = await _chart(ex, "AAPL", interval="1m", period1=now - 3600, period2=now)
        assert "timestamp" not in equity and equity["indicators"]["quote"] == [{}]
        assert "timestamp" not in await _chart(ex, "EURUSD=X", interval="1m", period1=now - 3600, period2=now)
        crypto = await _chart(ex, "BTC-USD", interval="1m", period1=now - 3600, period2=now)
        assert len(crypto["timestamp"]) > 50
    finally:
        await ex.close()


async def test_the_close_print_follows_the_session_after_an_early_close() -> None:
    ex = await _exchange_at("2026-11-27T19:00:00+00:00")  # day after Thanksgiving: closes 13:00 New York
    try:
        close = _ts("2026-11-27T18:00:00+00:00")
        result = await _chart(ex, "AAPL", interval="1m", period1=close - 600, period2=close + 3600)
        stamps, q = result["timestamp"], result["indicators"]["quote"][0]
        assert stamps[-1] == close and q["volume"][-1] == 0
        assert q["open"][-1] == q["high"][-1] == q["low"][-1] == q["close"][-1]
        assert max(stamps[:-1]) < close
        assert result["meta"]["currentTradingPeriod"]["regular"]["end"] == close
    finally:
        await ex.close()


async def test_always_open_serves_equities_on_a_saturday() -> None:
    ex = await _exchange_at("2026-11-28T15:00:00+00:00", always_open=True)
    try:
        now = int(ex.clock.time())
        result = await _chart(ex, "AAPL", interval="1m", period1=now - 600, period2=now + 60)
        assert result["timestamp"][-1] == now // 60 * 60
    finally:
        await ex.close()


@pytest.mark.parametrize(("path", "params", "status", "code", "text"), [
    ("/v8/finance/chart/AAPL", {"interval": "7d"}, 400, "Bad Request", "interval=7d is not supported"),
    ("/v8/finance/chart/aa%20pl", {"interval": "1m"}, 404, "Not Found", "symbol may be delisted"),
    ("/v8/finance/chart/AAPL", {"interval": "1m", "range": "10d"}, 422, "Unprocessable Entity",
     "Only 7 days worth of 1m granularity"),
    ("/v8/finance/chart/AAPL", {"interval": "1m", "period1": 1_700_000_000, "period2": 1_700_086_400}, 422,
     "Unprocessable Entity", "within the last 30 days"),
])
async def test_errors_come_as_chart_error_bodies(exchange: Exchange, path: str, params: dict, status: int,
                                                 code: str, text: str) -> None:
    got, ctype, body = await _get(exchange.url + path, **params)
    assert (got, ctype) == (status, "application/json")
    err = orjson.loads(body)["chart"]
    assert err["result"] is None and err["error"]["code"] == code and text in err["error"]["description"]


async def test_injected_429_is_yahoos_plain_text(exchange: Exchange) -> None:
    exchange.inject("AAPL", "http_429")
    status, ctype, body = await _get(f"{exchange.url}/v8/finance/chart/AAPL", interval="1m", range="1d")
    assert (status, ctype, body) == (429, "text/plain", b"Too Many Requests")
    status, _, _ = await _get(f"{exchange.url}/v8/finance/chart/AAPL", interval="1m", range="1d")
    assert status == 200  # one fault, one response


async def test_admin_api_injects_faults_and_reports_what_was_served(exchange: Exchange) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{exchange.url}/_exchange/faults", json={"symbol": "AAPL", "kind": "bogus"}) as r:
            assert r.status == 400 and "unknown fault kind" in await r.text()
        async with s.post(f"{exchange.url}/_exchange/faults", json={"symbol": "AAPL", "kind": "high_below_low"}) as r:
            assert r.status == 200
        async with s.get(f"{exchange.url}/v8/finance/chart/AAPL", params={"interval": "1m", "range": "1d"}) as r:
            q = (await r.json())["chart"]["result"][0]["indicators"]["quote"][0]
        async with s.get(f"{exchange.url}/_exchange/faults") as r:
            (fault,) = await r.json()
        async with s.get(f"{exchange.url}/_exchange/served", params={"symbol": "AAPL"}) as r:
            served = {row[0] for row in (await r.json())["bars"]}
    assert fault["kind"] == "high_below_low" and fault["values"][1] < fault["values"][2]
    assert fault["ts"] not in served  # the corrupted minute is not counted as served truth
    assert min(h for h in q["high"] if h is not None) > 0


async def test_the_stats_count_the_connections_clients_opened_not_their_requests(exchange: Exchange) -> None:
    async def stats(s: aiohttp.ClientSession) -> dict:
        async with s.get(f"{exchange.url}/_exchange/stats") as r:
            return dict(await r.json())

    async with aiohttp.ClientSession() as kept:  # keep-alive: one connection for every request
        before = (await stats(kept))["connections"]
        for _ in range(3):
            async with kept.get(f"{exchange.url}/v8/finance/chart/AAPL", params={"interval": "1m", "range": "1d"}) as r:
                await r.read()
        assert (await stats(kept))["connections"] == before
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as each:  # one per request
        for _ in range(3):
            async with each.get(f"{exchange.url}/v8/finance/chart/AAPL", params={"interval": "1m", "range": "1d"}) as r:
                await r.read()
        assert (await stats(each))["connections"] == before + 4  # three, and the stats request's own


def test_the_exchange_reads_provider_names_its_own_way_and_agrees_with_the_daemon() -> None:
    """The exchange resolves Twelve Data, Polygon and Alpha Vantage names without the daemon's
    symbols module (providers.md 5), so a wrong name in the daemon would be 'not found' there."""
    from sidecar.exchange import names
    from sidecar.symbols import DEFAULT_SYMBOLS, lookup

    spelled = {("twelvedata", "EUR/USD"): "EURUSD=X", ("twelvedata", "BTC/USD"): "BTC-USD",
               ("twelvedata", "XAU/USD"): "GC=F", ("twelvedata", "NDX"): "^NDX", ("twelvedata", "AAPL"): "AAPL",
               ("polygon", "C:EURUSD"): "EURUSD=X", ("polygon", "X:BTCUSD"): "BTC-USD", ("polygon", "C:XAUUSD"): "GC=F",
               ("polygon", "I:NDX"): "^NDX", ("polygon", "BRK.B"): "BRK-B"}
    for (provider, name), yahoo in spelled.items():
        found = getattr(names, provider)(name)
        assert found is not None and found.yahoo == yahoo, (provider, name, found)
    for provider, name in (("twelvedata", "EURUSD/"), ("twelvedata", "EUR/EUR"), ("polygon", "C:BTCUSD"),
                           ("polygon", "X:EURUSD"), ("polygon", "I:NOPE"), ("polygon", "Q:AAPL")):
        assert getattr(names, provider)(name) is None, (provider, name)
    assert names.alphavantage({"function": "FX_INTRADAY", "from_symbol": "EUR", "to_symbol": "USD"}).yahoo == "EURUSD=X"
    assert names.alphavantage({"function": "CRYPTO_INTRADAY", "symbol": "BTC", "market": "USD"}).yahoo == "BTC-USD"
    for sym in DEFAULT_SYMBOLS:
        info = lookup(sym)
        assert names.twelvedata(info.twelvedata).yahoo == info.yahoo, sym
        assert names.polygon(info.polygon).yahoo == info.yahoo, sym
        if info.alphavantage is not None:
            assert names.alphavantage(info.alphavantage).yahoo == info.yahoo, sym


def test_the_exchange_starts_without_the_indicator_engine() -> None:
    """The exchange imports the settings, not the features' compiled kernel (numba costs it
    seconds of start-up and memory it never uses)."""
    import subprocess
    import sys

    code = ("import sys, sidecar.exchange.__main__; "
            "loaded = [m for m in sys.modules if m == 'numba' or m.startswith('sidecar.features.engine')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_lifecycle_start_close_and_health() -> None:
    """One lifecycle like every component's: start() listens (its URL in `url`), health() says
    so and counts what was served, close() stops listening and may be called again."""
    ex = await _exchange_at("2026-11-24T15:30:20+00:00")
    try:
        assert ex.health()["state"] == "listening" and ex.health()["url"] == ex.url
        now = int(ex.clock.time())
        await _chart(ex, "AAPL", interval="1m", period1=now - 600, period2=now + 60)
        assert ex.health()["requests"] == {"chart": 1}
    finally:
        await ex.close()
    await ex.close()
    assert ex.health()["state"] == "stopped"
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(f"{ex.url}/v8/finance/chart/AAPL")
