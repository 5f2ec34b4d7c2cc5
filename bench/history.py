"""The history-load target of issue 13: `python -m sidecar history` for 50 US stocks and ETFs,
two years of daily bars and 60 days of 5-minute bars, from the local exchange (keeping market
hours), as a user runs it: a fresh database, the CLI as its own process. Target: 30 s.

    .venv/bin/python -m bench.history [--json FILE]

Beside it, in the same run against the same exchange, a baseline written as a user would write
it without the sidecar: the same chart requests one after another, parsed with the standard
json module, inserted with sqlite3's executemany (no validation, no budgets, no higher
timeframes). The report gives both wall times and their ratio.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

from sidecar import universes

from .servers import ROOT, exchange_process, main_with_json

TARGET_S = 30.0
DAYS_5M = 59  # the 5-minute reach (60 days) less the sidecar's hour of margin, rounded down


def symbols(count: int = 50) -> list[str]:
    """The first `count` distinct stocks and ETFs of the shipped universes."""
    out: list[str] = []
    for name in ("dev_top_10", "dev_etfs", "dev_sectors", "etf_growth", "etf_value", "etf_sectors"):
        out += [s for s in universes.members(name, None) if s not in out]
    assert len(out) >= count, f"only {len(out)} symbols in the shipped equity universes"
    return out[:count]


def baseline(url: str, names: list[str], db: Path) -> tuple[float, int, int]:
    """The plain loader: wall seconds, requests, rows."""
    t0 = time.perf_counter()
    now = int(time.time())
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE bars (symbol TEXT, timeframe TEXT, ts INTEGER, open REAL, high REAL, low REAL, "
                 "close REAL, volume REAL, PRIMARY KEY (symbol, timeframe, ts))")
    requests = rows = 0
    for sym in names:
        windows = [("1d", now - 730 * 86400, now)] + [("5m", a, min(a + 15 * 86400, now))
                                                       for a in range(now - DAYS_5M * 86400, now, 15 * 86400)]
        for interval, start, end in windows:
            with urllib.request.urlopen(f"{url}/v8/finance/chart/{sym}?interval={interval}&period1={start}"
                                        f"&period2={end}&events=div,splits", timeout=60) as r:
                result = json.loads(r.read())["chart"]["result"][0]
            requests += 1
            q = result["indicators"]["quote"][0]
            batch = [(sym, interval, t, o, h, lo, c, v) for t, o, h, lo, c, v in zip(
                result.get("timestamp", []), q.get("open", []), q.get("high", []), q.get("low", []),
                q.get("close", []), q.get("volume", []), strict=True) if o is not None]
            conn.executemany("INSERT OR REPLACE INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
            conn.commit()
            rows += len(batch)
    conn.close()
    return time.perf_counter() - t0, requests, rows


def main(out: Path | None) -> None:
    names = symbols()
    with tempfile.TemporaryDirectory() as tmp, exchange_process(always_open=False) as exchange:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SIDECAR_YAHOO_BASE_URL": exchange,
               "SIDECAR_DB_PATH": str(Path(tmp) / "history.db"), "SIDECAR_LOG_LEVEL": "WARNING"}
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "sidecar", "history", "--symbols", ",".join(names),
                               "--timeframes", "1d,5m", "--years", "2"], env=env, cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=900)
        wall = time.perf_counter() - t0
        summary = orjson.loads(done.stdout)
        base_wall, base_requests, base_rows = baseline(exchange, names, Path(tmp) / "baseline.db")
    rows = sum(summary["rows"].values())
    result = {"symbols": len(names), "wall_s": round(wall, 2), "target_s": TARGET_S, "met": wall <= TARGET_S,
              "requests": summary["requests"], "rows": summary["rows"], "actions": summary["actions"],
              "reaggregation_s": summary["reaggregation_seconds"],
              "baseline": {"wall_s": round(base_wall, 2), "requests": base_requests, "rows": base_rows},
              "ratio_to_baseline": round(wall / base_wall, 2)}
    print(f"history of {len(names)} symbols, 2 y daily + {DAYS_5M} d 5m: {wall:.1f} s "
          f"({'met' if wall <= TARGET_S else 'MISSED'}: target {TARGET_S:g} s), {rows} rows, "
          f"{sum(summary['requests'].values())} requests, {summary['actions']} dividends and splits")
    print(f"baseline (sequential requests, json, sqlite3): {base_wall:.1f} s, {base_rows} rows, "
          f"{base_requests} requests; sidecar / baseline = {wall / base_wall:.2f}")
    if out is not None:
        out.write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main_with_json(__doc__, main)
