"""Hostile input over HTTP: path tricks, 10 kB symbols, unicode and control characters, bad
numbers and timeframes, a `since` far in the future, malformed and 1 MB bodies. Every one
gets a 4xx with a one-line JSON error (never a 500 or a traceback), sent byte for byte over a
raw socket to the daemon as a subprocess, which then still serves and stores normally."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest

from sidecar.exchange import Exchange
from sidecar.symbols import lookup

from .helpers import DaemonProcess, stored_bars, wait_until

pytestmark = pytest.mark.e2e

SYMBOLS = ("AAPL", "BTCUSD")

GETS = [
    "/bars/..%2F..%2Fetc%2Fpasswd", "/bars/../../etc/passwd", "/bars/%2e%2e", "/bars/" + "A" * 10_000,
    "/features/" + "Z" * 10_000, "/bars/%E2%82%AC", "/bars/%00AAPL", "/bars/AA%0D%0APL", "/bars/AAPL%20;DROP",
    "/bars/NOTFOLLOWED", "/bars/AAPL?limit=-1", "/bars/AAPL?limit=1e12", "/bars/AAPL?limit=NaN",
    "/bars/AAPL?start=NaN", "/bars/AAPL?end=-5", "/bars/AAPL?start=20&end=10", "/bars/AAPL?tf=7x",
    "/bars/AAPL?tf=%00", "/bars/AAPL/latest?tf=1y", "/features/AAPL?tf=..", "/signals?since=99999999999",
    "/signals?since=NaN", "/signals?since=-1", "/signals?limit=0", "/signals?limit=" + "9" * 400, "/nowhere",
    "/bars", "/" + "x" * 10_000,
]
POSTS = [b'{"add": [', b"[]", b'{"add": "AAPL"}', b'{"add": [1, 2]}', b'{"add": ["../etc"]}', b"\xff\xfe",
         b'{"remove": [null]}', b'{"add": ["' + b"B" * 10_000 + b'"]}', b"x" * (1 << 20)]


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as it is; (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _assert_json_4xx(what: str, status: int, headers: dict[str, str], body: bytes) -> None:
    assert 400 <= status < 500, (what[:80], status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (what[:80], headers)
    assert b"\n" not in body.strip() and b"Traceback" not in body, (what[:80], body[:300])
    doc = orjson.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], (what[:80], doc)


async def test_every_bad_request_gets_a_json_4xx_and_the_daemon_carries_on(
        tmp_path: Path, redis_url: str, exchange: Exchange) -> None:
    db = tmp_path / "bars.db"
    daemon = await DaemonProcess.start(
        tmp_path, SIDECAR_REDIS_URL=redis_url, SIDECAR_YAHOO_BASE_URL=exchange.url or "", SIDECAR_DB_PATH=str(db),
        SIDECAR_SYMBOLS=",".join(SYMBOLS), SIDECAR_LOOKBACK_MINUTES="10", SIDECAR_BOOTSTRAP_DAYS="0",
        SIDECAR_FLUSH_INTERVAL_S="1")
    try:
        await daemon.wait_ready()
        for path in GETS:
            status, headers, body = await _raw(
                daemon.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            _assert_json_4xx(path, status, headers, body)
        for payload in POSTS:
            status, headers, body = await _raw(daemon.port, (
                f"POST /symbols HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload)
            _assert_json_4xx(repr(payload[:40]), status, headers, body)
        status, headers, body = await _raw(daemon.port, b"DELETE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _assert_json_4xx("DELETE /health", status, headers, body)

        # Still serving and storing as before: healthy, bars readable, the symbols unchanged.
        health = await daemon.wait_ready()
        assert health["status"] == "ok" and sorted(health["freshness"]) == sorted(SYMBOLS)
        status, doc = await daemon.get("/bars/AAPL?limit=5")
        assert status == 200 and isinstance(doc, dict) and len(doc["bars"]) == 5
        await wait_until(lambda: len(stored_bars(db)) > 0, 20, "bars flushed", detail=daemon.text)
        assert await daemon.stop(signal.SIGTERM) == 0, daemon.text()
    finally:
        await daemon.kill()
    log = daemon.text()
    assert "Traceback" not in log and "internal error" not in log
    served = {(s, ts): v for s in SYMBOLS for ts, v in exchange.served[lookup(s).yahoo].items()}
    assert stored_bars(db) == served
