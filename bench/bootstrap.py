"""The bootstrap targets of issue 12: `python -m sidecar bootstrap` for the seeds' universes from
the local exchange, as a user runs it (a fresh database, the CLI as its own process).

    .venv/bin/python -m bench.bootstrap

Runs `--universe dev_top_10 --universe dev_etfs --days 182` (10 stocks + 5 ETFs, 6 months) and
`--universe etf_sectors --days 365` (11 ETFs, a year), and reports for each the wall time of the
whole command (target: under 60 s), the requests it made, the rows stored and rows per second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from .servers import ROOT, exchange_process, main_with_json

RUNS = (("dev_top_10 + dev_etfs, 182 days", ["--universe", "dev_top_10", "--universe", "dev_etfs", "--days", "182"]),
        ("etf_sectors, 365 days", ["--universe", "etf_sectors", "--days", "365"]))


def main(out: Path | None) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp, exchange_process() as exchange:
        for k, (name, flags) in enumerate(RUNS):
            env = {**os.environ, "PYTHONPATH": str(ROOT), "SIDECAR_YAHOO_BASE_URL": exchange,
                   "SIDECAR_DB_PATH": str(Path(tmp) / f"{k}.db"), "SIDECAR_LOG_LEVEL": "WARNING"}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "sidecar", "bootstrap", *flags], env=env, cwd=ROOT,
                                  capture_output=True, text=True, check=True, timeout=600)
            wall = time.perf_counter() - t0
            summary = orjson.loads(done.stdout)
            results.append({"run": name, "wall_s": round(wall, 2), **summary})
    print(f"{'':<34} {'wall s':>8} {'requests':>9} {'rows':>9} {'rows/s':>9}  target")
    for r in results:
        rows = sum(r["rows"].values())
        print(f"{r['run']:<34} {r['wall_s']:>8.1f} {sum(r['requests'].values()):>9} {rows:>9} "
              f"{r['rows_per_second']:>9}  < 60 s, {'met' if r['wall_s'] < 60 else 'MISSED'}")
    if out is not None:
        out.write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main_with_json(__doc__, main)
