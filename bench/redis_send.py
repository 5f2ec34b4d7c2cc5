"""How fast a cycle's write reaches Redis over a Unix socket with the kernel's default send
buffer, with the one the daemon asks for (`stores/redis_wire.py` WideUnixConnection), and over
loopback TCP, side by side:

    .venv/bin/python -m bench.redis_send --symbols 5000 --cycles 100

Each variant writes the same cycle through the daemon's store (`RedisStore.write_cycle`: the
newest bar and the features of every symbol, at the sizes the daemon writes them) to one
redis-server, the variants taking turns cycle by cycle; the report is each one's median. With
the default buffer (~208 KB) the write goes to Redis in a dozen turns of writer and reader;
with a buffer that holds it, the kernel takes it in one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from redis.asyncio.connection import UnixDomainSocketConnection

from sidecar.packed import NameColumn, Packed, SlotNames
from sidecar.stores import RedisStore

from .servers import free_port, redis_server, save_report

BAR_BYTES, FEATURE_BYTES = 140, 340  # about what the daemon writes (bench/results/*-quick-*.md)


async def run(unix_url: str, tcp_url: str, symbols: int, cycles: int) -> dict[str, float]:
    """Median ms per write of each variant."""
    stores = {"unix, default buffer": RedisStore(url=unix_url, prefix="send", max_connections=2, timeout_s=5,
                                                 history_len=10),
              "unix, the daemon's buffer": RedisStore(url=unix_url, prefix="send", max_connections=2, timeout_s=5,
                                                      history_len=10),
              "tcp (loopback)": RedisStore(url=tcp_url, prefix="send", max_connections=2, timeout_s=5, history_len=10)}
    pool = stores["unix, default buffer"]._pool
    assert pool is not None
    pool.connection_class = UnixDomainSocketConnection  # the kernel's default buffer
    rng = np.random.default_rng(1)
    names = SlotNames(NameColumn.of([f"S{i:05d}" for i in range(symbols)]), np.arange(symbols))
    bars = Packed.grid(rng.integers(0, 255, (symbols, BAR_BYTES)).astype(np.uint8), np.full(symbols, BAR_BYTES))
    features = Packed.grid(rng.integers(0, 255, (symbols, FEATURE_BYTES)).astype(np.uint8),
                           np.full(symbols, FEATURE_BYTES))
    times: dict[str, list[float]] = {name: [] for name in stores}
    for k in range(cycles + 1):
        for name, store in stores.items():
            t0 = time.perf_counter()
            await store.write_cycle("1m", latest=(names, bars), features=(names, features), now=1.0)
            if k:  # the first round connects and creates the keys
                times[name].append(time.perf_counter() - t0)
    for store in stores.values():
        await store.close()
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=100)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp), port) as url:
        result = asyncio.run(run(url, f"redis://127.0.0.1:{port}/0", args.symbols, args.cycles))
    size = args.symbols * (BAR_BYTES + FEATURE_BYTES) / 1e6
    base = result["unix, default buffer"]
    report = {"symbols": args.symbols, "cycles": args.cycles, "write_mb": round(size, 2),
              "median_ms": {k: round(v, 2) for k, v in result.items()},
              "against_the_default_buffer": {k: round(base / v, 2) for k, v in result.items()}}
    save_report(report, "redis-send", f"python -m bench.redis_send --symbols {args.symbols} --cycles {args.cycles}")


if __name__ == "__main__":
    main()
