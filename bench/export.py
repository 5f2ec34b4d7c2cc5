"""The export target of issue 13: 5,000 symbols x a year of 1h bars (~8.8 M rows) written as a
Parquet training set with features at >= 1 M rows/s end to end, peak RSS <= 2 GB; beside it, in
the same run, TA-Lib's batch functions over the same arrays and `pandas.read_sql` + `to_parquet`
without features.

    .venv/bin/python -m bench.export [--symbols 5000] [--bars 1764] [--json FILE]

The database is built first (a seeded random walk per symbol, equity hours: 7 bars a session,
252 sessions); each measured part runs in its own process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_735_741_800  # 2025-01-02 14:30 UTC


def build(db: Path, symbols: int, bars: int) -> None:
    """A bars table of `symbols` x `bars` 1h bars (the daemon's schema)."""
    from sidecar.stores.sqlite_store import SCHEMA

    rng = np.random.default_rng(7)
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(SCHEMA)
        conn.execute("PRAGMA journal_mode=WAL")
        ts = T0 + np.arange(bars) // 7 * 86400 + np.arange(bars) % 7 * 3600
        for k in range(symbols):
            close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
            opens = np.r_[close[0], close[:-1]]
            high, low = np.maximum(opens, close) * 1.002, np.minimum(opens, close) * 0.998
            volume = rng.uniform(1e3, 1e5, bars).round()
            conn.executemany("INSERT INTO bars VALUES (?, '1h', ?, ?, ?, ?, ?, ?, 'yahoo', 0)",
                             zip([f"S{k:04d}"] * bars, ts.tolist(), opens.tolist(), high.tolist(), low.tolist(),
                                 close.tolist(), volume.tolist(), strict=True))
        conn.commit()


def part(kind: str, db: Path, out: Path, symbols: int) -> dict:
    """One measured part, in this process: rows, seconds, peak RSS."""
    names = [f"S{k:04d}" for k in range(symbols)]
    t0 = time.perf_counter()
    if kind == "export":
        from sidecar import dataset

        report = dataset.export(db, out, names, ["1h"], 0, 2**40, features=True)
        rows, extra = report.rows, {"stages_s": report.summary()["stages_s"]}
    elif kind == "talib":
        import talib

        from sidecar import dataset

        rows, extra = 0, {}
        for i in range(0, symbols, 500):
            series = dataset.load(db, names[i:i + 500], "1h")
            t_ = time.perf_counter()
            for k in range(len(series.symbols)):
                o, h, lo, c, v = series.values[:, series.rows(k)]
                for p in (20, 50, 200):
                    talib.SMA(c, p)
                for p in (9, 21):
                    talib.EMA(c, p)
                talib.RSI(c, 14), talib.MACD(c, 12, 26, 9), talib.STOCH(h, lo, c, 14, 3, 0, 3, 0)
                talib.CCI(h, lo, c, 20), talib.WILLR(h, lo, c, 14), talib.ATR(h, lo, c, 14), talib.BBANDS(c, 20)
                talib.STDDEV(np.log(c[1:] / c[:-1]), 20), talib.OBV(c, v), talib.SMA(v, 20), talib.ADX(h, lo, c, 14)
                talib.PLUS_DI(h, lo, c, 14), talib.MINUS_DI(h, lo, c, 14), talib.MFI(h, lo, c, v, 14)
                talib.MOM(c, 10), talib.ROC(c, 10)
                rows += len(c)
            extra["compute_s"] = extra.get("compute_s", 0.0) + time.perf_counter() - t_
    else:  # pandas.read_sql + to_parquet, no features
        import pandas as pd

        rows = 0
        with closing(sqlite3.connect(db)) as conn:
            for i in range(0, symbols, 500):
                chunk = names[i:i + 500]
                frame = pd.read_sql(f"SELECT * FROM bars WHERE timeframe = '1h' AND symbol IN "
                                    f"({','.join('?' * len(chunk))}) ORDER BY symbol, ts", conn, params=chunk)
                frame.to_parquet(out / f"part-{i}.parquet", compression="zstd")
                rows += len(frame)
        extra = {}
    seconds = time.perf_counter() - t0
    return {"part": kind, "rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **extra}


def main(symbols: int, bars: int, out: Path | None) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bars.db"
        t0 = time.perf_counter()
        build(db, symbols, bars)
        print(f"built {symbols} x {bars} bars in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        for kind in ("export", "talib", "pandas"):
            target = Path(tmp) / kind
            target.mkdir()
            done = subprocess.run([sys.executable, "-m", "bench.export", "--part", kind, "--db", str(db), "--out",
                                   str(target), "--symbols", str(symbols)], cwd=ROOT, capture_output=True, text=True,
                                  check=True, timeout=3600)
            results.append(orjson.loads(done.stdout))
    print(f"{'':<44} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9}")
    label = {"export": "export --features (read, engine, Parquet)", "talib": "TA-Lib batch, same arrays (compute)",
             "pandas": "pandas.read_sql + to_parquet, no features"}
    for r in results:
        print(f"{label[r['part']]:<44} {r['rows']:>10} {r['seconds']:>8.2f} {r['rows_per_second']:>10} "
              f"{r['peak_rss_mb']:>7} MB")
    ex = results[0]
    print(f"target: >= 1,000,000 rows/s and <= 2,048 MB: {ex['rows_per_second']:,} rows/s, {ex['peak_rss_mb']} MB "
          f"({'met' if ex['rows_per_second'] >= 1e6 and ex['peak_rss_mb'] <= 2048 else 'MISSED'})")
    if out is not None:
        out.write_text(orjson.dumps({"symbols": symbols, "bars": bars, "results": results},
                                    option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--bars", type=int, default=1764)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(orjson.dumps(part(args.part, args.db, args.out, args.symbols)).decode())
    else:
        main(args.symbols, args.bars, args.json)
