"""One budget per provider: a bootstrap, a gap scan and the live loop together against a Yahoo
budget of 20 requests a minute, with live traffic that fits in it alone (3 symbols every
20 s: 9 a minute, 12 in the 61 s the budget counts). The exchange never sees more than 20
requests in any 60 s, the live loop is never refused, and the history work still completes
with what the live loop leaves (7 requests a window: the bootstrap's 6, the gap scan's and
the end-of-day check's take two windows)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from sidecar.app import Sidecar
from sidecar.exchange import Exchange
from sidecar.settings import Settings

from .helpers import wait_until

pytestmark = pytest.mark.e2e

BUDGET = 20
CYCLE_S = 20.0


def _most_in_a_minute(times: list[float]) -> int:
    """The largest number of requests inside any 60 s window (each window starting at a request)."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + 60.0) for i, t in enumerate(times)), default=0)


@pytest.mark.timeout(360)  # ~80 s; the deadline below, not pytest-timeout, should report a slow run
async def test_bootstrap_gap_scan_and_live_loop_share_one_budget(settings: Settings, exchange: Exchange) -> None:
    sc = Sidecar(replace(settings, symbols=("AAPL", "EURUSD", "BTCUSD"), cycle_interval_s=CYCLE_S,
                         yahoo_rate_per_min=BUDGET, bootstrap_days=1.0, gap_scan_days=0.05, lookback_minutes=10,
                         stale_after_s=40.0), handle_signals=False)
    began = time.monotonic()
    await sc.start()
    try:
        await wait_until(lambda: sc.backfiller.last is not None and not sc.bootstrapper.running
                         and sc.bootstrapper.progress and all(d == t for d, t in sc.bootstrapper.progress.values()),
                         300, "bootstrap and a gap scan done",
                         detail=lambda: f"bootstrap {sc.bootstrapper.progress}, scan {sc.backfiller.health()}")
        cycles = sc.metrics.total("sidecar_cycles_total")
        elapsed = time.monotonic() - began
    finally:
        await sc.close()
    assert _most_in_a_minute(exchange.request_times) <= BUDGET
    # The live loop ran every cycle and was never refused a request; history waited instead.
    assert cycles >= elapsed // CYCLE_S
    assert sc.metrics.total("sidecar_fetch_skipped_total", source="yahoo", reason="rate_limit") == 0
    assert sc.orchestrator.guarded.limiter.refused == 0
    # History did go through this budget: the windows it fetched are in the exchange's log.
    history = [(sym, a, b) for sym, a, b in exchange.chart_log if b - a > 3600]
    assert len(history) >= 3 and sc.backfiller.last is not None
    assert sc.backfiller.health()["minutes_left"] == 0


async def test_history_falls_back_down_the_configured_sources_only(settings: Settings, exchange: Exchange) -> None:
    """With SIDECAR_SOURCES=twelvedata, bootstrap and gap scans go to Twelve Data (in its own
    window size) and Yahoo is never contacted."""
    sc = Sidecar(replace(settings, symbols=("AAPL", "BTCUSD"), sources=("twelvedata",), twelvedata_api_key="local",
                         twelvedata_base_url=exchange.url or "", twelvedata_rate_per_min=0), handle_signals=False)
    await sc.sqlite.start()
    for f in sc.fallbacks:
        await f.start()
    try:
        infos = list(sc.symbols.values())
        boot = await sc.bootstrapper.run(infos, days=4)  # Yahoo's 6-day grid, fetched in Twelve Data's pieces
        await sc.sqlite.flush()
        scan = await sc.backfiller.run(infos, days=0.5)
    finally:
        await sc.close()
    assert boot.failed == 0 and boot.rows["1m"] > 4 * 1440
    assert scan.gaps == [] and scan.missing_minutes == scan.confirmed_empty
    assert exchange.requests["chart"] == 0  # Yahoo is not configured: never asked
    assert len(exchange.providers.key_log[("twelvedata", "local")]) >= 2 * 2
