"""A delayed plan (Polygon's 15-minute one): bars close by the source's delayed clock, the higher
timeframes wait for it, and /health shows the delay instead of calling the feed stale.

An in-process daemon on a manual clock against the exchange's delayed Polygon plan over HTTP;
the oracle is the exchange's truth, aggregated here.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sidecar.app import Sidecar
from sidecar.clock import ManualClock
from sidecar.errors import SettingsError
from sidecar.exchange import Exchange, Market
from sidecar.exchange.providers import Limits
from sidecar.settings import Settings

from .conftest import SEED
from .helpers import resumed_daemon

NOW = int(dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC).timestamp())
SYMBOL, YAHOO, DELAY = "BTCUSD", "BTC-USD", 900


@pytest.fixture
async def delayed() -> AsyncIterator[tuple[Exchange, ManualClock]]:
    clock = ManualClock(start=NOW + 7)
    exchange = Exchange(Market(SEED), clock=clock, delays={"polygon": DELAY},
                        limits={"polygon": Limits(per_minute=0)})
    await exchange.start()
    yield exchange, clock
    await exchange.close()


def _stored(db: Path, timeframe: str) -> dict[int, tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? AND timeframe = ?", (SYMBOL, timeframe))}


def _truth(exchange: Exchange, start: int, end: int, step: int) -> dict[int, tuple]:
    t = exchange.truth(YAHOO, start, end)
    out: dict[int, list] = {}
    for ts, o, h, lo, c, v in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(), t.close.tolist(),
                                  t.volume.tolist(), strict=True):
        bar = out.setdefault(ts // step * step, [o, h, lo, c, 0.0])
        bar[1], bar[2], bar[3], bar[4] = max(bar[1], h), min(bar[2], lo), c, bar[4] + v
    return {k: tuple(v) for k, v in out.items()}


async def _run(exchange: Exchange, clock: ManualClock, db: Path, redis_url: str, delays: str) -> Sidecar:
    settings = replace(Settings(), redis_url=redis_url, db_path=db, http_port=0, symbols=(SYMBOL,),
                       sources=("polygon",), polygon_base_url=exchange.url or "", polygon_api_key="local",
                       polygon_rate_per_min=0, lookback_minutes=30, flush_interval_s=3600.0, bootstrap_days=0.0,
                       gap_scan_days=0.0, settle_s=0.0, timeframes=("1m", "5m"), higher_forming_s=0.0,
                       ).with_overrides(source_delays=delays)
    sc = await resumed_daemon(settings, clock)
    for _ in range(40):  # 20 s apart: 13 minutes
        clock.advance(20.0)
        await sc.orchestrator.run_cycle()
    await sc.sqlite.flush()
    return sc


async def test_a_delayed_plan_closes_bars_by_its_clock_and_health_shows_the_delay(
        delayed: tuple[Exchange, ManualClock], tmp_path: Path, redis_url: str) -> None:
    exchange, clock = delayed
    start = clock.time()
    sc = await _run(exchange, clock, tmp_path / "delayed.db", redis_url, "polygon=15m")
    try:
        source_now = int(clock.time()) - DELAY
        minutes = _stored(sc.settings.db_path, "1m")
        truth = _truth(exchange, int(start) - 3600, source_now, 60)
        assert minutes and max(minutes) + 60 <= source_now  # nothing stored past the source's clock
        assert {ts: truth[ts] for ts in minutes} == minutes  # every stored minute final, none cut short
        fives = _stored(sc.settings.db_path, "5m")
        want = _truth(exchange, min(minutes) // 300 * 300, source_now, 300)
        assert len(fives) >= 2
        for ts, bar in fives.items():
            assert np.allclose(bar, want[ts], rtol=1e-12), ts
        assert sc.metrics.total("sidecar_timeframe_revisions_total", timeframe="5m") == 0  # none closed early
        health = sc.health()
        assert health["sources"]["polygon"]["delay_s"] == DELAY
        assert health["freshness"][SYMBOL]["fresh"] and health["freshness"][SYMBOL]["delay_s"] == DELAY
        assert health["status"] != "down" and not any("stale" in r for r in health["reasons"])
    finally:
        await sc.close()


async def test_without_the_delay_setting_a_delayed_plan_cuts_bars_short(
        delayed: tuple[Exchange, ManualClock], tmp_path: Path, redis_url: str) -> None:
    """The control: read by the local clock, the plan's forming minute looks closed and is
    stored with the values it had so far (why the setting exists)."""
    exchange, clock = delayed
    start = clock.time()
    sc = await _run(exchange, clock, tmp_path / "undelayed.db", redis_url, "")
    try:
        minutes = _stored(sc.settings.db_path, "1m")
        truth = _truth(exchange, int(start) - 3600, int(clock.time()), 60)
        assert sum(truth[ts] != bar for ts, bar in minutes.items()) >= 5
    finally:
        await sc.close()


def test_a_bad_delay_names_the_setting() -> None:
    for bad in ("polygon", "nope=5m", "polygon=2h", "polygon=61m"):
        with pytest.raises(SettingsError, match="SIDECAR_SOURCE_DELAYS"):
            Settings.from_env({"SIDECAR_SOURCE_DELAYS": bad}, dotenv=None)
    assert Settings.from_env({"SIDECAR_SOURCE_DELAYS": "polygon=15m,twelvedata=30"}, dotenv=None).source_delays == (
        ("polygon", 900.0), ("twelvedata", 30.0))
