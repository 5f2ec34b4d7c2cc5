"""One provider key's request budgets, shared by every member of a cluster, kept in Redis.

Design: a sliding log, not a token bucket or GCRA. Providers count requests per minute and per
day, and a plan of 30 a minute is broken by 31 requests in any 60 s. A token bucket (and GCRA,
its arrival-time form) with a burst of 30 lets a full burst through and then refills on top of
it: 31 or more inside one minute. The log keeps each request's time in a sorted set (one entry
per request: at most `per_minute` entries, a few kB) and admits a request only if the last 60 s
hold fewer than the limit, exactly what the provider checks. The local limiter uses the same
rule (`resilience.RateLimiter`); this is its cluster-wide form.

One Lua script does the whole decision atomically on the Redis that holds the budget's keys
(one hash tag per provider key, so a Redis Cluster keeps them in one slot), with Redis's own
clock, so members' clocks may disagree:

- a live request is admitted while the minute and the day have room;
- a history request only takes what live traffic leaves, cluster-wide: the minute's limit less
  the live demand (the larger of the live requests in the last 60 s and the sum of the rates
  every member reports for its live loop, each report kept two minutes) and a margin, and at
  most `history_day_share` of the day.

A refusal says how long until room may appear. If Redis cannot be reached, a member falls
back to its equal share of the limits (`limit / members`), so the members together still stay
within them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ..clock import Clock
from ..errors import RedisStoreError
from ..resilience import RateLimiter
from ..stores import RedisStore

# KEYS: log, history log, day count, history day count, live demand hash.
# ARGV: n, per minute, per day, history (1/0), history day share, member, its live rate, request id.
# Returns {1, 0} when admitted, {0, ms to wait} when not.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, per_min, per_day = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local history, share, member = ARGV[4] == '1', tonumber(ARGV[5]), ARGV[6]
local midnight = now - now % 86400000 + 86400000
redis.call('HSET', KEYS[5], member, ARGV[7] .. ' ' .. (now + 120000))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
local used = redis.call('ZCARD', KEYS[1])
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
local roll = 1000
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #oldest > 0 then roll = math.max(1, tonumber(oldest[2]) + 60000 - now) end
if per_day > 0 and day + n > per_day then return {0, midnight - now} end
if per_min > 0 and used + n > per_min then return {0, roll} end
if history then
  if per_day > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') + n > math.floor(per_day * share) then
    return {0, midnight - now}
  end
  if per_min > 0 then
    local demand = 0
    local all = redis.call('HGETALL', KEYS[5])
    for i = 1, #all, 2 do
      local rate, expires = string.match(all[i + 1], '^(%S+) (%d+)$')
      if tonumber(expires) > now then demand = demand + tonumber(rate) else redis.call('HDEL', KEYS[5], all[i]) end
    end
    local hist = redis.call('ZCARD', KEYS[2])
    local live = math.max(used - hist, math.ceil(demand))
    if hist + n > per_min - live - math.max(1, math.floor(live / 10)) then return {0, roll} end
  end
end
for i = 1, n do
  local id = member .. ':' .. ARGV[8] .. ':' .. i
  redis.call('ZADD', KEYS[1], now, id)
  if history then redis.call('ZADD', KEYS[2], now, id) end
end
redis.call('INCRBY', KEYS[3], n)
redis.call('PEXPIREAT', KEYS[3], midnight)
if history then
  redis.call('INCRBY', KEYS[4], n)
  redis.call('PEXPIREAT', KEYS[4], midnight)
end
return {1, 0}
"""


class SharedBudget:
    """A provider key's per-minute and per-day budgets across the cluster.

    :param redis: where the budget lives.
    :param name: the provider (one key per provider: members share it).
    :param per_minute: requests (or credits) in any 60 s, cluster-wide (0: no limit).
    :param per_day: requests per UTC day, cluster-wide (0: no limit).
    :param member: this member's name.
    :param members: how many members are live (for the fallback share).
    :param clock: for the fallback limiter.
    :param history_day_share: the share of the day history may take.
    """

    def __init__(self, *, redis: RedisStore, name: str, per_minute: int, per_day: int, member: str,
                 members: Callable[[], int], clock: Clock, history_day_share: float = 0.5) -> None:
        self.redis, self.name, self.member = redis, name, member
        self.per_minute, self.per_day, self.share = per_minute, per_day, history_day_share
        self.members, self.clock = members, clock
        self.live_rate = 0.0  # this member's live demand per minute, told by its source each cycle
        self.granted = self.refused = self.fallbacks = 0
        self._ids = itertools.count()
        self._fallback: RateLimiter | None = None
        self._fallback_members = 0
        self.keys = [redis.keys.budget(name, part) for part in ("log", "history", "day", "history_day", "demand")]

    async def acquire(self, n: int = 1, history: bool = False) -> float:
        """Take `n` requests from the shared budgets: 0.0 when admitted, else the seconds until
        room may appear."""
        if not (self.per_minute or self.per_day):
            return 0.0
        try:
            ok, wait_ms = await self.redis.guard(self.redis.client.eval(
                _ACQUIRE, len(self.keys), *self.keys, n, self.per_minute, self.per_day, "1" if history else "0",
                self.share, self.member, f"{self.live_rate:.3f}", next(self._ids)), f"{self.name} budget")
        except RedisStoreError:
            self.fallbacks += 1
            return self._fallback_acquire(n, history)
        if ok:
            self.granted += n
            return 0.0
        self.refused += not history
        return max(0.05, int(wait_ms) / 1000)

    def _fallback_acquire(self, n: int, history: bool) -> float:
        """Redis unreachable: this member's equal share of the limits, locally."""
        members = max(1, self.members())
        if self._fallback is None or members != self._fallback_members:
            self._fallback_members = members
            self._fallback = RateLimiter(clock=self.clock, per_minute=self.per_minute // members,
                                         per_day=self.per_day // members, history_day_share=self.share)
        if self._fallback.try_acquire(n, history):
            return 0.0
        return self._fallback.history_wait_s(n) if history else 1.0

    def health(self) -> dict[str, object]:
        """The shared limits and what this member was granted and refused."""
        return {"per_minute": self.per_minute, "per_day": self.per_day, "granted": self.granted,
                "refused": self.refused, "fallbacks": self.fallbacks, "live_rate": round(self.live_rate, 1)}


async def usage(redis: RedisStore, name: str) -> dict[str, int]:
    """A provider key's use right now: requests in the last 60 s (history among them), today."""
    keys = [redis.keys.budget(name, part) for part in ("log", "history", "day")]
    t = await redis.guard(redis.client.time(), "time")
    now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
    pipe = redis.client.pipeline(transaction=False)
    pipe.zcount(keys[0], now_ms - 60000, "+inf")
    pipe.zcount(keys[1], now_ms - 60000, "+inf")
    pipe.get(keys[2])
    minute, history, day = await redis.guard(pipe.execute(), "budget use")
    return {"last_minute": int(minute), "history_last_minute": int(history), "today": int(day or 0)}
