"""The PostgreSQL store against a real server: the SQLite store's semantics (idempotent
upserts, one transaction per flush, a failed flush keeping every row, the buffer's bound,
per-timeframe retention), plus what a cluster needs: partitions made on demand by several
writers at once, retention by dropping partitions, and other components' tables in the
common SQL subset."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import numpy as np
import pytest

from sidecar import actions
from sidecar.bars import Bar
from sidecar.clock import SystemClock
from sidecar.errors import PostgresStoreError
from sidecar.reference.service import SCHEMA as REFERENCE_SCHEMA
from sidecar.reference.service import upsert
from sidecar.stores import PostgresStore

T0 = 1_800_000_000 // 86400 * 86400  # a midnight UTC, mid-month


def _bar(i: int, symbol: str = "AAPL", timeframe: str = "1m", step: int = 60) -> Bar:
    return Bar(symbol, timeframe, T0 + step * i, 10.0, 11.0, 9.0, 10.5, 100.0 + i, "yahoo")


async def _rows(url: str, where: str = "TRUE") -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT symbol, timeframe, ts, open, high, low, close, volume, source, flags "
                                f"FROM bars WHERE {where} ORDER BY symbol, timeframe, ts")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


async def _partitions(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
    finally:
        await conn.close()
    return {r[0] for r in rows}


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(url=postgres_url, clock=SystemClock(), timeout_s=2.0)
    await s.start()
    yield s
    await s.close()


async def test_flush_upserts_buffered_bars_once_into_partitions(store: PostgresStore, postgres_url: str) -> None:
    store.add([_bar(i) for i in range(5)])
    store.add([_bar(2), _bar(3)])  # the same keys again: deduplicated in the buffer
    assert store.buffered == 5
    assert await store.flush() == 5 and store.buffered == 0
    store.add([replace(_bar(4), close=10.9), _bar(5), _bar(0, timeframe="1d", step=86400)])
    assert await store.flush() == 3
    rows = await _rows(postgres_url, "timeframe = '1m'")
    assert [r[2] for r in rows] == [T0 + 60 * i for i in range(6)]
    assert rows[4][6] == 10.9 and rows[0] == ("AAPL", "1m", T0, 10.0, 11.0, 9.0, 10.5, 100.0, "yahoo", 0)
    assert store.persisted_through == {"AAPL": T0 + 300}
    month = __import__("datetime").datetime.fromtimestamp(T0, __import__("datetime").UTC).strftime("%Y%m")
    parts = await _partitions(postgres_url)
    assert {"bars_1m", f"bars_1m_{month}", "bars_1d"} <= parts
    assert any(p.startswith("bars_1d_") for p in parts)


async def test_reads_merge_the_buffer_over_the_stored_rows(store: PostgresStore) -> None:
    store.add([_bar(i) for i in range(10)] + [_bar(i, "MSFT") for i in range(3)])
    store.add_features("1m", ["AAPL", "MSFT"], np.array([T0 + 540, T0 + 120]), np.array([[1.0, 2.0], [3.0, np.nan]]))
    await store.flush()
    store.add([replace(_bar(9), close=12.0), _bar(10)])  # a revision and a new bar, not flushed
    await store.mark_empty("AAPL", "1m", [T0 + 60 * 11])
    recent = await store.recent(["AAPL", "MSFT", "NONE"], "1m", 3)
    assert [b.ts for b in recent["AAPL"]] == [T0 + 480, T0 + 540, T0 + 600] and recent["AAPL"][1].close == 12.0
    assert len(recent["MSFT"]) == 3 and recent["NONE"] == []
    assert (await store.known_minutes("AAPL", "1m", T0 + 540, T0 + 720)).tolist() == [T0 + 540, T0 + 600, T0 + 660]
    assert (await store.values_in("AAPL", "1m", T0 + 540, T0 + 600))[T0 + 540][3] == 12.0
    between = await store.between(["MSFT", "AAPL"], "1m", T0, T0 + 120)
    assert sorted((b.symbol, b.ts) for b in between) == [("AAPL", T0), ("AAPL", T0 + 60), ("MSFT", T0), ("MSFT", T0 + 60)]
    feats = await store.features_at(["AAPL", "MSFT"], "1m")
    assert feats["AAPL"][0] == T0 + 540 and feats["AAPL"][1].tolist() == [1.0, 2.0]
    assert feats["MSFT"][0] == T0 + 120 and np.isnan(feats["MSFT"][1][1])
    assert await store.last_stored("1m") == {"AAPL": T0 + 540, "MSFT": T0 + 120}
    assert await store.last_stored("1m", ["MSFT", "NONE"]) == {"MSFT": T0 + 120}  # a partition's symbols only
    assert (await store.summary("AAPL"))["1m"] == {"rows": 10, "first": T0, "last": T0 + 540}
    await store.mark_bootstrapped("AAPL", "1m", T0, T0 + 100)
    await store.mark_bootstrapped("AAPL", "1m", T0, T0 + 50)  # never moves back
    assert await store.bootstrap_done("AAPL") == {("1m", T0): T0 + 100}
    await store.set_meta("k", "1")
    await store.set_meta("k", "2")
    assert await store.get_meta("k") == "2" and await store.get_meta("none") is None
    await store.delete_bars("AAPL", "1m", [T0, T0 + 600])
    assert [b.ts for b in (await store.recent(["AAPL"], "1m", 100))["AAPL"]][:1] == [T0 + 60]
    assert T0 + 600 not in await store.values_in("AAPL", "1m", T0, T0 + 3600)


async def test_a_flush_that_cannot_commit_keeps_the_rows_for_the_next_try(store: PostgresStore,
                                                                          postgres_url: str) -> None:
    store.add([_bar(0)])
    await store.flush()  # the partitions exist: the next flush blocks on the lock, not on creating one
    store.add([_bar(i) for i in range(1, 4)])
    locker = await asyncpg.connect(postgres_url)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")  # another writer holds the table
    try:
        with pytest.raises(PostgresStoreError, match="flush of 3 bars failed"):
            await store.flush()
        assert store.buffered == 3 and store.last_error is not None
        store.add([_bar(4)])  # the loop keeps buffering meanwhile
    finally:
        await tx.rollback()
        await locker.close()
    assert await store.flush() == 4
    assert len(await _rows(postgres_url)) == 5 and store.last_error is None


async def test_a_full_buffer_drops_the_oldest_bars_and_counts_them(postgres_url: str) -> None:
    store = PostgresStore(url=postgres_url, clock=SystemClock(), timeout_s=1.0, max_buffered=5)
    await store.start()
    locker = await asyncpg.connect(postgres_url)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")
    try:
        store.add([_bar(i) for i in range(4)])
        with pytest.raises(PostgresStoreError):
            await store.flush()
        store.add([_bar(i) for i in range(4, 8)])
        assert store.buffered == 5 and store.dropped == 3
    finally:
        await tx.rollback()
        await locker.close()
    assert await store.flush() == 5
    assert [r[2] for r in await _rows(postgres_url)] == [T0 + 60 * i for i in range(3, 8)]  # the newest five kept
    await store.close()


async def test_retention_drops_whole_partitions_trims_the_straddling_one_and_is_per_timeframe(
        store: PostgresStore, postgres_url: str) -> None:
    old = T0 - 100 * 86400
    store.add([replace(_bar(i), ts=old + 60 * i) for i in range(1200)] + [_bar(i) for i in range(300)]
              + [replace(_bar(i), timeframe="1h", ts=old + 3600 * i) for i in range(10)]
              + [replace(_bar(i), timeframe="1d", ts=old + 86400 * i) for i in range(3)])
    store.add_features("1m", ["AAPL"] * 2, np.array([old, T0]), np.ones((2, 2)))
    await store.flush()
    await store.mark_empty("AAPL", "1m", [old + 30, T0 + 30])
    before = await _partitions(postgres_url)
    cutoff = T0 - 1 * 86400  # inside T0's month or the one before: older months go whole
    deleted = await store.delete_older({"1m": cutoff, "1h": T0 - 1000 * 86400})
    assert deleted == 1200
    rows = await _rows(postgres_url)
    assert {tf: sum(1 for r in rows if r[1] == tf) for tf in ("1m", "1h", "1d")} == {"1m": 300, "1h": 10, "1d": 3}
    dropped = before - await _partitions(postgres_url)
    assert dropped and all(p.startswith(("bars_1m_", "features_1m_")) for p in dropped)
    known = await store.known_minutes("AAPL", "1m", 0, 2**40)
    assert T0 + 30 in known and old + 30 not in known
    assert (await store.features_at(["AAPL"], "1m"))["AAPL"][0] == T0
    store.add([_bar(300)])  # a partition dropped and made again later is found again
    assert await store.flush() == 1


async def test_several_writers_make_the_same_partitions_at_once(postgres_url: str) -> None:
    stores = [PostgresStore(url=postgres_url, clock=SystemClock()) for _ in range(3)]
    await asyncio.gather(*(s.start() for s in stores))
    for k, s in enumerate(stores):  # each its own symbol, all in the same new partitions
        s.add([_bar(i, f"S{k}", tf, step) for tf, step in (("1m", 60), ("1h", 3600), ("1d", 86400)) for i in range(50)])
    assert await asyncio.gather(*(s.flush() for s in stores)) == [150, 150, 150]
    assert len(await _rows(postgres_url)) == 450
    await asyncio.gather(*(s.close() for s in stores))


async def test_other_components_tables_in_the_common_sql(store: PostgresStore) -> None:
    await store.create(actions.SCHEMA)
    await store.create(REFERENCE_SCHEMA)
    await store.create(REFERENCE_SCHEMA)  # idempotent
    await actions.store(store, "AAPL", "yahoo", [(T0, "dividend", 0.25), (T0 + 86400, "split", 4.0)])
    await actions.store(store, "AAPL", "yahoo", [(T0, "dividend", 0.26)])  # a later report replaces it
    assert await store.query("SELECT ts, kind, value FROM actions WHERE symbol = ? ORDER BY ts", ("AAPL",)) == [
        (T0, "dividend", 0.26), (T0 + 86400, "split", 4.0)]
    columns = ("symbol", "report_date", "fiscal_date_ending", "estimate", "currency", "time_of_day", "source",
               "updated")
    await store.execute(upsert("earnings", columns, ("symbol", "report_date")),
                        [("AAPL", "2027-01-28", "2026-12-31", 2.1, "USD", "post-market", "alphavantage", 1.0)])
    await store.execute(upsert("earnings", columns, ("symbol", "report_date")),
                        [("AAPL", "2027-01-28", "2026-12-31", 2.2, "USD", "post-market", "alphavantage", 2)])
    assert await store.query("SELECT estimate, updated FROM earnings") == [(2.2, 2.0)]
    await store.execute("INSERT OR IGNORE INTO empty_minutes VALUES (?, ?, ?)", [("AAPL", "1m", T0)] * 2)
    assert (await store.known_minutes("AAPL", "1m", T0, T0 + 60)).tolist() == [T0]


async def test_timeframe_rebuilds_wait_while_the_store_cannot_be_read_then_run(store: PostgresStore,
                                                                              postgres_url: str) -> None:
    from sidecar.clock import ManualClock
    from sidecar.cycle.higher import HigherTimeframes
    from sidecar.cycle.table import SymbolTable
    from sidecar.metrics import Metrics
    from sidecar.symbols import AssetClass, lookup
    from sidecar.timeframes import Buckets

    table = SymbolTable({c: (0.0, np.inf) for c in AssetClass}, ["yahoo"])
    slot = table.add(lookup("BTCUSD"), [])
    higher = HigherTimeframes(("1m", "5m"), table=table, buckets=Buckets(), sqlite=store, metrics=Metrics(),
                              clock=ManualClock(), features=None, warmup_bars=0)
    higher.reset(np.array([slot]), 0)
    minutes = [Bar("BTCUSD", "1m", T0 + 60 * i, 10.0 + i, 12.0 + i % 3, 9.0 - i, 10.5 + i, 5.0 * i, "yahoo")
               for i in range(5)]
    store.add(minutes)
    await store.flush()
    higher.revise(np.array([slot]), np.array([T0 + 120]))  # a minute corrected behind the loop's back
    locker = await asyncpg.connect(postgres_url)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("LOCK TABLE bars IN ACCESS EXCLUSIVE MODE")  # reads block until the 2 s timeout
    try:
        assert await higher.finish(T0 + 400) is False  # no exception out of the cycle
        assert higher.pending == 1  # the request kept for a later cycle
    finally:
        await tx.rollback()
        await locker.close()
    assert await higher.finish(T0 + 400) is True and higher.pending == 0
    [bar] = await store.between(["BTCUSD"], "5m", T0, T0 + 300)
    assert bar.values == (10.0, max(b.high for b in minutes), min(b.low for b in minutes), 14.5,
                          sum(b.volume for b in minutes))
