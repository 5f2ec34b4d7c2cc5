"""Training data: the stored bars, with the features the live daemon computes, as a Parquet
dataset; and the reader and the no-lookahead check that go with it.

Layout: `DIR/timeframe=<tf>/symbol=<SYM>/part-0.parquet` (Hive partitions, zstd), one file per
symbol and timeframe. Columns: `ts` (timestamp, seconds, UTC: the bar's open), `open`, `high`,
`low`, `close`, `volume` (float64), `flags` (int32: the bar flags), `source` (string), and with
features one float64 column per output named as in `/features` (NaN while warming up) and
`warm` (bool: every output but the cumulative ones has had the bars it needs to equal its
long-run value to 1e-9; `FeatureConfig.warmups`), and `origin_ts`: the first stored bar the
features were replayed from (VWAP restarts each session; OBV is a running sum from there,
shifted onto the OBV the daemon published where the features table has it, since the daemon's
sum may have begun later: `anchor_obv`).

Features come from the daemon's own engine (`FeatureBook`), replaying each symbol's stored bars
in time order from its first one, vectorized across symbols by bar index: never a second
implementation. A feature at bar t therefore depends only on bars up to t, which
`check_no_lookahead` proves by recomputing on truncated histories.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .features.book import FeatureBook
from .features.config import FeatureConfig
from .symbols import lookup, parse_symbol
from .timeframes import ALL as ALL_TIMEFRAMES

BAR_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(slots=True)
class Series:
    """Some symbols' bars of one timeframe, concatenated in (symbol, ts) order."""

    symbols: list[str]
    offsets: np.ndarray  # symbol k's rows are offsets[k]:offsets[k + 1]
    ts: np.ndarray
    values: np.ndarray  # (5, n): open, high, low, close, volume
    flags: np.ndarray
    source: list[str] = field(default_factory=list)

    def rows(self, k: int) -> slice:
        """Symbol k's rows."""
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))


def load(db: Path, symbols: Sequence[str], timeframe: str, end: int | None = None) -> Series:
    """Every stored bar of some symbols and one timeframe opening before `end`, oldest first."""
    names = [parse_symbol(s) for s in symbols]
    query = ("SELECT symbol, ts, open, high, low, close, volume, flags, source FROM bars WHERE timeframe = ? "
             f"AND symbol IN ({','.join('?' * len(names))})" + (" AND ts < ?" if end is not None else "")
             + " ORDER BY symbol, ts")
    params: list[object] = [timeframe, *names] + ([end] if end is not None else [])
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(query, params).fetchall()
    order = {s: i for i, s in enumerate(names)}
    found = sorted({r[0] for r in rows}, key=order.__getitem__)
    counts = np.array([0] * len(found), dtype=np.int64)
    position = {s: i for i, s in enumerate(found)}
    for r in rows:
        counts[position[r[0]]] += 1
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if not rows:
        return Series([], offsets, np.zeros(0, np.int64), np.zeros((5, 0)), np.zeros(0, np.int32))
    cols = list(zip(*rows, strict=True))
    return Series(found, offsets, np.array(cols[1], dtype=np.int64), np.array(cols[2:7], dtype=np.float64),
                  np.array(cols[7], dtype=np.int32), list(cols[8]))


def replay(series: Series, timeframe: str, config: FeatureConfig | None = None) -> np.ndarray:
    """The features after each bar, (rows, outputs), by the daemon's engine: every symbol from
    its first bar, one vectorized step per bar index across the symbols."""
    book = FeatureBook(config, timeframe=timeframe, capacity=max(1, len(series.symbols)))
    book.add([lookup(s) for s in series.symbols], {})
    slots = np.array([book.slots[s] for s in series.symbols], dtype=np.int64)
    counts = np.diff(series.offsets)
    out = np.full((len(series.ts), len(book.outputs)), np.nan)
    for depth in range(int(counts.max()) if len(counts) else 0):
        have = np.flatnonzero(counts > depth)
        rows = series.offsets[have] + depth
        values = np.vstack([series.values[:, rows], series.ts[rows].astype(np.float64)])
        book.commit_columns(slots[have], values)
        out[rows] = book.engine.out[:, slots[have]].T
    return out


def anchor_obv(db: Path, series: Series, timeframe: str, values: np.ndarray, config: FeatureConfig) -> None:
    """Shift each symbol's replayed OBV onto the one the daemon published (its newest row in the
    features table, where there is one): the daemon's running sum may have begun later than the
    first stored bar (history added afterwards), and differs from the replay's by a constant."""
    if not series.symbols:
        return
    n, row = len(config.outputs), config.outputs.index("obv")
    query = (f"SELECT symbol, MAX(ts), vals FROM features WHERE timeframe = ? AND symbol IN "
             f"({','.join('?' * len(series.symbols))}) AND ts <= ? GROUP BY symbol")
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = conn.execute(query, [timeframe, *series.symbols, int(series.ts[-1]) if len(series.ts) else 0])
            published = {r[0]: (int(r[1]), np.frombuffer(r[2], dtype="<f8")) for r in rows}
    except sqlite3.OperationalError:  # a database from before the features table
        return
    for k, sym in enumerate(series.symbols):
        if sym not in published or len(published[sym][1]) != n + 3:
            continue
        ts, vals = published[sym]
        rows_k = series.rows(k)
        at = np.flatnonzero(series.ts[rows_k] == ts)
        if len(at):
            values[rows_k, row] += vals[row] - values[rows_k.start + int(at[0]), row]


def warm_rows(series: Series, config: FeatureConfig | None = None) -> np.ndarray:
    """Per row: whether every non-cumulative output is past its warm-up (its index from the
    symbol's first bar reaches the longest one)."""
    need = max(w for w in (config or FeatureConfig()).warmups if w >= 0)
    index = np.arange(len(series.ts)) - np.repeat(series.offsets[:-1], np.diff(series.offsets))
    return index >= need


@dataclass(slots=True)
class ExportReport:
    """What an export wrote."""

    rows: int = 0
    files: int = 0
    symbols: dict[str, int] = field(default_factory=dict)  # per timeframe
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "features": 0.0, "write": 0.0})

    def summary(self) -> dict[str, object]:
        """As printed by the command."""
        return {"rows": self.rows, "files": self.files, "symbols": self.symbols, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows / max(self.seconds, 1e-9)),
                "stages_s": {k: round(v, 3) for k, v in self.stages.items()}}


def export(db: Path, out: Path, symbols: Sequence[str], timeframes: Sequence[str], start: int, end: int, *,
           features: bool = False, config: FeatureConfig | None = None, chunk: int = 500) -> ExportReport:
    """Write the bars (and features) of [start, end) as the Parquet dataset described above;
    features are replayed from each symbol's first stored bar, whatever `start` is. A
    partition written again replaces the old one."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    config = config or FeatureConfig()
    report = ExportReport()
    t_all = time.perf_counter()
    partitioning = ds.partitioning(pa.schema([("timeframe", pa.string()), ("symbol", pa.string())]), flavor="hive")
    options = ds.ParquetFileFormat().make_write_options(compression="zstd")
    for tf in timeframes:
        if tf not in ALL_TIMEFRAMES:
            raise ValueError(f"unknown timeframe {tf!r}; known: {', '.join(ALL_TIMEFRAMES)}")
        report.symbols[tf] = 0
        for i in range(0, len(symbols), chunk):
            t0 = time.perf_counter()
            series = load(db, symbols[i:i + chunk], tf, end)
            t1 = time.perf_counter()
            values = replay(series, tf, config) if features else None
            if values is not None:
                anchor_obv(db, series, tf, values, config)
            t2 = time.perf_counter()
            keep = np.flatnonzero(series.ts >= start)
            if not len(keep):
                continue
            owner = np.repeat(np.arange(len(series.symbols)), np.diff(series.offsets))[keep]
            origin = series.ts[series.offsets[:-1]][owner]
            names, source = np.unique(np.asarray(series.source, dtype=object)[keep], return_inverse=True)
            cols: dict[str, Any] = {
                "timeframe": pa.DictionaryArray.from_arrays(np.zeros(len(keep), np.int32), [tf]),
                "symbol": pa.DictionaryArray.from_arrays(owner.astype(np.int32), series.symbols),
                "ts": pa.array(series.ts[keep], type=pa.timestamp("s", tz="UTC")),
                **{name: series.values[j, keep] for j, name in enumerate(BAR_COLUMNS)},
                "flags": series.flags[keep],
                "source": pa.DictionaryArray.from_arrays(source.astype(np.int32), names.tolist()),
            }
            if values is not None:
                cols.update({name: values[keep, j] for j, name in enumerate(config.outputs)})
                cols["warm"] = warm_rows(series, config)[keep]
            cols["origin_ts"] = pa.array(origin, type=pa.timestamp("s", tz="UTC"))
            ds.write_dataset(pa.table(cols), str(out), format="parquet", partitioning=partitioning,
                             basename_template="part-{i}.parquet", file_options=options,
                             existing_data_behavior="delete_matching", max_partitions=chunk + 1)
            t3 = time.perf_counter()
            written = len(np.unique(owner))
            report.rows += len(keep)
            report.files += written
            report.symbols[tf] += written
            report.stages["read"] += t1 - t0
            report.stages["features"] += t2 - t1
            report.stages["write"] += t3 - t2
    report.seconds = time.perf_counter() - t_all
    return report


def read(path: Path | str, *, symbols: Sequence[str] | None = None, timeframes: Sequence[str] | None = None,
         start: int | None = None, end: int | None = None, columns: Sequence[str] | None = None) -> Any:
    """An exported dataset as a pandas DataFrame (with `timeframe` and `symbol` columns from
    the partitions), the filters pushed down to pyarrow: symbols, timeframes, bar opens in
    [start, end) (epoch seconds), and only `columns` (plus the partition columns)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    data = ds.dataset(str(path), format="parquet", partitioning="hive")
    expr = None

    def both(a: Any, b: Any) -> Any:
        return b if a is None else a & b

    if symbols is not None:
        expr = both(expr, ds.field("symbol").isin([parse_symbol(s) for s in symbols]))
    if timeframes is not None:
        expr = both(expr, ds.field("timeframe").isin(list(timeframes)))
    if start is not None:
        expr = both(expr, ds.field("ts") >= pa.scalar(start, type=pa.timestamp("s", tz="UTC")))
    if end is not None:
        expr = both(expr, ds.field("ts") < pa.scalar(end, type=pa.timestamp("s", tz="UTC")))
    wanted = None if columns is None else list(dict.fromkeys(["timeframe", "symbol", "ts", *columns]))
    frame = data.to_table(columns=wanted, filter=expr).to_pandas()
    return frame.sort_values(["timeframe", "symbol", "ts"], kind="stable").reset_index(drop=True)


def parse_time(raw: str) -> int:
    """`YYYY-MM-DD` (00:00 UTC) or ISO-8601 (UTC unless it names an offset) as epoch seconds;
    ValueError naming the expected forms."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(f"expected YYYY-MM-DD or ISO-8601, got {raw[:40]!r}") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp())


def check_no_lookahead(series: Series, compute: Callable[[Series], np.ndarray], cuts: Sequence[int],
                       names: Sequence[str]) -> list[tuple[str, str, int]]:
    """Recompute the features on each symbol's history cut after bar `c` (for each c in
    `cuts`, an index from its first bar) and compare that bar's values with the full
    history's: a feature that reads a later bar differs. Returns (symbol, output, cut) of every
    difference (bit-exact comparison; NaN equals NaN)."""
    full = compute(series)
    bad = []
    for c in cuts:
        keep = np.concatenate([np.arange(series.offsets[k], min(series.offsets[k] + c + 1, series.offsets[k + 1]))
                               for k in range(len(series.symbols))]).astype(np.int64)
        counts = np.minimum(np.diff(series.offsets), c + 1)
        cut = Series(series.symbols, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), series.ts[keep],
                     series.values[:, keep], series.flags[keep], [series.source[i] for i in keep.tolist()])
        part = compute(cut)
        for k, sym in enumerate(series.symbols):
            if np.diff(series.offsets)[k] <= c:
                continue
            a, b = full[series.offsets[k] + c], part[cut.offsets[k] + c]
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            bad += [(sym, names[j], c) for j in np.flatnonzero(~same).tolist()]
    return bad
