"""Higher timeframes in the running daemon: stored, published, revised and restarted right.

An in-process daemon on a manual clock against the exchange over HTTP. The oracle is the
exchange's truth aggregated here (UTC hours for a crypto symbol) and TA-Lib over the bars the
daemon stored.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest

from sidecar.app import Sidecar
from sidecar.clock import ManualClock
from sidecar.exchange import Exchange, Market
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import SEED, RedisServer
from .helpers import resumed_daemon
from .talib_oracle import talib_outputs

NOW = int(dt.datetime(2026, 11, 30, 1, 30, tzinfo=dt.UTC).timestamp())  # the UTC day before is settled
SYMBOL, YAHOO = "BTCUSD", "BTC-USD"


@pytest.fixture
async def world(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Exchange, ManualClock, Settings]]:
    clock = ManualClock(start=NOW + 7)
    exchange = Exchange(Market(SEED), clock=clock)
    await exchange.start()
    settings = replace(Settings(), redis_url=redis_url, yahoo_base_url=exchange.url or "", db_path=tmp_path / "s.db",
                       http_port=0, symbols=(SYMBOL,), lookback_minutes=180, flush_interval_s=3600.0,
                       bootstrap_days=0.0, gap_scan_days=0.0, settle_s=0.0, feature_warmup_bars=5000,
                       higher_forming_s=0.0)  # every forming bar every cycle
    yield exchange, clock, settings
    await exchange.close()


async def _daemon(settings: Settings, clock: ManualClock) -> Sidecar:
    return await resumed_daemon(settings, clock)  # type: ignore[no-any-return]


def _hours(exchange: Exchange, start: int, end: int) -> dict[int, tuple]:
    """The exchange's minutes of [start, end) as UTC hours: (open, high, low, close, volume)."""
    t = exchange.truth(YAHOO, start, end)
    out: dict[int, list] = {}
    for ts, o, h, lo, c, v in zip(t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(), t.close.tolist(),
                                  t.volume.tolist(), strict=True):
        bar = out.setdefault(ts // 3600 * 3600, [o, h, lo, c, 0.0])
        bar[1], bar[2], bar[3], bar[4] = max(bar[1], h), min(bar[2], lo), c, bar[4] + v
    return {k: tuple(v) for k, v in out.items()}


def _stored(db: Path, timeframe: str) -> dict[int, tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return {r[0]: tuple(r[1:]) for r in conn.execute(
            "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? AND timeframe = ? ORDER BY ts",
            (SYMBOL, timeframe))}


def _same(got: dict[int, tuple], want: dict[int, tuple]) -> bool:
    """Same bar opens, values equal to float rounding (volumes are sums)."""
    return sorted(got) == sorted(want) and all(np.allclose(got[k], want[k], rtol=1e-12, atol=0) for k in want)


def _assert_features_equal_talib(sc: Sidecar, db: Path) -> None:
    """The 1h book's committed values equal TA-Lib over the stored 1h bars, at the newest one."""
    bars = _stored(db, "1h")
    h, lo, c, v = (np.array([b[i] for b in bars.values()]) for i in (1, 2, 3, 4))
    book = sc.orchestrator.higher.by_name["1h"].features.book  # type: ignore[union-attr]
    want = talib_outputs(h, lo, c, v, book.config, hv_scale=math.sqrt(24 * 365))
    got = dict(zip(book.outputs, book.values([SYMBOL])[:, 0].tolist(), strict=True))
    compared = 0
    for name, series in want.items():
        if name == "vwap" or np.isnan(series[-1]):  # VWAP restarts each session: the parity tests cover it
            continue
        assert abs(got[name] - series[-1]) <= 1e-9 * max(1.0, abs(series[-1])), (name, got[name], series[-1])
        compared += 1
    assert compared >= 15


async def test_hours_are_stored_published_revised_and_survive_a_restart(
        world: tuple[Exchange, ManualClock, Settings], redis_server: RedisServer) -> None:
    exchange, clock, settings = world
    sc = await _daemon(settings, clock)
    first_minute = NOW - 180 * 60
    try:
        await sc.orchestrator.run_cycle()  # 180 minutes: 22:30 .. 01:29
        clock.advance(1.0)
        await sc.orchestrator.run_cycle()  # the open hour is known from the store now: it forms
        await sc.sqlite.flush()
        truth = _hours(exchange, first_minute, NOW)
        closed_hours = {ts: v for ts, v in truth.items() if ts + 3600 <= NOW}
        assert _same(_stored(settings.db_path, "1h"), closed_hours)
        assert sorted(closed_hours) == [NOW - 12600, NOW - 9000, NOW - 5400]  # 22:00 (from 22:30), 23:00, 00:00
        with redis_server.client() as r:
            latest = msgpack.unpackb(r.get(f"sidecar:{{{SYMBOL}}}:bar:1h"))
            minute = msgpack.unpackb(r.get(f"sidecar:{{{SYMBOL}}}:bar:1m"))
            history = [msgpack.unpackb(m) for m in r.zrange(f"sidecar:{{{SYMBOL}}}:bars:1h", 0, -1)]
        assert latest["ts"] == NOW - 1800 and latest["flags"] & 1 and minute["flags"] & 1  # the forming hour
        assert latest["open"] == truth[NOW - 1800][0] and latest["close"] == minute["close"]
        assert latest["high"] >= truth[NOW - 1800][1] and latest["volume"] > truth[NOW - 1800][4]
        assert _same({m["ts"]: (m["open"], m["high"], m["low"], m["close"], m["volume"]) for m in history},
                     closed_hours)

        # The source corrects 23:10 of the closed 23:00 hour; the end-of-day check finds it.
        hour = NOW - 1800 - 3600 * 2
        exchange.revise(YAHOO, hour + 600)
        eod = await sc.backfiller.end_of_day([lookup(SYMBOL)])
        assert eod["revised"] == 1
        clock.advance(1.0)
        await sc.orchestrator.run_cycle()  # the rebuild runs at the end of the next cycle
        clock.advance(1.0)
        await sc.orchestrator.run_cycle()  # and Redis gets the rebuilt bars in the one after
        await sc.sqlite.flush()
        day = NOW - 5400 - 86400  # Nov 29 00:00 UTC
        day_before = _hours(exchange, day, NOW)  # the check filled the whole UTC day too
        stored = _stored(settings.db_path, "1h")
        assert np.allclose(stored[hour], day_before[hour], rtol=1e-12) and stored[hour] != truth[hour]
        assert _same(stored, {k: v for k, v in day_before.items() if k + 3600 <= NOW})
        assert sc.metrics.total("sidecar_timeframe_revisions_total", timeframe="1h") >= 1
        assert sc.health()["timeframes"]["1h"]["revisions"] >= 1
        with redis_server.client() as r:
            member = [msgpack.unpackb(m) for m in r.zrangebyscore(f"sidecar:{{{SYMBOL}}}:bars:1h", hour, hour)]
        assert len(member) == 1 and _same({hour: tuple(member[0][k] for k in ("open", "high", "low", "close", "volume"))},
                                          {hour: day_before[hour]})
        hours = [day_before[h] for h in range(day, day + 86400, 3600)]
        assert _same(_stored(settings.db_path, "1d"), {day: (
            hours[0][0], max(x[1] for x in hours), min(x[2] for x in hours), hours[-1][3], sum(x[4] for x in hours))})
        _assert_features_equal_talib(sc, settings.db_path)
    finally:
        await sc.close()

    # Down for ten minutes; the catch-up after the restart completes the hour that closed meanwhile.
    clock.advance(600 + 1800)
    sc = await _daemon(settings, clock)
    try:
        _assert_features_equal_talib(sc, settings.db_path)  # warmed from the stored bars
        await sc.orchestrator.run_cycle()
        clock.advance(1.0)
        await sc.orchestrator.run_cycle()
        await sc.sqlite.flush()
        now = int(clock.time())
        want = {k: v for k, v in _hours(exchange, NOW - 5400 - 86400, now).items() if k + 3600 <= now}
        assert _same(_stored(settings.db_path, "1h"), want)
        assert NOW // 3600 * 3600 in want  # the hour that was open at the stop
        _assert_features_equal_talib(sc, settings.db_path)
        await sc.http.start()
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{sc.http.port}"
            async with http.get(f"{base}/bars/{SYMBOL}?tf=1h&limit=3") as resp:
                assert resp.status == 200 and [b["ts"] for b in (await resp.json())["bars"]] == sorted(want)[-3:]
            async with http.get(f"{base}/bars/{SYMBOL}/latest?tf=4h") as resp:
                assert resp.status == 200 and (await resp.json())["tf"] == "4h"
            async with http.get(f"{base}/features/{SYMBOL}?tf=1d") as resp:
                assert resp.status == 200 and (await resp.json())["tf"] == "1d"
            async with http.get(f"{base}/features/{SYMBOL}?tf=2h") as resp:
                assert resp.status == 400 and "SIDECAR_TIMEFRAMES" in (await resp.json())["error"]
    finally:
        await sc.close()


def test_a_timeframe_not_configured_is_refused_by_the_http_api_and_the_rules(settings: Settings) -> None:
    from sidecar.errors import SettingsError

    with pytest.raises(SettingsError, match="SIDECAR_SIGNAL_RULES.*'1h'.*not built"):
        Sidecar(replace(settings, timeframes=("1m", "5m"), signal_rules="x: rsi_14@1h < 30"), handle_signals=False)
    sc = Sidecar(replace(settings, timeframes=("1m", "5m")), handle_signals=False)
    assert sc.http.timeframes == ("1m", "5m") and [lane.timeframe for lane in sc.orchestrator.higher.lanes] == ["5m"]
