"""The client's bulk read (issue 14): 5,000 symbols' features in one call of
`sidecar.client.Client.feature_table` (one MGET, decoded as arrays by the daemon's codec),
next to the objects API (`Client.features`) and to two naive readers, in the same run against
the same private redis-server: a GET per key, and one MGET with msgpack per value.

    .venv/bin/python -m bench.client [--symbols 5000] [--rounds 50] [--json FILE]

Target: the bulk read in 10 ms or less (median). Values are written by the daemon's own codec
(`FeatureCodec.encode`, all 28 outputs set), with a current heartbeat, so none reads as stale.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import orjson
import redis

from sidecar.client import Client
from sidecar.features import FeatureConfig
from sidecar.features.codec import FeatureCodec

from .servers import redis_server

TARGET_MS = 10.0


def _symbols(n: int) -> list[str]:
    return [f"S{i:05d}" for i in range(n)]


def populate(url: str, symbols: list[str]) -> None:
    """Every symbol's 1m features, as the daemon writes them, and a heartbeat."""
    codec = FeatureCodec(FeatureConfig().outputs, "1m")
    n = len(symbols)
    rng = np.random.default_rng(1)
    rows = codec.encode(np.full(n, 1796000000, dtype=np.int64), rng.uniform(10, 500, n), np.ones(n, dtype=bool),
                        time.time(), rng.normal(size=(len(codec.outputs), n)))
    r = redis.Redis.from_url(url)
    r.mset({f"sidecar:{{{s}}}:features:1m": v for s, v in zip(symbols, rows, strict=True)})
    r.set("sidecar:heartbeat", str(time.time()), ex=3600)


async def measure(url: str, symbols: list[str], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per read of all symbols, per reader."""
    keys = [f"sidecar:{{{s}}}:features:1m" for s in symbols]
    raw = redis.asyncio.Redis.from_url(url)
    out: dict[str, list[float]] = {"client.feature_table": [], "client.features": [], "naive MGET + msgpack": [],
                                   "naive GET per key": []}
    async with Client(url, max_age_s=3600) as c:
        table = await c.feature_table(symbols)  # warm: connection, codec
        assert table.present.all() and not table.stale.any()
        for _ in range(rounds):
            t0 = time.perf_counter()
            await c.feature_table(symbols)
            out["client.feature_table"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await c.features(symbols)
            out["client.features"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            [msgpack.unpackb(v) for v in await raw.mget(keys)]
            out["naive MGET + msgpack"].append((time.perf_counter() - t0) * 1000)
        for _ in range(max(3, rounds // 10)):  # 5,000 round trips a read: fewer rounds
            t0 = time.perf_counter()
            for k in keys:
                msgpack.unpackb(await raw.get(k))
            out["naive GET per key"].append((time.perf_counter() - t0) * 1000)
    await raw.aclose()
    return out


def main(symbols: int, rounds: int, out: Path | None) -> None:
    names = _symbols(symbols)
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        populate(url, names)
        times = asyncio.run(measure(url, names, rounds))
    base = statistics.median(times["client.feature_table"])
    results = {name: {"median_ms": round(statistics.median(v), 2), "p90_ms": round(float(np.percentile(v, 90)), 2),
                      "ratio_to_bulk": round(statistics.median(v) / base, 1)} for name, v in times.items()}
    print(f"{symbols} symbols' 1m features, {rounds} rounds (median, p90, times the bulk read):")
    for name, r in results.items():
        print(f"  {name:<24} {r['median_ms']:>8.2f} ms {r['p90_ms']:>8.2f} ms {r['ratio_to_bulk']:>7}x")
    print(f"target: bulk read <= {TARGET_MS:g} ms: {'met' if base <= TARGET_MS else 'MISSED'}")
    if out is not None:
        out.write_text(orjson.dumps({"symbols": symbols, "rounds": rounds, "target_ms": TARGET_MS,
                                     "met": base <= TARGET_MS, "results": results}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    main(args.symbols, args.rounds, args.json)
