"""A cluster member SIGKILLed at scale: how long until the survivor owns its partitions and
follows its symbols, and whether the durable store then equals the exchange's truth.

    .venv/bin/python -m bench.takeover --symbols 10000     (the issue's run: 2 x 5,000, one killed)
    .venv/bin/python -m bench.takeover --symbols 1000      (quick)

Real processes: the exchange, one redis-server, a private PostgreSQL server (the members'
store), two members in quotes mode. Once both have caught up, member b is SIGKILLed well inside
a minute. Member a's `/health` is read every 0.1 s: `owned_s` is when it holds every partition,
`fresh_s` when as many symbols are fresh in its loop (a quote or bar within
SIDECAR_STALE_AFTER_S) as were in both members' just before the kill. Then, two minutes after
the kill's minute has closed, the store's minute bars of a window around the kill (from three
minutes before its minute to two after) are compared with the exchange's own truth
(`/_exchange/truth`, every symbol): missing, extra, differing, duplicated. The report goes to
bench/results/<date>-<host>-takeover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import asyncpg
import orjson

from sidecar.symbols import lookup

from .cluster import PARTITIONS, _daemon, _health, caught_up, recent_cycles
from .quotes import universe
from .servers import free_port, postgres_server, quotes_env, redis_server, save_report, start_exchange, stop
from .soak import _wait_http


def _ready(port: int, trace: Path, n: int) -> bool:
    """A member's loop follows symbols, its cluster view is settled, and its last five cycles
    asked for no history and had none in flight (its catch-up is over)."""
    doc = _health(port)
    loop, cluster = doc.get("loop", {}), doc.get("cluster", {})
    return bool(loop.get("symbols")) and cluster.get("settling") is False \
        and len(cluster.get("members", [])) == n and caught_up(recent_cycles(trace))


def _fresh(port: int) -> int:
    """Symbols fresh in a member's loop."""
    return int(_health(port).get("loop", {}).get("fresh_symbols", 0))


def _truth(base: str, yahoo: str, start: int, end: int) -> dict[int, tuple[float, ...]]:
    """The exchange's closed minute bars of a (Yahoo) symbol in [start, end)."""
    url = f"{base}/_exchange/truth?symbol={urllib.parse.quote(yahoo)}&start={start}&end={end}"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback
        return {int(r[0]): tuple(float(x) for x in r[1:]) for r in orjson.loads(resp.read())["bars"]}


async def _stored(url: str, start: int, end: int) -> tuple[dict[tuple[str, int], tuple[float, ...]], int]:
    """The store's minute bars in [start, end) by (symbol, ts), and how many keys it holds twice."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT symbol, ts, open, high, low, close, volume FROM bars "
                                "WHERE timeframe = '1m' AND ts >= $1 AND ts < $2", start, end)
        twice = await conn.fetchval("SELECT count(*) FROM (SELECT 1 FROM bars WHERE timeframe = '1m' AND ts >= $1 "
                                    "AND ts < $2 GROUP BY symbol, ts HAVING count(*) > 1) d", start, end)
    finally:
        await conn.close()
    return {(r["symbol"], int(r["ts"])): tuple(float(r[k]) for k in ("open", "high", "low", "close", "volume"))
            for r in rows}, int(twice)


def run(n: int, work: Path) -> dict[str, object]:
    """Start, wait for both members' catch-up, kill b, time the takeover, compare the store."""
    with redis_server(work) as redis_url, postgres_server(Path(tempfile.mkdtemp(prefix="sidecar-bench-pg-"))) as pg:
        ex_port = free_port()
        base = f"http://127.0.0.1:{ex_port}"
        exchange = start_exchange(ex_port)
        names = universe(n)
        (work / "all.txt").write_text("\n".join(names))
        common = {**quotes_env(ex_port, redis_url), "SIDECAR_SYMBOLS": f"@{work / 'all.txt'}",
                  "SIDECAR_CLUSTER": "true", "SIDECAR_PARTITIONS": str(PARTITIONS), "SIDECAR_STORE_URL": pg}
        daemons = {m: _daemon(m, work, {**common, "SIDECAR_SHARD_ID": m}) for m in ("member-a", "member-b")}
        try:
            for _proc, port, _trace in daemons.values():
                _wait_http(f"http://127.0.0.1:{port}/health", 600)
            t0 = time.monotonic()
            while not all(_ready(port, trace, 2) for _p, port, trace in daemons.values()):
                if time.monotonic() - t0 > 600:
                    raise SystemExit("the members did not catch up within 600 s")
                time.sleep(1)
            warmup = time.monotonic() - t0
            while not 15 <= time.time() % 60 <= 30:  # well inside a minute, away from its close
                time.sleep(0.2)
            a_port = daemons["member-a"][1]
            before = sum(_fresh(port) for _p, port, _t in daemons.values())  # what both followed
            killed_at = time.time()
            daemons["member-b"][0].kill()
            owned_s = fresh_s = None
            while fresh_s is None and time.time() - killed_at < 120:
                doc = _health(a_port)
                took = round(time.time() - killed_at, 2)
                if owned_s is None and len(doc.get("cluster", {}).get("owned", {})) == PARTITIONS:
                    owned_s = took
                if owned_s is not None and doc.get("loop", {}).get("fresh_symbols", 0) >= before:
                    fresh_s = took
                time.sleep(0.1)
            minute = int(killed_at) // 60 * 60
            start, end = minute - 180, minute + 120
            while time.time() < end + 120:  # the window closed, caught up and flushed
                time.sleep(1)
            stored, twice = asyncio.run(_stored(pg, start, end))
            truth = {(s, ts): v for s in names for ts, v in _truth(base, lookup(s).yahoo, start, end).items()}
            missing, extra = truth.keys() - stored.keys(), stored.keys() - truth.keys()
            differing = [k for k in truth.keys() & stored.keys() if truth[k] != stored[k]]
            return {"symbols": n, "partitions": PARTITIONS, "warmup_s": round(warmup, 1),
                    "killed_at": dt.datetime.fromtimestamp(killed_at, dt.UTC).isoformat(timespec="seconds"),
                    "fresh_before": before, "owned_s": owned_s, "fresh_s": fresh_s, "window": [start, end],
                    "truth_bars": len(truth),
                    "stored_bars": len(stored), "missing": len(missing), "extra": len(extra),
                    "differing": len(differing), "duplicated": twice,
                    "examples": {"missing": sorted(missing)[:5], "extra": sorted(extra)[:5],
                                 "differing": [[*k, truth[k], stored[k]] for k in sorted(differing)[:5]]},
                    "differing_symbols": sorted({k[0] for k in differing})}
        finally:
            stop((proc for proc, _port, _trace in daemons.values()), 60)
            exchange.terminate()
            exchange.wait()


def main() -> None:
    """Run, print and save the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10_000, help="symbols of the cluster (each member half)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-takeover-") as tmp:
        report = run(args.symbols, Path(tmp))
    save_report(report, "takeover", f"python -m bench.takeover --symbols {args.symbols}")


if __name__ == "__main__":
    main()
