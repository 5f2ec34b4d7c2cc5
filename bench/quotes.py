"""Live polling benchmark: N symbols through Yahoo batch quotes every second, in real time.

    .venv/bin/python -m bench.quotes --symbols 5000 --seconds 60

The local exchange runs as its own process and redis-server on a private socket; the sidecar's
own loop runs here in quotes mode (batch quotes -> bar builder -> validator -> Redis pipeline
-> SQLite buffer -> features -> scanner). Reported, after the warm-up in which every symbol's
first minutes (and the minute it joined half-way) come from the chart endpoint: the time from the cycle's tick to its bars being
in Redis (p50/p95/p99/max), the whole cycle, each stage, overruns, and the error rate. Side by
side: the same symbols polled through per-symbol chart requests (the chart mode), one cycle.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import uvloop

from sidecar.app import Sidecar, tune_gc
from sidecar.settings import Settings
from sidecar.symbols import CRYPTO, FIAT

from .servers import exchange_process, redis_server


def universe(n: int) -> list[str]:
    """A named mix: every FX cross of the listed currencies (up to 5%), crypto pairs, then equities."""
    fx = [a + b for a in sorted(FIAT) for b in sorted(FIAT) if a != b][: max(1, n // 20)]
    crypto = [c + "USD" for c in sorted(CRYPTO)][: max(1, n // 100)]
    equities = [f"Q{i:04d}" for i in range(n - len(fx) - len(crypto))]
    return (fx + crypto + equities)[:n]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def live_path_only(sc: Sidecar) -> None:
    """Measure the loop alone: no gap scans or Redis re-seeds started from its callbacks (the
    daemon runs them as tasks of their own, and they would outlive the stores closed here)."""
    sc.orchestrator.on_recovered = None
    sc.orchestrator.publisher.on_redis_lost = None


async def run(settings: Settings, n: int, seconds: float, warmup_limit: float) -> dict[str, object]:
    """Run the loop for `seconds` after every symbol is synced; return the measurements."""
    sc = Sidecar(settings.with_overrides(symbols=",".join(universe(n))), handle_signals=False)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    sc.features.book.engine.prepare()
    sc.features.warm(sc.infos, {})  # as the daemon's start: every symbol in the indicator book
    await sc.orchestrator.higher.warm()  # and in every higher timeframe's
    orch = sc.orchestrator
    live_path_only(sc)
    tune_gc(settings.gc_gen0_threshold)  # as the daemon does once started
    t_start = time.monotonic()
    samples: list[dict[str, float]] = []
    overruns = 0
    try:
        # warm-up: until the history catch-up has vouched for every symbol's minutes for a whole
        # minute boundary (the minute the poller joined half-way ends incomplete, and history
        # repairs it for every symbol: that catch-up belongs to the warm-up, not the measurement)
        clean_since: float | None = None
        async for _tick in orch.ticker:
            await orch.run_cycle()
            current = int(time.time()) // 60 * 60
            lagging = int((orch.table.synced_until[orch.table.slots()] < current).sum())
            clean_since = None if lagging else (clean_since or time.monotonic())
            if (clean_since is not None and time.monotonic() - clean_since > 61) or \
                    time.monotonic() - t_start > warmup_limit:
                break
        warmup = time.monotonic() - t_start
        errors0 = sum(sc.metrics.by_label("sidecar_fetch_errors_total", "reason").values())
        chart0 = sc.metrics.by_label("sidecar_fetch_seconds_count", "source").get("yahoo", 0.0)
        over0 = sc.metrics.cycle_overruns._value.get()  # noqa: SLF001 - a counter's value
        t_end = time.monotonic() + seconds
        async for _tick in orch.ticker:
            report = await orch.run_cycle()
            st = orch.stages
            to_redis = sum(st[k] for k in ("fetch", "parse", "build", "validate", "features", "redis"))
            samples.append({"cycle": report.duration_s, "to_redis": to_redis, **st, "closed": report.closed,
                            "failed": report.failed, "t": time.time()})
            if time.monotonic() >= t_end:
                break
        overruns = int(sc.metrics.cycle_overruns._value.get() - over0)  # noqa: SLF001
        errors = sum(sc.metrics.by_label("sidecar_fetch_errors_total", "reason").values()) - errors0
        requests = sc.metrics.by_label("sidecar_fetch_seconds_count", "source").get("yahoo", 0.0) - chart0
    finally:
        await sc.fetcher.close()
        await sc.sqlite.close()
        await sc.redis.close()
    ms = {k: [s[k] * 1000 for s in samples] for k in ("cycle", "to_redis", "fetch", "parse", "build", "validate",
                                                       "features", "timeframes", "redis", "scan")}
    return {"symbols": n, "cycles": len(samples), "warmup_s": warmup, "overruns": overruns,
            "requests": requests, "errors": errors, "closed": sum(s["closed"] for s in samples),
            **{f"{k}_p{q}": _pct(v, q) for k, v in ms.items() for q in (50, 95, 99)},
            **{f"{k}_max": max(v) if v else float("nan") for k, v in ms.items()},
            **{f"{k}_mean": statistics.fmean(v) if v else float("nan") for k, v in ms.items()},
            "slowest": sorted(samples, key=lambda s: -s["cycle"])[:3], "samples": samples}


async def chart_cycles(settings: Settings, n: int, repeat: int = 3) -> list[dict[str, float]]:
    """The baseline: steady-state cycles of per-symbol chart requests for the same symbols (after
    the one that fetches the lookback); each cycle's duration and stages in ms."""
    sc = Sidecar(settings.with_overrides(symbols=",".join(universe(n)), live_mode="chart"), handle_signals=False)
    live_path_only(sc)
    await sc.sqlite.start()
    await sc.redis.start()
    await sc.fetcher.start()
    try:
        await sc.orchestrator.run_cycle()  # the lookback
        out = []
        for _ in range(repeat):
            report = await sc.orchestrator.run_cycle()
            out.append({"cycle": report.duration_s * 1000, **{k: v * 1000 for k, v in sc.orchestrator.stages.items()}})
    finally:
        await sc.fetcher.close()
        await sc.sqlite.close()
        await sc.redis.close()
    return out


async def main(n: int, seconds: float, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url, exchange_process() as exchange:
        base = replace(Settings(), redis_url=url, yahoo_base_url=exchange, db_path=Path(tmp) / "q.db",
                       lookback_minutes=5, fetch_timeout_s=5.0, live_mode="quotes", quote_batch=batch,
                       catchup_per_cycle=250, bootstrap_days=0.0, flush_interval_s=10.0)
        r = await run(base, n, seconds, warmup_limit=120.0)
        chart_ms = statistics.median(c["cycle"] for c in await chart_cycles(replace(base, db_path=Path(tmp) / "c.db"), n))
    print(f"\nquotes mode, {n} symbols, {r['cycles']} cycles after a {r['warmup_s']:.1f}s warm-up "
          f"(batch {batch} symbols/request)")
    print(f"{'':<34} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}   (ms)")
    for key, name in (("to_redis", "tick -> bars in Redis"), ("cycle", "whole cycle (+ SQLite buffer, scan)"),
                      ("fetch", "  fetch (HTTP)"), ("parse", "  parse"), ("build", "  bar builder"),
                      ("validate", "  validate"),
                      ("features", "  features"), ("redis", "  Redis pipeline"), ("scan", "  scan")):
        print(f"{name:<34} {r[f'{key}_p50']:>8.1f} {r[f'{key}_p95']:>8.1f} {r[f'{key}_p99']:>8.1f} "
              f"{r[f'{key}_max']:>8.1f}")
    for s in r["slowest"]:  # type: ignore[attr-defined]
        print(f"slow cycle {s['cycle'] * 1000:.0f} ms ({s['closed']} closed bars): " + ", ".join(
            f"{k} {s[k] * 1000:.0f}" for k in ("fetch", "parse", "build", "validate", "features", "redis", "scan")))
    quote_requests = r["cycles"] * -(-n // batch)
    print(f"overruns {r['overruns']}, requests {r['requests']:.0f} ({quote_requests} quote, "
          f"{r['requests'] - quote_requests:.0f} chart: minutes the quotes could not vouch for), errors {r['errors']:.0f} "
          f"({r['errors'] / max(r['requests'], 1):.2%}), closed bars stored {r['closed']}")
    print(f"baseline: one chart-mode cycle for the same {n} symbols (one request each): {chart_ms:.0f} ms "
          f"-> quotes mode p50 is {chart_ms / r['cycle_p50']:.1f}x faster")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=500, help="symbols per quote request")
    args = parser.parse_args()
    uvloop.run(main(args.symbols, args.seconds, args.batch))
