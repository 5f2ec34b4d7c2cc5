"""Redis goes away for 10 s and comes back empty while the daemon runs: the loop and SQLite
carry on, /health shows Redis down then up, the client reconnects within 2 s, and Redis holds
every symbol's latest bar within 5 s and its whole history again after the re-seed."""

from __future__ import annotations

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
from .helpers import wait_until

pytestmark = pytest.mark.e2e


def _rows(db: Path) -> dict[str, int]:
    with closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT symbol, count(*) FROM bars WHERE timeframe='1m' GROUP BY symbol").fetchall())


async def test_redis_restart_while_running(tmp_path: Path, settings: Settings) -> None:
    server = start_redis(tmp_path / "redis")
    sc = Sidecar(replace(settings, redis_url=server.url, flush_interval_s=1.0, redis_timeout_s=0.3),
                 handle_signals=False)
    await sc.start()
    try:
        # first start: Redis is new, so it is seeded
        await wait_until(lambda: sc.reseeds >= 1 and sc.sqlite.last_flush_at is not None, 60, "seeded and flushed")
        cycles_before = sc.metrics.total("sidecar_cycles_total")
        server.process.terminate()
        server.process.wait(timeout=10)
        t_down = time.monotonic()
        await wait_until(lambda: sc.health()["redis"]["state"] == "down", 10, "redis down in /health")
        # the loop never stops: a cycle a second while Redis is gone (for 10 s in all)
        await wait_until(lambda: sc.metrics.total("sidecar_cycles_total") >= cycles_before + 8
                         and time.monotonic() - t_down >= 10, 30, "cycles while Redis is down")
        assert sc.health()["loop"]["state"] == "ok" and sc.health()["sqlite"]["state"] == "ok"
        rows_during_outage = sum(_rows(settings.db_path).values())

        server = start_redis(tmp_path / "redis")  # same socket, empty: no persistence
        t_back = time.monotonic()
        reconnect_s = await wait_until(lambda: sc.health()["redis"]["state"] == "ok", 30, "redis ok in /health",
                                       every=0.02)
        with server.client() as c:
            await wait_until(lambda: all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in settings.symbols), 30,
                             "every latest bar back", every=0.02)
            latest_s = time.monotonic() - t_back
            await wait_until(lambda: sc.reseeds >= 2, 60, "the re-seed")
            await sc.flusher.flush()  # so SQLite and Redis are compared at rest

            def compared() -> tuple[dict[str, int], dict[str, int]]:
                stored = _rows(settings.db_path)
                history = {s: sum(not msgpack.unpackb(m)["flags"] & 2
                                  for m in c.zrange(f"sidecar:{{{s}}}:bars:1m", 0, -1))
                           for s in settings.symbols}  # synthetic fill-ins are Redis-only
                return history, {s: min(n, settings.redis_history_len) for s, n in stored.items()}

            # equal at a moment between two flushes (a minute may close while we compare)
            await wait_until(lambda: (lambda h, s: h == s)(*compared()), 30, "Redis history equal to SQLite",
                             detail=lambda: str(compared()))
            history, _ = compared()
        print(f"\nredis restart: reconnected after {reconnect_s:.2f}s, every latest bar after {latest_s:.2f}s, "
              f"history re-seeded: {sum(history.values())} bars")
        assert reconnect_s <= 2.0, reconnect_s
        assert latest_s <= 5.0, latest_s
        assert rows_during_outage > 0
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
        await wait_until(lambda: sc.reseeds >= 1, 60, "the first start's seed")
        with server.client() as c:
            c.flushall()
            c.client_pause(1500, all=False)  # writes (scripts included) wait 1.5 s: longer than the timeout
            sc._schedule_reseed()  # noqa: SLF001 - as when Redis comes back empty
            await wait_until(lambda: sc.reseeds >= 2, 30, "the re-seed retried after Redis was too slow")
            assert sc.failure is None and not sc.stopping  # a slow Redis did not take the daemon down
            assert all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in settings.symbols)
    finally:
        await sc.close()
        server.process.terminate()
        server.process.wait(timeout=10)
