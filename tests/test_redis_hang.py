"""Redis hung, not down: redis-server stopped with SIGSTOP for 20 s (connections stay open, no
answer comes) while the daemon runs as a subprocess. The loop never stalls, SQLite keeps
flushing, /health says degraded, within 2 s of SIGCONT Redis holds every symbol's newest bar
again, and the minute that closed during the hang reaches its histories too."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from sidecar.exchange import Exchange

from .conftest import start_redis
from .helpers import DaemonProcess, stored_bars, wait_until

pytestmark = pytest.mark.e2e

SYMBOLS = ("AAPL", "EURUSD", "BTCUSD", "MSFT")
HANG_S = 20.0


async def test_a_hung_redis_never_stalls_the_loop_and_is_current_within_2s_of_waking(
        tmp_path: Path, exchange: Exchange) -> None:
    server = start_redis(tmp_path / "redis")
    db = tmp_path / "bars.db"
    daemon = await DaemonProcess.start(
        tmp_path, SIDECAR_REDIS_URL=server.url, SIDECAR_YAHOO_BASE_URL=exchange.url or "", SIDECAR_DB_PATH=str(db),
        SIDECAR_SYMBOLS=",".join(SYMBOLS), SIDECAR_LOOKBACK_MINUTES="10", SIDECAR_BOOTSTRAP_DAYS="0",
        SIDECAR_FLUSH_INTERVAL_S="1")
    stopped = False
    try:
        await daemon.wait_ready()
        with server.client() as c:
            await wait_until(lambda: all(c.exists(f"sidecar:{{{s}}}:bar:1m") for s in SYMBOLS), 10, "first bars")
        # Hang across a minute boundary, so closed bars must reach SQLite while Redis is hung.
        boundary = (int(time.time()) // 60 + 1) * 60
        if boundary - time.time() < 4:
            boundary += 60
        await wait_until(lambda: time.time() >= boundary - 14, 75, "shortly before a minute boundary", every=0.2)
        before = await daemon.health()
        server.process.send_signal(signal.SIGSTOP)
        stopped, t_stop = True, time.monotonic()
        seen: list[dict] = []
        while time.monotonic() - t_stop < HANG_S:
            t0 = time.monotonic()
            doc = await daemon.health()
            assert doc, f"/health did not answer while Redis hung:\n{daemon.text()[-3000:]}"
            assert time.monotonic() - t0 < 2.0, "/health was held up by the hung Redis"
            seen.append(doc)
            await wait_until(lambda t0=t0: time.monotonic() - t0 >= 0.5, 1, "the next poll")  # noqa: B023
        flushed_during_hang = {ts for (_, ts) in stored_bars(db)}
        server.process.send_signal(signal.SIGCONT)
        stopped = False
        minute = int(time.time()) // 60 * 60
        # The exchange's truth: a minute without trades has no bar (1 % of an equity's minutes).
        opens = np.arange(minute - 3600, minute + 60, 60)
        traded = {s: opens[exchange.market.minute_bars(s, opens).traded] for s in SYMBOLS}
        want = {s: int(traded[s][-1]) for s in SYMBOLS}  # each symbol's newest minute with a bar
        with server.client() as c:
            def current() -> bool:
                raws = c.mget([f"sidecar:{{{s}}}:bar:1m" for s in SYMBOLS])
                return all(r is not None and msgpack.unpackb(r)["ts"] >= want[s]
                           for s, r in zip(SYMBOLS, raws, strict=True))

            def newest() -> str:
                raws = c.mget([f"sidecar:{{{s}}}:bar:1m" for s in SYMBOLS])
                seen_ts = {s: r and msgpack.unpackb(r)["ts"] for s, r in zip(SYMBOLS, raws, strict=True)}
                return f"minute {minute}, wanted {want}, newest in Redis {seen_ts}\n{daemon.text()[-3000:]}"

            woke_s = await wait_until(current, 10, "every symbol's newest bar in Redis", every=0.02, detail=newest)

            # The minute that closed while Redis hung was in a write that failed: it reaches each
            # symbol's Redis history with the writes after the outage, as SQLite stored it.
            hung = boundary - 60
            keys = {sym: f"sidecar:{{{sym}}}:bars:1m" for sym in SYMBOLS if hung in traded[sym]}
            await wait_until(lambda: all(c.zcount(k, hung, hung) for k in keys.values()), 15,
                             "the minute closed during the hang in every Redis history",
                             detail=lambda: daemon.text()[-3000:])
            in_redis = {sym: msgpack.unpackb(c.zrangebyscore(k, hung, hung)[0]) for sym, k in keys.items()}
        after = await daemon.health()
        assert await daemon.stop(signal.SIGTERM) == 0, daemon.text()
    finally:
        if stopped:
            server.process.send_signal(signal.SIGCONT)
        await daemon.kill()
        server.process.terminate()
        server.process.wait(timeout=10)
    print(f"\nredis hang: {len(seen)} health polls, every symbol current {woke_s:.2f}s after SIGCONT")
    # The loop never stalled: a cycle every second all through the hang, none overran for long.
    cycles = [d["loop"]["cycles"] for d in seen]
    assert cycles[-1] - before["loop"]["cycles"] >= HANG_S - 4
    assert all(d["loop"]["state"] == "ok" for d in seen)
    assert any(d["status"] == "degraded" and d["redis"]["state"] == "down" for d in seen)
    assert any(r.startswith("redis:") for d in seen for r in d["reasons"])
    assert boundary - 60 in flushed_during_hang  # the minute that closed during the hang reached SQLite
    stored = stored_bars(db)
    for sym, m in in_redis.items():
        assert (m["open"], m["high"], m["low"], m["close"], m["volume"]) == stored[(sym, hung)], sym
    assert woke_s <= 2.0
    assert after["redis"]["state"] == "ok" and after["loop"]["overruns"] <= before["loop"]["overruns"] + 3
