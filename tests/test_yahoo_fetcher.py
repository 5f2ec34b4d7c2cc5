"""The Yahoo fetcher over real HTTP against the local exchange."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator

import pytest

from sidecar.bars import BarFlag
from sidecar.clock import ManualClock
from sidecar.errors import FetchTimeout, MalformedResponse, ProviderError, RateLimited
from sidecar.exchange import Exchange, Market
from sidecar.fetchers import YahooFetcher
from sidecar.symbols import lookup

from .conftest import SEED


@pytest.fixture
async def fetcher(exchange: Exchange) -> AsyncIterator[YahooFetcher]:
    f = YahooFetcher(base_url=exchange.url, user_agent="test", timeout_s=1.0, max_connections=4)
    await f.start()
    yield f
    await f.close()


async def test_closed_bars_equal_the_truth_and_the_last_bar_is_forming(exchange: Exchange, fetcher: YahooFetcher) -> None:
    now = int(exchange.clock.time())
    minute = now // 60 * 60
    result = await fetcher.fetch_bars(lookup("BTCUSD"), "1m", minute - 1800, minute + 60)
    closed = [b for b in result.bars if not b.forming]
    truth = exchange.truth("BTC-USD", minute - 1800, minute)
    assert [b.ts for b in closed] == truth.ts.tolist()
    assert [(b.open, b.high, b.low, b.close, b.volume) for b in closed] == list(
        zip(truth.open.tolist(), truth.high.tolist(), truth.low.tolist(), truth.close.tolist(),
            truth.volume.tolist(), strict=True))
    assert all(b.symbol == "BTCUSD" and b.source == "yahoo" and b.timeframe == "1m" for b in result.bars)
    if int(exchange.clock.time()) // 60 * 60 == minute:  # still in the same minute, barring a race
        assert result.bars[-1].ts == minute and result.bars[-1].flags == BarFlag.FORMING


async def test_the_close_print_is_ignored_and_everything_is_closed_after_the_session() -> None:
    close = int(dt.datetime(2026, 11, 27, 18, 0, tzinfo=dt.UTC).timestamp())  # 13:00 New York early close
    ex = Exchange(Market(SEED), clock=ManualClock(start=close + 1800))
    await ex.start()
    f = YahooFetcher(base_url=ex.url, user_agent="test", timeout_s=1.0, max_connections=2)
    await f.start()
    try:
        result = await f.fetch_bars(lookup("AAPL"), "1m", close - 900, close + 3600)
    finally:
        await f.close()
        await ex.close()
    assert result.ignored == 1
    assert result.bars and max(b.ts for b in result.bars) < close
    assert not any(b.forming for b in result.bars)


async def test_a_bad_value_costs_one_bar_not_the_response(exchange: Exchange, fetcher: YahooFetcher) -> None:
    exchange.inject("AAPL", "nan_price")  # a bare NaN token: not JSON, but one bar's fault
    now = int(exchange.clock.time())
    result = await fetcher.fetch_bars(lookup("AAPL"), "1m", now - 600, now + 60)
    bad = [b for b in result.bars if math.isnan(b.close)]
    assert len(bad) == 1 and bad[0].ts == exchange.fault_log[0]["ts"]
    assert len(result.bars) > 5


@pytest.mark.parametrize(("kind", "error"), [
    ("http_429", RateLimited),
    ("http_500", ProviderError),
    ("malformed_json", MalformedResponse),
    ("slow", FetchTimeout),
])
async def test_failures_map_to_typed_errors_with_source_and_symbol(
        exchange: Exchange, fetcher: YahooFetcher, kind: str, error: type[Exception]) -> None:
    exchange.inject("MSFT", kind)
    now = int(exchange.clock.time())
    with pytest.raises(error) as err:
        await fetcher.fetch_bars(lookup("MSFT"), "1m", now - 600, now + 60)
    assert err.value.source == "yahoo" and err.value.symbol == "MSFT"  # type: ignore[attr-defined]


async def test_an_unknown_symbol_is_a_provider_error_with_yahoos_description(
        exchange: Exchange, fetcher: YahooFetcher) -> None:
    info = lookup("AAPL")
    bad = type(info)(info.symbol, info.asset_class, "BAD SYMBOL")
    with pytest.raises(ProviderError, match="symbol may be delisted") as err:
        await fetcher.fetch_bars(bad, "1m", 0, 60)
    assert err.value.status == 404


def _chart(stamps: list[int], closes: list[float], volumes: list[float], meta: dict) -> dict:
    return {"chart": {"error": None, "result": [{"meta": meta, "timestamp": stamps, "indicators": {"quote": [
        {"open": closes, "high": closes, "low": closes, "close": closes, "volume": volumes}]}}]}}


# Real bounds (providers.md 8.1): BTC-USD's regular period ends at 23:59 UTC, AAPL's at 16:00 New York.
BTC_DAY = {"start": 1711929600, "end": 1712015940}
AAPL_DAY = {"start": 1714743000, "end": 1714766400}


@pytest.mark.parametrize("meta", [
    {"regularMarketTime": 1712015945, "currentTradingPeriod": {"pre": BTC_DAY, "regular": BTC_DAY, "post": BTC_DAY}},
    {},  # the optional fields missing: the local clock (23:59:05 too) decides
], ids=["with-meta", "bare-meta"])
def test_the_23_59_bar_of_a_24_hour_market_is_forming_until_its_minute_ends(meta: dict) -> None:
    from sidecar.fetchers.yahoo import parse_chart

    payload = _chart([1712015880, 1712015940], [70001.0, 70002.0], [5.0, 0.0], meta)
    bars = parse_chart(payload, lookup("BTCUSD"), "1m", now=1712015945.0).bars
    assert [(b.ts, b.forming) for b in bars] == [(1712015880, False), (1712015940, True)]
    later = parse_chart({**payload}, lookup("BTCUSD"), "1m", now=1712016000.0)
    if not meta:  # the minute has ended on the local clock
        assert [b.forming for b in later.bars] == [False, False]


def test_the_close_print_is_ignored_and_the_last_minute_of_the_session_is_closed() -> None:
    from sidecar.fetchers.yahoo import parse_chart

    meta = {"regularMarketTime": AAPL_DAY["end"], "currentTradingPeriod": {"regular": AAPL_DAY}}
    payload = _chart([AAPL_DAY["end"] - 60, AAPL_DAY["end"]], [180.0, 180.5], [1200.0, 0.0], meta)
    result = parse_chart(payload, lookup("AAPL"), "1m", now=AAPL_DAY["end"] + 30.0)
    assert [(b.ts, b.forming) for b in result.bars] == [(AAPL_DAY["end"] - 60, False)] and result.ignored == 1
