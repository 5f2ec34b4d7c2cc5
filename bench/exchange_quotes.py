"""How long the local exchange takes to answer a second's batch quotes: ten 500-symbol requests
at once, as the daemon's poller sends them at 5,000 symbols, from a client in this process to
the exchange in its own:

    .venv/bin/python -m bench.exchange_quotes --rounds 80

The daemon's fetch stage waits for these answers every second (the exchange answers them one
after another), so what the simulator spends per answer shows in the cycle. Reported: the
25th percentile and the median of the rounds, in ms, after one round that builds the minute's
quote tables.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from .quotes import universe
from .servers import exchange_process, save_report


async def run(base: str, rounds: int) -> list[float]:
    """Milliseconds per round of ten 500-symbol batch quotes."""
    symbols = universe(5000)
    lists = [",".join(symbols[i:i + 500]) for i in range(0, len(symbols), 500)]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # the exchange's cookie
        async with s.get(base + "/"):
            pass
        async with s.get(base + "/v1/test/getcrumb") as r:
            crumb = await r.text()

        async def one(listed: str) -> None:
            params = {"symbols": listed, "crumb": crumb, "formatted": "false", "lang": "en-US", "region": "US"}
            async with s.get(base + "/v7/finance/quote", params=params) as r:
                await r.read()

        await asyncio.gather(*(one(x) for x in lists))
        times = []
        for _ in range(rounds):
            await asyncio.sleep(0.3)
            t0 = time.perf_counter()
            await asyncio.gather(*(one(x) for x in lists))
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=80)
    args = parser.parse_args()
    with exchange_process() as base:
        times = sorted(asyncio.run(run(base, args.rounds)))
    save_report({"rounds": args.rounds, "p25_ms": round(times[len(times) // 4], 2),
                 "median_ms": round(statistics.median(times), 2)},
                "exchange-quotes", f"python -m bench.exchange_quotes --rounds {args.rounds}")


if __name__ == "__main__":
    main()
