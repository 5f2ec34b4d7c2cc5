"""The HTTP server of a running in-process daemon: health, metrics, bar reads, 4xx on bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import Sidecar
from sidecar.features import OUTPUTS
from sidecar.settings import Settings

from .helpers import wait_until


async def _running(settings: Settings) -> Sidecar:
    sc = Sidecar(settings, handle_signals=False)
    await sc.start()
    await wait_until(lambda: sc.orchestrator.last_cycle_at is not None, 30, "a first cycle")
    return sc


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Sidecar]]:
    sc = await _running(replace(settings, cycle_interval_s=0.25))
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{sc.http.port}", sc
    await sc.close()


async def test_health_reports_ok_with_every_component_and_fresh_symbols(client) -> None:  # type: ignore[no-untyped-def]
    session, base, sc = client
    counted = sc.orchestrator.ticker.overruns
    async with session.get(f"{base}/health") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["status"] == "ok" and doc["ready"] is True
    assert doc["loop"]["state"] == "ok" and doc["loop"]["last_cycle_ms"] is not None
    # what the loop counted meanwhile (a 0.25-s cycle may overrun on a busy 2-core machine: a
    # matter of timing, not of what /health reports)
    assert counted <= doc["loop"]["overruns"] <= sc.orchestrator.ticker.overruns
    assert doc["sources"]["yahoo"]["state"] == "ok"
    assert doc["redis"]["state"] == "ok" and doc["sqlite"]["state"] == "ok"
    assert set(doc["freshness"]) == set(sc.settings.symbols)
    assert all(f["fresh"] and f["last_bar_ts"] for f in doc["freshness"].values())


async def test_metrics_are_prometheus_text(client) -> None:  # type: ignore[no-untyped-def]
    session, base, _ = client
    async with session.get(f"{base}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    for name in ("sidecar_cycles_total", "sidecar_cycle_seconds_bucket", "sidecar_fetch_seconds_bucket",
                 "sidecar_bars_accepted_total", "sidecar_redis_write_seconds_bucket",
                 "sidecar_symbol_last_bar_timestamp_seconds"):
        assert name in text, name


async def test_per_symbol_gauges_parse_as_prometheus_text_with_each_symbols_values(client) -> None:  # type: ignore[no-untyped-def]
    session, base, _ = client
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    async with session.get(f"{base}/health") as r:
        freshness = (await r.json())["freshness"]
    families = {f.name: f for f in text_string_to_metric_families(text)}  # prometheus_client's own parser
    last_bar = {s.labels["symbol"]: s.value for s in families["sidecar_symbol_last_bar_timestamp_seconds"].samples}
    assert families["sidecar_symbol_last_bar_timestamp_seconds"].type == "gauge"
    assert set(last_bar) == set(freshness)
    for symbol, value in last_bar.items():  # a bar at least as new as the one /health saw just before
        assert value >= freshness[symbol]["last_bar_ts"]
    session_flags = families["sidecar_symbol_in_session"].samples
    assert {s.labels["symbol"] for s in session_flags} == set(freshness)
    assert {s.labels["asset_class"] for s in session_flags} <= {"equity", "index", "fx", "crypto", "futures"}
    assert all(s.value in (0.0, 1.0) for s in session_flags)


async def test_bars_are_read_back_from_redis(client) -> None:  # type: ignore[no-untyped-def]
    session, base, _ = client
    async with session.get(f"{base}/bars/aapl", params={"limit": "5"}) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["symbol"] == "AAPL" and len(doc["bars"]) == 5
    ts = [b["ts"] for b in doc["bars"]]
    assert ts == sorted(ts) and all(b["flags"] == 0 for b in doc["bars"])
    async with session.get(f"{base}/bars/AAPL", params={"start": ts[1], "end": ts[3]}) as r:
        assert [b["ts"] for b in (await r.json())["bars"]] == ts[1:4]
    async with session.get(f"{base}/bars/EURUSD/latest") as r:
        assert r.status == 200 and (await r.json())["symbol"] == "EURUSD"


@pytest.mark.parametrize(("path", "params", "status", "message"), [
    ("/bars/AA;PL", {}, 400, "expected 1-12 letters"),
    ("/bars/NVDA", {}, 404, "not followed"),
    ("/bars/AAPL", {"tf": "2m"}, 400, "tf must be one of"),
    ("/bars/AAPL", {"limit": "0"}, 400, "limit: expected 1..5000, got 0"),
    ("/bars/AAPL", {"start": "yesterday"}, 400, "start: expected an integer"),
    ("/bars/AAPL", {"start": "200", "end": "100"}, 400, "start must not be after end"),
])
async def test_bad_requests_get_4xx_with_a_message(client, path: str, params: dict, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    session, base, _ = client
    async with session.get(base + path, params=params) as r:
        assert r.status == status
        assert message in (await r.json())["error"]


async def test_health_is_degraded_while_redis_is_down(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = await _running(replace(settings, redis_url=f"unix://{tmp_path}/none.sock", redis_timeout_s=0.1,
                                cycle_interval_s=0.25))
    try:
        doc = sc.health()
        assert doc["status"] == "degraded" and doc["redis"]["state"] == "down"
        assert doc["sqlite"]["state"] == "ok" and doc["loop"]["state"] == "ok"
    finally:
        await sc.close()


async def test_features_of_a_symbol_are_served_with_every_output(client) -> None:  # type: ignore[no-untyped-def]
    session, base, _ = client
    async with session.get(f"{base}/features/aapl") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["symbol"] == "AAPL" and doc["tf"] == "1m" and isinstance(doc["provisional"], bool)
    assert set(OUTPUTS) <= set(doc)
    assert doc["ema_9"] is not None and doc["sma_200"] is None  # 30 bars of history: SMA 200 still warming up


async def test_signals_are_read_back_from_the_stream(client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    session, base, sc = client
    await sc.redis.publish_signals([{"id": "x", "symbol": "AAPL", "rule": "rsi_oversold", "ts": 1}])
    async with session.get(f"{base}/signals", params={"since": "0"}) as r:
        assert r.status == 200
        signals = (await r.json())["signals"]
    assert [(s["symbol"], s["rule"]) for s in signals if s["id"] == "x"] == [("AAPL", "rsi_oversold")]
    for bad in ({"since": "yesterday"}, {"since": "-5"}, {"limit": "0"}):
        async with session.get(f"{base}/signals", params=bad) as r:
            assert r.status == 400 and "error" in await r.json()
    async with session.get(f"{base}/features/AA$PL") as r:
        assert r.status == 400


async def test_symbols_are_added_and_removed_while_the_daemon_runs(client) -> None:  # type: ignore[no-untyped-def]
    session, base, sc = client
    async with session.post(f"{base}/symbols", json={"add": ["nvda", "GBPUSD"], "remove": ["MSFT"]}) as r:
        assert r.status == 200
        followed = (await r.json())["symbols"]
    assert "NVDA" in followed and "GBPUSD" in followed and "MSFT" not in followed
    async def nvda_features() -> bool:  # a few cycles, until the new symbol's features are in Redis
        async with session.get(f"{base}/features/NVDA") as r:
            return r.status == 200 and (await r.json())["ema_9"] is not None

    await wait_until(nvda_features, 30, "NVDA's features in Redis")
    health = sc.health()
    assert health["freshness"]["NVDA"]["fresh"] and "MSFT" not in health["freshness"]
    async with session.get(f"{base}/bars/MSFT/latest") as r:
        assert r.status == 404
    async with session.get(f"{base}/symbols") as r:
        listed = {s["symbol"]: s for s in (await r.json())["symbols"]}
    assert listed["GBPUSD"]["asset_class"] == "fx" and listed["GBPUSD"]["yahoo"] == "GBPUSD=X"
    assert "NVDA" in sc.scanner.symbols and "MSFT" not in sc.features.book


@pytest.mark.parametrize("body", [[], {"add": "AAPL"}, {"add": [1]}, {"add": ["AA PL"]}, {"remove": ["../x"]}])
async def test_a_bad_symbols_request_is_a_400_and_changes_nothing(client, body: object) -> None:  # type: ignore[no-untyped-def]
    session, base, sc = client
    before = list(sc.symbols)
    async with session.post(f"{base}/symbols", json=body) as r:
        assert r.status == 400 and "error" in await r.json()
    assert list(sc.symbols) == before


async def test_an_empty_store_is_bootstrapped_in_the_background_and_features_rewarmed(settings: Settings) -> None:
    sc = await _running(replace(settings, bootstrap_days=1.0, symbols=("AAPL", "BTCUSD"), cycle_interval_s=0.5))
    try:
        assert sc.health()["ready"]  # live before the history is in
        await wait_until(lambda: not sc.bootstrapper.running and sc.bootstrapper.progress, 60, "the bootstrap")
        progress = sc.health()["bootstrap"]["progress"]
        assert progress["AAPL"]["windows_done"] == progress["AAPL"]["windows"] > 0
        async def rewarmed() -> bool:  # the re-warm, then the next cycle's features
            raw = (await sc.redis.features(["AAPL"], "1m"))[0]
            return raw is not None and sc.features.codec.to_map(raw)["sma_200"] is not None

        await wait_until(rewarmed, 30, "features re-warmed from the bootstrapped day")
    finally:
        await sc.close()
