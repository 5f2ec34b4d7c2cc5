"""SQLite store: the durable record of closed bars on one machine (the default).

Closed bars are buffered in memory (deduplicated by key, `BufferedStore`) and flushed in one
transaction of idempotent upserts, on a timer and at shutdown. WAL mode lets readers (the HTTP server,
other processes) read while a flush commits. A flush whose commit fails keeps its rows in
the buffer for the next try; a cancelled or timed-out commit may still have landed, which
the upserts make harmless (reliability.md B.2).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiosqlite
import numpy as np
import orjson

from ..bars import Bar, Row
from ..clock import Clock
from ..errors import SQLiteStoreError
from .buffer import BufferedStore, FeatureRow

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    ts        INTEGER NOT NULL,  -- bar open, UTC epoch seconds
    open      REAL    NOT NULL,
    high      REAL    NOT NULL,
    low       REAL    NOT NULL,
    close     REAL    NOT NULL,
    volume    REAL    NOT NULL,
    source    TEXT    NOT NULL,
    flags     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, timeframe, ts)
) WITHOUT ROWID;
-- Small facts the daemon keeps across restarts (e.g. when retention last ran).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- How far each bootstrap grid cell is covered by committed bars: a re-run skips what is.
CREATE TABLE IF NOT EXISTS bootstrap_cells (
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    cell      INTEGER NOT NULL,  -- the cell's epoch-aligned start
    covered   INTEGER NOT NULL,  -- bars before this are committed
    PRIMARY KEY (symbol, timeframe, cell)
) WITHOUT ROWID;
-- The features the daemon published at each bar's close: the outputs (in the order of
-- FeatureConfig.outputs) as little-endian float64s, NaN while warming up, then three running
-- sums (OBV, the session's price x volume and volume) that carry OBV and VWAP across restarts.
CREATE TABLE IF NOT EXISTS features (
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    ts        INTEGER NOT NULL,  -- the bar's open
    vals      BLOB    NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
) WITHOUT ROWID;
-- Minutes a complete answer from the source showed had no trades: not gaps.
CREATE TABLE IF NOT EXISTS empty_minutes (
    symbol    TEXT    NOT NULL,
    timeframe TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
) WITHOUT ROWID;
"""

# A symbol's newest features row of a timeframe at or before a bar open: one step down the primary key.
NEWEST_FEATURES = "SELECT ts, vals FROM features WHERE symbol = ? AND timeframe = ? AND ts <= ? ORDER BY ts DESC LIMIT 1"

_UPSERT = """
INSERT INTO bars (symbol, timeframe, ts, open, high, low, close, volume, source, flags)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, source = excluded.source, flags = excluded.flags
"""


class SQLiteStore(BufferedStore):
    """Buffers closed bars and flushes them to SQLite in one transaction.

    :param path: database file; its directory is created.
    :param synchronous: FULL or NORMAL (WAL mode either way).
    :param clock: stamps the last flush.
    :param busy_timeout_ms: how long a flush waits for another process's lock.
    :param max_buffered: bound of the buffer while flushes fail (`BufferedStore`).
    """

    kind = "sqlite"

    def __init__(self, *, path: Path, synchronous: str, clock: Clock, busy_timeout_ms: int = 5000,
                 max_buffered: int = 1_000_000) -> None:
        super().__init__(clock=clock, max_buffered=max_buffered)
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None

    async def start(self) -> None:
        """Open the database, set WAL and durability pragmas, create the schema."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")  # validated: FULL|NORMAL
        await self._db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        await self._db.executescript(SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        """Flush what is buffered, then close the connection and its worker thread
        (idempotent). A flush that fails is logged with what it leaves behind: the daemon's
        start-up backfill recovers those bars from the sources."""
        if self._db is None:
            return
        try:
            await self.flush()
        except SQLiteStoreError as exc:
            log.error("closing with %d bars unflushed: %s", len(self._buffer), exc)
        await self._db.close()
        self._db = None

    def health(self) -> dict[str, object]:
        """Buffer, last flush and last error, and the file."""
        return {**super().health(), "path": str(self.path)}

    def _open(self) -> bool:
        return self._db is not None

    def _error(self, message: str) -> SQLiteStoreError:
        return SQLiteStoreError(message)

    async def _commit(self, rows: list[Row], features: list[FeatureRow]) -> None:
        assert self._db is not None
        await self._db.executemany(_UPSERT, rows)
        await self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?)", features)
        await self._db.commit()

    async def known_minutes(self, symbol: str, timeframe: str, start: int, end: int) -> np.ndarray:
        """Bar opens in [start, end) that are stored, buffered, or confirmed empty."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT ts FROM bars WHERE symbol = ? AND timeframe = ? AND ts >= ? AND ts < ? "
            "UNION SELECT ts FROM empty_minutes WHERE symbol = ? AND timeframe = ? AND ts >= ? AND ts < ?",
            (symbol, timeframe, start, end, symbol, timeframe, start, end),
        ) as cur:
            stored = [r[0] for r in await cur.fetchall()]
        return np.unique(np.array(stored + self._buffered_opens(symbol, start, end), dtype=np.int64))

    async def values_in(self, symbol: str, timeframe: str, start: int, end: int) -> dict[int, tuple[float, ...]]:
        """Stored (and buffered, which is newer) bars opening in [start, end): ts -> (open, high,
        low, close, volume), what a verification compares with the source."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? AND timeframe = ? AND ts >= ? "
            "AND ts < ?", (symbol, timeframe, start, end),
        ) as cur:
            out = {int(r[0]): tuple(r[1:]) for r in await cur.fetchall()}
        return self._merge_values(out, symbol, timeframe, start, end)

    async def between(self, symbols: Sequence[str], timeframe: str, start: int, end: int) -> list[Bar]:
        """Stored bars of some symbols opening in [start, end), the buffered copies winning
        (they are newer): what a higher timeframe's bucket is rebuilt from."""
        assert self._db is not None
        out: dict[tuple[str, int], Bar] = {}
        for i in range(0, len(symbols), 500):  # SQLite's bound on parameters is 32,766
            chunk = list(symbols[i:i + 500])
            async with self._db.execute(
                "SELECT symbol, ts, open, high, low, close, volume, source, flags FROM bars WHERE timeframe = ? "
                f"AND ts >= ? AND ts < ? AND symbol IN ({','.join('?' * len(chunk))})",  # noqa: S608 - placeholders
                (timeframe, start, end, *chunk),
            ) as cur:
                for r in await cur.fetchall():
                    out[(r[0], r[1])] = Bar(r[0], timeframe, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])
        return self._merge_between(out, symbols, timeframe, start, end)

    async def delete_bars(self, symbol: str, timeframe: str, opens: Sequence[int]) -> None:
        """Remove some bars of a symbol (stored and buffered): higher-timeframe bars that a
        re-aggregation under new bucket rules replaced."""
        self._drop_buffered(symbol, timeframe, opens)
        if opens and self._db is not None:
            await self._write("DELETE FROM bars WHERE symbol = ? AND timeframe = ? AND ts = ?",
                              [(symbol, timeframe, ts) for ts in opens])

    async def mark_empty(self, symbol: str, timeframe: str, minutes: list[int]) -> None:
        """Record minutes that had no trades, so gap scans skip them."""
        if not minutes or self._db is None:
            return
        await self._write("INSERT OR IGNORE INTO empty_minutes VALUES (?, ?, ?)",
                          [(symbol, timeframe, ts) for ts in minutes])

    async def summary(self, symbol: str) -> dict[str, dict[str, int]]:
        """Rows, first and last bar open per timeframe of a symbol."""
        assert self._db is not None
        async with self._db.execute(
            "SELECT timeframe, count(*), MIN(ts), MAX(ts) FROM bars WHERE symbol = ? GROUP BY timeframe", (symbol,)
        ) as cur:
            return {str(r[0]): {"rows": int(r[1]), "first": int(r[2]), "last": int(r[3])} for r in await cur.fetchall()}

    async def bootstrap_done(self, symbol: str) -> dict[tuple[str, int], int]:
        """(timeframe, cell) -> how far that bootstrap cell of a symbol is committed."""
        assert self._db is not None
        async with self._db.execute("SELECT timeframe, cell, covered FROM bootstrap_cells WHERE symbol = ?",
                                    (symbol,)) as cur:
            return {(str(r[0]), int(r[1])): int(r[2]) for r in await cur.fetchall()}

    async def mark_bootstrapped(self, symbol: str, timeframe: str, cell: int, covered: int) -> None:
        """Record that a bootstrap cell's bars before `covered` are committed."""
        await self._write("INSERT INTO bootstrap_cells VALUES (?, ?, ?, ?) ON CONFLICT (symbol, timeframe, cell) "
                          "DO UPDATE SET covered = max(covered, excluded.covered)", [(symbol, timeframe, cell, covered)])

    async def get_meta(self, key: str) -> str | None:
        """A value of the meta table."""
        assert self._db is not None
        async with self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value of the meta table."""
        await self._write("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                          [(key, value)])

    async def create(self, schema: str) -> None:
        """Create another component's tables (idempotent `CREATE ... IF NOT EXISTS` statements)."""
        assert self._db is not None
        async with self._lock:
            await self._db.executescript(schema)
            await self._db.commit()

    async def execute(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        """Another component's write: `sql` for each row, in one transaction (SQLiteStoreError on failure)."""
        await self._write(sql, rows)

    async def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Another component's read: every row `sql` selects."""
        assert self._db is not None
        async with self._db.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        """One small write in its own transaction, never inside a flush's; a failure (a full
        disk, say) is rolled back and raised as SQLiteStoreError."""
        assert self._db is not None
        async with self._lock:
            try:
                await self._db.executemany(sql, rows)
                await self._db.commit()
            except sqlite3.Error as exc:
                await self._rollback()
                raise SQLiteStoreError(f"{sql.split('(')[0].strip()}: {type(exc).__name__}: {exc}") from exc

    async def _rollback(self) -> None:
        assert self._db is not None
        try:
            await self._db.rollback()
        except sqlite3.Error:  # the connection may be unusable; the error that led here matters
            pass

    async def delete_older(self, cutoff: int | Mapping[str, int], batch_rows: int = 5000) -> int:
        """Delete bars (and empty-minute marks) opening before `cutoff` (one for every timeframe,
        or per timeframe: one not named is kept), one symbol and timeframe at a time along the
        primary key, committing every `batch_rows` rows so the writer is never held long;
        returns rows deleted."""
        assert self._db is not None
        async with self._db.execute("SELECT DISTINCT symbol, timeframe FROM bars") as cur:
            series = await cur.fetchall()
        cutoffs = cutoff if isinstance(cutoff, Mapping) else {str(tf): cutoff for _, tf in series}
        deleted = pending = 0
        for table in ("bars", "empty_minutes", "features"):
            for symbol, timeframe in series:
                if timeframe not in cutoffs:
                    continue
                cutoff = cutoffs[timeframe]
                while True:
                    async with self._lock:  # never inside a flush's transaction
                        try:
                            cur = await self._db.execute(
                                f"DELETE FROM {table} WHERE symbol = ? AND timeframe = ? AND ts < ? AND ts IN "  # noqa: S608
                                f"(SELECT ts FROM {table} WHERE symbol = ? AND timeframe = ? AND ts < ? LIMIT ?)",
                                (symbol, timeframe, cutoff, symbol, timeframe, cutoff, batch_rows))
                            n = cur.rowcount
                            pending += n
                            if pending >= batch_rows or n < batch_rows:
                                await self._db.commit()
                                pending = 0
                        except sqlite3.Error as exc:
                            await self._rollback()
                            raise SQLiteStoreError(f"retention delete failed: {type(exc).__name__}: {exc}") from exc
                    deleted += n if table == "bars" else 0
                    if n < batch_rows:
                        break
        return deleted

    async def features_at(self, symbols: Sequence[str], timeframe: str) -> dict[str, tuple[int, np.ndarray]]:
        """Each symbol's newest persisted features (buffered ones win): (bar open, values)."""
        assert self._db is not None
        out: dict[str, tuple[int, np.ndarray]] = {}
        for symbol in symbols:
            async with self._db.execute(NEWEST_FEATURES, (symbol, timeframe, 2**62)) as cur:
                row = await cur.fetchone()
            if row is not None:
                out[symbol] = (int(row[0]), np.frombuffer(row[1], dtype="<f8"))
        return self._merge_features(out, symbols, timeframe)

    async def last_stored(self, timeframe: str, symbols: Sequence[str] | None = None) -> dict[str, int]:
        """Each symbol's newest stored bar open (of `symbols` only, if given: one index seek each
        instead of a scan of the table, for a partition taken over): where fetching resumes."""
        assert self._db is not None
        args: tuple[str, ...]
        if symbols is None:
            sql, args = "SELECT symbol, MAX(ts) FROM bars WHERE timeframe = ? GROUP BY symbol", (timeframe,)
        else:
            sql = ("SELECT s.value, (SELECT MAX(ts) FROM bars WHERE symbol = s.value AND timeframe = ?) "
                   "FROM json_each(?) AS s")
            args = (timeframe, orjson.dumps(list(symbols)).decode())
        async with self._db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        return self._resumed({str(r[0]): int(r[1]) for r in rows if r[1] is not None})

    async def recent(self, symbols: list[str], timeframe: str, limit: int) -> dict[str, list[Bar]]:
        """Each symbol's newest `limit` closed bars, oldest first, the buffered copies winning
        (they are newer: a revision, or bars not yet flushed): what warms the features."""
        assert self._db is not None
        out: dict[str, dict[int, Bar]] = {}
        for symbol in symbols:
            async with self._db.execute(
                "SELECT ts, open, high, low, close, volume, source, flags FROM bars "
                "WHERE symbol = ? AND timeframe = ? ORDER BY ts DESC LIMIT ?", (symbol, timeframe, limit),
            ) as cur:
                rows = await cur.fetchall()
            out[symbol] = {r[0]: Bar(symbol, timeframe, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows}
        return self._merge_recent(out, symbols, timeframe, limit)
