"""The Redis store against a real redis-server: key layout, msgpack maps, range reads,
capping, idempotent re-sends, and a clear error when Redis is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import msgpack
import numpy as np
import pytest
import redis

from sidecar.bars import Bar, BarFlag
from sidecar.errors import RedisStoreError
from sidecar.packed import NameColumn, SlotNames
from sidecar.stores import RedisStore
from sidecar.stores.redis_wire import FeatureReads, TimeframeWrite, pack

from .conftest import RedisServer

T0 = 1_800_000_000 // 60 * 60


def _bar(i: int, symbol: str = "AAPL", **changes: object) -> Bar:
    return replace(Bar(symbol, "1m", T0 + 60 * i, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i, 100.0 * i, "yahoo"), **changes)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, prefix="t", max_connections=4, timeout_s=0.5, history_len=50)
    await s.start()
    try:
        assert s.health() == {"state": "ok", "last_error": None}
        yield s
    finally:
        await s.close()


async def test_latest_and_history_are_msgpack_maps_under_documented_keys(
        store: RedisStore, redis_server: RedisServer) -> None:
    closed = [_bar(i) for i in range(3)]
    forming = _bar(3, flags=BarFlag.FORMING)
    await store.write_bars([forming], closed)
    with redis_server.client() as c:
        raw_latest = msgpack.unpackb(c.get("t:{AAPL}:bar:1m"))
        members = c.zrange("t:{AAPL}:bars:1m", 0, -1, withscores=True)
        assert c.smembers("t:symbols") == {b"AAPL"}
    assert raw_latest == {"symbol": "AAPL", "tf": "1m", "ts": T0 + 180, "open": 13.0, "high": 14.0, "low": 12.0,
                          "close": 13.5, "volume": 300.0, "source": "yahoo", "flags": 1}
    assert [int(score) for _, score in members] == [T0, T0 + 60, T0 + 120]
    assert Bar.from_map(msgpack.unpackb(members[1][0])) == closed[1]
    assert await store.latest("AAPL", "1m") == forming


async def test_history_is_range_queryable_by_time_and_capped(store: RedisStore) -> None:
    await store.write_bars([], [_bar(i) for i in range(80)])
    got = await store.history("AAPL", "1m", T0 + 60 * 40, T0 + 60 * 44, limit=100)
    assert [b.ts for b in got] == [T0 + 60 * i for i in range(40, 45)]
    everything = await store.history("AAPL", "1m", 0, 2**40, limit=1000)
    assert [b.ts for b in everything] == [T0 + 60 * i for i in range(30, 80)]  # the newest 50 kept
    newest = await store.history("AAPL", "1m", 0, 2**40, limit=3)
    assert [b.ts for b in newest] == [T0 + 60 * i for i in (77, 78, 79)]


async def test_rewrites_are_idempotent_and_a_revised_bar_replaces_the_old_copy(store: RedisStore) -> None:
    bars = [_bar(i) for i in range(5)]
    await store.write_bars([bars[-1]], bars)
    await store.write_bars([bars[-1]], bars)  # what redis-py does when it re-sends a pipeline
    revised = replace(bars[2], close=10.0)
    await store.write_bars([], [revised])
    got = await store.history("AAPL", "1m", 0, 2**40, limit=100)
    assert [b.ts for b in got] == [b.ts for b in bars]
    assert got[2] == revised


async def test_a_cycle_for_many_symbols_is_one_round_trip_and_one_history_call(
        store: RedisStore, redis_server: RedisServer) -> None:
    symbols = [f"S{i}" for i in range(300)]
    await store.write_bars([_bar(0, s) for s in symbols], [_bar(0, s) for s in symbols])

    def calls(c: redis.Redis) -> dict[str, int]:
        return {k: v["calls"] for k, v in c.info("commandstats").items()}

    with redis_server.client() as c:
        before = calls(c)
        result = await store.write_bars([_bar(1, s) for s in symbols], [_bar(1, s) for s in symbols])
        after = calls(c)
        assert result.written == 600
        # the newest bars in one MSET, the histories in one EVAL, the symbols set not again
        assert after["cmdstat_mset"] - before["cmdstat_mset"] == 1
        assert after["cmdstat_eval"] - before.get("cmdstat_eval", 0) == 1
        assert after["cmdstat_sadd"] == before["cmdstat_sadd"]
        assert c.zcard("t:{S299}:bars:1m") == 2 and c.scard("t:symbols") == 300


async def test_a_writes_later_parts_are_made_once_the_first_is_sent_and_land_on_the_same_trip(
        store: RedisStore, redis_server: RedisServer) -> None:
    """The cycle's minute part first; the higher timeframes' parts, made while Redis applies it,
    follow on the same connection: made once, all of them in Redis when the write returns."""
    symbols = [f"S{i}" for i in range(300)]
    made: list[int] = []

    def then() -> list[TimeframeWrite]:
        made.append(1)
        return [TimeframeWrite("5m", (symbols, [pack(replace(_bar(5, s), timeframe="5m")) for s in symbols]))]

    minute = TimeframeWrite("1m", (symbols, [pack(_bar(1, s)) for s in symbols]),
                            (symbols, [T0] * 300, [pack(_bar(0, s)) for s in symbols], [0] * 300))
    result = await store.write_timeframes([minute], 1.0, then=then)
    assert made == [1] and result.written == 900
    with redis_server.client() as c:
        assert msgpack.unpackb(c.get("t:{S299}:bar:5m"))["ts"] == T0 + 300
        assert msgpack.unpackb(c.get("t:{S299}:bar:1m"))["ts"] == T0 + 60 and c.zcard("t:{S299}:bars:1m") == 1


async def test_features_read_with_a_write_are_read_right_after_the_part_that_writes_them(
        store: RedisStore, redis_server: RedisServer) -> None:
    """A scan's reads ride on the cycle's write: each timeframe's MGET follows its own part, so
    the 1m values read are the first part's even though the later part writes 1m again, and
    each is handed over before the write returns."""
    symbols = ["AAPL", "MSFT", "GONE"]
    with redis_server.client() as c:
        c.set("t:{GONE}:features:1m", b"old")
        c.set("t:{MSFT}:features:5m", b"old 5m")

    def features(tf: str, tag: bytes) -> TimeframeWrite:
        return TimeframeWrite(tf, features=(symbols[:2], [tag + b" " + s.encode() for s in symbols[:2]]),
                              quiet=["GONE"] if tf == "1m" else ())

    got: list[tuple[str, list[bytes | None]]] = []
    reads = FeatureReads({"1m": symbols, "5m": symbols, "1h": []}, lambda tf, raws: got.append((tf, raws)))
    await store.write_timeframes([features("1m", b"first")], 1.0,
                                 then=lambda: [features("5m", b"five"), features("1m", b"second")], reads=reads)
    assert got == [("1m", [b"first AAPL", b"first MSFT", None]), ("5m", [b"five AAPL", b"five MSFT", None])]
    with redis_server.client() as c:  # what the later part wrote is there too: it was read before it
        assert c.mget("t:{AAPL}:features:1m", "t:{MSFT}:features:1m") == [b"second AAPL", b"second MSFT"]
    got.clear()  # without later parts, every read follows the write
    await store.write_timeframes([features("1m", b"third")], 2.0, reads=reads)
    assert got == [("1m", [b"third AAPL", b"third MSFT", None]), ("5m", [b"five AAPL", b"five MSFT", None])]


async def test_a_health_check_falling_due_between_a_writes_parts_leaves_its_replies_alone(
        redis_url: str, redis_server: RedisServer) -> None:
    """redis-py pings a connection idle past its health-check interval before a command is sent:
    between the parts of one write, that PING would read the first part's pending reply as its
    PONG. Here the interval is 50 ms and the later part takes 100 ms to make."""
    s = RedisStore(url=redis_url, prefix="t", max_connections=1, timeout_s=2.0, history_len=50)
    s._pool.connection_kwargs["health_check_interval"] = 0.05  # type: ignore[union-attr]  # noqa: SLF001
    await s.start()
    symbols = ["AAPL", "MSFT"]
    got: list[tuple[str, list[bytes | None]]] = []

    def later() -> list[TimeframeWrite]:
        until = time.monotonic() + 0.1  # the higher timeframes' step, at 50,000 symbols
        while time.monotonic() < until:
            pass
        return [TimeframeWrite("5m", features=(symbols, [b"five " + x.encode() for x in symbols]))]

    try:
        for k in range(3):
            got.clear()
            minute = TimeframeWrite("1m", (symbols, [pack(_bar(k, x)) for x in symbols]),
                                    features=(symbols, [b"one %d" % k] * 2))
            result = await s.write_timeframes([minute], 1.0 + k, then=later, reads=FeatureReads(
                {"1m": symbols, "5m": symbols}, lambda tf, raws: got.append((tf, raws))))
            assert result.written == 6
            assert got == [("1m", [b"one %d" % k] * 2), ("5m", [b"five AAPL", b"five MSFT"])]
    finally:
        await s.close()
    with redis_server.client() as c:
        assert msgpack.unpackb(c.get("t:{MSFT}:bar:1m"))["ts"] == T0 + 120


async def test_a_write_tells_when_redis_lost_its_data(store: RedisStore, redis_server: RedisServer) -> None:
    assert (await store.write_bars([_bar(1)], [])).fresh  # the first write into this (flushed) Redis
    assert not (await store.write_bars([_bar(2)], [])).fresh
    with redis_server.client() as c:
        c.flushall()  # what a restart without persistence looks like
    assert (await store.write_bars([_bar(3)], [])).fresh


async def test_redis_down_is_a_store_error_within_the_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = RedisStore(url=f"unix://{tmp_path}/nothing.sock", prefix="t", max_connections=2, timeout_s=0.3,
                   history_len=10)
    await s.start()  # Redis being down is not an error at start: health says so
    assert s.health()["state"] == "down" and "ping failed" in str(s.health()["last_error"])
    t0 = time.monotonic()
    with pytest.raises(RedisStoreError):
        await s.write_bars([_bar(1)], [_bar(1)])
    assert time.monotonic() - t0 < 2.0
    await s.close()


async def test_a_large_write_gets_time_in_proportion_to_its_size(redis_url: str, redis_server: RedisServer) -> None:
    """A cycle's write may take longer than SIDECAR_REDIS_TIMEOUT_S when it is large (at a
    15-minute close two cluster members' writes of ~100,000 values took one Redis 0.8 s, and
    the failed one was sent again, larger): its deadline grows by 10 us a value."""
    s = RedisStore(url=redis_url, prefix="t", max_connections=1, timeout_s=0.5, history_len=10)
    await s.start()  # (connected within the half second)
    s.timeout_s = 0.002  # then a timeout no write of this size meets
    try:
        names = [f"S{i:05d}" for i in range(60_000)]  # ~2.5 MB to send and 60,000 keys to set: 0.6 s allowed
        result = await s.write_cycle("1m", latest=(names, [b"%d" % i for i in range(len(names))]), now=1.0)
        assert result.written == len(names)
        with redis_server.client() as c:
            assert c.get("t:{S59999}:bar:1m") == b"59999"
    finally:
        await s.close()


async def test_the_symbols_set_lists_every_symbol_written_through_an_emptied_redis_and_a_reused_slot(
        store: RedisStore, redis_server: RedisServer) -> None:
    """The cycle's symbols come as slots of a column of names (looked up in a mask by slot, not
    in a set by name): each symbol is added once, all again after Redis lost its data, and a slot
    that holds another symbol (a new column) adds that symbol."""
    first = NameColumn.of(["AAA", "BBB", "CCC"])

    async def write(column: NameColumn, slots: list[int]) -> set[bytes]:
        await store.write_cycle("1m", latest=(SlotNames(column, np.array(slots)), [b"v"] * len(slots)), now=1.0)
        with redis_server.client() as c:
            return c.smembers("t:symbols")

    def sadds() -> int:
        with redis_server.client() as c:
            return int(c.info("commandstats").get("cmdstat_sadd", {}).get("calls", 0))

    assert await write(first, [0, 1]) == {b"AAA", b"BBB"}
    assert await write(first, [0, 1, 2]) == {b"AAA", b"BBB", b"CCC"}
    before = sadds()
    await write(first, [2, 1, 0])
    assert sadds() == before  # all listed already: no SADD
    with redis_server.client() as c:
        c.flushall()
    assert await write(first, [1]) == set()  # this write finds Redis emptied (its `alive` mark gone)...
    assert await write(first, [0, 1, 2]) == {b"AAA", b"BBB", b"CCC"}  # ...so the next lists every symbol again
    assert await write(NameColumn.of(["AAA", "DDD", "CCC"]), [0, 1, 2]) == {b"AAA", b"BBB", b"CCC", b"DDD"}


async def test_thousands_of_symbols_in_one_cycle_all_land_and_the_heartbeat_expires(
        store: RedisStore, redis_server: RedisServer) -> None:
    names = [f"S{i:04d}" for i in range(2_345)]
    latest = [_bar(1, symbol=s, flags=BarFlag.FORMING) for s in names]
    await store.write_bars(latest, [])
    result = await store.write_cycle("1m", features=(names, [s.encode() for s in names]), now=123.5,
                                     quiet=["S0001"])
    assert result.written == len(names)
    with redis_server.client() as c:
        assert c.smembers("t:symbols") == {s.encode() for s in names}
        bars = c.mget([f"t:{{{s}}}:bar:1m" for s in names])
        assert [msgpack.unpackb(b)["symbol"] for b in bars] == names
        # a quiet symbol's features are removed in the same write
        assert c.mget([f"t:{{{s}}}:features:1m" for s in names]) == [
            None if s == "S0001" else s.encode() for s in names]
        # freshness: each value carries its `updated` time; the heartbeat says the writer lives
        assert c.get("t:heartbeat") == b"123.500" and 0 < c.pttl("t:heartbeat") <= 2000
        assert c.pttl(f"t:{{{names[0]}}}:bar:1m") == -1 and c.pttl(f"t:{{{names[0]}}}:features:1m") == -1
