"""`python -m sidecar cluster status`: the cluster as Redis holds it, for an operator.

Members (and what each says about itself), every partition's holder, token and rightful owner
by rendezvous (a partition whose holder differs is moving), writes the fences refused, and each
provider key's shared budget use against its limits. Read-only: it takes no lease.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..settings import Settings
from ..stores import RedisKeys, RedisStore
from . import partitions as parts
from .budget import usage


async def cluster_status(settings: Settings) -> dict[str, Any]:
    """The cluster's state as one JSON-able document."""
    redis = RedisStore(url=settings.redis_url, prefix=settings.redis_prefix, max_connections=4,
                       timeout_s=max(2.0, settings.redis_timeout_s), history_len=1, partitions=settings.partitions)
    try:
        return await _status(redis, settings)
    finally:
        await redis.close()


async def _status(redis: RedisStore, settings: Settings) -> dict[str, Any]:
    k, client = redis.keys, redis.client
    count = await redis.guard(client.get(k.cluster("partitions")), "partition count")
    n = int(count) if count is not None else settings.partitions
    keys = RedisKeys(settings.redis_prefix, n)  # the cluster's count decides the key names
    pipe = client.pipeline(transaction=False)
    pipe.zrange(k.cluster("members"), 0, -1, withscores=True)
    pipe.hgetall(k.cluster("info"))
    pipe.time()
    for p in range(n):
        pipe.get(keys.lease(p))
        pipe.get(keys.fence(p))
        pipe.get(keys.refused(p))
    for job in ("retention", "reference"):
        pipe.get(k.cluster(f"job:{job}"))
    out = await redis.guard(pipe.execute(), "cluster status")
    members, info, (sec, usec) = out[0], out[1], out[2]
    now_ms = int(sec) * 1000 + int(usec) // 1000
    live = [m.decode() for m, expires in members if expires > now_ms]
    rightful = parts.assignment(n, live)
    table = []
    for p in range(n):
        lease, fence, refused = out[3 + 3 * p: 6 + 3 * p]
        holder, _, token = lease.decode().rpartition(" ") if lease else ("", "", "")
        table.append({"partition": p, "holder": holder or None, "token": int(token) if token else None,
                      "fence": int(fence) if fence else None, "rightful": rightful.get(p),
                      "moving": bool(holder) and holder != rightful.get(p), "refused_writes": int(refused or 0)})
    jobs = {job: (v.decode().rpartition(" ")[0] if v else None) for job, v in zip(("retention", "reference"),
                                                                                   out[3 + 3 * n:], strict=True)}
    budgets = {}
    for name, plan in settings.providers().items():
        if plan.rate_per_min or plan.rate_per_day:
            budgets[name] = {"per_minute": plan.rate_per_min, "per_day": plan.rate_per_day,
                             **await usage(redis, name)}
    return {
        "partitions": n,
        "members": {m.decode(): {"expires_in_s": round((expires - now_ms) / 1000, 3),
                                 **orjson.loads(info.get(m, b"{}"))} for m, expires in members},
        "live": live,
        "owned": {m: sum(1 for row in table if row["holder"] == m) for m in live},
        "unowned": [row["partition"] for row in table if row["holder"] is None],
        "jobs": jobs,
        "partition_table": table,
        "budgets": budgets,
    }
