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
sum may have begun later: `anchor_obv`). With the adjusted view: `adj_open`, `adj_high`,
`adj_low`, `adj_close`, `adj_volume` and `adj_factor` (float64), the bars under the dividends
and splits stored up to the export's end (`actions.py`); the features stay those of the bars
as traded, which is what the daemon computes live.

Features come from the daemon's own engine (`FeatureBook`), replaying each symbol's stored bars
in time order from its first one: the live kernel's step across the symbols, one bar index at a
time, driven by a compiled loop (`FeatureBook.replay`, bit-identical to committing the bars one
by one): never a second implementation. A feature at bar t therefore depends only on bars up to t, which
`check_no_lookahead` proves by recomputing on truncated histories.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import actions
from .features.book import FeatureBook
from .features.config import FeatureConfig
from .features.engine import FeatureEngine
from .stores import readonly
from .stores.readonly import Database
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
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # index into `sources`
    sources: list[str] = field(default_factory=list)

    def rows(self, k: int) -> slice:
        """Symbol k's rows."""
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))

    def take(self, rows: np.ndarray, counts: np.ndarray) -> Series:
        """The given rows (in order), `counts[k]` of them for symbol k."""
        return Series(self.symbols, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.ts[rows],
                      self.values[:, rows], self.flags[rows], self.source[rows], self.sources)


def load(db: Database, symbols: Sequence[str], timeframe: str, end: int | None = None) -> Series:
    """Every stored bar of some symbols and one timeframe opening before `end`, oldest first
    (from the SQLite file or the PostgreSQL store, straight into Arrow columns)."""
    import pyarrow.compute as pc

    names = [parse_symbol(s) for s in symbols]
    query = ("SELECT symbol, ts, open, high, low, close, volume, flags, source FROM bars WHERE timeframe = ? "
             f"AND symbol IN ({','.join('?' * len(names))})" + (" AND ts < ?" if end is not None else "")
             + " ORDER BY symbol, ts")
    params: list[object] = [timeframe, *names] + ([end] if end is not None else [])
    table = readonly.arrow(db, query, params)
    if not table.num_rows:
        return Series([], np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((5, 0)), np.zeros(0, np.int32))
    symbol = pc.dictionary_encode(table.column("symbol")).combine_chunks()
    codes = symbol.indices.to_numpy()
    heads = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    found = symbol.dictionary.to_pylist()
    source = pc.dictionary_encode(table.column("source")).combine_chunks()

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    return Series([found[c] for c in codes[heads]], np.r_[heads, table.num_rows].astype(np.int64),
                  column("ts", np.int64), np.vstack([column(c, np.float64) for c in BAR_COLUMNS]),
                  column("flags", np.int32), source.indices.to_numpy().astype(np.int32),
                  source.dictionary.to_pylist())


def replay(series: Series, timeframe: str, config: FeatureConfig | None = None) -> np.ndarray:
    """The features after each bar, (outputs, rows), by the daemon's engine: every symbol from
    its first bar, one engine step per bar index across the symbols."""
    book = FeatureBook(config, timeframe=timeframe, capacity=max(1, len(series.symbols)))
    book.add([lookup(s) for s in series.symbols], {})
    slots = np.array([book.slots[s] for s in series.symbols], dtype=np.int64)
    if not len(series.ts):
        return np.empty((len(book.outputs), 0))
    return book.replay(slots, series.offsets, np.vstack([series.values, series.ts.astype(np.float64)]))


def anchor_obv(db: Database, series: Series, timeframe: str, values: np.ndarray, config: FeatureConfig) -> None:
    """Shift each symbol's replayed OBV onto the one the daemon published (its newest row in the
    features table, where there is one): the daemon's running sum may have begun later than the
    first stored bar (history added afterwards), and differs from the replay's by a constant."""
    if not series.symbols:
        return
    n, row = len(config.outputs), config.outputs.index("obv")
    newest = int(series.ts.max())
    marks = ",".join("?" * len(series.symbols))
    got = readonly.rows(db, "SELECT f.symbol, f.ts, f.vals FROM features f JOIN (SELECT symbol, MAX(ts) AS ts "
                            f"FROM features WHERE timeframe = ? AND ts <= ? AND symbol IN ({marks}) GROUP BY symbol) m "
                            "ON f.symbol = m.symbol AND f.ts = m.ts WHERE f.timeframe = ?",
                        [timeframe, newest, *series.symbols, timeframe], "features")
    if got is None:  # a database from before the features table
        return
    found = {str(sym): (ts, vals) for sym, ts, vals in got}
    for k, sym in enumerate(series.symbols):
        published = found.get(sym)
        if published is None or len(published[1]) != 8 * (n + len(FeatureEngine.RUNNING)):
            continue
        ts, vals = int(published[0]), np.frombuffer(published[1], dtype="<f8")
        rows_k = series.rows(k)
        at = np.flatnonzero(series.ts[rows_k] == ts)
        if len(at):
            values[row, rows_k] += vals[row] - values[row, rows_k.start + int(at[0])]


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


def export(db: Database, out: Path, symbols: Sequence[str], timeframes: Sequence[str], start: int, end: int, *,
           features: bool = False, adjusted: bool = False, config: FeatureConfig | None = None,
           chunk: int = 500, progress: Callable[[int], object] | None = None) -> ExportReport:
    """Write the bars (and features) of [start, end) as the Parquet dataset described above;
    features are replayed from each symbol's first stored bar, whatever `start` is. With
    `adjusted`, the adjusted view as of `end` too (the `adj_*` columns). A partition written
    again replaces the old one. `progress` is called with each chunk's number of symbols once
    its features are computed.

    `chunk` symbols at a time, as a pipeline on two threads: while one chunk's features are
    computed, the next is read (ADBC) and the previous one written (pyarrow); both release
    the interpreter, so the two cores overlap the three stages."""
    from concurrent.futures import Future, ThreadPoolExecutor

    readonly.check(db)
    for tf in timeframes:
        if tf not in ALL_TIMEFRAMES:
            raise ValueError(f"unknown timeframe {tf!r}; known: {', '.join(ALL_TIMEFRAMES)}")
    config = config or FeatureConfig()
    report = ExportReport()
    t_all = time.perf_counter()
    jobs = [(tf, list(symbols[i:i + chunk])) for tf in timeframes for i in range(0, len(symbols), chunk)]
    for tf in timeframes:
        report.symbols[tf] = 0

    def read(job: tuple[str, list[str]]) -> tuple[Series, float]:
        t0 = time.perf_counter()
        return load(db, job[1], job[0], end), time.perf_counter() - t0

    def write(table: Any, tf: str, written: int) -> None:
        t0 = time.perf_counter()
        _write(table, out, written)
        report.stages["write"] += time.perf_counter() - t0
        report.symbols[tf] += written

    with ThreadPoolExecutor(2) as pool:
        pending: Future[tuple[Series, float]] | None = pool.submit(read, jobs[0]) if jobs else None
        writing: Future[None] | None = None
        for k, (tf, names) in enumerate(jobs):
            assert pending is not None
            series, seconds = pending.result()
            report.stages["read"] += seconds
            pending = pool.submit(read, jobs[k + 1]) if k + 1 < len(jobs) else None
            t0 = time.perf_counter()
            table, written = _table(db, series, tf, start, config if features else None, end if adjusted else None)
            report.stages["features"] += time.perf_counter() - t0
            if progress is not None:
                progress(len(names))
            if writing is not None:
                writing.result()
            writing = pool.submit(write, table, tf, written) if table is not None else None
            report.rows += 0 if table is None else len(table)
            report.files += written
        if writing is not None:
            writing.result()
    report.seconds = time.perf_counter() - t_all
    return report


def _table(db: Database, series: Series, tf: str, start: int, config: FeatureConfig | None,
           adjusted_at: int | None = None) -> tuple[Any, int]:
    """One chunk's rows of [start, …) as an Arrow table (features when `config`, the adjusted
    view as of `adjusted_at` when given), and the number of symbols in it; (None, 0) when it
    has none."""
    import pyarrow as pa

    keep = series.ts >= start
    if not keep.any():
        return None, 0
    owner = np.repeat(np.arange(len(series.symbols), dtype=np.int32), np.diff(series.offsets))
    cols: dict[str, Any] = {
        "timeframe": pa.DictionaryArray.from_arrays(np.zeros(len(owner), np.int32), [tf]),
        "symbol": pa.DictionaryArray.from_arrays(owner, series.symbols),
        "ts": pa.array(series.ts, type=pa.timestamp("s", tz="UTC")),
        **{name: series.values[j] for j, name in enumerate(BAR_COLUMNS)},
        "flags": series.flags,
        "source": pa.DictionaryArray.from_arrays(series.source, series.sources),
    }
    if config is not None:
        values = replay(series, tf, config)
        anchor_obv(db, series, tf, values, config)
        cols.update({name: values[j] for j, name in enumerate(config.outputs)})
        cols["warm"] = warm_rows(series, config)
    if adjusted_at is not None:
        cols.update(_adjusted(db, series, adjusted_at))
    cols["origin_ts"] = pa.array(series.ts[series.offsets[:-1]][owner], type=pa.timestamp("s", tz="UTC"))
    table = pa.table(cols)
    if not keep.all():
        table = table.filter(pa.array(keep))
    return table, len(np.unique(owner[keep]))


def _adjusted(db: Database, series: Series, at: int) -> dict[str, np.ndarray]:
    """The adjusted view's columns: prices and volume under the actions dated before `at`."""
    price, volume = np.ones(len(series.ts)), np.ones(len(series.ts))
    stored = actions.load(db, series.symbols, at)
    for k, sym in enumerate(series.symbols):
        rows = series.rows(k)
        price[rows], volume[rows] = actions.factors(series.ts[rows], series.values[3, rows], stored[sym])
    cols = {f"adj_{name}": series.values[j] * price for j, name in enumerate(BAR_COLUMNS[:4])}
    return {**cols, "adj_volume": series.values[4] * volume, "adj_factor": price}


def _write(table: Any, out: Path, partitions: int) -> None:
    """A chunk's table as the dataset's partitions (each written again replaces the old one)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    # zstd at its fastest level; dictionaries only where values repeat, statistics only for the
    # bar open the readers filter on (both cost more than the compression on float columns)
    options = ds.ParquetFileFormat().make_write_options(compression="zstd", compression_level=1,
                                                        use_dictionary=["source"], write_statistics=["ts"])
    partitioning = ds.partitioning(pa.schema([("timeframe", pa.string()), ("symbol", pa.string())]), flavor="hive")
    ds.write_dataset(table, str(out), format="parquet", partitioning=partitioning,
                     basename_template="part-{i}.parquet", file_options=options,
                     existing_data_behavior="delete_matching", max_partitions=max(1, partitions) + 1)


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
    `cuts`, an index from its first bar; `compute` returns (outputs, rows) like `replay`) and
    compare that bar's values with the full history's: a feature that reads a later bar
    differs. Returns (symbol, output, cut) of every difference (bit-exact; NaN equals NaN)."""
    full = compute(series)
    bad = []
    for c in cuts:
        keep = np.concatenate([np.arange(series.offsets[k], min(series.offsets[k] + c + 1, series.offsets[k + 1]))
                               for k in range(len(series.symbols))]).astype(np.int64)
        cut = series.take(keep, np.minimum(np.diff(series.offsets), c + 1))
        part = compute(cut)
        for k, sym in enumerate(series.symbols):
            if np.diff(series.offsets)[k] <= c:
                continue
            a, b = full[:, series.offsets[k] + c], part[:, cut.offsets[k] + c]
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            bad += [(sym, names[j], c) for j in np.flatnonzero(~same).tolist()]
    return bad
