"""Pipeline benchmark: each stage next to a naive baseline, run side by side, as a table.

    make bench            (or: .venv/bin/python -m bench.pipeline --symbols 10,200,1000)

Starts its own redis-server (private unix socket) and the local exchange as a separate
process, so HTTP parsing on both sides does not share one event loop. Reports medians
and ratios, not pass/fail: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiosqlite

from sidecar.app import Sidecar
from sidecar.bars import Bar, BarFlag
from sidecar.clock import SystemClock
from sidecar.settings import Settings
from sidecar.stores import RedisStore, SQLiteStore
from sidecar.stores.redis_wire import pack

from .quotes import live_path_only
from .servers import exchange_process, redis_server

T0 = 1_800_000_000 // 60 * 60


def _bars(n: int, flags: int = 0) -> list[Bar]:
    return [Bar(f"S{i:05d}", "1m", T0, 10.0, 11.0, 9.0, 10.5, 100.0, "yahoo", flags) for i in range(n)]


async def _median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def bench_redis(url: str, n: int, repeat: int) -> tuple[float, float, float]:
    """Our round trip (pre-packed RESP, the histories in one EVAL) vs the same commands in one plain
    pipeline vs one round trip per command."""
    store = RedisStore(url=url, prefix="bench", max_connections=4, timeout_s=5, history_len=5000)
    closed, latest = _bars(n), _bars(n, BarFlag.FORMING)

    async def ours() -> None:
        await store.write_bars(latest, closed)

    async def pipelined() -> None:
        pipe = store.client.pipeline(transaction=False)
        for bar in closed:
            key = store.keys.history(bar.symbol, bar.timeframe)
            pipe.zremrangebyscore(key, bar.ts, bar.ts)
            pipe.zadd(key, {pack(bar): bar.ts})
            pipe.zremrangebyrank(key, 0, -5001)
        for bar in latest:
            pipe.set(store.keys.latest(bar.symbol, bar.timeframe), pack(bar))
        await pipe.execute()

    async def naive() -> None:
        c = store.client
        for bar in closed:
            key = store.keys.history(bar.symbol, bar.timeframe)
            await c.zremrangebyscore(key, bar.ts, bar.ts)
            await c.zadd(key, {pack(bar): bar.ts})
            await c.zremrangebyrank(key, 0, -5001)
        for bar in latest:
            await c.set(store.keys.latest(bar.symbol, bar.timeframe), pack(bar))

    result = (await _median_ms(ours, repeat), await _median_ms(pipelined, repeat),
              await _median_ms(naive, max(3, repeat // 5)))
    await store.close()
    return result


async def bench_sqlite(directory: Path, n: int, repeat: int) -> tuple[float, float]:
    """One transaction of upserts per flush vs one commit per bar."""
    store = SQLiteStore(path=directory / "ours.db", synchronous="FULL", clock=SystemClock())
    await store.start()
    bars = _bars(n)

    async def ours() -> None:
        store.add(bars)
        await store.flush()

    db = await aiosqlite.connect(directory / "naive.db")
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=FULL")
    await db.execute("CREATE TABLE IF NOT EXISTS bars (symbol TEXT, timeframe TEXT, ts INTEGER, open REAL, "
                     "high REAL, low REAL, close REAL, volume REAL, PRIMARY KEY (symbol, timeframe, ts))")

    async def naive() -> None:
        for b in bars[: n // 10]:  # a tenth of the rows, scaled up below: per-row commits are slow
            await db.execute("INSERT OR REPLACE INTO bars VALUES (?,?,?,?,?,?,?,?)",
                             (b.symbol, b.timeframe, b.ts, b.open, b.high, b.low, b.close, b.volume))
            await db.commit()

    result = await _median_ms(ours, repeat), 10 * await _median_ms(naive, 3)
    await store.close()
    await db.close()
    return result


async def bench_cycle(settings: Settings, n: int, cycles: int) -> tuple[float, float, float]:
    """Steady-state cycles (after the first, which fetches the lookback) for n symbols:
    p50 and max of our concurrent cycle, and the p50 of the same fetches awaited one by one."""
    symbols = ",".join(f"S{i:05d}" for i in range(n))
    sc = Sidecar(settings.with_overrides(symbols=symbols), handle_signals=False)
    live_path_only(sc)
    await sc.sqlite.start()
    await sc.fetcher.start()
    orch = sc.orchestrator
    await orch.run_cycle()
    times = []
    for _ in range(cycles):
        times.append((await orch.run_cycle()).duration_s * 1000)
    sequential = []
    for _ in range(max(2, cycles // 5)):
        t0 = time.perf_counter()
        for state in orch.states.values():
            await orch._fetch(state, time.time())  # noqa: SLF001 - the naive baseline: one request at a time
        sequential.append((time.perf_counter() - t0) * 1000)
    await sc.fetcher.close()
    await sc.sqlite.close()
    await sc.redis.close()
    return statistics.median(times), max(times), statistics.median(sequential)


async def main(symbol_counts: list[int], repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url, exchange_process() as exchange:
        d = Path(tmp)
        rows = []
        for n in (1000, 5000):
            ours, pipelined, naive = await bench_redis(url, n, repeat)
            stage = f"Redis write, {n} symbols (latest + 1 closed bar each)"
            rows.append((stage, "1 script call", ours, "1 pipeline, 1 cmd per write", pipelined))
            rows.append((stage, "1 script call", ours, "1 round trip per command", naive))
        for n in (1000, 10000):
            ours, naive = await bench_sqlite(d, n, repeat)
            rows.append((f"SQLite flush, {n} bars", "1 transaction", ours, "1 commit per bar", naive))
        settings = replace(Settings(), redis_url=url, yahoo_base_url=exchange,
                           db_path=d / "cycle.db", lookback_minutes=5, fetch_timeout_s=10.0)
        for n in symbol_counts:
            p50, worst, seq = await bench_cycle(settings, n, cycles=max(5, repeat // 2))
            rows.append((f"Cycle, {n} symbols (whole cycle incl. features, scan)",
                         f"concurrent (max {worst:.1f})", p50, "same fetches one by one", seq))
    print(f"\n{'stage':<55} {'ours':<28} {'ms':>9}   {'baseline':<26} {'ms':>9} {'speed-up':>9}")
    for stage, ours_label, ours_ms, base_label, base_ms in rows:
        print(f"{stage:<55} {ours_label:<28} {ours_ms:>9.2f}   {base_label:<26} {base_ms:>9.2f} "
              f"{base_ms / ours_ms:>8.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", default="10,200,1000", help="symbol counts for the cycle benchmark")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.symbols.split(",")], args.repeat))
