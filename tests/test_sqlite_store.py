"""The SQLite store against a real file: WAL, idempotent upserts, one transaction per
flush, a failed flush that keeps every row for the next try, and the flusher that drives it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sidecar.app.flusher import Flusher
from sidecar.bars import Bar
from sidecar.clock import SystemClock
from sidecar.cycle.batch import Batch
from sidecar.errors import SQLiteStoreError
from sidecar.metrics import Metrics
from sidecar.stores import SQLiteStore

T0 = 1_800_000_000 // 60 * 60


def _bar(i: int, symbol: str = "AAPL") -> Bar:
    return Bar(symbol, "1m", T0 + 60 * i, 10.0, 11.0, 9.0, 10.5, 100.0 + i, "yahoo")


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT symbol, timeframe, ts, open, high, low, close, volume, source, flags "
                          "FROM bars ORDER BY symbol, ts").fetchall()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(path=tmp_path / "sub" / "bars.db", synchronous="FULL", clock=SystemClock(), busy_timeout_ms=100)
    await s.start()
    yield s
    await s.close()


async def test_flush_upserts_buffered_bars_once_in_wal_mode(store: SQLiteStore) -> None:
    store.add([_bar(i) for i in range(5)])
    store.add([_bar(2), _bar(3)])  # the same keys again: deduplicated in the buffer
    assert store.buffered == 5
    assert await store.flush() == 5 and store.buffered == 0
    store.add([replace(_bar(4), close=10.9), _bar(5)])  # a revised copy and a new bar
    assert await store.flush() == 2
    rows = _rows(store.path)
    assert [r[2] for r in rows] == [T0 + 60 * i for i in range(6)]
    assert rows[4][6] == 10.9
    assert store.persisted_through == {"AAPL": T0 + 300}
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_cycles_bars_added_as_arrays_are_stored_under_the_names_they_had_and_in_the_order_added(
        store: SQLiteStore) -> None:
    # The cycle hands its closed bars over as arrays and the rows are made later (at the flush or
    # a read): by then a slot may hold another symbol, and a revision added after must still win.
    symbols, sources = ["AAPL", "MSFT"], ["yahoo", "polygon"]
    bars = Batch(np.array([0, 1]), np.array([T0, T0]), np.array([10.0, 20.0]), np.array([11.0, 21.0]),
                 np.array([9.0, 19.0]), np.array([10.5, 20.5]), np.array([100.0, 200.0]), np.zeros(2, dtype=np.int64),
                 np.array([0, 1], dtype=np.int16), np.full(2, np.inf))
    store.add_batch(bars, symbols, sources, "5m")
    symbols[1] = "NVDA"  # slot 1 reused by another symbol before the rows were made
    store.add([Bar("AAPL", "5m", T0, 10.0, 11.0, 9.0, 10.7, 100.0, "yahoo")])  # a revision, added later
    assert await store.flush() == 2
    assert _rows(store.path) == [("AAPL", "5m", T0, 10.0, 11.0, 9.0, 10.7, 100.0, "yahoo", 0),
                                 ("MSFT", "5m", T0, 20.0, 21.0, 19.0, 20.5, 200.0, "polygon", 0)]


async def test_a_flush_that_cannot_commit_keeps_the_rows_for_the_next_try(store: SQLiteStore) -> None:
    store.add([_bar(i) for i in range(3)])
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(SQLiteStoreError, match="locked"):
            await store.flush()
        assert store.buffered == 3
        store.add([_bar(3)])  # the loop keeps buffering meanwhile
        assert store.last_error is not None
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert await store.flush() == 4
    assert len(_rows(store.path)) == 4 and store.last_error is None


async def test_a_full_buffer_drops_the_oldest_bars_and_counts_them(tmp_path: Path) -> None:
    store = SQLiteStore(path=tmp_path / "b.db", synchronous="FULL", clock=SystemClock(), busy_timeout_ms=50,
                        max_buffered=5)
    await store.start()
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # flushes keep failing
    try:
        store.add([_bar(i) for i in range(4)])
        with pytest.raises(SQLiteStoreError):
            await store.flush()
        store.add([_bar(i) for i in range(4, 8)])
        assert store.buffered == 5 and store.dropped == 3
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert await store.flush() == 5
    assert [r[2] for r in _rows(store.path)] == [T0 + 60 * i for i in range(3, 8)]  # the newest five kept
    await store.close()


async def test_retention_deletes_old_bars_in_small_batches_and_keeps_the_rest(store: SQLiteStore) -> None:
    old = [replace(_bar(i, s), ts=T0 - 100 * 86400 + 60 * i) for s in ("AAPL", "MSFT") for i in range(1200)]
    recent = [_bar(i, s) for s in ("AAPL", "MSFT") for i in range(300)]
    store.add(old + recent)
    await store.flush()
    await store.mark_empty("AAPL", "1m", [T0 - 100 * 86400 + 30, T0 + 30])
    commits = []
    db = store._db  # noqa: SLF001 - count the commits the deletion makes
    real_commit = db.commit

    async def counting_commit() -> None:
        commits.append(1)
        await real_commit()

    db.commit = counting_commit  # type: ignore[method-assign]
    deleted = await store.delete_older(T0 - 90 * 86400, batch_rows=500)
    db.commit = real_commit  # type: ignore[method-assign]
    assert deleted == 2400 and len(commits) >= 5  # 2,400 rows in batches of 500
    rows = _rows(store.path)
    assert len(rows) == 600 and min(r[2] for r in rows) == T0
    known = await store.known_minutes("AAPL", "1m", 0, 2**40)
    assert T0 + 30 in known and T0 - 100 * 86400 + 30 not in known


async def test_retention_is_per_timeframe_and_keeps_a_timeframe_not_named(store: SQLiteStore) -> None:
    old = T0 - 100 * 86400
    store.add([replace(_bar(i, "AAPL"), ts=old + 60 * i) for i in range(10)]
              + [replace(_bar(i, "AAPL"), timeframe="1h", ts=old + 3600 * i) for i in range(10)]
              + [replace(_bar(i, "AAPL"), timeframe="1d", ts=old + 86400 * i) for i in range(3)])
    await store.flush()
    deleted = await store.delete_older({"1m": T0 - 90 * 86400, "1h": T0 - 1000 * 86400})
    assert deleted == 10
    assert {tf: n for tf, n in ((tf, sum(1 for r in _rows(store.path) if r[1] == tf)) for tf in ("1m", "1h", "1d"))} == {
        "1m": 0, "1h": 10, "1d": 3}


async def test_last_stored_per_symbol_of_all_or_of_some(store: SQLiteStore) -> None:
    """Where each symbol resumes: its newest stored open; for a partition taken over, of its
    symbols only (a symbol never stored has none), by index seeks instead of a scan."""
    store.add([_bar(i) for i in range(4)] + [_bar(i, "MSFT") for i in range(2)] + [_bar(0, "O'NEIL")])
    await store.flush()
    assert await store.last_stored("1m") == {"AAPL": T0 + 180, "MSFT": T0 + 60, "O'NEIL": T0}
    assert await store.last_stored("1m", ["MSFT", "O'NEIL", "NONE"]) == {"MSFT": T0 + 60, "O'NEIL": T0}
    assert await store.last_stored("1m", []) == {} and await store.last_stored("5m", ["AAPL"]) == {}
    with sqlite3.connect(store.path) as db:  # the per-symbol form uses the primary key
        plan = " ".join(r[3] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT s.value, (SELECT MAX(ts) FROM bars WHERE symbol = s.value AND timeframe = ?) "
            "FROM json_each(?) AS s", ("1m", '["AAPL"]')))
    assert "USING PRIMARY KEY" in plan or "USING INDEX" in plan, plan


async def test_the_flusher_keeps_a_failed_flush_counts_it_and_flushes_on_close(store: SQLiteStore) -> None:
    """The daemon's flush loop as a component: a flush that cannot commit keeps its rows and is
    counted; close() stops the loop and flushes what is buffered, once however often called."""
    metrics = Metrics()
    flusher = Flusher(store=store, metrics=metrics, clock=SystemClock(), interval_s=3600.0)  # close() flushes
    await flusher.start()
    store.add([_bar(i) for i in range(3)])
    locker = sqlite3.connect(store.path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert await flusher.flush() == 0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert flusher.health()["failures"] == 1 and metrics.total("sidecar_sqlite_errors_total") == 1
    assert flusher.health()["buffered"] == 3
    store.add([_bar(3)])
    await flusher.close()
    await flusher.close()
    assert flusher.task is not None and flusher.task.done()
    assert len(_rows(store.path)) == 4 and store.buffered == 0
    assert flusher.health() == {"every_s": 3600.0, "flushes": 1, "failures": 1, "buffered": 0}
    assert metrics.total("sidecar_sqlite_rows_written_total") == 4
