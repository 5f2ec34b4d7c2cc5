"""One benchmark per stage of the cycle at 5,000 symbols (pytest-benchmark), so a change that
slows a stage shows as a ratio against the last saved run before it shows in the soak:

    make bench-micro     (pytest bench --benchmark-only --benchmark-autosave --benchmark-compare)

Stages, in the cycle's order: parse (ten 500-symbol batch quote bodies), build (bar builder),
validate and gate (the acceptance stage over every forming bar, and over a minute's closed bars
with the spike gate on), features (commit of a minute's closed bars, evaluation of every forming
bar), timeframes (a second's step of the five above 1m), encode (feature values, and bars, to
Redis values), the RESP of a write packed from columns, Redis write (a second's and a
minute-closing round trip, a real redis-server), scan (decode and rules). Not part of CI's
pass/fail: timings on a shared machine are for comparing, not asserting.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from sidecar.app.gauges import loop_gauges
from sidecar.barbuilder import BarBuilder
from sidecar.bars import FORMING, Bar
from sidecar.clock import ManualClock
from sidecar.cycle.acceptance import Acceptance
from sidecar.cycle.batch import Batch
from sidecar.cycle.encode import BarEncoder
from sidecar.cycle.higher import HigherTimeframes
from sidecar.cycle.table import SymbolTable
from sidecar.exchange.ledger import Ledger
from sidecar.exchange.market import Market
from sidecar.exchange.quote import BatchQuotes
from sidecar.exchange.reference import Reference
from sidecar.features.engine import FeatureConfig
from sidecar.features.service import FeatureService
from sidecar.fetchers.yahoo import parse_quote_body
from sidecar.metrics import Metrics
from sidecar.packed import NameColumn, Packed, SlotNames, resp_rows
from sidecar.scanner import DEFAULT_RULES, Scanner, parse_rules
from sidecar.stores import RedisStore, SQLiteStore
from sidecar.symbols import lookup
from sidecar.timeframes import Buckets
from sidecar.validator import Validator

from .servers import redis_server

N = 5000
T0 = 1_800_000_000 // 60 * 60
RNG = np.random.default_rng(7)
INFOS = [lookup(f"S{i:04d}") for i in range(N)]
SYMBOLS = [i.symbol for i in INFOS]
NAMES = SlotNames(NameColumn.of(SYMBOLS), np.arange(N))  # slot j = symbol j, as the table hands them out
PRICE = 100.0 * np.exp(np.cumsum(RNG.normal(0, 0.001, (600, N)), axis=0))  # 600 minutes of closes


def _bars(minute: int, flags: int = 0) -> list[Bar]:
    c = PRICE[minute]
    return [Bar(s, "1m", T0 + 60 * minute, c[j], c[j] * 1.001, c[j] * 0.999, c[j], 1000.0, "yahoo", flags)
            for j, s in enumerate(SYMBOLS)]


def _batch(minute: int, flags: int = 0) -> Batch:
    """Every symbol's bar of a minute, as the cycle carries it (slot j = symbol j)."""
    c = PRICE[minute]
    return Batch(np.arange(N), np.full(N, T0 + 60 * minute, dtype=np.int64), c, c * 1.001, c * 0.999, c,
                 np.full(N, 1000.0), np.full(N, flags, dtype=np.int64), np.zeros(N, dtype=np.int16), np.full(N, np.inf))


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


def _update(features: FeatureService, closed: Batch, forming: Batch) -> tuple[np.ndarray, Sequence[bytes]]:
    cols = features.columns(SYMBOLS, 0)
    ref_ts = np.full(N, T0 + 60 * 500, dtype=np.int64)
    return features.update_batch(closed, forming, np.zeros(0, dtype=np.int64), ref_ts, PRICE[499], cols)


@pytest.mark.parametrize("rows", ["short", "exchange"])
def test_parse(benchmark, rows: str) -> None:  # type: ignore[no-untyped-def]
    """Ten batch quotes of 500 rows: "short", each row with 17 of the fields Yahoo sends
    (providers.md 1.2); "exchange", the local exchange's answers as the soak's daemon parses
    them (its rows carry Yahoo's reference fields too, ~30 more)."""
    if rows == "exchange":
        bodies = exchange_bodies()
    else:
        bodies = [orjson.dumps({"quoteResponse": {"error": None, "result": [
            {"language": "en-US", "region": "US", "quoteType": "EQUITY", "typeDisp": "Equity", "currency": "USD",
             "exchange": "NMS", "fullExchangeName": "NasdaqGS", "exchangeTimezoneName": "America/New_York",
             "market": "us_market", "marketState": "REGULAR", "symbol": info.yahoo,
             "regularMarketPrice": float(PRICE[0, j]), "regularMarketTime": T0 + 5, "regularMarketVolume": 1000 * j,
             "priceHint": 2, "exchangeDataDelayedBy": 0, "shortName": f"{info.yahoo} Inc.",
             "longName": f"{info.yahoo} Incorporated"} for j, info in enumerate(INFOS[k:k + 500], start=k)]}})
            for k in range(0, N, 500)]
    assert len(parse_quote_body(bodies[0], INFOS[:500]).index) == 500  # every row is one asked for
    benchmark(parse_all, bodies)


def exchange_bodies() -> list[bytes]:
    """The local exchange's answers to ten 500-symbol batch quotes of all N symbols."""
    quotes = BatchQuotes(Market(always_open=True), Reference(42), Ledger())
    return [quotes.body(tuple(info.yahoo for info in INFOS[k:k + 500]), T0 + 5) for k in range(0, N, 500)]


def parse_all(bodies: Sequence[bytes]) -> None:
    """Parse ten 500-symbol batch quote bodies, as the poller does each second."""
    for k, body in enumerate(bodies):
        parse_quote_body(body, INFOS[500 * k:500 * k + 500])


def test_build(benchmark) -> None:  # type: ignore[no-untyped-def]
    builder = BarBuilder(60, capacity=N)
    slots = np.arange(N)
    second = iter(range(10**9))

    def build() -> None:
        t = T0 + next(second)
        builder.update(t, slots, PRICE[(t // 60) % 600], np.full(N, t), np.full(N, 1000.0 * t))

    benchmark(build)


def _acceptance(spike_atr: float) -> tuple[Acceptance, SymbolTable]:
    table = SymbolTable({info.asset_class: (1e-4, 1e6) for info in INFOS}, ["yahoo"], capacity=N)
    for info in INFOS:
        table.add(info, [])
    atr = np.full(N, 0.5)
    return Acceptance(table=table, validator=Validator(future_tolerance_s=5), metrics=Metrics(), step=60, settle_s=5,
                      spike_atr=spike_atr, atr=lambda slots: atr[slots]), table


def test_validate_and_gate_forming(benchmark) -> None:  # type: ignore[no-untyped-def]
    acceptance, table = _acceptance(15.0)
    batch, answered = _batch(1, FORMING), np.arange(N)
    benchmark(acceptance.run, batch, answered, T0 + 90.0)


def test_validate_and_gate_forming_after_a_catch_up(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The forming rows while a fifth of the symbols hold a closed bar that may still be revised
    (each chart answer of a catch-up leaves one, asked for again once settled)."""
    acceptance, table = _acceptance(15.0)
    for bar in _bars(0)[::5]:
        table.unsettled[table.slot_of[bar.symbol]] = {bar.ts: bar}
    batch, answered = _batch(1, FORMING), np.arange(N)
    benchmark(acceptance.run, batch, answered, T0 + 90.0)
    assert len(table.unsettled) == N // 5  # still held: the rounds all ran in that state


def test_validate_and_gate_closed_after_a_catch_up(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A minute's closed bars while a fifth of the symbols hold the minute before as unsettled."""
    acceptance, table = _acceptance(15.0)
    minutes = iter(range(1, 600))

    def setup() -> tuple[tuple[Batch, np.ndarray, float], dict[str, object]]:
        m = next(minutes)
        table.cursor[:N] = T0 + 60 * (m - 1)
        table.ref_close[:N] = PRICE[m - 1]
        table.unsettled.clear()
        for bar in _bars(m - 1)[::5]:
            table.unsettled[table.slot_of[bar.symbol]] = {bar.ts: bar}
        return (_batch(m), np.arange(N), T0 + 60 * m + 70.0), {}

    benchmark.pedantic(acceptance.run, setup=setup, rounds=100, iterations=1)


def test_validate_and_gate_closed(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A minute's closed bars: validated, through the cursor and the spike gate (the reference is
    the previous minute's close), in arrays."""
    acceptance, table = _acceptance(15.0)
    minutes = iter(range(1, 600))

    def accept() -> None:
        m = next(minutes)
        table.cursor[:N] = T0 + 60 * (m - 1)
        table.ref_close[:N] = PRICE[m - 1]
        acceptance.run(_batch(m), np.arange(N), T0 + 60 * m + 70.0)

    benchmark.pedantic(accept, rounds=100, iterations=1)


def test_features_commit_a_minute(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    minutes = iter(range(500, 600))
    empty = Batch.empty()
    benchmark.pedantic(lambda: _update(features, _batch(next(minutes)), empty), rounds=50, iterations=1)


def test_features_forming(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    benchmark(_update, features, Batch.empty(), _batch(599, FORMING))


def higher_timeframes() -> tuple[SymbolTable, HigherTimeframes]:
    """The five higher timeframes (5m to 1d, features on, each refreshing a fifth of the forming
    bars a second as the daemon's default does) over every symbol, none of them stepped yet."""
    table = _acceptance(0.0)[1]
    table.lt_ts[:] = T0  # every symbol has a newest bar (what the aggregator's forming rows build on)
    higher = HigherTimeframes(("1m", "5m", "15m", "1h", "4h", "1d"), table=table, buckets=Buckets(),
                              sqlite=None, metrics=Metrics(), clock=ManualClock(T0),  # type: ignore[arg-type]
                              features=FeatureConfig(), warmup_bars=0, forming_every=5)
    higher.reset(np.arange(N), 0)
    for lane in higher.lanes:
        assert lane.features is not None
        lane.features.warm(INFOS, {})
    return table, higher


def test_timeframes(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A second's step of the five higher timeframes, after two hours of minutes."""
    benchmark(timeframes_second())


def timeframes_second() -> Callable[[], object]:
    """The five higher timeframes after two hours of minutes, and a call that steps them
    through the next second (the seconds after, on each call)."""
    _table, higher = higher_timeframes()
    for minute in range(120):
        higher.step(_batch(minute), Batch.empty(), T0 + 60 * minute + 61.0)
    second = iter(range(10**9))

    def step() -> object:
        k = next(second)
        return higher.step(Batch.empty(), _batch(120 + k // 60, FORMING), T0 + 60 * 120 + k % 60 + 1.0)

    return step


def _values(features: FeatureService, state: str) -> np.ndarray:
    """Every symbol's values: all warm ("full"); as a higher timeframe has them, its longest
    indicators still warming up (nil) for every symbol and one more for a seventh of them
    ("warming"); as after a start without stored history, all but two nil ("cold": what the
    soak's first minutes write)."""
    values = features.book.values(SYMBOLS).copy()
    if state == "warming":
        values[-3:] = np.nan
        values[0, ::7] = np.nan
    elif state == "cold":
        values[2:] = np.nan
    return values


@pytest.mark.parametrize("state", ["full", "warming", "cold"])
def test_encode_features(benchmark, features: FeatureService, state: str) -> None:  # type: ignore[no-untyped-def]
    benchmark(features.codec.encode, ts=np.full(N, T0, dtype=np.int64), close=PRICE[0],
              provisional=np.ones(N, dtype=bool), updated=float(T0), values=_values(features, state))


@pytest.mark.parametrize("state", ["full", "warming", "cold"])
def test_decode_features(benchmark, features: FeatureService, state: str) -> None:  # type: ignore[no-untyped-def]
    raws = list(features.codec.encode(ts=np.full(N, T0, dtype=np.int64), close=PRICE[0],
                                      provisional=np.ones(N, dtype=bool), updated=float(T0),
                                      values=_values(features, state)))  # as MGET returns them
    benchmark(features.codec.decode, raws)


def test_encode_bars(benchmark) -> None:  # type: ignore[no-untyped-def]
    encoder = BarEncoder("1m")
    benchmark(encoder.encode, _batch(599, FORMING), NAMES.column, ["yahoo"])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        yield url


@pytest.mark.parametrize("fenced", [False, True], ids=["one", "member"])
@pytest.mark.parametrize("closing", [False, True], ids=["second", "minute_close"])
def test_redis_write(benchmark, redis_url: str, features: FeatureService, closing: bool,  # type: ignore[no-untyped-def]
                     fenced: bool) -> None:
    """A second's write (newest bar and features of every symbol), and a minute-closing one
    (also every symbol's closed bar into its history); by one daemon, and by a cluster member
    owning all of 64 partitions (one fenced script per partition)."""
    loop = asyncio.new_event_loop()
    store = RedisStore(url=redis_url, prefix="bench", max_connections=4, timeout_s=5, history_len=500,
                       partitions=64 if fenced else 0)
    if fenced:
        store.fence = lambda _p: 1
        loop.run_until_complete(store.client.mset({f"bench:{{p{p}}}:fence": 1 for p in range(64)}))
    encoder = BarEncoder("1m")
    latest = encoder.encode(_batch(599, FORMING), NAMES.column, ["yahoo"])
    closed = encoder.encode(_batch(598), NAMES.column, ["yahoo"])
    _slots, rows = _update(features, Batch.empty(), _batch(599, FORMING))
    history = (NAMES, np.full(N, T0 + 60 * 598), closed, np.zeros(N, dtype=np.int64)) if closing else ((), (), (), ())

    def write() -> None:
        loop.run_until_complete(store.write_cycle("1m", latest=(NAMES, latest), features=(NAMES, rows),
                                                  history=history, now=float(T0)))

    try:
        benchmark(write)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


@pytest.mark.parametrize("shapes", ["one", "many", "cycle"])
def test_resp_rows(benchmark, shapes: str) -> None:  # type: ignore[no-untyped-def]
    """The RESP of 5,000 MSET pairs packed from columns: values all 250 bytes under keys of one
    length, or of 20 shapes (values of 60-69 bytes, symbols of two lengths): the packer's cost
    per shape of row. `cycle`: the twelve MSETs of a second's write, the minute's newest bars
    and features for 5,000 symbols and five higher timeframes' for 1,000 each (the values of
    about the soak's widths, 1-3 shapes each, as the soak's MSETs have)."""
    rng = np.random.default_rng(3)
    if shapes == "cycle":
        sets = [_mset_rows(rng, n, width) for n in (N, *[N // 5] * 5) for width in (170, 370)]
        benchmark(lambda: [resp_rows(names, [b"sidecar:{"], b"}:features:1m", [values]) for names, values in sets])
        return
    symbols = SYMBOLS if shapes == "one" else [s if i % 3 else s + "=X" for i, s in enumerate(SYMBOLS)]
    width = np.full(N, 250) if shapes == "one" else rng.integers(60, 70, N)
    values = Packed.grid(rng.integers(0, 255, (N, int(width.max()))).astype(np.uint8), width)
    names = SlotNames(NameColumn.of(symbols), np.arange(N))
    benchmark(resp_rows, names, [b"sidecar:{"], b"}:features:1m", [values])


def _mset_rows(rng: np.random.Generator, n: int, width: int) -> tuple[SlotNames, Packed]:
    """`n` of the symbols (a slot each, spread over the table) and values of `width` bytes, a
    tenth of them 8 bytes shorter (a value still warming up: a nil)."""
    widths = np.where(rng.random(n) < 0.1, width - 8, width)
    values = Packed.grid(rng.integers(0, 255, (n, width)).astype(np.uint8), widths)
    return SlotNames(NameColumn.of(SYMBOLS), np.sort(rng.choice(N, n, replace=False))), values


def test_scan(benchmark, features: FeatureService) -> None:  # type: ignore[no-untyped-def]
    _slots, raws = _update(features, Batch.empty(), _batch(599, FORMING))
    scanner = Scanner(symbols=SYMBOLS, broker_symbols=SYMBOLS, codec=features.codec,
                      rules=parse_rules(DEFAULT_RULES, features.book.outputs), max_age_s=1e9)
    raws = list(raws)  # as MGET returns them
    benchmark(lambda: scanner.evaluate(features.codec.decode(raws), float(T0)))


def test_metrics_scrape(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A Prometheus scrape: the per-symbol gauges built from the table and rendered (it runs on
    the event loop, so its time is time a cycle may wait)."""
    table = SymbolTable({info.asset_class: (1e-4, 1e6) for info in INFOS}, ["yahoo"], capacity=N)
    for info in INFOS:
        table.add(info, [])
    table.lt_ts[:N], table.last_update[:N] = T0, float(T0)
    metrics = Metrics()
    metrics.at_scrape(lambda: loop_gauges(table, [], float(T0)))
    benchmark(metrics.render)


def _flush_rows(minutes: int) -> tuple[list[Bar], np.ndarray]:
    bars = [Bar(info.symbol, "1m", T0 + 60 * m, float(PRICE[m, j]), float(PRICE[m, j]) * 1.001,
                float(PRICE[m, j]) * 0.999, float(PRICE[m, j]), 1000.0, "yahoo")
            for m in range(minutes) for j, info in enumerate(INFOS)]
    return bars, np.random.default_rng(1).normal(100, 1, (len(bars), 40))


@pytest.mark.parametrize("way", ["store_flush", "executemany"])
def test_sqlite_flush(benchmark, tmp_path: Path, way: str) -> None:  # type: ignore[no-untyped-def]
    """A minute's flush at 5,000 symbols (their closed bars and the features at each, in one
    transaction), by the store; and, as its baseline, the same rows by plain `executemany`
    into the same schema in one transaction. Each round writes a new minute."""
    bars, values = _flush_rows(20)
    loop = asyncio.new_event_loop()
    store = SQLiteStore(path=tmp_path / "bench.db", synchronous="NORMAL", clock=ManualClock(float(T0)))
    loop.run_until_complete(store.start())
    minutes = iter(range(20))
    if way == "executemany":
        loop.run_until_complete(store.close())
        db = sqlite3.connect(tmp_path / "bench.db")
        db.execute("PRAGMA synchronous=NORMAL")

    def rows(m: int) -> tuple[list[Bar], np.ndarray]:
        return bars[m * N:(m + 1) * N], values[m * N:(m + 1) * N]

    def by_store() -> None:
        chunk, vals = rows(next(minutes))
        store.add(chunk)
        store.add_features("1m", [b.symbol for b in chunk], np.array([b.ts for b in chunk]), vals)
        loop.run_until_complete(store.flush())

    def by_executemany() -> None:
        chunk, vals = rows(next(minutes))
        with db:
            db.executemany("INSERT INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(b.symbol, b.timeframe, b.ts, b.open, b.high, b.low, b.close, b.volume, b.source, b.flags)
                            for b in chunk])
            db.executemany("INSERT INTO features VALUES (?, ?, ?, ?)",
                           [(b.symbol, b.timeframe, b.ts, v.astype("<f8").tobytes())
                            for b, v in zip(chunk, vals, strict=True)])

    try:
        benchmark.pedantic(by_store if way == "store_flush" else by_executemany, rounds=15, iterations=1)
    finally:
        if way == "store_flush":
            loop.run_until_complete(store.close())
        else:
            db.close()
        loop.close()
