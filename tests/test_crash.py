"""Nothing lost across crashes: the daemon is killed with SIGKILL again and again (some kills
land as a SQLite flush begins), the source goes down for a while, and at the end SQLite holds
exactly the market's closed bars for the whole period."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest

from sidecar.exchange import Exchange
from sidecar.symbols import lookup

from .conftest import subprocess_env
from .helpers import Durable, reached, wait_until
from .test_e2e import _free_port

pytestmark = pytest.mark.e2e

SYMBOLS = ["AAPL", "EURUSD", "BTCUSD", "NAS100"]
LOOKBACK_MIN = 10


LIVE: list[Run] = []  # killed and reaped at the end whatever happens


@pytest.fixture(autouse=True)
async def _no_daemon_left_behind():  # type: ignore[no-untyped-def]
    yield
    for run in LIVE:
        if run.proc.returncode is None:
            run.proc.kill()
        await asyncio.wait_for(run.proc.wait(), 20)
        await asyncio.wait_for(run._reader, 20)  # noqa: SLF001 - its pipe closes at EOF
    LIVE.clear()


class Run:
    """One daemon process whose output is watched line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.flush_begins = asyncio.Event()
        self.cycling = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if " flush begin" in line:  # sqlite or postgres
                self.flush_begins.set()
            if "following" in line:
                self.cycling.set()

    async def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 20)
        await self._reader
        return code


async def _start(tmp_path: Path, redis_url: str, exchange: Exchange, http_port: int, durable: Durable) -> Run:
    env = subprocess_env(
        SIDECAR_REDIS_URL=redis_url, SIDECAR_YAHOO_BASE_URL=exchange.url or "", SIDECAR_HTTP_PORT=str(http_port),
        **durable.env(), SIDECAR_SYMBOLS=",".join(SYMBOLS),
        SIDECAR_LOOKBACK_MINUTES=str(LOOKBACK_MIN), SIDECAR_FLUSH_INTERVAL_S="1", SIDECAR_FEATURE_WARMUP_BARS="50",
        SIDECAR_BREAKER_RESET_S="2",  # the outage ends within the test: probe again soon
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-u", "-m", "sidecar", "run", env=env, cwd=tmp_path,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    run = Run(proc)
    LIVE.append(run)
    await asyncio.wait_for(run.cycling.wait(), 60)
    return run


async def _stored(durable: Durable) -> tuple[dict[tuple[str, int], tuple], int, str]:
    integrity = "ok"
    if not durable.url:
        with closing(sqlite3.connect(durable.db)) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return await durable.rows(), await durable.duplicates(), integrity


def _explain(missing: set, extra: set, period_start: int, period_end: int) -> str:
    """What a failure needs for a diagnosis: the keys and every daemon's log around them."""
    logs = "".join(f"--- run {i} ---\n" + "".join(r.lines) for i, r in enumerate(LIVE))
    return f"missing {sorted(missing)[:8]} extra {sorted(extra)[:8]} period [{period_start}, {period_end})\n{logs}"


async def test_sigkill_at_random_moments_and_a_source_outage_lose_nothing(
        tmp_path: Path, redis_url: str, exchange: Exchange, durable: Durable) -> None:
    rng = random.Random(20261123)
    port = _free_port()
    # The first start reaches back LOOKBACK_MIN minutes from the minute of its first cycle, which
    # may be the next one when the test begins in a minute's last seconds: one minute less is sure.
    period_start = (int(time.time()) // 60) * 60 - (LOOKBACK_MIN - 1) * 60
    kills = during_flush = 0
    for i in range(10):
        run = await _start(tmp_path, redis_url, exchange, port, durable)
        if i == 4:
            exchange.outage(12)  # the source is down across this run and the next start
        if i % 3 == 1:  # kill exactly as a flush begins (the restart overlap always gives one)
            try:
                # generous: during the outage run the breaker must see the source back first
                await asyncio.wait_for(run.flush_begins.wait(), 30)
            except TimeoutError:
                raise AssertionError("no flush began:\n" + "".join(run.lines[-20:])) from None
            during_flush += 1
        else:
            await asyncio.sleep(rng.uniform(0.2, 2.5))
        assert await run.stop(signal.SIGKILL) == -signal.SIGKILL
        kills += 1
    # The last run is stopped cleanly, well inside a minute so the last closed bar was fetched.
    run = await _start(tmp_path, redis_url, exchange, port, durable)
    await wait_until(lambda: 11 <= time.time() % 60 <= 50, 70, "well inside a minute", every=0.2)
    period_end = (int(time.time()) // 60) * 60  # exclusive: bars closed before the current minute

    # A loaded machine can hold the restarted daemon's first cycles back: stop it only once it has
    # written a bar of the current minute for every symbol (its window then held the last closed one).
    async def current() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as resp:
                fresh = (await resp.json())["freshness"]
        except aiohttp.ClientError:
            return False
        return all(reached(exchange, s, fresh[s]["last_bar_ts"], period_end) for s in SYMBOLS)

    await wait_until(current, 45, "every symbol's bar of the current minute", every=0.5,
                     detail=lambda: "".join(run.lines[-30:]))
    assert await run.stop(signal.SIGTERM) == 0, "".join(run.lines[-30:])

    stored, dupes, integrity = await _stored(durable)
    truth = {}
    for sym in SYMBOLS:
        t = exchange.truth(lookup(sym).yahoo, period_start, period_end)
        for row in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(), t.close.tolist(),
                       t.volume.tolist(), strict=True):
            truth[(sym, row[0])] = row[1:]
    in_period = {k: v for k, v in stored.items() if period_start <= k[1] < period_end}
    missing = truth.keys() - in_period.keys()
    extra = in_period.keys() - truth.keys()
    differing = [k for k in truth.keys() & in_period.keys() if truth[k] != in_period[k]]
    assert kills == 10 and during_flush >= 3
    assert integrity == "ok" and dupes == 0
    assert (len(missing), len(extra), len(differing)) == (0, 0, 0), _explain(missing, extra, period_start, period_end)
    # the comparison covered a real period: at least 9 minutes, less one a symbol may not have traded in
    assert len(truth) >= len(SYMBOLS) * (LOOKBACK_MIN - 2)
