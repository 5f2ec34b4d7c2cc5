"""The local exchange's cost per batch quote answer (500 symbols), beside the way it was built
before (a dict per symbol, serialised whole), written out here as the baseline:

    .venv/bin/python -m pytest bench/test_exchange.py --benchmark-only

The exchange shares the benchmark machine with the daemons it serves, so what it spends per
answer is taken from them (in the 2 x 10,000 cluster bench it answers 40 of these a second).
Both ways must produce the same results; the benchmark checks that first.
"""

from __future__ import annotations

import time

import orjson
import pytest

from sidecar.exchange import chart
from sidecar.exchange.market import Market
from sidecar.exchange.server import Exchange

from .quotes import universe

BATCH = tuple(universe(500))
NOW = int(time.time()) // 60 * 60 + 30
_MARKETS = {"EQUITY": "us_market", "INDEX": "us_market", "CURRENCY": "ccy_market", "CRYPTOCURRENCY": "ccc_market",
            "FUTURE": "us24_market"}


def _dict_body(ex: Exchange, symbols: tuple[str, ...], now: int) -> bytes:
    """The baseline: one dict per symbol, the whole answer serialised by orjson."""
    q = ex.market.quotes(symbols, now)
    result = []
    for i, symbol in enumerate(symbols):
        profile = ex.market.profile(symbol)
        exchange, full_name, quote_type, tz_name = chart.META_BY_CLASS[profile.asset_class]
        result.append({"language": "en-US", "region": "US", "quoteType": quote_type, "currency": "USD",
                       "exchange": exchange, "fullExchangeName": full_name, "exchangeTimezoneName": tz_name,
                       "market": _MARKETS[quote_type], "marketState": "REGULAR" if q.time[i] > now - 60 else "CLOSED",
                       "regularMarketPrice": float(q.price[i]), "regularMarketTime": int(q.time[i]),
                       "regularMarketVolume": int(q.day_volume[i]), "priceHint": profile.decimals, "symbol": symbol,
                       **ex.reference.yahoo_quote(symbol)})
    return orjson.dumps({"quoteResponse": {"result": result, "error": None}})


@pytest.fixture(scope="module")
def exchange() -> Exchange:
    ex = Exchange(Market(7, always_open=True))
    assert orjson.loads(ex.quotes.body(BATCH, NOW)) == orjson.loads(_dict_body(ex, BATCH, NOW))
    return ex


@pytest.mark.parametrize("way", ["columns", "dict_per_symbol"])
def test_quote_answer(benchmark, exchange: Exchange, way: str) -> None:  # type: ignore[no-untyped-def]
    body = exchange.quotes.body if way == "columns" else lambda s, t: _dict_body(exchange, s, t)
    out = benchmark(body, BATCH, NOW)
    assert len(orjson.loads(out)["quoteResponse"]["result"]) == len(BATCH)
