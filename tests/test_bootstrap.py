"""Bootstrap: 90 days of history at the finest resolution the source serves at each age,
equal to the exchange's truth, and resumed without refetching after being cut off."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from sidecar.bootstrap import Bootstrapper
from sidecar.clock import ManualClock, SystemClock
from sidecar.exchange import Exchange
from sidecar.fetchers import YahooFetcher
from sidecar.sources import GuardedSource
from sidecar.stores import SQLiteStore
from sidecar.symbols import lookup
from sidecar.validator import Validator

from .helpers import wait_until

SYMBOLS = ["AAPL", "BTCUSD"]


@pytest.fixture
async def parts(tmp_path: Path, exchange: Exchange) -> AsyncIterator[tuple[Bootstrapper, SQLiteStore]]:
    sqlite = SQLiteStore(path=tmp_path / "bars.db", synchronous="NORMAL", clock=SystemClock())
    await sqlite.start()
    fetcher = YahooFetcher(base_url=exchange.url or "", user_agent="t", timeout_s=60, max_connections=4)
    await fetcher.start()
    source = GuardedSource.build(fetcher, clock=SystemClock())
    yield Bootstrapper(sqlite=sqlite, sources=lambda info: [source], reach=fetcher.reach,
                       validator=Validator(future_tolerance_s=5), clock=SystemClock(), concurrency=2), sqlite
    await fetcher.close()
    await sqlite.close()


def _by_timeframe(db: Path) -> dict[str, dict[tuple[str, int], tuple]]:
    out: dict[str, dict[tuple[str, int], tuple]] = collections.defaultdict(dict)
    with closing(sqlite3.connect(db)) as conn:
        for sym, tf, ts, *values in conn.execute("SELECT symbol, timeframe, ts, open, high, low, close, volume FROM bars"):
            out[tf][(sym, ts)] = tuple(values)
    return out


async def test_ninety_days_at_the_finest_resolution_equal_the_truth(parts, exchange: Exchange) -> None:  # type: ignore[no-untyped-def]
    boot, sqlite = parts
    plan = boot.plan(90)
    began = int(time.time()) // 60 * 60  # bars closed before this were all closed when fetched
    report = await boot.run([lookup(s) for s in SYMBOLS], days=90)
    assert report.failed == 0 and report.windows == len(plan) * len(SYMBOLS)
    rows = _by_timeframe(sqlite.path)
    assert set(rows) == {"1m", "5m", "1h"}
    one_minute = [w for w in plan if w.timeframe == "1m"]
    start, end = min(w.start for w in one_minute), began
    for sym in SYMBOLS:
        truth = exchange.truth(lookup(sym).yahoo, start, end)
        stored = {ts: v for (s, ts), v in rows["1m"].items() if s == sym and ts < end}
        assert stored == {int(ts): (o, h, lo, c, v) for ts, o, h, lo, c, v in zip(
            truth.ts.tolist(), truth.open.tolist(), truth.high.tolist(), truth.low.tolist(), truth.close.tolist(),
            truth.volume.tolist(), strict=True)}
    oldest = min(ts for (_, ts) in rows["1h"])
    assert oldest <= exchange.clock.time() - 89.9 * 86400  # the whole 90 days are covered, coarser as they age
    assert boot.progress == {s: (len(plan), len(plan)) for s in SYMBOLS}


async def test_a_bootstrap_cut_off_half_way_resumes_without_refetching(parts, exchange: Exchange) -> None:  # type: ignore[no-untyped-def]
    boot, sqlite = parts
    infos = [lookup(s) for s in SYMBOLS]
    task = asyncio.create_task(boot.run(infos, days=90))
    async def four_windows_done() -> bool:
        return sum([len(await sqlite.bootstrap_done(s)) for s in SYMBOLS]) >= 4

    await wait_until(four_windows_done, 60, "four windows committed", every=0.01)
    task.cancel()  # as if killed: what was committed and marked stays
    with pytest.raises(asyncio.CancelledError):
        await task
    done_before = {(s, tf, cell): covered for s in SYMBOLS for (tf, cell), covered in (await sqlite.bootstrap_done(s)).items()}
    # Resumed two minutes later: the plan's grid is the same, only its newest edge moved.
    later = Bootstrapper(sqlite=sqlite, sources=boot.sources, reach=boot.reach, validator=boot.validator,
                         clock=ManualClock(start=time.time() + 120), concurrency=2)
    assert [w.cell for w in later.plan(90)][1:] == [w.cell for w in boot.plan(90)][1:]
    report = await later.run(infos, days=90)
    assert report.failed == 0
    requests = collections.Counter((y, a) for y, a, _ in exchange.chart_log)
    for sym, tf, cell in done_before:
        window = next(w for w in boot.plan(90) if (w.timeframe, w.cell) == (tf, cell))
        # a covered window is never asked for again from its start; the newest only from where it stopped
        assert requests[(lookup(sym).yahoo, window.start)] == 1
    plan = later.plan(90)
    for s in SYMBOLS:
        cells = await sqlite.bootstrap_done(s)
        assert all(cells[(w.timeframe, w.cell)] >= w.end for w in plan)
