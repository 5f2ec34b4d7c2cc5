"""Redis goes away for 10 s and comes back empty while the daemon runs: the loop and SQLite
carry on, /health shows Redis down then up, the client reconnects within 2 s, and Redis holds
every symbol's latest bar within 5 s and its whole history again after the re-seed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from sidecar.app import Sidecar
from sidecar.settings import Settings

from .conftest import start_redis

pytestmark = pytest.mark.e2e


def _rows(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT symbol, count(*) FROM bars GROUP BY symbol").fetchall())


async def test_redis_restart_while_running(tmp_path: Path, settings: Settings) -> None:
    server = start_redis(tmp_path / "redis")
    sc = Sidecar(replace(settings, redis_url=server.url, flush_interval_s=1.0, redis_timeout_s=0.3),
                 handle_signals=False)
    await sc.start()
    try:
        while sc.reseeds < 1 or sc.sqlite.last_flush_at is None:  # first start: Redis is new, so it is seeded
            await asyncio.sleep(0.2)
        cycles_before = sc.metrics.total("sidecar_cycles_total")
        server.process.terminate()
        server.process.wait(timeout=10)
        down_seen, t_down = False, time.monotonic()
        while time.monotonic() - t_down < 10:
            down_seen |= sc.health()["redis"]["state"] == "down"
            await asyncio.sleep(0.2)
        assert down_seen
        assert sc.metrics.total("sidecar_cycles_total") >= cycles_before + 8  # the loop never stopped
        assert sc.health()["loop"]["state"] == "ok" and sc.health()["sqlite"]["state"] == "ok"
        rows_during_outage = sum(_rows(settings.db_path).values())

        server = start_redis(tmp_path / "redis")  # same socket, empty: no persistence
        t_back = time.monotonic()
        while sc.health()["redis"]["state"] != "ok":
            await asyncio.sleep(0.05)
        reconnect_s = time.monotonic() - t_back
        with server.client() as c:
            while not all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in settings.symbols):
                await asyncio.sleep(0.1)
            latest_s = time.monotonic() - t_back
            while sc.reseeds < 2:
                await asyncio.sleep(0.1)
            await sc._flush()  # noqa: SLF001 - so SQLite and Redis are compared at rest
            await asyncio.sleep(1.5)
            stored = _rows(settings.db_path)
            history = {s: sum(not msgpack.unpackb(m)["flags"] & 2 for m in c.zrange(f"sidecar:{{{s}}}:bars:1m", 0, -1))
                       for s in settings.symbols}  # synthetic fill-ins are Redis-only
        print(f"\nredis restart: reconnected after {reconnect_s:.2f}s, every latest bar after {latest_s:.2f}s, "
              f"history re-seeded: {sum(history.values())} bars")
        assert reconnect_s <= 2.0, reconnect_s
        assert latest_s <= 5.0, latest_s
        assert rows_during_outage > 0 and history == {s: min(n, settings.redis_history_len) for s, n in stored.items()}
    finally:
        await sc.close()
        server.process.terminate()
        server.process.wait(timeout=10)


async def test_a_reseed_that_times_out_is_retried_and_never_stops_the_daemon(
        tmp_path: Path, settings: Settings) -> None:
    server = start_redis(tmp_path / "redis")
    sc = Sidecar(replace(settings, redis_url=server.url, redis_timeout_s=0.3), handle_signals=False)
    await sc.start()
    try:
        while sc.reseeds < 1:  # the first start's seed
            await asyncio.sleep(0.2)
        with server.client() as c:
            c.flushall()
            c.client_pause(1500, all=False)  # writes (scripts included) wait 1.5 s: longer than the timeout
            sc._schedule_reseed()  # noqa: SLF001 - as when Redis comes back empty
            t0 = time.monotonic()
            while sc.reseeds < 2 and time.monotonic() - t0 < 15:
                await asyncio.sleep(0.1)
            assert sc.reseeds == 2, "the re-seed was not retried after Redis was too slow"
            assert sc.failure is None and not sc.stopping  # a slow Redis did not take the daemon down
            assert all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in settings.symbols)
    finally:
        await sc.close()
        server.process.terminate()
        server.process.wait(timeout=10)
