"""The durable record under a full disk, a power cut and a PostgreSQL restart, against the
daemon as a subprocess, a real filesystem (a small tmpfs this test mounts), a real PostgreSQL
server and the exchange's ground truth."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from sidecar.exchange import Exchange
from sidecar.symbols import lookup

from .conftest import PostgresServer, RedisServer
from .helpers import DaemonProcess, Durable, stored_bars, wait_until

pytestmark = pytest.mark.e2e

SYMBOLS = ("AAPL", "EURUSD", "BTCUSD", "MSFT")


def _served(exchange: Exchange) -> dict[tuple[str, int], tuple]:
    """Every closed bar the exchange served, by canonical symbol."""
    return {(sym, ts): v for sym in SYMBOLS for ts, v in exchange.served[lookup(sym).yahoo].items()}


def _env(db: Path, redis_url: str, exchange: Exchange, **more: str) -> dict[str, str]:
    return {"SIDECAR_REDIS_URL": redis_url, "SIDECAR_YAHOO_BASE_URL": exchange.url or "",
            "SIDECAR_DB_PATH": str(db), "SIDECAR_SYMBOLS": ",".join(SYMBOLS), "SIDECAR_LOOKBACK_MINUTES": "10",
            "SIDECAR_BOOTSTRAP_DAYS": "0", "SIDECAR_FLUSH_INTERVAL_S": "1", "SIDECAR_FEATURE_WARMUP_BARS": "50",
            **more}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (root only: CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it (deleting it frees the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: closing it must not write again (and fail)
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_keeps_the_daemon_live_and_loses_nothing_once_space_returns(
        small_disk: Path, redis_url: str, redis_server: RedisServer, exchange: Exchange) -> None:
    db = small_disk / "bars.db"
    daemon = await DaemonProcess.start(small_disk.parent, **_env(db, redis_url, exchange))
    try:
        await daemon.wait_ready()
        await wait_until(lambda: len(stored_bars(db)) > 0, 30, "a first flush", detail=daemon.text)
        filler = _fill(small_disk)

        # A minute closes while the disk is full: its bars wait in the buffer, counted.
        health: dict = {}

        async def degraded_with_bars_waiting() -> bool:
            nonlocal health
            health = await daemon.health()
            return bool(health) and health["sqlite"]["buffered"] > 0 and health["sqlite"]["state"] == "degraded"

        await wait_until(degraded_with_bars_waiting, 90, "SQLite degraded with bars buffered", every=0.5,
                         detail=lambda: f"{health}\n{daemon.text()[-3000:]}")
        assert health["status"] == "degraded" and any("full" in r for r in health["reasons"]), health["reasons"]
        assert health["loop"]["state"] == "ok" and health["redis"]["state"] == "ok"
        with redis_server.client() as c:  # Redis stays live: every symbol's bar of the current minute
            minute = int(time.time()) // 60 * 60
            await wait_until(lambda: all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in SYMBOLS), 5, "latest bars")
        _, metrics = await daemon.get("/metrics")
        assert "sidecar_sqlite_errors_total" in str(metrics)

        filler.unlink()  # space returns: every buffered bar is committed
        await wait_until(lambda: daemon.health(), 5, "health")

        async def recovered() -> bool:
            doc = await daemon.health()
            return bool(doc) and doc["sqlite"]["state"] == "ok" and doc["sqlite"]["buffered"] == 0

        await wait_until(recovered, 30, "every buffered bar committed", every=0.5, detail=daemon.text)
        assert max(ts for _, ts in stored_bars(db)) >= minute - 60
        assert await daemon.stop(signal.SIGTERM) == 0, daemon.text()
    finally:
        await daemon.kill()
    rows = stored_bars(db)
    assert rows == _served(exchange)  # nothing lost, nothing else
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_copy_taken_mid_flush_opens_and_the_daemon_resumes_from_it_with_nothing_missing(
        tmp_path: Path, redis_url: str, exchange: Exchange) -> None:
    live, cut = tmp_path / "live", tmp_path / "cut"
    live.mkdir()
    cut.mkdir()
    db = live / "bars.db"
    daemon = await DaemonProcess.start(live, **_env(db, redis_url, exchange, SIDECAR_LOOKBACK_MINUTES="4320"))
    try:
        await daemon.wait_ready()
        # The disk as a power cut leaves it: the files at one instant while a flush is writing.
        # (The process is frozen for the copy, so the database and its WAL are of one moment.)
        # Three days of lookback come a day per cycle: a flush each second, each of thousands of rows.
        await wait_until(lambda: len(stored_bars(db)) > 0, 30, "a first flush committed", every=0.01)
        begun = daemon.text().count("sqlite flush begin")
        await wait_until(lambda: daemon.text().count("sqlite flush begin") > begun, 30, "a flush beginning",
                         every=0.002, detail=daemon.text)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            for name in ("bars.db", "bars.db-wal"):
                if (live / name).exists():
                    shutil.copy2(live / name, cut / name)
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        copied_at = time.time()
    finally:
        await daemon.kill()
    with closing(sqlite3.connect(cut / "bars.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        first = conn.execute("SELECT min(ts) FROM bars").fetchone()[0]
    assert first is not None

    # Resumed from the copy: what the copy lacked comes back (restart overlap, catch-up).
    daemon = await DaemonProcess.start(cut, **_env(cut / "bars.db", redis_url, exchange,
                                                   SIDECAR_LOOKBACK_MINUTES="4320"))
    try:
        await daemon.wait_ready()
        await wait_until(lambda: time.time() > copied_at + 2, 5, "a moment")
        now_minute = int(time.time()) // 60 * 60

        def caught_up() -> bool:
            rows = stored_bars(cut / "bars.db")
            return all((s, ts) in rows for (s, ts) in _served(exchange) if first <= ts < now_minute - 60)

        await wait_until(caught_up, 60, "the copy caught up", every=0.5, detail=daemon.text)
        assert await daemon.stop(signal.SIGTERM) == 0, daemon.text()
    finally:
        await daemon.kill()
    rows = stored_bars(cut / "bars.db")
    served = {k: v for k, v in _served(exchange).items() if k[1] >= first}
    assert {k: v for k, v in rows.items() if k[1] < now_minute - 60} == {
        k: v for k, v in served.items() if k[1] < now_minute - 60}
    assert all(rows[k] == v for k, v in served.items() if k in rows)


async def test_a_postgres_restart_keeps_the_daemon_live_and_loses_nothing(
        tmp_path: Path, redis_url: str, postgres_server: PostgresServer, postgres_url: str,
        exchange: Exchange) -> None:
    durable = Durable(tmp_path / "unused.db", postgres_url)
    daemon = await DaemonProcess.start(tmp_path, **_env(tmp_path / "unused.db", redis_url, exchange, **durable.env()))
    restarted = False
    try:
        await daemon.wait_ready()
        await wait_until(durable.rows, 30, "a first flush", detail=daemon.text)
        # The server goes away (its connections with it) a few seconds before a minute closes.
        await wait_until(lambda: time.time() % 60 >= 48, 65, "a minute's last seconds", every=0.2)
        postgres_server.stop()
        minute = int(time.time()) // 60 * 60
        health: dict = {}

        async def degraded_past_a_minute() -> bool:
            nonlocal health
            health = await daemon.health()
            return (bool(health) and health["sqlite"]["state"] == "degraded" and health["sqlite"]["buffered"] > 0
                    and time.time() >= minute + 65)  # the minute that was forming has closed and been fetched

        await wait_until(degraded_past_a_minute, 120, "the store degraded across a minute's close", every=0.5,
                         detail=lambda: f"{health}\n{daemon.text()[-3000:]}")
        assert health["loop"]["state"] == "ok" and health["redis"]["state"] == "ok"
        assert "***" not in health["sqlite"]["url"] and health["sqlite"]["url"].startswith("postgresql://")
        postgres_server.start()
        restarted = True

        async def recovered() -> bool:
            doc = await daemon.health()
            return bool(doc) and doc["sqlite"]["state"] == "ok" and doc["sqlite"]["buffered"] == 0

        await wait_until(recovered, 60, "every buffered bar committed", every=0.5, detail=daemon.text)
        assert max(ts for _, ts in await durable.rows()) >= minute
        assert await daemon.stop(signal.SIGTERM) == 0, daemon.text()
    finally:
        await daemon.kill()
        if not restarted:
            postgres_server.start()  # for the tests after this one
    assert await durable.rows() == _served(exchange)  # nothing lost, nothing else
    assert await durable.duplicates() == 0
