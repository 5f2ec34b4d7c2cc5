"""Alpha Vantage, Twelve Data and Polygon fetchers over real HTTP against the exchange's
versions of those providers: bars equal the ground truth, keys are checked, and each
provider's way of saying "limit reached" becomes RateLimited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from sidecar.clock import ManualClock
from sidecar.errors import ProviderError, RateLimited
from sidecar.exchange import Exchange, Market
from sidecar.exchange.providers import Limits
from sidecar.fetchers import AlphaVantageFetcher, HttpFetcher, PolygonFetcher, TwelveDataFetcher
from sidecar.symbols import lookup

from .conftest import SEED

START = 1_795_000_000 // 60 * 60 + 25  # a Monday, 13:46 New York time
UNLIMITED = {p: Limits() for p in ("alphavantage", "twelvedata", "polygon")}


def _make(kind: str, url: str, clock: ManualClock, key: str = "local", **kw: object) -> HttpFetcher:
    cls = {"alphavantage": AlphaVantageFetcher, "twelvedata": TwelveDataFetcher, "polygon": PolygonFetcher}[kind]
    return cls(base_url=url, api_key=key, timeout_s=5.0, max_connections=4, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def market_open() -> AsyncIterator[tuple[Exchange, ManualClock]]:
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock, limits=UNLIMITED)
    await ex.start()
    yield ex, clock
    await ex.close()


@pytest.mark.parametrize("kind", ["alphavantage", "twelvedata", "polygon"])
@pytest.mark.parametrize("symbol", ["AAPL", "EURUSD", "BTCUSD"])
async def test_closed_bars_equal_the_truth(market_open, kind: str, symbol: str) -> None:
    ex, clock = market_open
    f = _make(kind, ex.url, clock, **({"page_limit": 37} if kind == "polygon" else {}))  # polygon: 3 pages
    await f.start()
    try:
        minute = START // 60 * 60
        result = await f.fetch_bars(lookup(symbol), "1m", minute - 90 * 60, minute + 60)
    finally:
        await f.close()
    closed = [b for b in result.bars if not b.forming]
    truth = ex.truth(lookup(symbol).yahoo, minute - 90 * 60, minute)
    assert [b.ts for b in closed] == truth.ts.tolist()
    assert [(b.open, b.high, b.low, b.close) for b in closed] == list(zip(
        truth.open.tolist(), truth.high.tolist(), truth.low.tolist(), truth.close.tolist(), strict=True))
    if symbol != "EURUSD":  # FX has no volume at Alpha Vantage and Twelve Data
        assert [b.volume for b in closed] == truth.volume.tolist()
    assert all(b.source == kind and b.symbol == symbol for b in result.bars)
    forming = [b for b in result.bars if b.forming]
    assert [b.ts for b in forming] == ([] if kind == "alphavantage" else [minute])  # AV serves closed bars only
    if kind == "polygon":
        assert ex.requests["polygon"] == 3


@pytest.mark.parametrize("kind", ["alphavantage", "twelvedata", "polygon"])
async def test_a_wrong_key_is_refused_and_never_logged(market_open, kind: str, caplog) -> None:
    ex, clock = market_open
    f = _make(kind, ex.url, clock, key="wrong-secret-key")
    await f.start()
    try:
        with pytest.raises(ProviderError) as caught:
            await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
    finally:
        await f.close()
    assert caught.value.status == 401
    assert "wrong-secret-key" not in str(caught.value) and "wrong-secret-key" not in caplog.text


@pytest.mark.parametrize(("kind", "limits", "calls", "message"), [
    ("alphavantage", Limits(per_day=3), 3, "daily limit"),
    ("twelvedata", Limits(per_minute=2, per_day=800), 2, "current minute"),
    ("twelvedata", Limits(per_minute=0, per_day=2), 2, "for the day"),
    ("polygon", Limits(per_minute=2), 2, "maximum requests per minute"),
])
async def test_each_providers_limit_signal_becomes_rate_limited(kind: str, limits: Limits, calls: int,
                                                                message: str) -> None:
    clock = ManualClock(start=START)
    ex = Exchange(Market(SEED, always_open=True), clock=clock, limits={kind: limits})
    await ex.start()
    f = _make(kind, ex.url, clock)
    await f.start()
    try:
        for _ in range(calls):
            await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
        with pytest.raises(RateLimited) as caught:
            await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
    finally:
        await f.close()
        await ex.close()
    assert message in str(caught.value)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert ex.providers.refused[kind] == 1 and ex.providers.used(kind, "local", START)[1] == calls


async def test_twelve_data_errors_with_a_real_http_status_too(market_open) -> None:
    """Twelve Data sends its error bodies with HTTP 200 or with the code as the status: the body decides."""
    import aiohttp

    ex, clock = market_open
    ex.providers.td_error_status = "code"
    ex.providers.limits["twelvedata"] = Limits(per_minute=1)
    f = _make("twelvedata", ex.url, clock)
    await f.start()
    try:
        await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
        with pytest.raises(RateLimited) as caught:
            await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"{ex.url}/time_series", params={"symbol": "AAPL", "interval": "1min",
                                                                  "apikey": "local"}) as resp:
                assert resp.status == 429 and (await resp.json())["code"] == 429
    finally:
        await f.close()
    assert 0 < caught.value.retry_after <= 60


@pytest.mark.parametrize("kind", ["alphavantage", "twelvedata", "polygon"])
@pytest.mark.parametrize("fault", ["duplicate", "out_of_order", "high_below_low", "nan_price"])
async def test_bar_faults_arrive_as_bars_the_validator_or_the_parser_handles(market_open, kind: str,
                                                                             fault: str) -> None:
    from sidecar.validator import Validator

    ex, clock = market_open
    ex.inject(f"{kind}:AAPL", fault)
    f = _make(kind, ex.url, clock)
    await f.start()
    try:
        minute = START // 60 * 60
        result = await f.fetch_bars(lookup("AAPL"), "1m", minute - 30 * 60, minute)
    finally:
        await f.close()
    ts = [b.ts for b in result.bars]
    assert ts == sorted(set(ts))  # duplicates and out-of-order rows come out once each, in order
    bad = [b for b in result.bars if Validator(future_tolerance_s=5).check(b, clock.time()) is not None]
    assert len(bad) == (1 if fault in ("high_below_low", "nan_price") else 0)
    truth = ex.truth("AAPL", minute - 30 * 60, minute)
    good = {b.ts: (b.open, b.high, b.low, b.close) for b in result.bars if b not in bad}
    assert all(good[t] == (o, h, lo, c) for t, o, h, lo, c in zip(truth.ts.tolist(), truth.open.tolist(),
               truth.high.tolist(), truth.low.tolist(), truth.close.tolist(), strict=True) if t in good)


@pytest.mark.parametrize("kind", ["twelvedata", "polygon"])
async def test_batch_quotes_match_the_market_and_cost_what_the_provider_charges(market_open, kind: str) -> None:
    ex, clock = market_open
    f = _make(kind, ex.url, clock)
    infos = [lookup(s) for s in ("AAPL", "EURUSD", "BTCUSD", "NAS100", "MSFT")]
    await f.start()
    try:
        batch = await f.fetch_quotes(infos)
    finally:
        await f.close()
    served = sorted(batch.index.tolist())
    # Polygon's snapshot covers stocks, forex and crypto (indices have their own API); Twelve Data all
    assert served == ([0, 1, 2, 4] if kind == "polygon" else [0, 1, 2, 3, 4])
    truth = ex.market.quotes(tuple(infos[i].yahoo for i in served), int(clock.time()))
    order = np.argsort(batch.index)
    assert batch.price[order].tolist() == truth.price.tolist()
    assert batch.time[order].tolist() == truth.time.tolist()
    if kind == "polygon":
        assert batch.day_volume[order].tolist() == truth.day_volume.tolist()
    cost = f.quote_cost(infos)
    assert cost == (3 if kind == "polygon" else 5)  # requests per market / credits per symbol
    assert ex.providers.used(kind, "local", clock.time())[0] == cost


@pytest.mark.parametrize("kind", ["alphavantage", "twelvedata", "polygon"])
async def test_a_garbled_body_is_a_malformed_response(market_open, kind: str) -> None:
    from sidecar.errors import MalformedResponse

    ex, clock = market_open
    ex.inject(f"@{kind}", "malformed_json")
    f = _make(kind, ex.url, clock)
    await f.start()
    try:
        with pytest.raises(MalformedResponse):
            await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)
        again = await f.fetch_bars(lookup("AAPL"), "1m", START - 600, START)  # the next answer is whole
    finally:
        await f.close()
    assert len(again.bars) >= 5  # ten minutes, a few of them without trades
