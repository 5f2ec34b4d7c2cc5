"""What the higher timeframes cost: the same symbols in quotes mode with 1m alone and with all
six timeframes, in one run, side by side (alternating, so both see the same machine).

    .venv/bin/python -m bench.timeframes --symbols 5000 --seconds 120 --rounds 2

Reported per configuration: cycle p50/p99, the minute-closing cycles (a minute's bars close
for every symbol) and those in which 5m buckets close too (15m and 1h at their boundaries),
each against the plain cycles of the same configuration, and the aggregation stage itself.
Targets (issue 11): all six cost at most +25 % p50 and p99 over 1m alone; a cycle in which
5m/15m/1h buckets close is at most 1.5x a plain cycle.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import uvloop

from sidecar.settings import Settings

from .quotes import run
from .servers import exchange_process, redis_server

CONFIGS = {"1m only": ("1m",), "all six": ("1m", "5m", "15m", "1h", "4h", "1d")}


def _summary(samples: list[dict[str, float]]) -> dict[str, float]:
    ms = np.array([s["cycle"] * 1000 for s in samples])
    closing = np.array([s["closed"] > 0 for s in samples])
    five = np.array([s["closed"] > 0 and int(s["t"]) % 300 < 5 for s in samples])
    plain = ms[~closing]
    return {"cycles": len(ms), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "plain_p50": float(np.median(plain)) if len(plain) else float("nan"),
            "minute_closing_median": float(np.median(ms[closing])) if closing.any() else float("nan"),
            "five_closing_median": float(np.median(ms[five])) if five.any() else float("nan"),
            "five_closing_n": int(five.sum()),
            "timeframes_p50": float(np.percentile([s["timeframes"] * 1000 for s in samples], 50)),
            "timeframes_p99": float(np.percentile([s["timeframes"] * 1000 for s in samples], 99)),
            "redis_p50": float(np.percentile([s["redis"] * 1000 for s in samples], 50))}


async def main(n: int, seconds: float, rounds: int, out: Path | None) -> None:
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url, exchange_process() as exchange:
        base = replace(Settings(), redis_url=url, yahoo_base_url=exchange, lookback_minutes=5, fetch_timeout_s=5.0,
                       live_mode="quotes", quote_batch=500, catchup_per_cycle=250, bootstrap_days=0.0,
                       flush_interval_s=10.0)
        for k in range(rounds):
            for name, tfs in CONFIGS.items():
                db = Path(tmp) / f"{k}-{len(tfs)}.db"
                r = await run(replace(base, db_path=db, timeframes=tfs), n, seconds, warmup_limit=150.0)
                samples[name] += r["samples"]  # type: ignore[arg-type]
                print(f"round {k + 1} {name}: {r['cycles']} cycles, p50 {r['cycle_p50']:.1f} ms, "
                      f"p99 {r['cycle_p99']:.1f} ms, overruns {r['overruns']}", flush=True)
    result = {name: _summary(s) for name, s in samples.items()}
    one, six = result["1m only"], result["all six"]
    print(f"\n{n} symbols, quotes mode, {rounds} round(s) of {seconds:.0f} s per configuration\n")
    print(f"{'':<34} {'1m only':>10} {'all six':>10} {'ratio':>8}  target")
    rows = [("cycle p50 (ms)", "p50", "<= 1.25"), ("cycle p99 (ms)", "p99", "<= 1.25"),
            ("plain cycle median (ms)", "plain_p50", ""), ("minute-closing cycle median (ms)", "minute_closing_median", ""),
            ("5m-closing cycle median (ms)", "five_closing_median", ""), ("aggregate stage p50 (ms)", "timeframes_p50", ""),
            ("aggregate stage p99 (ms)", "timeframes_p99", ""), ("Redis stage p50 (ms)", "redis_p50", "")]
    for label, key, target in rows:
        print(f"{label:<34} {one[key]:>10.1f} {six[key]:>10.1f} {six[key] / one[key]:>8.2f}  {target}")
    print(f"5m-closing cycle vs a plain cycle, all six: {six['five_closing_median'] / six['plain_p50']:.2f}x "
          f"(target <= 1.5; {six['five_closing_n']} such cycles)")
    if out is not None:
        out.write_text(json.dumps({"symbols": n, "seconds": seconds, "rounds": rounds, "result": result,
                                   "median_cycle_ms": {k: statistics.median(s["cycle"] * 1000 for s in v)
                                                       for k, v in samples.items()}}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    uvloop.run(main(args.symbols, args.seconds, args.rounds, args.json))
