"""`sidecar.client`: what the programs that read the sidecar use instead of knowing its key
names, msgpack layouts and stream format.

    from sidecar.client import Client

    async with Client("redis://127.0.0.1:6379/0", http_url="http://127.0.0.1:8787") as c:
        bar = await c.latest("AAPL")                       # Bar, .stale when older than allowed
        hour = await c.bars("AAPL", "1m", t0, t1)          # list[Bar] (frame=True: a DataFrame)
        many = await c.features(["AAPL", "MSFT"], "5m")    # {symbol: Features}, one round trip
        async for msg in c.follow("my-strategy", "worker-1"):   # a consumer group on the signals stream
            ...
            await c.ack("my-strategy", msg)

`SyncClient` offers the same calls without asyncio. Redis is read directly (one pipelined
round trip for any number of symbols); when Redis cannot be reached and an `http_url` is
given, the daemon's HTTP API answers instead. Every value carries its age: features older
than `max_age_s` (by their `updated` time), or any value while the daemon's heartbeat is
missing, come back with `stale=True`, and `fresh_only=True` turns that into `StaleError`,
never a silently old number.

Signals and events are read from the `signals` stream through a consumer group: the
consumers of one group share the entries (each goes to one of them), an entry counts as
handled only once acknowledged, and a consumer that restarts under the same name first gets
the entries it had received but not acknowledged, so none is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import msgpack
import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .bars import STALE, Bar
from .client_values import ClientError, Features, FeatureTable, Message, StaleError
from .features.codec import FeatureCodec
from .stores.redis_wire import CLUSTER_SCHEME, RedisKeys, cluster_nodes, command
from .symbols import parse_symbol
from .timeframes import ALL as TIMEFRAMES

_META = ("tf", "ts", "close", "provisional", "updated")  # a features map's fields that are not outputs
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
__all__ = ["Client", "ClientError", "FeatureTable", "Features", "Message", "StaleError", "SyncClient"]


class Client:
    """Async reads of bars, features, signals and events.

    :param redis_url: the Redis the daemon writes (fast path).
    :param prefix: SIDECAR_REDIS_PREFIX of the daemon.
    :param http_url: the daemon's HTTP API, used when Redis cannot be reached (None: never).
    :param max_age_s: features written longer ago than this are stale (default: 5 s for 1m,
        whose values are rewritten every second; 15 s above it, whose forming values the
        daemon refreshes every SIDECAR_HIGHER_FORMING_S, 5 s by default).
    :param timeout_s: deadline of one read.
    :param clock: wall time (injected for tests).
    :param partitions: SIDECAR_PARTITIONS when the daemons run as a cluster (their keys are
        tagged by partition); 0 for one daemon.

    A `redis+cluster://host:port[,host:port...]` URL reads a Redis Cluster through redis-py's
    cluster client (it follows MOVED and re-learns the slots after a failover); the bulk
    feature read is then one MGET per slot instead of one pre-packed round trip.
    """

    def __init__(self, redis_url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "sidecar",
                 http_url: str | None = None, max_age_s: float | None = None, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time, partitions: int = 0) -> None:
        self.keys = RedisKeys(prefix, partitions)
        self.timeout_s, self.clock = timeout_s, clock
        self.max_age_s = {tf: max_age_s if max_age_s is not None else (5.0 if tf == "1m" else 15.0) for tf in TIMEFRAMES}
        self.http_url = http_url.rstrip("/") if http_url else None
        # Any: redis-py's asyncio annotations describe its sync client's pipelines and replies
        self._redis: Any
        self._cluster = redis_url.startswith(CLUSTER_SCHEME)
        if self._cluster:
            self._redis = RedisCluster(startup_nodes=cluster_nodes(redis_url), socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s)
        else:
            self._redis = aioredis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self.reads = {"redis": 0, "http": 0}
        self._codecs: dict[tuple[str, tuple[str, ...]], FeatureCodec] = {}
        self._universe: dict[tuple[tuple[str, ...], str], tuple[list[str], bytes]] = {}

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the HTTP session (Redis connects on first use)."""
        if self.http_url and self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def close(self) -> None:
        """Close the connections (idempotent)."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._redis.aclose()

    def health(self) -> dict[str, object]:
        """Reads served by each path so far."""
        return {"reads": dict(self.reads), "http_fallback": self.http_url is not None}

    # -- bars and features ---------------------------------------------------------------------

    async def latest(self, symbol: str, timeframe: str = "1m", *, fresh_only: bool = False) -> Bar:
        """The newest bar (forming or closed)."""
        sym, tf = _symbol(symbol), _timeframe(timeframe)
        try:
            raw, beat = await self._redis.pipeline(transaction=False).get(self.keys.latest(sym, tf)).get(
                self.keys.heartbeat()).execute()
            self.reads["redis"] += 1
        except _UNREACHABLE as exc:
            doc = await self._http_get(f"/bars/{sym}/latest", {"tf": tf}, sym, exc)
            return _checked(_bar(doc, stale=False), fresh_only)
        if raw is None:
            raise ClientError(f"no {tf} bar in Redis", sym)
        return _checked(_bar(msgpack.unpackb(raw), stale=beat is None), fresh_only)

    async def bars(self, symbol: str, timeframe: str = "1m", start: int = 0, end: int | None = None, *,
                   frame: bool = False) -> Any:
        """Closed bars with opens in [start, end], oldest first (a pandas DataFrame with `frame`)."""
        sym, tf = _symbol(symbol), _timeframe(timeframe)
        last = "+inf" if end is None else int(end)
        try:
            raws = await self._redis.zrange(self.keys.history(sym, tf), int(start), last, byscore=True)
            self.reads["redis"] += 1
            out = [_bar(msgpack.unpackb(r)) for r in raws]
        except _UNREACHABLE as exc:
            params = {"tf": tf, "start": str(int(start)), "limit": "5000", **({} if end is None else {"end": str(end)})}
            out = [_bar(b) for b in (await self._http_get(f"/bars/{sym}", params, sym, exc))["bars"]]
        if not frame:
            return out
        import pandas as pd

        return pd.DataFrame([{f: getattr(b, f) for f in Bar.__slots__} for b in out])

    async def features(self, symbols: str | Sequence[str], timeframe: str = "1m", *,
                       fresh_only: bool = False) -> dict[str, Features]:
        """The newest features of each symbol, in one round trip; a symbol without any is left
        out (or, with `fresh_only`, raises like a stale one)."""
        table = await self.feature_table(symbols, timeframe, fresh_only=fresh_only)
        return {sym: table.row(k) for k, sym in enumerate(table.symbols) if table.present[k]}

    async def feature_table(self, symbols: str | Sequence[str], timeframe: str = "1m", *,
                            fresh_only: bool = False) -> FeatureTable:
        """The newest features of many symbols as columns (one MGET, decoded as arrays): the
        bulk read for thousands of symbols."""
        wanted = (symbols,) if isinstance(symbols, str) else tuple(symbols)
        tf = _timeframe(timeframe)
        names, packed = self._universe.get((wanted, tf)) or self._remember(wanted, tf)
        try:
            if self._cluster:  # keys of many slots: MGETs per slot, by the cluster client
                async with asyncio.timeout(self.timeout_s):
                    raws = await self._redis.mget_nonatomic([self.keys.features(sym, tf) for sym in names])
                    beat = await self._redis.get(self.keys.heartbeat())
            else:
                raws, beat = await self._send(packed, 2)
            self.reads["redis"] += 1
        except _UNREACHABLE as exc:
            self._can_fall_back(exc, names[0] if len(names) == 1 else "")
            beat, raws = b"http", []
            for sym in names:
                try:
                    doc = await self._http_get(f"/features/{sym}", {"tf": tf}, sym, exc)
                except ClientError:
                    doc = None  # none for this symbol
                raws.append(None if doc is None else msgpack.packb({k: v for k, v in doc.items() if k != "symbol"}))
        table = self._decode(names, tf, raws, heartbeat=beat is not None)
        if fresh_only and not (table.present & ~table.stale).all():
            sym = names[int(np.flatnonzero(~table.present | table.stale)[0])]
            raise StaleError(f"no {tf} features within {self.max_age_s[tf]:g} s", sym)
        return table

    def _remember(self, wanted: tuple[str, ...], tf: str) -> tuple[list[str], bytes]:
        """A universe's validated symbols and its MGET (+ heartbeat GET) packed once: a strategy
        asks for the same thousands of symbols every second, and validating and packing them
        each time (redis-py encodes every argument) cost more than Redis's answer."""
        names = [_symbol(s) for s in wanted]
        if len(self._universe) >= 64:
            self._universe.clear()
        packed = command(b"MGET", *(self.keys.features(sym, tf).encode() for sym in names)) + command(
            b"GET", self.keys.heartbeat().encode())
        self._universe[(wanted, tf)] = entry = (names, packed)
        return entry

    async def _send(self, packed: bytes, replies: int) -> list[Any]:
        """Pre-packed commands on one pooled connection, and their replies."""
        pool = self._redis.connection_pool
        async with asyncio.timeout(self.timeout_s):
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command(packed)
                return [await conn.read_response() for _ in range(replies)]
            except BaseException:
                await conn.disconnect()  # never back in the pool with replies pending
                raise
            finally:
                await pool.release(conn)

    def _decode(self, names: list[str], tf: str, raws: list[bytes | None], heartbeat: bool) -> FeatureTable:
        """Rows as columns, by the daemon's own codec (its outputs read off the first row)."""
        first = next((r for r in raws if r is not None), None)
        outputs = () if first is None else tuple(k for k in msgpack.unpackb(first) if k not in _META)
        codec = self._codecs.get((tf, outputs))
        if codec is None:
            codec = self._codecs[(tf, outputs)] = FeatureCodec(outputs, tf)
        f = codec.decode(raws)
        stale = ~f.present | (not heartbeat) | (self.clock() - f.updated > self.max_age_s[tf])
        return FeatureTable(names, tf, outputs, f.present, f.ts, f.close, f.provisional, f.updated, f.values, stale)

    # -- signals and events ---------------------------------------------------------------------

    async def follow(self, group: str, consumer: str, *, start: str = "$", block_ms: int = 1000,
                     count: int = 100) -> AsyncIterator[Message]:
        """Signals and events for `consumer` of `group`, for ever: first the entries it
        received earlier and did not acknowledge (after a restart), then new ones. A new group
        starts at `start` ("$": entries from now on, "0": the whole stream). Acknowledge each
        with `ack` once handled."""
        stream = self.keys.signals()
        try:
            await self._redis.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        backlog = True
        block_ms = max(1, min(block_ms, int(self.timeout_s * 1000) - 200))  # a wait past the socket timeout would fail
        while True:
            reply = await self._redis.xreadgroup(group, consumer, {stream: "0" if backlog else ">"}, count=count,
                                                 block=None if backlog else block_ms)
            entries = reply[0][1] if reply else []
            if backlog and not entries:
                backlog = False  # everything pending for this consumer was handed back
                continue
            for entry_id, fields in entries:
                yield _message(entry_id, fields)

    async def ack(self, group: str, *messages: Message) -> int:
        """Mark messages handled for `group`; returns how many were pending."""
        return int(await self._redis.xack(self.keys.signals(), group, *(m.id for m in messages)))

    # -- the HTTP path ---------------------------------------------------------------------------

    def _can_fall_back(self, cause: BaseException, symbol: str) -> None:
        """Raise ClientError when Redis failed with `cause` and there is no HTTP API to ask."""
        if self.http_url is None:
            raise ClientError(f"Redis unreachable ({type(cause).__name__}) and no http_url to fall back on", symbol)

    async def _http_get(self, path: str, params: dict[str, str], symbol: str, cause: BaseException) -> dict:
        """A GET on the daemon's API when Redis could not be reached; ClientError naming both."""
        self._can_fall_back(cause, symbol)
        if self._http is None:
            await self.start()
        assert self._http is not None and self.http_url is not None
        try:
            async with self._http.get(self.http_url + path, params=params) as r:
                doc = await r.json(content_type=None)
                if r.status != 200:
                    raise ClientError(f"HTTP {r.status}: {doc.get('error', '')}", symbol)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"Redis unreachable and the HTTP API failed too: {exc!r}", symbol) from None
        self.reads["http"] += 1
        return doc


class SyncClient:
    """`Client` without asyncio: the same calls, each run to completion on a private loop.

    :param kwargs: as for `Client`.
    """

    def __init__(self, redis_url: str = "redis://127.0.0.1:6379/0", **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = Client(redis_url, **kwargs)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and the loop (idempotent)."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def health(self) -> dict[str, object]:
        """As `Client.health`."""
        return self._client.health()

    def latest(self, symbol: str, timeframe: str = "1m", **kw: Any) -> Bar:
        """As `Client.latest`."""
        return self._loop.run_until_complete(self._client.latest(symbol, timeframe, **kw))

    def bars(self, symbol: str, timeframe: str = "1m", start: int = 0, end: int | None = None, **kw: Any) -> Any:
        """As `Client.bars`."""
        return self._loop.run_until_complete(self._client.bars(symbol, timeframe, start, end, **kw))

    def features(self, symbols: str | Sequence[str], timeframe: str = "1m", **kw: Any) -> dict[str, Features]:
        """As `Client.features`."""
        return self._loop.run_until_complete(self._client.features(symbols, timeframe, **kw))

    def feature_table(self, symbols: str | Sequence[str], timeframe: str = "1m", **kw: Any) -> FeatureTable:
        """As `Client.feature_table`."""
        return self._loop.run_until_complete(self._client.feature_table(symbols, timeframe, **kw))

    def follow(self, group: str, consumer: str, **kw: Any) -> Iterator[Message]:
        """As `Client.follow`, as a plain iterator."""
        stream = self._client.follow(group, consumer, **kw)
        while True:
            yield self._loop.run_until_complete(stream.__anext__())

    def ack(self, group: str, *messages: Message) -> int:
        """As `Client.ack`."""
        return self._loop.run_until_complete(self._client.ack(group, *messages))


def _symbol(symbol: str) -> str:
    try:
        return parse_symbol(symbol)
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def _timeframe(timeframe: str) -> str:
    if timeframe not in TIMEFRAMES:
        raise ClientError(f"unknown timeframe {timeframe!r}; known: {', '.join(TIMEFRAMES)}")
    return timeframe


def _bar(m: dict, stale: bool = False) -> Bar:
    """A published bar map as a `Bar`; `stale` (the heartbeat is missing) sets its STALE flag."""
    flags = int(m.get("flags", 0)) | (STALE if stale else 0)
    return Bar(str(m["symbol"]), str(m["tf"]), int(m["ts"]), float(m["open"]), float(m["high"]), float(m["low"]),
               float(m["close"]), float(m["volume"]), str(m.get("source", "")), flags)


def _checked(bar: Bar, fresh_only: bool) -> Bar:
    if fresh_only and bar.stale:
        raise StaleError(f"the newest {bar.timeframe} bar is stale", bar.symbol)
    return bar


def _message(entry_id: bytes | str, fields: dict) -> Message:
    decoded = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    kind = "event" if "event" in decoded else "signal"
    return Message(entry_id.decode() if isinstance(entry_id, bytes) else entry_id, kind, orjson.loads(decoded[kind]))


__all__ = ["Bar", "Client", "ClientError", "FeatureTable", "Features", "Message", "StaleError", "SyncClient"]
