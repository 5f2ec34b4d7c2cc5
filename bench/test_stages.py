"""One benchmark per stage of the cycle at 5,000 symbols (pytest-benchmark), so a change that
slows a stage shows as a ratio against the last saved run before it shows in the soak:

    make bench-micro     (pytest bench --benchmark-only --benchmark-autosave --benchmark-compare)

Stages, in the cycle's order: parse (ten 500-symbol batch quote bodies), build (bar builder),
validate (the vectorized check of forming bars, the scalar check of a minute's closed bars),
features (commit of a minute's closed bars, evaluation of every forming bar), encode (feature
values to Redis values), Redis write (one script call, a real redis-server), scan (decode and
rules). Not part of CI's pass/fail: timings on a shared machine are for comparing, not asserting.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from sidecar.barbuilder import BarBuilder
from sidecar.bars import FORMING, Bar
from sidecar.clock import ManualClock
from sidecar.features.engine import FeatureConfig
from sidecar.features.service import FeatureService
from sidecar.fetchers.base import decode_json
from sidecar.fetchers.yahoo import parse_quotes
from sidecar.scanner import DEFAULT_RULES, Scanner, parse_rules
from sidecar.stores import RedisStore
from sidecar.symbols import lookup
from sidecar.validator import Validator

from .servers import redis_server

N = 5000
T0 = 1_800_000_000 // 60 * 60
RNG = np.random.default_rng(7)
INFOS = [lookup(f"S{i:04d}") for i in range(N)]
SYMBOLS = [i.symbol for i in INFOS]
PRICE = 100.0 * np.exp(np.cumsum(RNG.normal(0, 0.001, (600, N)), axis=0))  # 600 minutes of closes


def _bars(minute: int, flags: int = 0) -> list[Bar]:
    c = PRICE[minute]
    return [Bar(s, "1m", T0 + 60 * minute, c[j], c[j] * 1.001, c[j] * 0.999, c[j], 1000.0, "yahoo", flags)
            for j, s in enumerate(SYMBOLS)]


@pytest.fixture(scope="module")
def features() -> FeatureService:
    """A feature service holding every symbol, warmed from 500 minutes."""
    service = FeatureService(FeatureConfig(), timeframe="1m", clock=ManualClock(T0))
    service.book.engine.prepare()
    histories = {s: [] for s in SYMBOLS}  # type: dict[str, list[Bar]]
    for minute in range(500):
        for bar in _bars(minute):
            histories[bar.symbol].append(bar)
    service.warm(INFOS, histories)
    return service


def test_parse(benchmark) -> None:  # type: ignore[no-untyped-def]
    bodies = [orjson.dumps({"quoteResponse": {"error": None, "result": [
        {"symbol": info.yahoo, "regularMarketPrice": float(PRICE[0, j]), "regularMarketTime": T0 + 5,
         "regularMarketVolume": 1000 * j} for j, info in enumerate(INFOS[k:k + 500], start=k)]}})
        for k in range(0, N, 500)]

    def parse() -> None:
        for k, body in enumerate(bodies):
            parse_quotes(decode_json(body, "yahoo", "500 symbols"), INFOS[500 * k:500 * k + 500])

    benchmark(parse)


def test_build(benchmark) -> None:  # type: ignore[no-untyped-def]
    builder = BarBuilder(60, capacity=N)
    slots = np.arange(N)
    second = iter(range(10**9))

    def build() -> None:
        t = T0 + next(second)
        builder.update(t, slots, PRICE[(t // 60) % 600], np.full(N, t), np.full(N, 1000.0 * t))

    benchmark(build)


def test_validate_forming_arrays(benchmark) -> None:  # type: ignore[no-untyped-def]
    validator = Validator(future_tolerance_s=5)
    c = PRICE[1]
    ts = np.full(N, T0 + 60, dtype=np.int64)
    benchmark(validator.check_arrays, 60, ts, c, c * 1.001, c * 0.999, c, np.full(N, 1000.0),
              np.full(N, 1e-4), np.full(N, 1e6), T0 + 90.0)


def test_validate_closed_bars(benchmark) -> None:  # type: ignore[no-untyped-def]
    validator = Validator(future_tolerance_s=5)
    bars = _bars(1)
    benchmark(lambda: [validator.check(b, T0 + 130.0, INFOS[0].asset_class) for b in bars])


def test_features_commit_a_minute(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    minutes = iter(range(500, 600))
    benchmark.pedantic(lambda: features.update(_bars(next(minutes)), []), rounds=50, iterations=1)


def test_features_forming(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    forming = _bars(599, FORMING)
    benchmark(features.update, [], forming)


def test_encode(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    values = features.book.values(SYMBOLS)
    benchmark(features.codec.encode, ts=np.full(N, T0, dtype=np.int64), close=PRICE[0],
              provisional=np.ones(N, dtype=bool), updated=float(T0), values=values)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        yield url


def test_redis_write(benchmark, redis_url: str, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    store = RedisStore(url=redis_url, prefix="bench", max_connections=4, timeout_s=5, history_len=500)
    latest, closed = _bars(599, FORMING), _bars(598)
    rows = features.update([], latest)
    try:
        benchmark(lambda: loop.run_until_complete(store.write_cycle(latest, closed, rows)))
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def test_scan(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    rows = features.update([], _bars(599, FORMING))
    raws = [value for _, _, value in rows]
    scanner = Scanner(symbols=SYMBOLS, broker_symbols=SYMBOLS, codec=features.codec,
                      rules=parse_rules(DEFAULT_RULES, features.book.outputs), max_age_s=1e9)
    benchmark(lambda: scanner.evaluate(features.codec.decode(raws), float(T0)))
