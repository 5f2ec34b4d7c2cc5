"""The status page in a real browser: headless Chromium (Debian's) loads `GET /` of a running
daemon following 500 symbols; the loop, the sources and the freshness grid show live values
that change between two reads without a reload; filters work; a source made to fail at the
exchange turns its row red within its breaker threshold; it fits a phone's width. Screenshots go
to bench/results/ (the README shows them)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar import universes
from sidecar.exchange import Exchange

from .browser import BINARY, Chromium
from .conftest import ROOT
from .helpers import DaemonProcess, wait_until

TOP = list(universes.members("dev_top_10", None))
SYMBOLS = TOP + [f"ZS{i:03d}" for i in range(500 - len(TOP))]
SHOTS = ROOT / "bench" / "results"
THRESHOLD = 3  # SIDECAR_BREAKER_THRESHOLD: failing cycles before the breaker opens

pytestmark = pytest.mark.skipif(BINARY is None, reason="chromium not installed: `make test` installs Debian's")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    b = await Chromium.start(tmp_path / "profile")
    yield b
    await b.close()


async def test_the_status_page_shows_live_values_and_a_failing_source_in_red(
        tmp_path: Path, exchange: Exchange, redis_url: str, browser: Chromium) -> None:
    daemon = await DaemonProcess.start(
        tmp_path, SIDECAR_REDIS_URL=redis_url, SIDECAR_YAHOO_BASE_URL=exchange.url or "",
        SIDECAR_DB_PATH=str(tmp_path / "bars.db"), SIDECAR_SYMBOLS=",".join(SYMBOLS), SIDECAR_LIVE_MODE="quotes",
        SIDECAR_LOOKBACK_MINUTES="5", SIDECAR_BOOTSTRAP_DAYS="0", SIDECAR_BREAKER_THRESHOLD=str(THRESHOLD),
        SIDECAR_BREAKER_RESET_S="300", SIDECAR_REFERENCE_DATA="false")
    try:
        await daemon.wait_ready(timeout=120)
        await browser.goto(daemon.base + "/")

        async def text(selector: str) -> str:
            return str(await browser.eval(f"document.querySelector({json.dumps(selector)}).textContent"))

        async def grid_cells(extra: str = "") -> int:
            return int(await browser.eval(f"document.querySelectorAll('#grid .cell{extra}').length"))

        await wait_until(lambda: grid_cells(), 60, "the freshness grid drawn")
        assert await grid_cells() == 500
        await wait_until(lambda: grid_cells("[data-state=fresh]"), 60, "fresh symbols on the grid")
        first = {s: await text(s) for s in ("#loop-cycles", "#updated", "#loop-last")}
        assert int(first["#loop-cycles"]) > 0 and first["#loop-last"].endswith(" ms")

        async def moved() -> bool:
            return int(await text("#loop-cycles")) > int(first["#loop-cycles"]) and await text("#updated") != \
                first["#updated"]

        await wait_until(moved, 15, "the page updating itself (no reload)")
        assert await browser.eval("performance.getEntriesByType('navigation').length") == 1
        assert (await text("#status")) in ("ok", "degraded")
        assert await browser.eval("document.querySelector('#chart polyline') !== null")
        assert await browser.eval("document.querySelector('#src-yahoo').dataset.state") == "ok"
        assert "p50" not in await text("#loop-pct") and " / " in await text("#loop-pct")
        size = await browser.eval("fetch('status.json').then(r => r.text()).then(t => t.length)")
        print(f"\nstatus.json at {len(SYMBOLS)} symbols: {size} bytes")
        assert size < 100_000  # columns, not a map per symbol: small enough to poll every 2 s

        # filters: a universe, then a text search, then all again
        await browser.eval("(() => { const s = document.getElementById('universe'); s.value = 'dev_top_10';"
                           " s.dispatchEvent(new Event('input')); })()")
        assert await grid_cells() == len(TOP)
        await browser.eval("(() => { const s = document.getElementById('universe'); s.value = '';"
                           " s.dispatchEvent(new Event('input')); const f = document.getElementById('filter');"
                           " f.value = 'ZS04'; f.dispatchEvent(new Event('input')); })()")
        assert await grid_cells() == 10  # ZS040 .. ZS049
        await browser.eval("(() => { const f = document.getElementById('filter'); f.value = '';"
                           " f.dispatchEvent(new Event('input')); })()")
        await browser.screenshot(SHOTS / "status-page.png")

        # Yahoo fails: within its breaker threshold (plus a poll) its row turns red
        exchange.outage(120, "yahoo")

        async def yahoo_red() -> bool:
            return bool(await browser.eval(
                "(() => { const r = document.querySelector('#src-yahoo'); return r && r.dataset.state === 'down'"
                " && getComputedStyle(r.cells[0]).borderLeftColor === 'rgb(207, 34, 46)'; })()"))

        took = await wait_until(yahoo_red, THRESHOLD + 10, "yahoo's row red")
        assert took <= THRESHOLD + 10
        assert "503" in await text("#src-yahoo") or "Service Unavailable" in await text("#src-yahoo")
        await browser.screenshot(SHOTS / "status-page-source-down.png")

        # a phone: one column, nothing wider than the screen
        await browser.viewport(390, 844, mobile=True)
        await wait_until(lambda: browser.eval("document.documentElement.scrollWidth <= 391"), 5, "no sideways scroll")
        await browser.screenshot(SHOTS / "status-page-phone.png")
    finally:
        exchange.outage(0, "yahoo")
        await daemon.stop()
