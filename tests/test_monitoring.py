"""Monitoring as shipped in deploy/: the alerting rules pass their promtool unit tests, and a real
Prometheus (Debian's package) scraping a running daemon loads every rule and answers every
dashboard panel's and every alert's query with data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from sidecar.exchange import Exchange

from .conftest import ROOT
from .helpers import DaemonProcess, free_port, wait_until

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "sidecar.json"
# What Grafana puts in for its macros and the dashboard's variables.
GRAFANA_MACROS = {"$__rate_interval": "30s", "$__range": "5m", "$instance": ".*"}

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None or shutil.which("prometheus") is None,
                                    reason="prometheus not installed: `make test` installs Debian's package")


def _rule_names() -> tuple[set[str], set[str]]:
    """The alerts and the recording rules alerts.yml defines."""
    text = ALERTS.read_text()
    return set(re.findall(r"^\s*- alert: (\S+)$", text, re.M)), set(re.findall(r"^\s*- record: (\S+)$", text, re.M))


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for macro, value in GRAFANA_MACROS.items():
                expr = expr.replace(macro, value)
            out.append((panel["title"], expr))
    return out


@needs_promtool
def test_the_alerting_rules_are_valid_and_pass_their_unit_tests() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ALERTS.parent,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # every alert has a test case that expects it to fire
    cases = (ALERTS.parent / "alerts_test.yml").read_text()
    alerts, _ = _rule_names()
    assert len(alerts) >= 10
    for alert in alerts:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in cases, alert


def test_the_dashboard_is_provisioning_ready() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "sidecar" and dashboard["panels"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


@needs_promtool
async def test_every_panel_and_alert_query_returns_data_from_a_real_prometheus(
        tmp_path: Path, exchange: Exchange, redis_url: str) -> None:
    daemon = await DaemonProcess.start(
        tmp_path, SIDECAR_REDIS_URL=redis_url, SIDECAR_YAHOO_BASE_URL=exchange.url or "",
        SIDECAR_DB_PATH=str(tmp_path / "bars.db"), SIDECAR_SYMBOLS="AAPL,MSFT,BTCUSD,EURUSD",
        SIDECAR_LOOKBACK_MINUTES="10", SIDECAR_BOOTSTRAP_DAYS="0", SIDECAR_GAP_SCAN_DAYS="1",
        SIDECAR_FLUSH_INTERVAL_S="1")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(orjson.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "sidecar", "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]}],
    }).decode())
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        await daemon.wait_ready()
        # data for the error panels: a rejected bar, a failed request
        for symbol, kind in (("AAPL", "high_below_low"), ("MSFT", "http_500"), ("MSFT", "http_500")):
            exchange.inject(symbol, kind)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def query(expr: str) -> dict:
                async with http.get(f"{api}/query", params={"query": expr, "time": str(time.time())}) as r:
                    return await r.json()  # type: ignore[no-any-return]

            async def scraped() -> bool:
                try:
                    doc = await query('count_over_time(up{job="sidecar"}[1m]) >= 20 and up{job="sidecar"} == 1')
                except aiohttp.ClientError:
                    return False
                return bool(doc.get("data", {}).get("result"))

            def prometheus_log() -> str:
                return (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]

            await wait_until(scraped, 90, "20 scrapes of the daemon", every=0.5, detail=prometheus_log)

            needed = ("sidecar_bars_rejected_total", "sidecar_fetch_errors_total", "sidecar_end_of_day_complete_ratio")
            missing: list[str] = []

            async def errors_seen() -> bool:
                missing[:] = [name for name in needed if not (await query(name))["data"]["result"]]
                return not missing

            await wait_until(errors_seen, 60, "the rejected bar, the failed request and the end-of-day check scraped",
                             every=0.5, detail=lambda: f"missing: {missing}\n{daemon.text()[-2000:]}")
            empty = []
            for title, expr in _panel_queries():
                doc = await query(expr)
                assert doc["status"] == "success", (title, expr, doc)
                if not doc["data"]["result"]:
                    empty.append((title, expr))
            assert not empty, f"panels without data: {empty}"

            async with http.get(f"{api}/rules") as r:
                groups = (await r.json())["data"]["groups"]
            loaded = {rule["name"]: rule for g in groups for rule in g["rules"]}
            alerts, records = _rule_names()
            assert set(loaded) == alerts | records
            assert all(rule["health"] == "ok" for rule in loaded.values()), loaded
            for name, rule in loaded.items():
                doc = await query(rule["query"])
                assert doc["status"] == "success", (name, doc)
                # every series an alert or a recording rule reads exists (the condition itself may be false)
                for series in sorted(set(re.findall(r"\b(sidecar[_:][a-z0-9_:]+)", rule["query"]))):
                    assert (await query(series))["data"]["result"], (name, series)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()
        await daemon.stop()


def test_scrape_time_gauges_are_built_at_a_scrape_only_not_when_counters_are_read() -> None:
    from sidecar.metrics import Metrics, gauge

    metrics, built = Metrics(), []

    def build() -> list:
        built.append(1)  # at 5,000 symbols this costs tens of ms: /health must not pay it
        return [gauge("sidecar_test_gauge", "a gauge", ["symbol"], [(["AAPL"], 1.0)])]

    metrics.at_scrape(build)
    metrics.cycles.inc()
    assert metrics.total("sidecar_cycles_total") == 1 and metrics.by_label("sidecar_fetch_errors_total", "source") == {}
    assert built == []
    text = metrics.render().decode()
    assert built == [1] and 'sidecar_test_gauge{symbol="AAPL"} 1.0' in text and "sidecar_cycles_total 1.0" in text
