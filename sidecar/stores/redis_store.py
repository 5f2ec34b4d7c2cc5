"""Redis knowledge base: the latest bar per symbol and timeframe, and a capped, time-indexed
history, written in one pipeline per cycle.

Keys (hash-tagged by symbol, so a Redis Cluster keeps a symbol's keys on one shard):

    {prefix}:{SYMBOL}:bar:{tf}    string  msgpack map of the newest bar (forming or closed)
    {prefix}:{SYMBOL}:bars:{tf}   zset    score = bar open (epoch s), member = msgpack map;
                                          closed bars only, the newest `history_len` kept
    {prefix}:{SYMBOL}:features:{tf}  string  msgpack map of the newest features, TTL 2 s
    {prefix}:symbols              set     canonical symbols written so far
    {prefix}:signals              stream  scanner signals (also PUBLISHed on the same name)
    {prefix}:alive                string  set by the first write; missing means Redis lost its data
    {prefix}:deadletter           hash    symbol -> JSON {reason, error, since}: symbols whose source fails
    {prefix}:quarantine           list    JSON of bars held out by the spike filter, newest first (1,000)

A cycle's writes are one script call (EVALSHA) in one pipeline: one round trip, applied
atomically, with the per-bar work done inside Redis. Sending each ZADD/SET as its own
pipelined command cost ~25 us per command in redis-py's Python packing and reply parsing;
the bars travel instead as two msgpack blobs that the script unpacks (bench/pipeline.py).
Every write is an idempotent overwrite keyed by (symbol, timeframe, ts), because redis-py
re-sends a whole pipeline when a connection drops mid-way (reliability.md B.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgpack
import orjson
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..bars import Bar
from ..errors import RedisStoreError

# ARGV[1] history length, ARGV[2] the symbols set key, ARGV[3] a msgpack array of
# (history key, ts, member) per closed bar, ARGV[4] of (latest key, member) per newest bar,
# ARGV[5] of (features key, value) per updated symbol, ARGV[6] the features' TTL in ms,
# ARGV[7] the alive key, ARGV[8] the newest bars' symbols. Values are packed by Python and pass through as opaque strings.
# Returns {values written, 1 if the alive key was missing (a new or emptied Redis) else 0}.
_WRITE_CYCLE = """
local fresh = redis.call('SET', ARGV[7], '1', 'NX') and 1 or 0
local cap, symbols = tonumber(ARGV[1]), ARGV[2]
local closed, latest, features = cmsgpack.unpack(ARGV[3]), cmsgpack.unpack(ARGV[4]), cmsgpack.unpack(ARGV[5])
local names = cmsgpack.unpack(ARGV[8])
local touched = {}
for i = 1, #closed, 3 do
  local key, ts = closed[i], closed[i + 1]
  redis.call('ZREMRANGEBYSCORE', key, ts, ts)  -- a revised bar replaces its older copy
  redis.call('ZADD', key, ts, closed[i + 2])
  touched[key] = true
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
end
-- Variadic MSET and SADD, a chunk per call (Lua's unpack() has a stack limit), rather than a
-- call per key, which was most of Redis's time at thousands of symbols.
local function chunked(list, call)
  for c = 1, #list, 2000 do
    call(unpack(list, c, math.min(c + 1999, #list)))
  end
end
chunked(latest, function(...) redis.call('MSET', ...) end)
chunked(names, function(...) redis.call('SADD', symbols, ...) end)
chunked(features, function(...) redis.call('MSET', ...) end)
for f = 1, #features, 2 do
  redis.call('PEXPIRE', features[f], ARGV[6])
end
return {#closed / 3 + (#latest + #features) / 2, fresh}
"""


@dataclass(slots=True, frozen=True)
class RedisKeys:
    """Key names under one prefix."""

    prefix: str

    def latest(self, symbol: str, timeframe: str) -> str:
        """The newest bar of a symbol and timeframe."""
        return f"{self.prefix}:{{{symbol}}}:bar:{timeframe}"

    def history(self, symbol: str, timeframe: str) -> str:
        """The capped history of closed bars, scored by bar open."""
        return f"{self.prefix}:{{{symbol}}}:bars:{timeframe}"

    def features(self, symbol: str, timeframe: str) -> str:
        """The newest feature values of a symbol (expire unless refreshed)."""
        return f"{self.prefix}:{{{symbol}}}:features:{timeframe}"

    def symbols(self) -> str:
        """The set of symbols written."""
        return f"{self.prefix}:symbols"

    def signals(self) -> str:
        """The stream (and pub/sub channel) of scanner signals."""
        return f"{self.prefix}:signals"

    def deadletter(self) -> str:
        """Symbols whose every fetch currently fails, with the reason."""
        return f"{self.prefix}:deadletter"

    def quarantine(self) -> str:
        """Bars the spike filter held out, newest first."""
        return f"{self.prefix}:quarantine"

    def alive(self) -> str:
        """Written once per Redis lifetime: its absence means the data is gone."""
        return f"{self.prefix}:alive"


@dataclass(slots=True, frozen=True)
class WriteResult:
    """What one cycle's write did: values written, and whether Redis had lost its data."""

    written: int
    fresh: bool


def pack(bar: Bar) -> bytes:
    """The documented value format: a msgpack map with named fields."""
    return msgpack.packb(bar.as_map())


def unpack(raw: bytes) -> Bar:
    """Inverse of `pack`."""
    return Bar.from_map(msgpack.unpackb(raw))


class RedisStore:
    """Writes each cycle's bars in one pipeline and serves range reads.

    :param url: redis://, rediss:// or unix:// URL.
    :param prefix: first segment of every key.
    :param max_connections: bound of the connection pool.
    :param timeout_s: deadline for one pipeline or read; also the socket timeouts.
    :param history_len: closed bars kept per symbol and timeframe.
    :param features_ttl_s: lifetime of a features value that is not refreshed.
    :param signals_maxlen: approximate length the signals stream is trimmed to.
    """

    def __init__(self, *, url: str, prefix: str, max_connections: int, timeout_s: float, history_len: int,
                 features_ttl_s: float = 2.0, signals_maxlen: int = 10_000) -> None:
        self.keys = RedisKeys(prefix)
        self.timeout_s = timeout_s
        self.history_len = history_len
        self.features_ttl_ms = max(1, int(features_ttl_s * 1000))
        self.signals_maxlen = signals_maxlen
        # Built explicitly: from_url() alone gets no retry at all (reliability.md B.1).
        self._pool = ConnectionPool.from_url(
            url, max_connections=max_connections, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, health_check_interval=5,
            retry=Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), retries=2),
        )
        self.client = Redis(connection_pool=self._pool)
        self._write_script = self.client.register_script(_WRITE_CYCLE)
        self._mget_cache: tuple[tuple[tuple[str, ...], str], list[bytes]] | None = None

    async def start(self) -> bool:
        """Check the connection; False (not an exception) when Redis is down, so the loop
        still starts and SQLite keeps recording."""
        return await self.ping()

    async def close(self) -> None:
        """Close the client and its pool."""
        await self.client.aclose()
        await self._pool.disconnect()

    async def ping(self) -> bool:
        """True if Redis answers within the timeout."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def write_cycle(self, latest: Iterable[Bar], closed: Iterable[Bar],
                          features: Iterable[tuple[str, str, bytes]] = ()) -> WriteResult:
        """Write a cycle's newest bars, new closed bars and (symbol, timeframe, value) features
        in one round trip; also tell whether this Redis had lost its data (restart, flush)."""
        closed_args: list[object] = []
        for bar in closed:
            closed_args += (self.keys.history(bar.symbol, bar.timeframe), bar.ts, pack(bar))
        latest_args: list[object] = []
        names: list[str] = []
        for bar in latest:
            latest_args += (self.keys.latest(bar.symbol, bar.timeframe), pack(bar))
            names.append(bar.symbol)
        feature_args: list[object] = []
        for symbol, timeframe, value in features:
            feature_args += (self.keys.features(symbol, timeframe), value)
        n = len(closed_args) // 3 + (len(latest_args) + len(feature_args)) // 2
        if n == 0:
            return WriteResult(0, False)
        # Keys travel inside ARGV: a cycle spans every symbol's slot, so a cluster deployment
        # shards symbols across processes (one slot group each) rather than across one script.
        # use_bin_type=False: Redis's cmsgpack predates msgpack's bin type; raw strings carry bytes.
        try:
            async with self.client.pipeline(transaction=False) as pipe:  # reset however it ends
                await self._write_script(args=[self.history_len, self.keys.symbols(),
                                               msgpack.packb(closed_args, use_bin_type=False),
                                               msgpack.packb(latest_args, use_bin_type=False),
                                               msgpack.packb(feature_args, use_bin_type=False), self.features_ttl_ms,
                                               self.keys.alive(), msgpack.packb(names, use_bin_type=False)],
                                         client=pipe)
                async with asyncio.timeout(self.timeout_s):
                    (reply,) = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"writing {n} bars failed: {type(exc).__name__}: {exc}") from exc
        return WriteResult(int(reply[0]), bool(reply[1]))

    async def latest(self, symbol: str, timeframe: str) -> Bar | None:
        """The newest bar of a symbol, or None."""
        raw = await self._read(self.client.get(self.keys.latest(symbol, timeframe)))
        return unpack(raw) if raw else None

    async def history(self, symbol: str, timeframe: str, start: int, end: int, limit: int) -> list[Bar]:
        """Closed bars with open in [start, end], oldest first, at most `limit` (the newest ones)."""
        key = self.keys.history(symbol, timeframe)
        raw = await self._read(self.client.zrange(key, end, start, byscore=True, desc=True, offset=0, num=limit))
        return [unpack(m) for m in reversed(raw)]

    async def features(self, symbols: Sequence[str], timeframe: str) -> list[bytes | None]:
        """Every symbol's features value (None where absent or expired), in one MGET.

        The MGET of a symbol set is packed once and its bytes reused: packing thousands of
        key names every second cost redis-py more than Redis's whole answer.
        """
        if not symbols:
            return []
        cache_key = (tuple(symbols), timeframe)
        if self._mget_cache is None or self._mget_cache[0] != cache_key:
            conn = self._pool.make_connection()
            self._mget_cache = (cache_key, conn.pack_command("MGET", *(self.keys.features(s, timeframe)
                                                                       for s in symbols)))
        packed = self._mget_cache[1]
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._pool.get_connection()
                try:
                    await conn.send_packed_command(packed)
                    reply = await conn.read_response()
                finally:
                    await self._pool.release(conn)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"reading features failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(reply, RedisError):
            raise RedisStoreError(f"reading features failed: {reply}")
        return reply

    async def publish_signals(self, signals: Sequence[dict[str, object]]) -> None:
        """Append signals to the stream and publish each on the channel, in one pipeline.
        Each carries an `id` so a consumer can drop the copy a re-sent pipeline may add."""
        if not signals:
            return
        name = self.keys.signals()
        try:
            async with self.client.pipeline(transaction=False) as pipe, asyncio.timeout(self.timeout_s):
                for sig in signals:
                    body = orjson.dumps(sig)
                    pipe.xadd(name, {"signal": body}, maxlen=self.signals_maxlen, approximate=True)
                    pipe.publish(name, body)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"publishing {len(signals)} signals failed: {type(exc).__name__}: {exc}") from exc

    async def dead_letters(self, add: dict[str, dict[str, object]], remove: Sequence[str]) -> None:
        """Put symbols on (with the reason) or take them off the dead-letter hash."""
        if not add and not remove:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe, asyncio.timeout(self.timeout_s):
                if add:
                    pipe.hset(self.keys.deadletter(), mapping={s: orjson.dumps(v) for s, v in add.items()})
                if remove:
                    pipe.hdel(self.keys.deadletter(), *remove)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"dead-letter update failed: {type(exc).__name__}: {exc}") from exc

    async def quarantine(self, entries: Sequence[dict[str, object]], keep: int = 1000) -> None:
        """Record bars the spike filter held out (the list keeps the newest `keep`)."""
        try:
            async with self.client.pipeline(transaction=False) as pipe, asyncio.timeout(self.timeout_s):
                pipe.lpush(self.keys.quarantine(), *[orjson.dumps(e) for e in entries])
                pipe.ltrim(self.keys.quarantine(), 0, keep - 1)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"quarantine write failed: {type(exc).__name__}: {exc}") from exc

    async def signals(self, since_ms: int, limit: int) -> list[dict[str, object]]:
        """Signals published at or after `since_ms` (epoch milliseconds), oldest first."""
        entries = await self._read(self.client.xrange(self.keys.signals(), min=f"{since_ms}-0", count=limit))
        return [{"stream_id": sid.decode(), **orjson.loads(fields[b"signal"])} for sid, fields in entries]

    async def _read(self, call):  # noqa: ANN001, ANN202 - any awaitable's result
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisStoreError(f"read failed: {type(exc).__name__}: {exc}") from exc
