"""A stop keeps its deadline (SIDECAR_SHUTDOWN_TIMEOUT_S) with a real PostgreSQL store whose
pool cannot close: the step that hangs is given up and named with where the work holding it
waits, the steps after it still run, and the buffered bars are stored before."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import asyncpg
import pytest

from sidecar.app import Sidecar
from sidecar.settings import Settings

from .helpers import wait_until

BUDGET_S = 3.0


async def test_a_stop_gives_up_a_step_that_hangs_at_its_deadline_and_still_runs_the_others(
        settings: Settings, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    app = Sidecar(replace(settings, store_url=postgres_url, shutdown_timeout_s=BUDGET_S), handle_signals=False)
    await app.start()
    held: asyncio.Task[object] | None = None
    try:
        await wait_until(lambda: app.sqlite.buffered > 0, 30, "the first cycle's closed bars buffered", every=0.1)
        # A read in flight that the stop does not cancel (it is nobody's task): the pool's
        # graceful close waits for its connection, until the store's 10 s command timeout.
        held = asyncio.create_task(app.sqlite.query("SELECT pg_sleep(30)"))
        await wait_until(lambda: _sleeping(postgres_url), 10, "the read running on the server", every=0.1)
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="sidecar"):
            await app.close()
        took = time.monotonic() - t0
    finally:
        await app.close()
        if held is not None:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
    gave_up = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown: ")]
    assert len(gave_up) == 1 and gave_up[0].startswith("shutdown: closing the durable store still running"), gave_up
    assert "query (postgres_store.py" in gave_up[0], gave_up[0]  # where the held read waits
    assert caplog.records[-1].getMessage() == "stopped, having given up on: closing the durable store"
    # the deadline, with the share a step keeps however late (FLOOR) and a second of slack for a busy machine
    assert took < BUDGET_S * 1.1 + 1.0, f"the stop took {took:.1f}s"
    conn = await asyncpg.connect(postgres_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM bars")
    finally:
        await conn.close()
    assert stored > 0 and app.sqlite.buffered == 0  # the final flush ran before the hang


async def _sleeping(url: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND state = 'active' AND query = 'SELECT pg_sleep(30)'"))
    finally:
        await conn.close()
