"""The cycle's packed write: bars and features encoded as byte grids and sent as RESP built by
NumPy land in Redis under the documented keys, as the documented msgpack maps, for symbols of
every length, several sources, values with nils, and histories with their scores and caps;
what a plain Redis client reads back is compared with maps built here from the inputs. A
cluster member's fenced write, cut into partitions the same way, lands under the partitions'
keys for the partitions it owns, and writes nothing for the others or under an old token."""

from __future__ import annotations

import math
import zlib
from collections.abc import AsyncIterator, Callable

import msgpack
import numpy as np
import pytest

from sidecar.cycle.batch import Batch
from sidecar.cycle.encode import BarEncoder
from sidecar.features import OUTPUTS
from sidecar.features.codec import FeatureCodec
from sidecar.packed import NameColumn, Packed, SlotNames
from sidecar.stores import RedisStore
from sidecar.stores.redis_wire import REPLACE, TRIM, TimeframeWrite

from .conftest import RedisServer

SOURCES = ["yahoo", "polygon", "twelvedata"]


def _symbols(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct symbols of 1 to 17 characters, with the suffixes symbols may carry."""
    out: set[str] = set()
    while len(out) < n:
        base = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), int(rng.integers(1, 13))))
        suffix = rng.choice(["", "", "-USD", ".L", "-B"])
        out.add(base + str(suffix))
    return sorted(out)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, prefix="pk", max_connections=4, timeout_s=2.0, history_len=3)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_packed_bars_and_features_land_as_the_documented_maps(
        store: RedisStore, redis_server: RedisServer, seed: int) -> None:
    await _write_and_check(store, redis_server, seed, 400)


@pytest.mark.parametrize(("seed", "n", "parts", "newer"), [(1, 200, 16, {4, 10}), (2, 200, 16, {4, 10}),
                                                           (3, 1200, 4, {2})], ids=["rows", "rows2", "columns"])
async def test_a_members_packed_write_lands_in_its_own_partitions_only(
        redis_url: str, redis_server: RedisServer, seed: int, n: int, parts: int, newer: set[int]) -> None:
    """The member owns the even partitions, some of which have a newer owner's token in their
    fence; the odd ones are not its own (no token). 200 symbols go row by row, 1,200 by columns
    (redis_fenced.COLUMNS_FROM rows). The write is one transaction: refused, then sent again
    without the newer owner's partitions."""
    store = RedisStore(url=redis_url, prefix="pk", max_connections=4, timeout_s=2.0, history_len=3, partitions=parts)
    refused: list[set[int]] = []
    store.fence, store.on_fenced = (lambda p: 5 if p % 2 == 0 else None), refused.append
    with redis_server.client() as c:
        for p in range(0, parts, 2):
            c.set(f"pk:{{p{p}}}:fence", 6 if p in newer else 5)
    await store.start()
    try:
        await _write_and_check(store, redis_server, seed, n, partitions=parts,
                               written=lambda p: p % 2 == 0 and p not in newer)
    finally:
        await store.close()
    assert refused == [newer]
    with redis_server.client() as c:
        assert [int(c.get(f"pk:{{p{p}}}:refused") or 0) for p in sorted(newer)] == [1] * len(newer)


async def _write_and_check(store: RedisStore, redis_server: RedisServer, seed: int, n: int, partitions: int = 0,
                           written: Callable[[int], bool] = lambda _p: True) -> None:
    """Write a cycle of `n` random symbols (bars, histories, features) and read every key back."""
    rng = np.random.default_rng(seed)
    names = _symbols(rng, n) + [""]  # a free slot at the end, as the table has
    column = NameColumn.of(names)
    slots = rng.permutation(n)
    t0 = np.where(rng.random(n) < 0.1, rng.integers(1, 10**9, n), 1_800_000_000 // 60 * 60 + 60 * slots)
    rows = Batch(slot=slots, ts=t0, open=rng.uniform(1, 500, n), high=rng.uniform(1, 500, n),
                 low=rng.uniform(1, 500, n), close=rng.uniform(1, 500, n), volume=rng.uniform(0, 1e6, n),
                 flags=rng.integers(0, 8, n), source=rng.integers(-1, 3, n).astype(np.int16),
                 known_at=np.full(n, np.inf))
    values = rng.normal(100, 10, (len(OUTPUTS), n))
    values[:, rng.random(n) < 0.3] = np.nan  # warming up: every output missing
    values[rng.random(values.shape) < 0.05] = np.nan
    close = rng.uniform(1, 500, n)
    close[rng.random(n) < 0.05] = np.nan
    provisional = rng.random(n) < 0.5
    codec = FeatureCodec(OUTPUTS, "1m")
    bars = BarEncoder("1m").encode(rows, column, SOURCES)
    features = codec.encode(rows.ts, close, provisional, 1_800_000_000.25, values)
    assert isinstance(bars, Packed) and isinstance(features, Packed)
    modes = rng.integers(0, 4, n)
    await store.write_timeframes([TimeframeWrite(
        "1m", latest=(SlotNames(column, slots), bars), history=(SlotNames(column, slots), rows.ts, bars, modes),
        features=(SlotNames(column, slots), features))], 1_800_000_000.0)

    with redis_server.client() as c:
        for i, slot in enumerate(slots.tolist()):
            symbol = names[slot]
            part = zlib.crc32(symbol.encode()) % partitions if partitions else -1
            head = f"pk:{{p{part}}}:{symbol}" if partitions else f"pk:{{{symbol}}}"
            if not written(part):
                assert c.keys(f"{head}:*") == [], symbol
                continue
            want = {"symbol": symbol, "tf": "1m", "ts": int(rows.ts[i]), "open": rows.open[i],
                    "high": rows.high[i], "low": rows.low[i], "close": rows.close[i], "volume": rows.volume[i],
                    "flags": int(rows.flags[i]), "source": SOURCES[rows.source[i]]}
            assert msgpack.unpackb(c.get(f"{head}:bar:1m")) == want, symbol
            members = c.zrange(f"{head}:bars:1m", 0, -1, withscores=True)
            assert [(msgpack.unpackb(m), s) for m, s in members] == [(want, float(rows.ts[i]))]
            got = msgpack.unpackb(c.get(f"{head}:features:1m"))
            assert got["ts"] == rows.ts[i] and got["provisional"] == bool(provisional[i])
            assert got["updated"] == 1_800_000_000.25
            assert got["close"] is None if math.isnan(close[i]) else got["close"] == close[i]
            for k, name in enumerate(OUTPUTS):
                assert got[name] is None if math.isnan(values[k, i]) else got[name] == values[k, i], (symbol, name)
        assert c.scard("pk:symbols") == n


async def test_packed_histories_replace_and_cap_as_the_modes_say(store: RedisStore, redis_server: RedisServer) -> None:
    column = NameColumn.of(["A", "BB", "CCC-USD"])
    encoder = BarEncoder("5m")
    t0 = 1_800_000_000 // 300 * 300

    async def write(ts: list[int], close: list[float], slots: list[int], modes: list[int]) -> None:
        k = len(ts)
        rows = Batch(slot=np.array(slots), ts=np.array(ts), open=np.ones(k), high=np.ones(k), low=np.ones(k),
                     close=np.array(close), volume=np.zeros(k), flags=np.zeros(k, np.int64),
                     source=np.zeros(k, np.int16), known_at=np.full(k, np.inf))
        names = SlotNames(column, rows.slot)
        await store.write_timeframes([TimeframeWrite(
            "5m", history=(names, rows.ts, encoder.encode(rows, column, ["yahoo"]), np.array(modes)))], 0.0)

    await write([t0 + 300 * i for i in range(5)], [float(i) for i in range(5)], [1] * 5, [0] * 5)
    await write([t0 + 300 * 2], [20.0], [1], [REPLACE])  # a revision: the old copy goes
    await write([t0 + 300 * 5], [5.0], [2], [TRIM])  # another symbol capped: BB keeps its 5
    with redis_server.client() as c:
        members = c.zrange("pk:{BB}:bars:5m", 0, -1, withscores=True)
        assert [(msgpack.unpackb(m)["close"], int(s)) for m, s in members] == [
            (0.0, t0), (1.0, t0 + 300), (20.0, t0 + 600), (3.0, t0 + 900), (4.0, t0 + 1200)]
        assert c.zcard("pk:{CCC-USD}:bars:5m") == 1
    await write([t0 + 300 * 5], [5.0], [1], [TRIM])  # capped to the newest 3
    with redis_server.client() as c:
        members = c.zrange("pk:{BB}:bars:5m", 0, -1, withscores=True)
        assert [int(s) for _, s in members] == [t0 + 900, t0 + 1200, t0 + 1500]


def test_packed_rows_read_back_as_bytes_and_digits_as_decimal_text() -> None:
    numbers = np.array([0, 7, 10, 99, 12345, 1_800_000_000, 10**18], dtype=np.int64)
    assert list(Packed.digits(numbers)) == [str(v).encode() for v in numbers.tolist()]
    column = NameColumn.of(["X", "", "LONGER.L"])
    names = SlotNames(column, np.array([2, 0]))
    assert list(names) == ["LONGER.L", "X"] and names[1] == "X" and len(names) == 2



def test_a_higher_timeframes_closed_bar_replaces_and_caps_its_history_only_where_needed() -> None:
    """A higher timeframe's part of the cycle's write: a closed bar removes an older copy at its
    open only where one can exist (nothing written to that history by this process yet, or a bar
    at or after its open already written), a rebuilt bar always does; each history is capped
    every TRIM_EVERY bars, spread over the symbols. Removing and capping on every write cost
    Redis twice the ZADD itself."""
    from sidecar.cycle.higher import LaneOutput
    from sidecar.cycle.publish import TRIM_EVERY, lane_write
    from sidecar.cycle.table import SymbolTable
    from sidecar.symbols import lookup

    rng = np.random.default_rng(5)
    step, n, m = 300, 2_000, 50
    t0 = 1_800_000_000 // step * step
    infos = [lookup(f"S{i:03d}") for i in range(m)]
    table = SymbolTable({info.asset_class: (1e-4, 1e6) for info in infos}, ["yahoo"], capacity=m)
    for info in infos:
        table.add(info, [])
    known = np.where(rng.random(m) < 0.2, -1, t0 + step * rng.integers(0, 5, m))

    def rows(k: int) -> Batch:
        return Batch(slot=rng.integers(0, m, k), ts=t0 + step * rng.integers(0, 10, k), open=np.ones(k),
                     high=np.ones(k), low=np.ones(k), close=np.ones(k), volume=np.zeros(k), flags=np.zeros(k, np.int64),
                     source=np.zeros(k, np.int16), known_at=np.full(k, np.inf))

    closed, rebuilt = rows(n), rows(20)
    lane = LaneOutput("5m", closed, Batch.empty(), rebuilt, np.zeros(0, dtype=np.int64), [], known)
    symbols, opens, _members, modes = lane_write(table, BarEncoder("5m"), lane).history
    assert list(symbols) == [infos[s].symbol for s in [*closed.slot, *rebuilt.slot]]
    assert list(opens) == [*closed.ts, *rebuilt.ts]
    for i in range(n):
        k, ts, slot = int(known[closed.slot[i]]), int(closed.ts[i]), int(closed.slot[i])
        want = (REPLACE if k < 0 or ts <= k else 0) | (TRIM if (ts // step + slot) % TRIM_EVERY == 0 else 0)
        assert modes[i] == want, (i, k, ts)
    assert list(modes[n:]) == [REPLACE | TRIM] * len(rebuilt)
    assert 0 < np.count_nonzero(modes[:n] & REPLACE) < n and 0 < np.count_nonzero(modes[:n] & TRIM) < n / 4
