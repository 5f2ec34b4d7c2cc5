"""The scanner against a real Redis: crafted features produce exactly the expected signals,
once per crossing; stale and missing symbols produce none and are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import orjson
import pytest

from sidecar.clock import ManualClock
from sidecar.cycle.scan import Scan
from sidecar.errors import SettingsError
from sidecar.features import OUTPUTS
from sidecar.features.codec import FeatureCodec
from sidecar.metrics import Metrics
from sidecar.scanner import DEFAULT_RULES, Scanner, parse_rules
from sidecar.stores import RedisStore
from sidecar.stores.redis_wire import TimeframeWrite

from .conftest import RedisServer

SYMBOLS = ["AAPL", "MSFT", "XAUUSD", "EURUSD"]
NOW = 1_800_000_000.0
NEUTRAL = {"rsi_14": 50.0, "macd": 0.0, "macd_signal": 0.1, "bb_upper": 110.0, "bb_lower": 90.0,
           "rvol_20": 1.0, "adx_14": 30.0}


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, prefix="t", max_connections=4, timeout_s=1.0, history_len=10, features_ttl_s=60)
    yield s
    await s.close()


class Harness:
    """Writes crafted features through the store, scans them back, publishes the signals."""

    def __init__(self, store: RedisStore, rules: str = DEFAULT_RULES) -> None:
        self.store = store
        self.codec = FeatureCodec(OUTPUTS, "1m")
        self.scanner = Scanner(symbols=SYMBOLS, broker_symbols=["AAPL.US", "MSFT.US", "GOLD", "EURUSD"],
                               codec=self.codec, rules=parse_rules(rules, OUTPUTS), max_age_s=3.0)
        self.published: list[dict] = []

    async def cycle(self, rows: dict[str, dict[str, float]], now: float = NOW, updated: dict[str, float] | None = None,
                    close: float = 100.0) -> list[tuple[str, str]]:
        values = np.full((len(OUTPUTS), len(rows)), 1.0)
        for j, fields in enumerate(rows.values()):
            for name, x in {**NEUTRAL, **fields}.items():
                if name != "close":  # the bar's close travels beside the outputs
                    values[OUTPUTS.index(name), j] = x
        writes: list[bytes] = []
        for j, sym in enumerate(rows):
            stamp = (updated or {}).get(sym, now)
            (row,) = self.codec.encode(np.array([1_799_999_940]), np.array([rows[sym].get("close", close)]),
                                       np.array([True]), stamp, values[:, j:j + 1])
            writes.append(row)
        await self.store.write_cycle("1m", features=(list(rows), writes), now=now)
        frame = self.codec.decode(await self.store.features(SYMBOLS, "1m"))
        result = self.scanner.evaluate(frame, now)
        signals = [s.as_map() for s in result.signals]
        await self.store.publish_signals(signals)
        self.published += signals
        self.last = result
        return sorted((s["symbol"], s["rule"]) for s in signals)


async def test_each_crossing_fires_once(store: RedisStore) -> None:
    h = Harness(store)
    base = {s: {} for s in SYMBOLS}
    assert await h.cycle(base) == []  # first sight only records the state
    assert await h.cycle({**base, "AAPL": {"rsi_14": 25.0}, "MSFT": {"macd": 0.2}}) == [
        ("AAPL", "rsi_oversold"), ("MSFT", "macd_cross_up")]
    assert await h.cycle({**base, "AAPL": {"rsi_14": 20.0}, "MSFT": {"macd": 0.3}}) == []  # still holds: silent
    assert await h.cycle(base) == [("MSFT", "macd_cross_down")]  # back: the opposite crossing
    assert await h.cycle({**base, "AAPL": {"rsi_14": 29.0}}) == [("AAPL", "rsi_oversold")]  # a new crossing
    assert await h.cycle({**base, "XAUUSD": {"close": 111.0}, "EURUSD": {"close": 89.0, "rvol_20": 3.0},
                          "AAPL": {"rsi_14": 71.0}}) == [
        ("AAPL", "rsi_overbought"), ("EURUSD", "bb_break_down"), ("EURUSD", "volume_spike"), ("XAUUSD", "bb_break_up")]


async def test_signals_carry_the_broker_symbol_and_reach_the_stream_and_the_channel(
        store: RedisStore, redis_server: RedisServer) -> None:
    h = Harness(store)
    pubsub = store.client.pubsub()
    await pubsub.subscribe("t:signals")
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    await h.cycle({s: {} for s in SYMBOLS})
    await h.cycle({"AAPL": {}, "MSFT": {}, "XAUUSD": {"close": 120.0}, "EURUSD": {}})
    message = None
    for _ in range(20):
        message = await pubsub.get_message(timeout=0.2)
        if message is not None:
            break
    await pubsub.aclose()
    assert message is not None
    sig = orjson.loads(message["data"])
    assert (sig["symbol"], sig["broker_symbol"], sig["rule"]) == ("XAUUSD", "GOLD", "bb_break_up")
    assert sig["close"] == 120.0 and sig["right"] == 110.0 and sig["provisional"] is True
    stream = await store.signals(0, 100)
    assert [(s["symbol"], s["rule"]) for s in stream] == [("XAUUSD", "bb_break_up")]


async def test_stale_and_missing_symbols_are_skipped_and_counted(store: RedisStore) -> None:
    h = Harness(store)
    await h.cycle({s: {} for s in SYMBOLS})
    crossed = {s: {"rsi_14": 10.0} for s in SYMBOLS[:3]}  # EURUSD not written: missing
    got = await h.cycle(crossed, updated={"MSFT": NOW - 10})  # MSFT written long ago: stale
    assert got == [("AAPL", "rsi_oversold"), ("XAUUSD", "rsi_oversold")]
    assert h.last.stale == 1 and h.last.scanned == 3
    await store.client.delete("t:{EURUSD}:features:1m", "t:{XAUUSD}:features:1m")
    await h.cycle({"AAPL": {"rsi_14": 10.0}, "MSFT": {"rsi_14": 10.0}})
    assert h.last.stale == 2


async def test_an_adx_filter_gates_a_rule(store: RedisStore) -> None:
    h = Harness(store, rules="trend_up: macd > macd_signal when adx_14 >= 25")
    await h.cycle({s: {} for s in SYMBOLS})
    got = await h.cycle({"AAPL": {"macd": 1.0, "adx_14": 20.0}, "MSFT": {"macd": 1.0, "adx_14": 30.0},
                         "XAUUSD": {}, "EURUSD": {}})
    assert got == [("MSFT", "trend_up")]
    assert await h.cycle({"AAPL": {"macd": 1.0, "adx_14": 26.0}, "MSFT": {"macd": 1.0}, "XAUUSD": {},
                          "EURUSD": {}}) == [("AAPL", "trend_up")]  # the trend arrived: the rule became true


async def test_features_still_warming_up_give_no_signal(store: RedisStore) -> None:
    h = Harness(store)
    await h.cycle({s: {"rsi_14": float("nan")} for s in SYMBOLS})
    assert await h.cycle({s: {"rsi_14": 10.0} for s in SYMBOLS}) == []  # unknown before: not a crossing


async def test_a_multi_timeframe_rule_fires_once_per_crossing_and_carries_its_timeframe(store: RedisStore) -> None:
    """`rsi_14@5m < 30 when close@1d > sma_200@1d`: the 5m condition crossing while the daily
    trend filter holds fires once, stamped with the 5m bar; nothing while it holds, nothing
    while the daily filter is off, again at the next crossing."""
    rules = parse_rules("dip: rsi_14@5m < 30 when close@1d > sma_200@1d", OUTPUTS, timeframes=("1m", "5m", "1d"))
    codecs = {tf: FeatureCodec(OUTPUTS, tf) for tf in ("5m", "1d")}
    scanner = Scanner(symbols=["AAPL"], broker_symbols=["AAPL"], codec=codecs["5m"], rules=rules, max_age_s=3.0)
    assert scanner.fields == {"5m": {"rsi_14"}, "1d": {"sma_200"}}
    bar_ts = {"5m": 1_799_999_700, "1d": 1_799_971_200}

    async def cycle(rsi_5m: float, close_1d: float, now: float) -> list[tuple[str, int]]:
        for tf, (name, x, close) in {"5m": ("rsi_14", rsi_5m, 100.0), "1d": ("sma_200", 95.0, close_1d)}.items():
            values = np.full((len(OUTPUTS), 1), np.nan)
            values[OUTPUTS.index(name), 0] = x
            rows = codecs[tf].encode(np.array([bar_ts[tf]]), np.array([close]), np.array([True]), now, values)
            await store.write_cycle(tf, features=(["AAPL"], rows), now=now)
        frames = {tf: codecs["5m"].decode(await store.features(["AAPL"], tf), fields)
                  for tf, fields in scanner.fields.items()}
        return [(s.timeframe, s.ts) for s in scanner.evaluate(frames, now).signals]

    assert await cycle(40.0, 100.0, NOW) == []  # first sight
    assert await cycle(25.0, 100.0, NOW + 1) == [("5m", bar_ts["5m"])]
    assert await cycle(20.0, 101.0, NOW + 2) == []  # still holds
    assert await cycle(35.0, 100.0, NOW + 3) == []
    assert await cycle(25.0, 90.0, NOW + 4) == []  # crossed, but the daily filter is off
    assert await cycle(26.0, 100.0, NOW + 5) == [("5m", bar_ts["5m"])]  # the filter turned on: a crossing of the whole
    assert await cycle(26.0, 100.0, NOW + 6) == []


def test_a_rule_on_a_timeframe_not_built_is_refused_naming_it() -> None:
    with pytest.raises(SettingsError, match="timeframe '4h' of 'rsi_14@4h' is not built"):
        parse_rules("x: rsi_14@4h < 30", OUTPUTS, timeframes=("1m", "5m"))
    with pytest.raises(SettingsError, match="unknown feature 'nope'"):
        parse_rules("x: nope@5m < 30", OUTPUTS, timeframes=("1m", "5m"))


async def test_an_earnings_filter_keeps_rules_out_of_a_release_and_signals_carry_the_days(store: RedisStore) -> None:
    h = Harness(store, rules="oversold_clear: rsi_14 < 30 when earnings_in_days > 2")
    h.scanner.set_earnings({"AAPL": 1, "MSFT": 5})  # XAUUSD, EURUSD: nothing scheduled
    await h.cycle({s: {} for s in SYMBOLS})
    assert await h.cycle({s: {"rsi_14": 20.0} for s in SYMBOLS}) == [
        ("EURUSD", "oversold_clear"), ("MSFT", "oversold_clear"), ("XAUUSD", "oversold_clear")]
    days = {s["symbol"]: s["earnings_in_days"] for s in h.published}
    assert days == {"MSFT": 5, "XAUUSD": None, "EURUSD": None}
    h.scanner.set_earnings({"AAPL": 3})  # AAPL's release is further out now: the gate opens
    assert await h.cycle({s: {"rsi_14": 20.0} for s in SYMBOLS}) == [("AAPL", "oversold_clear")]
    assert h.published[-1]["earnings_in_days"] == 3


def test_earnings_in_days_has_no_timeframe() -> None:
    with pytest.raises(SettingsError, match="earnings_in_days has no timeframe"):
        parse_rules("x: rsi_14 < 30 when earnings_in_days@5m > 2", OUTPUTS, timeframes=("1m", "5m"))


async def test_a_scan_evaluates_the_values_read_with_the_cycles_write_and_reads_for_itself_without_them(
        store: RedisStore) -> None:
    """The cycle's write reads each timeframe back right after its part and the scan decodes it
    there; a write that read nothing (a cluster member's) leaves the scan to read for itself,
    never from an earlier cycle's values."""
    rules = parse_rules("dip: rsi_14 < 30 when rsi_14@5m < 40", OUTPUTS, timeframes=("1m", "5m"))
    codecs = {tf: FeatureCodec(OUTPUTS, tf) for tf in ("1m", "5m")}
    scanner = Scanner(symbols=["AAPL", "MSFT"], broker_symbols=["AAPL", "MSFT"], codec=codecs["1m"], rules=rules,
                      max_age_s=3.0)
    metrics = Metrics()
    scan = Scan(scanner=scanner, redis=store, metrics=metrics, clock=ManualClock(NOW), codecs=codecs)

    def part(tf: str, rsi: float) -> TimeframeWrite:
        values = np.full((len(OUTPUTS), 2), np.nan)
        values[OUTPUTS.index("rsi_14")] = rsi
        rows = codecs[tf].encode(np.array([1_799_999_940] * 2), np.array([100.0] * 2), np.array([True] * 2), NOW,
                                 values)
        return TimeframeWrite(tf, features=(["AAPL", "MSFT"], rows))

    async def cycle(rsi_1m: float, again: float | None = None, reads: bool = True) -> float:
        later = [part("5m", 35.0), *([] if again is None else [part("1m", again)])]
        await store.write_timeframes([part("1m", rsi_1m)], NOW, then=lambda: later,
                                     reads=scan.reads() if reads else None)
        await scan.run()
        return metrics.total("sidecar_signals_total", rule="dip")

    assert await cycle(50.0) == 0  # first sight
    # read right after the 1m part: 20, a crossing, though a later part wrote 50 over it
    assert await cycle(20.0, again=50.0) == 2
    assert await cycle(50.0, reads=False) == 2  # read by the scan itself: 50, the condition is off
    assert await cycle(20.0, reads=False) == 4  # and on again
