"""Cluster membership and partition ownership, kept in Redis.

Every member heartbeats into one sorted set (score: when its registration expires, by Redis's
clock, so members' clocks may disagree). Every `lease_s / 3` a member reads the live members,
works out by rendezvous hashing which partitions are its own, and takes or renews a lease on
each: `{prefix}:{pN}:lease` holds "member token" with a TTL, and `{prefix}:{pN}:fence` the
newest token ever issued for the partition (INCR on every new lease, so tokens only grow). A
partition that now belongs to another live member is released as soon as the daemon has
dropped its symbols (never before: two members must not fetch a symbol at once), so a joining
member gets its share within a round or two; a dead member's leases run out after `lease_s`.
The daemon takes the changes on in a task of its own, beside the renewals.

Every Redis write for a partition carries the writer's token, and the write script refuses it
when the fence holds a newer one (`RedisStore`): a member paused or cut off past its lease can
never overwrite its successor's data; it learns of it from the refusal or its next renewal,
and gives the partition up.

Singleton jobs (retention, the reference refresh) run under leases of their own, taken by the
member that owns partition 0 by rendezvous, so exactly one member runs each.

When Redis cannot be reached, a member keeps the partitions it has: the durable store's upserts
make a double fetch harmless, and the fence still guards Redis when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from ..clock import Clock
from ..errors import RedisStoreError, SettingsError
from ..stores import RedisStore
from . import partitions as parts

log = logging.getLogger(__name__)

# KEYS: members zset, info hash. ARGV: member, ttl ms, info JSON, leaving (1/0). Returns the live members.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(gone))
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
# KEYS: lease, fence. ARGV: member, ttl ms. Returns the member's token (renewed or new), or 0
# when another member holds the lease.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local who, token = string.match(held, '^(.*) (%d+)$')
  if who == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lease. ARGV: member. Deletes the lease only if it is this member's.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
JOBS = ("retention", "reference")
"""Singleton jobs: exactly one member runs each."""


def default_shard_id() -> str:
    """host-pid: unique per process, readable in `cluster status`."""
    return f"{socket.gethostname()}-{os.getpid()}"


Changes = Callable[[dict[int, int], set[int]], Awaitable[None]]
"""Told the partitions gained (partition -> token) and lost since the last call that succeeded."""


class Coordinator:
    """This member's view of the cluster and its partitions' leases.

    :param redis: the store whose client and keys it uses.
    :param shard_id: this member's name (unique in the cluster).
    :param partitions: the fixed partition count every member must share.
    :param lease_s: lease and registration lifetime; renewed every third of it.
    :param clock: for the loop's pace and ages.
    :param info: what `cluster status` shows about this member (HTTP port, pid, ...).
    :param on_change: told of gained and lost partitions (the daemon follows their symbols).
        It runs in a task of its own, so a slow one (thousands of symbols warmed from the store)
        never delays a renewal; it is told the difference between the partitions owned and
        those it last applied, so changes meanwhile coalesce and a failed call is retried.
    """

    def __init__(self, *, redis: RedisStore, shard_id: str, partitions: int, lease_s: float, clock: Clock,
                 info: dict[str, Any], on_change: Changes) -> None:
        self.redis, self.shard_id, self.partitions = redis, shard_id, partitions
        self.lease_ms = int(lease_s * 1000)
        self.clock, self.info, self.on_change = clock, info, on_change
        self.tokens: dict[int, int] = {}  # partition -> this member's token
        self.jobs: dict[str, int] = {}  # singleton job -> token
        self.members: list[str] = []
        self.fenced = 0  # writes Redis refused
        self.rounds = 0
        self.last_round_at: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._applier: asyncio.Task[None] | None = None
        self.applied: dict[int, int] = {}  # partition -> token whose symbols the daemon follows
        self.want: set[int] = set()  # this member's partitions by rendezvous, as of the last round
        self._dirty = asyncio.Event()  # the owned partitions changed since the last apply
        self._closed = False
        self._counted = False  # the cluster's partition count checked
        self._lock = asyncio.Lock()  # one round at a time (the loop, a refusal, close)
        k = redis.keys
        self._members_key, self._info_key = k.cluster("members"), k.cluster("info")

    async def start(self) -> None:
        """Check the partition count, register, take this member's first partitions, then keep
        renewing in the background. A different count from the cluster's stops start-up; Redis
        not answering does not (the loop keeps trying, and the member follows nothing until then)."""
        try:
            await self._check_count()
            await self.round()
        except RedisStoreError as exc:
            log.warning("cluster: redis not reachable at start (%s); joining when it answers", exc)
        self._task = asyncio.create_task(self._run(), name="cluster")  # renewing during the first warm-up too
        await self.apply()  # the first partitions' symbols followed before the loop starts
        self._applier = asyncio.create_task(self._apply_loop(), name="cluster-apply")

    async def _check_count(self) -> None:
        client, key = self.redis.client, self.redis.keys.cluster("partitions")
        await self.redis.guard(client.set(key, self.partitions, nx=True), "cluster partition count")
        known = int(await self.redis.guard(client.get(key), "cluster partition count"))
        if known != self.partitions:
            raise SettingsError("SIDECAR_PARTITIONS", f"the cluster uses {known} partitions, this member {self.partitions}")
        self._counted = True

    async def close(self) -> None:
        """Give every lease back and leave, so the others take over at once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for task in (self._task, self._applier):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        async with self._lock:
            try:
                await self._release([self.redis.keys.lease(p) for p in self.tokens]
                                    + [self.redis.keys.cluster(f"job:{j}") for j in self.jobs])
                await self._heartbeat(leaving=True)
            except (RedisError, OSError, TimeoutError, RedisStoreError) as exc:
                log.warning("leaving the cluster: %s (the leases run out instead)", exc)
            self.tokens.clear()
            self.jobs.clear()

    def health(self) -> dict[str, object]:
        """Members, this member's partitions and tokens, its jobs, refused writes."""
        return {"state": "ok" if self.last_error is None else "degraded", "shard_id": self.shard_id,
                "members": list(self.members), "phase": round(self.phase(1.0), 3), "partitions": self.partitions,
                "owned": {str(p): t for p, t in sorted(self.tokens.items())}, "jobs": sorted(self.jobs),
                "settling": self._target() != self.applied,  # symbols still being taken on or handed off
                "fenced_writes": self.fenced, "rounds": self.rounds,
                "last_round_age_s": None if self.last_round_at is None
                else round(self.clock.monotonic() - self.last_round_at, 3),
                "last_error": self.last_error}

    def phase(self, period: float) -> float:
        """This member's offset within each period: its rank among the live members over their
        number, so that the members' cycles take turns at the shared Redis and the sources
        instead of all starting as the second turns."""
        members = sorted(self.members)
        return period * members.index(self.shard_id) / len(members) if self.shard_id in members else 0.0

    def token(self, partition: int) -> int | None:
        """This member's token for a partition, or None if it does not own it."""
        return self.tokens.get(partition)

    def leads(self, job: str) -> bool:
        """Whether this member runs a singleton job now."""
        return job in self.jobs

    async def refused(self, partitions: set[int]) -> None:
        """Redis refused writes for these partitions: a newer owner exists; give them up now."""
        self.fenced += len(partitions)
        lost = {p for p in partitions if self.tokens.pop(p, None) is not None}
        if lost:
            log.warning("fenced out of partitions %s: a newer owner holds them", sorted(lost))
            self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.lease_ms / 3000)
            try:
                await self.round()
            except Exception:  # never let the loop die: the next round tries again
                log.exception("cluster round failed")

    async def round(self) -> None:
        """Heartbeat, then take, renew or release leases to match the rendezvous assignment."""
        async with self._lock:
            try:
                gained, lost = await self._round()
            except (RedisError, OSError, TimeoutError, RedisStoreError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cluster round failed, keeping %d partitions: %s", len(self.tokens), exc)
                return
        if gained or lost:
            log.info("partitions: gained %s, lost %s, %d owned of %d across %d members", sorted(gained),
                     sorted(lost), len(self.tokens), self.partitions, len(self.members))
        if self._target() != self.applied:
            self._dirty.set()

    def _target(self) -> dict[int, int]:
        """The partitions whose symbols the daemon should follow: owned, and still this member's."""
        return {p: t for p, t in self.tokens.items() if p in self.want}

    async def apply(self) -> bool:
        """Tell `on_change` how the owned partitions differ from the applied ones; True when
        they agree afterwards. A failure is logged and left for the next call."""
        self._dirty.clear()
        owned = self._target()
        gained = {p: t for p, t in owned.items() if self.applied.get(p) != t}
        lost = set(self.applied) - set(owned)
        if not gained and not lost:
            return True
        try:
            await self.on_change(gained, lost)
        except Exception:  # the store unreachable during a warm-up, say: re-applied (idempotent) later
            log.exception("following partitions %s failed; trying again", sorted(gained))
            self._dirty.set()
            return False
        self.applied = owned
        if set(self.tokens) - self.want:  # handed off: their symbols are dropped, so the leases go now
            await self.round()
        return True

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            if not await self.apply():
                await self.clock.sleep(1.0)

    async def _round(self) -> tuple[dict[int, int], set[int]]:
        if not self._counted:
            await self._check_count()
        members = self.members = await self._heartbeat()
        want = self.want = {p for p, m in parts.assignment(self.partitions, members).items() if m == self.shard_id}
        # A partition now another member's is handed off in two steps: the daemon drops its
        # symbols (apply), then its lease is released here; renewed until then, so the new owner
        # never fetches a symbol while this member still does.
        give = [p for p in self.tokens if p not in want and p not in self.applied]
        await self._release([self.redis.keys.lease(p) for p in give])
        lost = set(give)
        for p in give:
            del self.tokens[p]
        ordered = sorted(want | set(self.tokens))
        tokens = await self._acquire([(self.redis.keys.lease(p), self.redis.keys.fence(p)) for p in ordered])
        gained: dict[int, int] = {}
        for p, token in zip(ordered, tokens, strict=True):
            if token:
                if self.tokens.get(p) != token:
                    gained[p] = token
                self.tokens[p] = token
            elif self.tokens.pop(p, None) is not None:
                lost.add(p)
        leader = 0 in want
        job_keys = [(self.redis.keys.cluster(f"job:{j}"), self.redis.keys.cluster(f"jobfence:{j}")) for j in JOBS]
        job_tokens = await self._acquire(job_keys) if leader else [0] * len(JOBS)
        if not leader and self.jobs:
            await self._release([k for k, _ in job_keys])
        self.jobs = {j: t for j, t in zip(JOBS, job_tokens, strict=True) if t}
        self.rounds += 1
        self.last_round_at = self.clock.monotonic()
        self.last_error = None
        return gained, lost

    async def _heartbeat(self, leaving: bool = False) -> list[str]:
        info = orjson.dumps({**self.info, "owned": len(self.tokens), "jobs": sorted(self.jobs)})
        out = await self.redis.guard(self.redis.client.eval(
            _HEARTBEAT, 2, self._members_key, self._info_key, self.shard_id, self.lease_ms, info,
            "1" if leaving else "0"), "cluster heartbeat")
        return [m.decode() if isinstance(m, bytes) else str(m) for m in out]

    async def _acquire(self, keys: list[tuple[str, str]]) -> list[int]:
        if not keys:
            return []
        pipe = self.redis.client.pipeline(transaction=False)
        for lease, fence in keys:
            pipe.eval(_ACQUIRE, 2, lease, fence, self.shard_id, self.lease_ms)
        return [int(t) for t in await self.redis.guard(pipe.execute(), "cluster leases")]

    async def _release(self, leases: list[str]) -> None:
        if leases:
            pipe = self.redis.client.pipeline(transaction=False)
            for lease in leases:
                pipe.eval(_RELEASE, 1, lease, self.shard_id)
            await self.redis.guard(pipe.execute(), "cluster release")
