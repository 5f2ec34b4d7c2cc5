"""PostgreSQL store: the durable record every shard of a cluster writes and every reader can
query (`SIDECAR_STORE_URL=postgresql://...`). The same tables and the same idempotent upserts
as the SQLite store, so a flush sent twice (a lost commit reply, a new owner replaying the
minutes since the last stored bar) changes nothing.

- A flush COPYs the buffered bars and features into per-connection temporary staging tables
  (binary COPY: no statement per row) and merges each with one `INSERT ... SELECT ... ON
  CONFLICT DO UPDATE`, in one transaction.
- `bars` and `features` are partitioned natively: by timeframe (LIST), then by bar open (RANGE)
  in spans that suit the timeframe (a month of minutes, a year of hours, a decade of days), so
  retention, which is per timeframe, drops whole partitions and trims at most one per series.
  Partitions are created before the rows that need them; two shards creating the same one at
  once is expected and harmless.
- Other components' tables are written in the common subset of SQLite's and PostgreSQL's SQL
  (`ON CONFLICT` upserts); `?` placeholders and SQLite's column types are translated here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
import numpy as np

from ..bars import Bar, Row
from ..clock import Clock
from ..errors import PostgresStoreError
from ..setting_parsers import redact_url
from .buffer import BufferedStore, FeatureRow

log = logging.getLogger(__name__)
FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError)
"""What a call can raise when the server fails or goes away. InternalClientError: a connection
the server dropped mid-operation can be left in a state asyncpg refuses ("cannot switch to
state 12; another operation is in progress", asyncpg#1069), seen when PostgreSQL restarts."""

PARTITIONED = ("bars", "features")
SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL, timeframe TEXT NOT NULL, ts BIGINT NOT NULL,
    open DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL,
    close DOUBLE PRECISION NOT NULL, volume DOUBLE PRECISION NOT NULL, source TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, timeframe, ts)
) PARTITION BY LIST (timeframe);
CREATE TABLE IF NOT EXISTS features (
    symbol TEXT NOT NULL, timeframe TEXT NOT NULL, ts BIGINT NOT NULL, vals BYTEA NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
) PARTITION BY LIST (timeframe);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bootstrap_cells (
    symbol TEXT NOT NULL, timeframe TEXT NOT NULL, cell BIGINT NOT NULL, covered BIGINT NOT NULL,
    PRIMARY KEY (symbol, timeframe, cell)
);
CREATE TABLE IF NOT EXISTS empty_minutes (
    symbol TEXT NOT NULL, timeframe TEXT NOT NULL, ts BIGINT NOT NULL,
    PRIMARY KEY (symbol, timeframe, ts)
);
"""
_BAR_COLUMNS = ("symbol", "timeframe", "ts", "open", "high", "low", "close", "volume", "source", "flags")
_MERGE_BARS = """
INSERT INTO bars SELECT * FROM stage_bars
ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, source = excluded.source, flags = excluded.flags
"""
_MERGE_FEATURES = ("INSERT INTO features SELECT * FROM stage_features "
                   "ON CONFLICT (symbol, timeframe, ts) DO UPDATE SET vals = excluded.vals")
_STAGES = ("CREATE TEMP TABLE IF NOT EXISTS stage_bars (LIKE bars) ON COMMIT DELETE ROWS;"
           "CREATE TEMP TABLE IF NOT EXISTS stage_features (LIKE features) ON COMMIT DELETE ROWS")
# Partition span per timeframe: months for minutes, years for hours, decades for days.
_SPAN_MONTHS = {"1m": 1, "5m": 1, "15m": 12, "1h": 12, "4h": 12, "1d": 120}
_TYPES = ((r"\bINTEGER\b", "BIGINT"), (r"\bREAL\b", "DOUBLE PRECISION"), (r"\bBLOB\b", "BYTEA"),
          (r"\)\s*WITHOUT ROWID", ")"))


def dialect(sql: str) -> str:
    """SQLite-flavoured SQL of the common subset as PostgreSQL's: `?` placeholders numbered,
    SQLite's storage types widened (epoch seconds and counts are 64-bit), `INSERT OR IGNORE`
    as `ON CONFLICT DO NOTHING`."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    out = re.sub(r"\?", number, sql)
    for pattern, replacement in _TYPES:
        out = re.sub(pattern, replacement, out)
    if re.match(r"\s*INSERT OR IGNORE", out):
        out = re.sub(r"INSERT OR IGNORE", "INSERT", out, count=1).rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return out


def _month(ts: int) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    return d.year * 12 + d.month - 1


def _epoch(month: int) -> int:
    return int(datetime(month // 12, month % 12 + 1, 1, tzinfo=UTC).timestamp())


def span(timeframe: str, ts: int) -> tuple[int, int]:
    """The [start, end) epoch seconds of the partition holding a bar of `timeframe` opening at `ts`."""
    width = _SPAN_MONTHS.get(timeframe, 12)
    first = _month(ts) // width * width
    return _epoch(first), _epoch(first + width)


def _name(table: str, timeframe: str, start: int | None = None) -> str:
    """A partition's name (timeframes are validated names like 15m; quoted anyway)."""
    base = f"{table}_{timeframe}"
    if start is not None:
        base += "_" + datetime.fromtimestamp(start, UTC).strftime("%Y%m")
    return '"' + base + '"'


class PostgresStore(BufferedStore):
    """Buffers closed bars and flushes them to PostgreSQL in one transaction.

    :param url: postgresql://user:password@host:port/database (or a unix socket via ?host=/dir).
    :param clock: stamps the last flush.
    :param max_buffered: bound of the buffer while flushes fail (`BufferedStore`).
    :param timeout_s: deadline for connecting and for one statement.
    :param pool_size: connections kept (the flush takes one, reads the others).
    """

    kind = "postgres"

    def __init__(self, *, url: str, clock: Clock, max_buffered: int = 1_000_000, timeout_s: float = 10.0,
                 pool_size: int = 4) -> None:
        super().__init__(clock=clock, max_buffered=max_buffered)
        self.url = url
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._partitions: set[tuple[str, str, int | None]] = set()  # known to exist

    async def start(self) -> None:
        """Connect and create the schema (PostgresStoreError if the server cannot be reached)."""
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size,
                                                   timeout=self.timeout_s, command_timeout=self.timeout_s)
            async with self._pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock(5417)")  # shards starting at once: one creates
                try:
                    await conn.execute(SCHEMA)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(5417)")
        except FAILURES as exc:
            raise PostgresStoreError(f"cannot open the store: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Flush what is buffered, then close the pool (idempotent)."""
        if self._pool is None:
            return
        try:
            await self.flush()
        except PostgresStoreError as exc:
            log.error("closing with %d bars unflushed: %s", len(self._buffer), exc)
        pool, self._pool = self._pool, None
        try:
            await pool.close()
        except FAILURES:
            pool.terminate()

    def health(self) -> dict[str, object]:
        """Buffer, last flush and last error, and the server (password masked)."""
        return {**super().health(), "url": redact_url(self.url)}

    def _open(self) -> bool:
        return self._pool is not None

    def _error(self, message: str) -> PostgresStoreError:
        return PostgresStoreError(message)

    async def _ensure_partitions(self, conn: asyncpg.Connection, needed: set[tuple[str, str, int | None]]) -> None:
        """Create the partitions these (table, timeframe, span start) need, outside the flush's
        transaction: a partition another shard created meanwhile is fine."""
        for table, timeframe, start in sorted(needed - self._partitions, key=lambda k: (k[2] is not None, k)):
            if start is None:
                sql = (f"CREATE TABLE IF NOT EXISTS {_name(table, timeframe)} PARTITION OF {table} "
                       f"FOR VALUES IN ('{timeframe}') PARTITION BY RANGE (ts)")
            else:
                lo, hi = span(timeframe, start)
                sql = (f"CREATE TABLE IF NOT EXISTS {_name(table, timeframe, lo)} PARTITION OF "
                       f"{_name(table, timeframe)} FOR VALUES FROM ({lo}) TO ({hi})")
            try:
                await conn.execute(sql)
            except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                pass  # another shard won the race to create it
            self._partitions.add((table, timeframe, start))

    async def _commit(self, rows: list[Row], features: list[FeatureRow]) -> None:
        assert self._pool is not None
        needed: set[tuple[str, str, int | None]] = set()
        for table, keys in (("bars", {(r[1], r[2]) for r in rows}), ("features", {(r[1], r[2]) for r in features})):
            for timeframe, ts in keys:
                needed |= {(table, timeframe, None), (table, timeframe, span(timeframe, ts)[0])}
        try:
            async with self._pool.acquire() as conn:
                await self._ensure_partitions(conn, needed)
                async with conn.transaction():
                    await conn.execute(_STAGES)
                    if rows:
                        await conn.copy_records_to_table("stage_bars", records=rows, columns=_BAR_COLUMNS)
                        await conn.execute(_MERGE_BARS)
                    if features:
                        await conn.copy_records_to_table("stage_features", records=features)
                        await conn.execute(_MERGE_FEATURES)
        except FAILURES as exc:  # the buffer keeps the rows and reports the failure
            await self._replace_broken(exc)
            raise

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        assert self._pool is not None, "store not started"
        try:
            return await self._pool.fetch(sql, *args)
        except FAILURES as exc:
            raise await self._failed("read", exc) from exc

    async def _replace_broken(self, exc: BaseException) -> None:
        """After InternalClientError, have the pool replace its connections at their next
        acquire: the one asyncpg left in a broken state would fail every call that gets it."""
        if isinstance(exc, asyncpg.InternalClientError) and self._pool is not None:
            await self._pool.expire_connections()

    async def _failed(self, what: str, exc: BaseException) -> PostgresStoreError:
        """A failed call as PostgresStoreError (after `_replace_broken`)."""
        await self._replace_broken(exc)
        return PostgresStoreError(f"{what} failed: {type(exc).__name__}: {exc}")

    async def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        """One small write in its own transaction; its failure as PostgresStoreError."""
        if self._pool is None or not rows:
            return
        try:
            async with self._lock, self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(sql, rows)
        except FAILURES as exc:
            raise await self._failed(sql.split("(")[0].strip(), exc) from exc

    async def known_minutes(self, symbol: str, timeframe: str, start: int, end: int) -> np.ndarray:
        """Bar opens in [start, end) that are stored, buffered, or confirmed empty."""
        rows = await self._fetch(
            "SELECT ts FROM bars WHERE symbol = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4 "
            "UNION SELECT ts FROM empty_minutes WHERE symbol = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4",
            symbol, timeframe, start, end)
        return np.unique(np.array([r[0] for r in rows] + self._buffered_opens(symbol, start, end), dtype=np.int64))

    async def values_in(self, symbol: str, timeframe: str, start: int, end: int) -> dict[int, tuple[float, ...]]:
        """Stored (and buffered) bars opening in [start, end): ts -> (open, high, low, close, volume)."""
        rows = await self._fetch("SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = $1 AND "
                                 "timeframe = $2 AND ts >= $3 AND ts < $4", symbol, timeframe, start, end)
        return self._merge_values({int(r[0]): tuple(r[1:]) for r in rows}, symbol, timeframe, start, end)

    async def between(self, symbols: Sequence[str], timeframe: str, start: int, end: int) -> list[Bar]:
        """Stored bars of some symbols opening in [start, end), the buffered copies winning."""
        rows = await self._fetch("SELECT symbol, ts, open, high, low, close, volume, source, flags FROM bars "
                                 "WHERE timeframe = $1 AND ts >= $2 AND ts < $3 AND symbol = ANY($4::text[])",
                                 timeframe, start, end, list(symbols))
        out = {(r[0], r[1]): Bar(r[0], timeframe, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows}
        return self._merge_between(out, symbols, timeframe, start, end)

    async def delete_bars(self, symbol: str, timeframe: str, opens: Sequence[int]) -> None:
        """Remove some bars of a symbol (stored and buffered)."""
        self._drop_buffered(symbol, timeframe, opens)
        await self._write("DELETE FROM bars WHERE symbol = $1 AND timeframe = $2 AND ts = $3",
                          [(symbol, timeframe, ts) for ts in opens])

    async def mark_empty(self, symbol: str, timeframe: str, minutes: list[int]) -> None:
        """Record minutes that had no trades, so gap scans skip them."""
        await self._write("INSERT INTO empty_minutes VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                          [(symbol, timeframe, ts) for ts in minutes])

    async def summary(self, symbol: str) -> dict[str, dict[str, int]]:
        """Rows, first and last bar open per timeframe of a symbol."""
        rows = await self._fetch("SELECT timeframe, count(*), MIN(ts), MAX(ts) FROM bars WHERE symbol = $1 "
                                 "GROUP BY timeframe", symbol)
        return {str(r[0]): {"rows": int(r[1]), "first": int(r[2]), "last": int(r[3])} for r in rows}

    async def bootstrap_done(self, symbol: str) -> dict[tuple[str, int], int]:
        """(timeframe, cell) -> how far that bootstrap cell of a symbol is committed."""
        rows = await self._fetch("SELECT timeframe, cell, covered FROM bootstrap_cells WHERE symbol = $1", symbol)
        return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}

    async def mark_bootstrapped(self, symbol: str, timeframe: str, cell: int, covered: int) -> None:
        """Record that a bootstrap cell's bars before `covered` are committed."""
        await self._write("INSERT INTO bootstrap_cells VALUES ($1, $2, $3, $4) ON CONFLICT (symbol, timeframe, cell) "
                          "DO UPDATE SET covered = GREATEST(bootstrap_cells.covered, excluded.covered)",
                          [(symbol, timeframe, cell, covered)])

    async def get_meta(self, key: str) -> str | None:
        """A value of the meta table."""
        rows = await self._fetch("SELECT value FROM meta WHERE key = $1", key)
        return None if not rows else str(rows[0][0])

    async def set_meta(self, key: str, value: str) -> None:
        """Set a value of the meta table."""
        await self._write("INSERT INTO meta VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                          [(key, value)])

    async def create(self, schema: str) -> None:
        """Create another component's tables (idempotent statements in SQLite's flavour)."""
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(dialect(schema))
        except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
            pass  # another shard created them at the same moment
        except FAILURES as exc:
            raise await self._failed("creating tables", exc) from exc

    async def execute(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        """Another component's write: `sql` (SQLite's flavour) for each row, in one transaction."""
        await self._write(dialect(sql), rows)

    async def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Another component's read: every row `sql` (SQLite's flavour) selects."""
        return [tuple(r) for r in await self._fetch(dialect(sql), *params)]

    async def delete_older(self, cutoff: int | Mapping[str, int], batch_rows: int = 5000) -> int:
        """Delete bars, features and empty-minute marks opening before `cutoff` (one for every
        timeframe, or per timeframe: one not named is kept): partitions wholly before it are
        dropped, the one straddling it is trimmed; returns bar rows deleted."""
        timeframes = [str(r[0]) for r in await self._fetch("SELECT DISTINCT timeframe FROM empty_minutes")]
        parts = await self._fetch(
            "SELECT parent.relname, child.relname, pg_get_expr(child.relpartbound, child.oid) FROM pg_inherits i "
            "JOIN pg_class child ON child.oid = i.inhrelid JOIN pg_class parent ON parent.oid = i.inhparent "
            "WHERE parent.relname LIKE 'bars\\_%' OR parent.relname LIKE 'features\\_%'")
        cutoffs = cutoff if isinstance(cutoff, Mapping) else {
            tf: cutoff for tf in {*timeframes, *(str(p[0]).split("_", 1)[1] for p in parts)}}
        deleted = 0
        try:
            async with self._lock, self._pool.acquire() as conn:  # type: ignore[union-attr]
                for parent, child, bound in parts:
                    table, timeframe = str(parent).split("_", 1)
                    if timeframe not in cutoffs:
                        continue
                    hi = int(re.findall(r"\d+", str(bound))[-1])  # FOR VALUES FROM ('lo') TO ('hi')
                    if hi <= cutoffs[timeframe]:
                        n = await conn.fetchval(f'SELECT count(*) FROM "{child}"') if table == "bars" else 0
                        await conn.execute(f'DROP TABLE "{child}"')
                        self._partitions.clear()  # re-checked before the next flush
                        deleted += n
                for timeframe, before in cutoffs.items():
                    for table in ("bars", "features", "empty_minutes"):
                        status = await conn.execute(f"DELETE FROM {table} WHERE timeframe = $1 AND ts < $2",  # noqa: S608
                                                    timeframe, before)
                        deleted += int(status.split()[-1]) if table == "bars" else 0
        except FAILURES as exc:
            raise await self._failed("retention delete", exc) from exc
        return deleted

    async def features_at(self, symbols: Sequence[str], timeframe: str) -> dict[str, tuple[int, np.ndarray]]:
        """Each symbol's newest persisted features (buffered ones win): (bar open, values)."""
        rows = await self._fetch("SELECT DISTINCT ON (symbol) symbol, ts, vals FROM features WHERE timeframe = $1 "
                                 "AND symbol = ANY($2::text[]) ORDER BY symbol, ts DESC", timeframe, list(symbols))
        out = {str(r[0]): (int(r[1]), np.frombuffer(r[2], dtype="<f8")) for r in rows}
        return self._merge_features(out, symbols, timeframe)

    async def last_stored(self, timeframe: str, symbols: Sequence[str] | None = None) -> dict[str, int]:
        """Each symbol's newest stored bar open (of `symbols` only, if given: one index seek each
        instead of a scan of the table, for a partition taken over): where fetching resumes."""
        if symbols is None:
            rows = await self._fetch("SELECT symbol, MAX(ts) FROM bars WHERE timeframe = $1 GROUP BY symbol",
                                     timeframe)
        else:
            rows = await self._fetch(
                "SELECT s.symbol, (SELECT MAX(ts) FROM bars WHERE bars.symbol = s.symbol AND timeframe = $1) "
                "FROM unnest($2::text[]) AS s(symbol)", timeframe, list(symbols))
        return self._resumed({str(r[0]): int(r[1]) for r in rows if r[1] is not None})

    async def recent(self, symbols: list[str], timeframe: str, limit: int) -> dict[str, list[Bar]]:
        """Each symbol's newest `limit` closed bars, oldest first, the buffered copies winning."""
        rows = await self._fetch(
            "SELECT b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume, b.source, b.flags "
            "FROM unnest($1::text[]) AS s(symbol) CROSS JOIN LATERAL (SELECT * FROM bars WHERE bars.symbol = s.symbol "
            "AND bars.timeframe = $2 ORDER BY ts DESC LIMIT $3) b", list(symbols), timeframe, limit)
        out: dict[str, dict[int, Bar]] = {s: {} for s in symbols}
        for r in rows:
            out[r[0]][r[1]] = Bar(r[0], timeframe, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])
        return self._merge_recent(out, symbols, timeframe, limit)
