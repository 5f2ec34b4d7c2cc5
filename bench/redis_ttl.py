"""How a cycle's Redis write should carry the features' freshness, measured side by side:

    .venv/bin/python -m bench.redis_ttl --symbols 5000 --cycles 200

Each variant writes the same cycle (a newest-bar value and a features value per symbol, the
sizes the daemon writes) to a private redis-server and is timed end to end (client packing,
transfer, Redis) and by Redis's own accounting (INFO commandstats, usec):

- script:   the round-1 write: one EVALSHA whose Lua unpacks msgpack, MSETs, SADDs every symbol
            and PEXPIREs every features key.
- set_px:   raw RESP, one pipeline: MSET of the bars, then SET key value PX ttl per features key.
- lua_px:   raw RESP, one pipeline: MSET of the bars, then one EVALSHA whose ARGV are the
            features keys and values as they are (no msgpack): SET key value PX ttl per key
            inside Redis, one reply.
- mset:     raw RESP, one pipeline: MSET of the bars, MSET of the features (freshness in the
            value's own `updated` field; no TTL).

The RESP bytes of the raw variants are built the way the daemon builds them: per-slot headers
made once, values joined per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import msgpack
import redis
from redis.asyncio import Redis

from .servers import redis_server

BAR_BYTES, FEATURE_BYTES = 120, 470


def resp(*parts: bytes) -> bytes:
    """One RESP command."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def commandstats(url: str) -> dict[str, tuple[int, int]]:
    """(calls, usec) per command."""
    c = redis.Redis.from_url(url)
    stats = c.info("commandstats")
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}


async def run(url: str, n: int, cycles: int) -> dict[str, dict[str, float]]:
    client = Redis.from_url(url)
    names = [f"Q{i:05d}" for i in range(n)]
    bar_keys = [f"b:{{{s}}}:bar:1m".encode() for s in names]
    feat_keys = [f"b:{{{s}}}:features:1m".encode() for s in names]
    bar = bytes(BAR_BYTES)
    feat = bytes(FEATURE_BYTES)
    script = client.register_script("""
local latest, features, names = cmsgpack.unpack(ARGV[1]), cmsgpack.unpack(ARGV[2]), cmsgpack.unpack(ARGV[3])
local function chunked(list, call)
  for c = 1, #list, 2000 do call(unpack(list, c, math.min(c + 1999, #list))) end
end
chunked(latest, function(...) redis.call('MSET', ...) end)
chunked(names, function(...) redis.call('SADD', 'b:symbols', ...) end)
chunked(features, function(...) redis.call('MSET', ...) end)
for f = 1, #features, 2 do redis.call('PEXPIRE', features[f], ARGV[4]) end
return 1
""")
    bar_head = [b"$%d\r\n%s\r\n$%d\r\n" % (len(k), k, BAR_BYTES) for k in bar_keys]
    feat_head = [b"$%d\r\n%s\r\n$%d\r\n" % (len(k), k, FEATURE_BYTES) for k in feat_keys]
    px_head = [b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(k), k, FEATURE_BYTES) for k in feat_keys]
    px_tail = b"\r\n" + resp(b"PX", b"2000")[len(b"*2\r\n"):]

    def mset(heads: list[bytes], value: bytes) -> bytes:
        return b"".join([b"*%d\r\n$4\r\nMSET\r\n" % (2 * n + 1), *(h + value + b"\r\n" for h in heads)])

    async def send(packed: bytes, replies: int) -> None:
        pool = client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed)
            for _ in range(replies):
                await conn.read_response()
        finally:
            await pool.release(conn)

    async def v_script() -> None:
        latest, features = [], []
        for k in bar_keys:
            latest += (k, bar)
        for k in feat_keys:
            features += (k, feat)
        await script(args=[msgpack.packb(latest, use_bin_type=False), msgpack.packb(features, use_bin_type=False),
                           msgpack.packb(names, use_bin_type=False), 2000])

    async def v_set_px() -> None:
        await send(mset(bar_head, bar) + b"".join(h + feat + px_tail for h in px_head), 1 + n)

    set_px = client.register_script(
        "for i = 2, #ARGV, 2 do redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[1]) end return 1")
    await set_px(args=[1])  # loads it, so EVALSHA finds it
    eval_head = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n0\r\n$4\r\n2000\r\n" % (
        2 * n + 4, set_px.sha.encode())

    async def v_lua_px() -> None:
        await send(mset(bar_head, bar) + eval_head + b"".join(h + feat + b"\r\n" for h in feat_head), 2)

    async def v_mset() -> None:
        await send(mset(bar_head, bar) + mset(feat_head, feat), 2)

    out = {}
    for name, variant in (("script", v_script), ("set_px", v_set_px), ("lua_px", v_lua_px), ("mset", v_mset)):
        await client.flushall()
        await variant()
        before = commandstats(url)
        times = []
        for _ in range(cycles):
            t0 = time.perf_counter()
            await variant()
            times.append(time.perf_counter() - t0)
        after = commandstats(url)
        usec = sum(u for k, (_c, u) in after.items()) - sum(u for k, (_c, u) in before.items())
        out[name] = {"p50_ms": 1000 * statistics.median(times), "redis_ms": usec / 1000 / cycles}
    await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        result = asyncio.run(run(url, args.symbols, args.cycles))
    print(f"{args.symbols} symbols, {args.cycles} cycles: bar {BAR_BYTES} B + features {FEATURE_BYTES} B per symbol")
    print("| variant | cycle p50 ms | Redis's own ms per cycle |\n|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['p50_ms']:.1f} | {r['redis_ms']:.1f} |")


if __name__ == "__main__":
    main()
