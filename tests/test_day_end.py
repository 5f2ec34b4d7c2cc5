"""The day's last minute of a 24-hour market. Yahoo ends the "regular" period of crypto, FX and
futures at 23:59 (providers.md 8.1) while that minute still trades, so a daemon that takes the
period's end for the close stores the 23:59 bar seconds into its minute. Here the exchange's
day ends during the run for a crypto, an FX and a futures symbol, with forming bars growing
through each minute; the exchange then revises that last bar while the daemon still counts it
as unsettled, and serves some answers without the optional meta fields."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from sidecar.app import Sidecar
from sidecar.exchange import Exchange, Market
from sidecar.settings import Settings
from sidecar.symbols import AssetClass, lookup

from .conftest import SEED
from .helpers import stored_bars, wait_until

pytestmark = pytest.mark.e2e

SYMBOLS = ("BTCUSD", "EURUSD", "XAUUSD")  # crypto (UTC day), FX (London day), futures (New York day)
ZONES = {AssetClass.CRYPTO: ZoneInfo("UTC"), AssetClass.FX: ZoneInfo("Europe/London"),
         AssetClass.FUTURES: ZoneInfo("America/New_York")}


def _day_offsets(day_end: int) -> dict[AssetClass, int]:
    """Per asset class, the shift of its day that makes its 23:59 (the regular period's end)
    fall at `day_end`: the day then ends a minute later."""
    out = {}
    for asset_class, zone in ZONES.items():
        local = dt.datetime.fromtimestamp(day_end + 60, zone)
        midnight = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
        out[asset_class] = (day_end + 60 - midnight) % 86400
    return out


@pytest.mark.timeout(360)  # up to two minutes of waiting for the day to end, more on a busy machine
async def test_the_last_minute_of_the_day_is_stored_final_and_a_revised_bar_is_corrected(
        tmp_path: Path, redis_url: str) -> None:
    now = time.time()
    day_end = (int(now) // 60 + 1) * 60
    if day_end - now < 10:  # time to start before the day ends
        day_end += 60
    exchange = Exchange(Market(SEED, always_open=True, day_offset_s=_day_offsets(day_end)))
    await exchange.start("127.0.0.1", 0)
    settings = replace(Settings(), redis_url=redis_url, yahoo_base_url=exchange.url or "", http_port=0,
                       db_path=tmp_path / "bars.db", symbols=SYMBOLS, lookback_minutes=5, bootstrap_days=0.0,
                       flush_interval_s=3600.0, settle_s=8.0, shutdown_timeout_s=5.0, gap_scan_days=0.0)
    sc = Sidecar(settings, handle_signals=False)
    states = sc.orchestrator.states
    try:
        # The exchange really ends these markets' regular period at day_end, and its clock passes it.
        async with aiohttp.ClientSession() as http:
            for sym in SYMBOLS:
                async with http.get(f"{exchange.url}/v8/finance/chart/{lookup(sym).yahoo}",
                                    params={"interval": "1m", "range": "1d"}) as r:
                    regular = (await r.json())["chart"]["result"][0]["meta"]["currentTradingPeriod"]["regular"]
                assert regular["end"] == day_end and regular["start"] == day_end + 60 - 86400, sym
        await sc.start()
        for _ in range(3):  # answers without the period bounds or the market time: bars still arrive
            exchange.inject(lookup("EURUSD").yahoo, "bare_meta")

        # The day's last minute closes; while the daemon counts it as unsettled, the exchange
        # revises it (late prints): the daemon must correct it.
        await wait_until(lambda: any(day_end in st.unsettled for st in states.values()),
                         day_end + 60 - time.time() + 30, "a day-end bar closed and unsettled")
        revised = next(sym for sym, st in states.items() if day_end in st.unsettled)
        exchange.revise(lookup(revised).yahoo, day_end)
        await wait_until(lambda: all(st.cursor is not None and st.cursor >= day_end - 60 and not st.unsettled
                                     for st in states.values()) and time.time() > day_end + 60 + 8 + 2, 40,
                         "every symbol's day-end bar settled",
                         detail=lambda: str({s: (st.cursor, list(st.unsettled)) for s, st in states.items()}))
        revisions = sc.metrics.by_labels("sidecar_bars_revised_total", ("source", "stage"))
        malformed = sc.metrics.total("sidecar_fetch_errors_total", source="yahoo", reason="MalformedResponse")
    finally:
        await sc.close()
        await exchange.close()

    rows = stored_bars(tmp_path / "bars.db")
    assert exchange.revisions and malformed == 0
    last_minute_traded = 0
    for sym in SYMBOLS:
        mine = {ts: v for (s, ts), v in rows.items() if s == sym}
        start = min(mine)
        t = exchange.truth(lookup(sym).yahoo, start, day_end + 60)
        truth = {ts: (o, h, lo, c, v) for ts, o, h, lo, c, v in zip(
            t.ts.tolist(), t.open.tolist(), t.high.tolist(), t.low.tolist(), t.close.tolist(), t.volume.tolist(),
            strict=True)}
        assert {ts: v for ts, v in mine.items() if ts < day_end + 60} == truth, sym  # final values, 23:59 included
        last_minute_traded += day_end in truth
    assert last_minute_traded >= 1  # the day's last minute traded (each market skips a minute now and then)
    # Exactly the one revision the exchange made: no bar was stored while still forming (taking
    # the period's end for the close stored the 23:59 bar at once and revised it every second).
    assert revisions == {("yahoo", "live"): 1.0}
