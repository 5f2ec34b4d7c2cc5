"""History loads: `python -m sidecar history` as a user runs it against the local exchange
(a market that keeps NYSE hours): each timeframe equal to what the exchange serves at it,
dividends and splits stored, a second run resuming instead of fetching again, and the export's
adjusted view equal to a reference adjustment computed here and to the exchange's `adjclose`."""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import os
import sqlite3
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from sidecar import dataset
from sidecar.exchange import Exchange, Market

from .conftest import ROOT, SEED, subprocess_env

SYMBOL = "MSFT"


@pytest.fixture
async def market_hours() -> AsyncIterator[Exchange]:
    """The exchange with real session hours (the shared fixture trades around the clock)."""
    ex = Exchange(Market(SEED))
    await ex.start("127.0.0.1", 0)
    yield ex
    await ex.close()


async def _sidecar(exchange: Exchange, db: Path, *args: str) -> tuple[int, dict, str]:
    """Run the CLI as its own process (without blocking the exchange, which runs in this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_env(SIDECAR_YAHOO_BASE_URL=exchange.url or "", SIDECAR_DB_PATH=str(db),
                           SIDECAR_LOG_LEVEL="WARNING"))
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode or 0, orjson.loads(out) if out.strip() else {}, err.decode()


async def _chart(session: aiohttp.ClientSession, exchange: Exchange, interval: str, start: int, end: int) -> dict:
    async with session.get(f"{exchange.url}/v8/finance/chart/{SYMBOL}", params={
            "interval": interval, "period1": str(start), "period2": str(end), "events": "div,splits"}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["chart"]["result"][0]  # type: ignore[no-any-return]


def _stored(db: Path, timeframe: str) -> dict[int, tuple[float, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return {ts: tuple(v) for ts, *v in conn.execute(
            "SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = ? AND timeframe = ?",
            (SYMBOL, timeframe))}


async def test_history_loads_daily_and_intraday_with_actions_and_an_adjusted_export(
        market_hours: Exchange, tmp_path: Path) -> None:
    ex, db = market_hours, tmp_path / "history.db"
    now = int(time.time())
    async with aiohttp.ClientSession() as http:
        sessions = (await _chart(http, ex, "1d", now - 200 * 86400, now))["timestamp"]
        # a 3:1 split about 100 sessions ago, a dividend inside the 5-minute reach (60 days)
        split_at, dividend_at = sessions[-100], sessions[-30]
        for body in ({"symbol": SYMBOL, "kind": "split", "date": split_at, "ratio": 3},
                     {"symbol": SYMBOL, "kind": "dividend", "date": dividend_at, "amount": 1.25}):
            async with http.post(f"{ex.url}/_exchange/actions", data=orjson.dumps(body)) as r:
                assert r.status == 200

        code, summary, err = await _sidecar(ex, db, "history", "--symbols", SYMBOL, "--timeframes", "1d,5m",
                                            "--years", "2")
        assert code == 0, err
        assert summary["windows_failed"] == 0 and summary["timeframes"] == ["5m", "1d"]
        end = int(time.time())
        # every timeframe as the exchange serves it (the oracle): the closed bars, value for value
        for interval, tf, start in (("1d", "1d", now - 730 * 86400), ("5m", "5m", now - 59 * 86400)):
            served = await _chart(http, ex, interval, start, end)
            q = served["indicators"]["quote"][0]
            step = 86400 if tf == "1d" else 300
            # closed by the time the load began; daily bars of sessions that had closed
            truth = {t: (o, h, lo, c, float(v)) for t, o, h, lo, c, v in zip(
                served["timestamp"], q["open"], q["high"], q["low"], q["close"], q["volume"], strict=True)
                if o is not None and t + step <= now - 300 and (tf != "1d" or t + 7 * 3600 < now - 300)
                and t >= start}  # a session that began before the oracle's window is served cut short
            stored = _stored(db, tf)
            assert truth and {t: stored.get(t) for t in truth} == truth, tf
        oldest_day = min(_stored(db, "1d"))
        assert oldest_day <= now - 725 * 86400  # two years of daily bars

        # dividends and splits beside the bars, as the exchange lists them
        async with http.get(f"{ex.url}/_exchange/actions", params={"symbol": SYMBOL,
                                                                    "start": str(oldest_day), "end": str(end)}) as r:
            listed = (await r.json())["actions"]
        with closing(sqlite3.connect(db)) as conn:
            stored_actions = conn.execute("SELECT ts, kind, value FROM actions WHERE symbol = ? ORDER BY ts",
                                          (SYMBOL,)).fetchall()
        assert [(a["date"], a["kind"], a.get("amount", a.get("ratio"))) for a in listed] == \
            [(t, k, pytest.approx(v, rel=1e-12)) for t, k, v in stored_actions]
        assert {(split_at, "split"), (dividend_at, "dividend")} <= {(t, k) for t, k, _ in stored_actions}

        # a second run resumes: only the newest window of each timeframe is asked again
        code, again, err = await _sidecar(ex, db, "history", "--symbols", SYMBOL, "--timeframes", "1d,5m",
                                          "--years", "2")
        assert code == 0, err
        assert again["windows_already_done"] > 0 and again["windows_fetched"] <= 2

        # the adjusted view: reference back-adjustment from the exchange's list, and its adjclose
        out = tmp_path / "set"
        code, _, err = await _sidecar(ex, db, "export", "--symbols", SYMBOL, "--timeframes", "1d,5m", "--adjusted",
                                      "--out", str(out), "--end",
                                      dt.datetime.fromtimestamp(end, dt.UTC).isoformat())
        assert code == 0, err
        daily = await _chart(http, ex, "1d", oldest_day, end)
    frame = dataset.read(out, symbols=[SYMBOL])
    for tf in ("1d", "5m"):
        rows = frame[frame.timeframe == tf]
        ts = rows.ts.map(lambda t: int(t.timestamp())).to_numpy()
        factor, shares = np.ones(len(ts)), np.ones(len(ts))
        for a in listed:  # bars before an action's date: x 1/ratio, or x (1 - amount / close before)
            before = ts < a["date"]
            if a["kind"] == "split":
                factor[before] /= a["ratio"]
                shares[before] *= a["ratio"]
            else:
                factor[before] *= 1 - a["amount"] / a["close_before"]
        assert (factor < 1).any() and (factor == 1).any(), tf  # both actions fall inside this history
        for col in ("open", "high", "low", "close"):
            np.testing.assert_allclose(rows[f"adj_{col}"], rows[col] * factor, rtol=1e-12, atol=0)
        np.testing.assert_allclose(rows.adj_volume, rows.volume * shares, rtol=1e-12)
    adjclose = dict(zip(daily["timestamp"], daily["indicators"]["adjclose"][0]["adjclose"], strict=True))
    days = frame[frame.timeframe == "1d"]
    exported = dict(zip((int(t.timestamp()) for t in days.ts), days.adj_close, strict=True))
    assert {t: pytest.approx(adjclose[t], rel=1e-9) for t in exported} == exported


async def test_history_refuses_timeframes_no_source_serves(market_hours: Exchange, tmp_path: Path) -> None:
    code, _, err = await _sidecar(market_hours, tmp_path / "h.db", "history", "--symbols", SYMBOL,
                                  "--timeframes", "15m,4h")
    assert code == 2 and "no timeframe of 15m,4h is served as history" in err and err.count("\n") <= 2
    code, _, err = await _sidecar(market_hours, tmp_path / "h.db", "history", "--symbols", SYMBOL,
                                  "--timeframes", "1d,2h")
    assert code == 2 and "unknown timeframe '2h'" in err


async def test_long_commands_show_a_progress_bar_on_a_terminal_and_only_json_on_stdout(
        market_hours: Exchange, tmp_path: Path) -> None:
    db = tmp_path / "bars.db"
    for args, unit in ((("history", "--timeframes", "1d,5m", "--days", "20"), b"window"),
                       (("backfill", "--days", "1"), b"symbol")):
        master, slave = os.openpty()  # stderr is a terminal, stdout a pipe
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
        shown = bytearray()

        def drain(fd: int = master, shown: bytearray = shown) -> None:
            while True:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the terminal closed with the process
                    return
                if not chunk:
                    return
                shown.extend(chunk)

        reader = asyncio.get_running_loop().run_in_executor(None, drain)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", *args, "--symbols", SYMBOL, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=slave, env=subprocess_env(SIDECAR_YAHOO_BASE_URL=market_hours.url or "", SIDECAR_DB_PATH=str(db),
                                             SIDECAR_LOG_LEVEL="WARNING"))
        os.close(slave)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        await asyncio.wait_for(reader, 10)
        os.close(master)
        assert proc.returncode == 0, shown.decode(errors="replace")
        assert isinstance(orjson.loads(out), dict)  # stdout: the JSON summary alone
        assert b"100%" in shown and unit in shown, (args, shown.decode(errors="replace"))
