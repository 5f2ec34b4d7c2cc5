"""What each minute's close costs Redis, by timeframe and by kind of value:

    .venv/bin/python -m bench.closes --minutes 120

The five higher timeframes (5m to 1d, features on) step through `--minutes` minutes of 5,000
symbols' closed bars, as the daemon's `HigherTimeframes` does, and each minute's parts go to a
redis-server through the daemon's store, one kind at a time (newest bars, features, closed
bars into the histories). Reported per kind of minute (no higher close; 5m; 5m and 15m; 5m,
15m and 1h): the values written and Redis's CPU time for them (INFO cpu), medians. The
minute's own part (the 1m bars, features and history) is the same every minute and is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import redis

from sidecar.cycle.batch import Batch
from sidecar.cycle.publish import lane_write
from sidecar.stores import RedisStore

from .servers import redis_server, save_report
from .test_stages import T0, N, _batch, higher_timeframes

EMPTY = {"latest": ((), ()), "features": ((), ()), "history": ((), (), (), ())}


def _cpu_ms(r: redis.Redis) -> float:
    cpu = r.info("cpu")
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1000


async def run(url: str, minutes: int) -> dict[str, dict[str, float]]:
    """Per kind of minute, per kind of value: median values written and Redis CPU ms."""
    table, higher = higher_timeframes()
    store = RedisStore(url=url, prefix="closes", max_connections=2, timeout_s=30, history_len=5000)
    await store.start()
    r = redis.Redis.from_url(url)
    seen: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for minute in range(minutes):
        out = higher.step(_batch(minute), Batch.empty(), T0 + 60 * minute + 61.0)
        writes = [lane_write(table, higher.by_name[o.timeframe].encoder, o) for o in out]
        closed = "+".join(o.timeframe for o in out if len(o.closed)) or "none"
        for kind in EMPTY:
            parts = [replace(w, **{k: v for k, v in EMPTY.items() if k != kind}) for w in writes]  # type: ignore[arg-type]
            cpu = _cpu_ms(r)
            result = await store.write_timeframes(parts, float(minute))
            if minute >= 15:  # every history exists by then (the first write of each costs more)
                seen[closed][f"{kind}_values"].append(result.written)
                seen[closed][f"{kind}_redis_ms"].append(_cpu_ms(r) - cpu)
        for o in out:  # what the publisher does once Redis took them
            np.maximum.at(o.hist_ts, o.closed.slot, o.closed.ts)
    await store.close()
    return {k: {f: round(statistics.median(v), 1) for f, v in fields.items()} for k, fields in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=120)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        result = asyncio.run(run(url, args.minutes))
    save_report({"symbols": N, "minutes": args.minutes, **result}, "closes",
                f"python -m bench.closes --minutes {args.minutes}")


if __name__ == "__main__":
    main()
