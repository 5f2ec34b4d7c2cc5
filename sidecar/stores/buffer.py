"""The durable stores' shared part: closed bars and their features buffered in memory,
deduplicated by key, and flushed in one transaction by the store behind (SQLite or
PostgreSQL); a flush that fails keeps its rows for the next try, under anything buffered
meanwhile. Reads merge the buffer over what is stored: the buffered copy of a bar is newer
(a revision, or not flushed yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..bars import Bar, Row
from ..clock import Clock
from ..cycle.batch import Batch
from ..errors import DurableStoreError

log = logging.getLogger(__name__)

FeatureRow = tuple[str, str, int, bytes]
"""A features row: symbol, timeframe, bar open, the values as little-endian float64s."""


class BufferedStore:
    """The buffer of a durable store; subclasses commit it (`_commit`) and read the rest.

    :param clock: stamps the last flush.
    :param max_buffered: bound of the buffer while flushes fail; beyond it the oldest bars are
        dropped and counted (the newest matter most live, and the gap backfill can fetch the
        oldest again while the source still serves them).
    """

    kind = "durable"

    def __init__(self, *, clock: Clock, max_buffered: int) -> None:
        self.clock = clock
        self.max_buffered = max_buffered
        self._dropped = 0
        # rows, not Bars: a minute's close adds one per symbol, and a tuple is built and keyed
        # in C where a frozen dataclass costs a Python call per field
        self._rows: dict[tuple[str, str, int], Row] = {}
        self._feature_rows: dict[tuple[str, str, int], bytes] = {}  # flushed with the bars
        # What the cycles added, as arrays, made into rows only when the buffer is read or
        # flushed: a minute-closing cycle at 5,000 symbols spent ~10 ms making its closed bars
        # and their features into rows, which the flush (half a period after the cycles) or a
        # read now does outside the cycle. In order: a later copy of a key wins.
        self._pending: list[Callable[[], None]] = []
        self._pending_bars = 0  # bars in `_pending`
        self._lock = asyncio.Lock()  # one transaction at a time: small writes never interleave with a flush
        self.persisted_through: dict[str, int] = {}
        self.last_flush_at: float | None = None
        self.last_flush_rows = 0
        self.last_error: str | None = None

    async def _commit(self, rows: list[Row], features: list[FeatureRow]) -> None:
        """Write bars and features in one transaction (idempotent upserts); raise on failure."""
        raise NotImplementedError

    async def _rollback(self) -> None:
        """Undo what a failed `_commit` left open, if the connection needs it."""

    def health(self) -> dict[str, object]:
        """Buffer, last flush and last error."""
        return {
            "state": "ok" if self.last_error is None else "degraded",
            "buffered": len(self._buffer),
            "dropped_total": self.dropped,
            "last_flush_age_s": None if self.last_flush_at is None else round(self.clock.time() - self.last_flush_at, 3),
            "last_flush_rows": self.last_flush_rows,
            "last_error": self.last_error,
            "persisted_through": dict(self.persisted_through),
        }

    @property
    def _buffer(self) -> dict[tuple[str, str, int], Row]:
        """The buffered bars by key, with everything added so far."""
        self._settle()
        return self._rows

    @property
    def _features(self) -> dict[tuple[str, str, int], bytes]:
        """The buffered features by key, with everything added so far."""
        self._settle()
        return self._feature_rows

    @property
    def buffered(self) -> int:
        """Bars waiting for the next flush."""
        return len(self._buffer)

    @property
    def waiting(self) -> int:
        """`buffered` without making the rows (for the gauge the cycle sets every second): a bar
        added again before they are made counts twice."""
        return len(self._rows) + self._pending_bars

    @property
    def dropped(self) -> int:
        """Bars dropped by the buffer's bound."""
        self._settle()
        return self._dropped

    def _settle(self) -> None:
        """Make what the cycles added into rows, in the order added."""
        while self._pending:
            pending, self._pending = self._pending, []
            for make in pending:
                make()
        self._pending_bars = 0

    def buffered_bars(self, symbols: set[str]) -> list[Bar]:
        """Bars of these symbols not yet flushed."""
        return [Bar(*r) for r in self._buffer.values() if r[0] in symbols]

    def add(self, bars: Iterable[Bar]) -> None:
        """Buffer closed bars; a later copy of the same key replaces the earlier one."""
        self.add_rows([b.row for b in bars])

    def add_rows(self, rows: Sequence[Row]) -> None:
        """`add` for bars given as rows of the `bars` table's columns."""
        if rows:
            self._pending.append(lambda: self._put(rows))
            self._pending_bars += len(rows)

    def add_batch(self, rows: Batch, symbols: Sequence[str], source_names: Sequence[str], timeframe: str) -> None:
        """`add` for a cycle's closed bars as arrays (`symbols` and `source_names` by slot and
        source code; copied here, as the rows are made later, when a slot may hold another symbol)."""
        if len(rows):
            symbols, source_names = list(symbols), list(source_names)
            self._pending.append(lambda: self._put(rows.rows(symbols, source_names, timeframe)))
            self._pending_bars += len(rows)

    def _put(self, rows: Sequence[Row]) -> None:
        self._rows.update(zip([r[:3] for r in rows], rows, strict=True))
        over = len(self._rows) - self.max_buffered
        if over > 0:
            for key in sorted(self._rows, key=lambda k: k[2])[:over]:
                del self._rows[key]
            self._dropped += over
            log.error("%s buffer over %d bars: dropped the %d oldest (%d in all)", self.kind, self.max_buffered, over,
                      self._dropped)

    def add_features(self, timeframe: str, symbols: Sequence[str], ts: np.ndarray, values: np.ndarray) -> None:
        """Buffer the features at some bars' close ((n, outputs) values): written with the next flush."""
        def put() -> None:
            raw, width = np.ascontiguousarray(values, dtype="<f8").tobytes(), 8 * values.shape[1]
            self._feature_rows.update(zip(zip(symbols, [timeframe] * len(symbols), ts.tolist(), strict=True),
                                          [raw[i * width:(i + 1) * width] for i in range(len(symbols))], strict=True))
        self._pending.append(put)

    async def flush(self) -> int:
        """Write the buffer (bars and features) in one transaction; return bars written. On
        failure the rows stay buffered and DurableStoreError (the store's own kind) is raised."""
        async with self._lock:
            if not (self._buffer or self._features) or not self._open():
                return 0
            batch, self._rows = self._rows, {}
            features, self._feature_rows = self._feature_rows, {}
            rows = list(batch.values())
            log.info("%s flush begin rows=%d", self.kind, len(rows))
            try:
                await self._commit(rows, [(*k, v) for k, v in features.items()])
            except Exception as exc:
                # Keep what failed, under anything buffered meanwhile (newer copies win).
                batch.update(self._buffer)
                self._rows = batch
                features.update(self._features)
                self._feature_rows = features
                self.last_error = f"{type(exc).__name__}: {exc}"
                await self._rollback()
                raise self._error(f"flush of {len(rows)} bars failed: {self.last_error}") from exc
            log.info("%s flush committed rows=%d", self.kind, len(rows))
            self.last_error = None
            self.last_flush_at = self.clock.time()
            self.last_flush_rows = len(rows)
            through = self.persisted_through
            for symbol, _tf, ts, *_ in rows:
                if ts > through.get(symbol, -1):
                    through[symbol] = ts
            return len(rows)

    def _open(self) -> bool:
        """Whether the store is connected."""
        raise NotImplementedError

    def _error(self, message: str) -> DurableStoreError:
        """The store's own error type around a message."""
        return DurableStoreError(message)

    # The buffer's part of each read: merged over the stored rows by the subclasses' reads.

    def _buffered_opens(self, symbol: str, start: int, end: int) -> list[int]:
        return [r[2] for r in self._buffer.values() if r[0] == symbol and start <= r[2] < end]

    def _merge_values(self, out: dict[int, tuple[float, ...]], symbol: str, timeframe: str, start: int,
                      end: int) -> dict[int, tuple[float, ...]]:
        for r in self._buffer.values():
            if r[0] == symbol and r[1] == timeframe and start <= r[2] < end:
                out[r[2]] = r[3:8]
        return out

    def _merge_between(self, out: dict[tuple[str, int], Bar], symbols: Sequence[str], timeframe: str, start: int,
                       end: int) -> list[Bar]:
        wanted = set(symbols)
        for r in self._buffer.values():
            if r[1] == timeframe and start <= r[2] < end and r[0] in wanted:
                out[(r[0], r[2])] = Bar(*r)
        return list(out.values())

    def _merge_features(self, out: dict[str, tuple[int, np.ndarray]], symbols: Sequence[str],
                        timeframe: str) -> dict[str, tuple[int, np.ndarray]]:
        wanted = set(symbols)
        for (symbol, tf, ts), blob in self._features.items():
            if tf == timeframe and symbol in wanted and (symbol not in out or ts >= out[symbol][0]):
                out[symbol] = (ts, np.frombuffer(blob, dtype="<f8"))
        return out

    def _merge_recent(self, out: dict[str, dict[int, Bar]], symbols: list[str], timeframe: str,
                      limit: int) -> dict[str, list[Bar]]:
        if self._buffer:
            for bar in self.buffered_bars(set(symbols)):
                if bar.timeframe == timeframe:
                    out[bar.symbol][bar.ts] = bar
        return {s: [bars[t] for t in sorted(bars)][-limit:] if limit else [] for s, bars in out.items()}

    def _resumed(self, last: dict[str, int]) -> dict[str, int]:
        for symbol, ts in last.items():
            self.persisted_through[symbol] = max(ts, self.persisted_through.get(symbol, -1))
        return last

    def _drop_buffered(self, symbol: str, timeframe: str, opens: Sequence[int]) -> None:
        rows = self._buffer
        for ts in opens:
            rows.pop((symbol, timeframe, ts), None)
