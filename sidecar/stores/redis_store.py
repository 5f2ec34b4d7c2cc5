"""Redis knowledge base: the latest bar per symbol and timeframe, the newest features, and a
capped, time-indexed history, written in one round trip per cycle. Keys: `redis_wire.RedisKeys`.

A cycle's writes are pre-packed RESP sent on one connection: MSETs of the newest bars and
features (values packed from arrays by the cycle), one EVAL that adds the closed bars to the
histories, the heartbeat. Sending each SET through redis-py's pipeline cost ~25 us per command
in Python packing and reply parsing, and a Lua script unpacking msgpack blobs and PEXPIREing each
features key cost Redis itself ~30 ms a cycle at 5,000 symbols (bench/redis_ttl.py). Every
write is an idempotent overwrite keyed by (symbol, timeframe, ts): sending a cycle again after a
dropped connection changes nothing (reliability.md B.1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from ..bars import Bar
from ..errors import RedisStoreError
from .redis_fenced import FencedScripts, FencedWrite
from .redis_streams import RedisStreams
from .redis_wire import (
    CLUSTER_SCHEME,
    REPLACE,
    TRIM,
    CyclePacker,
    FeatureReads,
    Ints,
    ListedSymbols,
    RedisKeys,
    TimeframeWrite,
    WideUnixConnection,
    WriteResult,
    cluster_nodes,
    command,
    pack,
    unpack,
)

log = logging.getLogger(__name__)
WRITE_S_PER_VALUE = 10e-6
"""A cycle's write gets this much longer than SIDECAR_REDIS_TIMEOUT_S per value it sends: at a
15-minute close two cluster members' transactions of ~100,000 values each took one Redis
0.8 s, and a write that fails is sent again, larger (bench/cluster.py, 2 x 10,000 symbols)."""


class RedisStore(RedisStreams):
    """Writes each cycle's bars in one pipeline and serves range reads.

    :param url: redis://, rediss:// or unix:// URL.
    :param prefix: first segment of every key.
    :param max_connections: bound of the connection pool.
    :param timeout_s: deadline for one pipeline or read; also the socket timeouts.
    :param history_len: closed bars kept per symbol and timeframe.
    :param features_ttl_s: lifetime of a features value that is not refreshed.
    :param signals_maxlen: approximate length the signals stream is trimmed to.
    :param partitions: the cluster's partition count (0: one daemon): keys are tagged by
        partition and every write is fenced (set `fence` and `on_fenced`).
    """

    def __init__(self, *, url: str, prefix: str, max_connections: int, timeout_s: float, history_len: int,
                 features_ttl_s: float = 2.0, signals_maxlen: int = 10_000, partitions: int = 0) -> None:
        self.keys = RedisKeys(prefix, partitions)
        # Cluster mode: this member's token per partition (None: not its own), and who is told
        # of partitions whose writes the fence refused.
        self.fence: Callable[[int], int | None] | None = None
        self.on_fenced: Callable[[set[int]], object] | None = None
        self.timeout_s = timeout_s
        self.history_len = history_len
        self.features_ttl_ms = max(1, int(features_ttl_s * 1000))
        self.signals_maxlen = signals_maxlen
        retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.2), retries=2)
        self.cluster_client = url.startswith(CLUSTER_SCHEME)
        self._pool: ConnectionPool | None = None
        self.client: Any
        if self.cluster_client:
            # A Redis Cluster: redis-py's cluster client follows MOVED/ASK and re-learns the slot
            # map after a failover; every multi-key call here stays within one slot.
            self.client = RedisCluster(startup_nodes=cluster_nodes(url), max_connections=max_connections,
                                       socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry,
                                       cluster_error_retry_attempts=2)
        else:
            # Built explicitly: from_url() alone gets no retry at all (reliability.md B.1).
            self._pool = ConnectionPool.from_url(
                url, max_connections=max_connections, socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s, health_check_interval=5, retry=retry)
            if self._pool.connection_class is UnixDomainSocketConnection:
                self._pool.connection_class = WideUnixConnection
            self.client = Redis(connection_pool=self._pool)
        self._mget_cache: dict[str, tuple[tuple[str, ...], bytes]] = {}  # by timeframe
        self._packer = CyclePacker(self.keys, history_len)
        # a cluster member's writes: one fenced part per partition
        self._fenced = FencedScripts(self.keys, history_len, raw=not self.cluster_client) if partitions else None
        self._listed = ListedSymbols()  # symbols this Redis has in its symbols set
        self._closed = False
        self.ok: bool | None = None  # did the last call succeed (None: none made yet)
        self.last_error: str | None = None

    async def start(self) -> None:
        """Check the connection. Redis being down is not an error here: the loop still starts,
        SQLite keeps recording, and `health()` says so."""
        if not await self.ping():
            log.warning("redis not reachable at start; the loop runs without it until it answers")

    async def close(self) -> None:
        """Close the client and its pool (idempotent; nothing is held to flush)."""
        if not self._closed:
            self._closed = True
            await self.client.aclose()
            if self._pool is not None:
                await self._pool.disconnect()

    def health(self) -> dict[str, object]:
        """`ok` / `down` by the last call (`unknown` before any), and the last error."""
        return {"state": {True: "ok", False: "down", None: "unknown"}[self.ok], "last_error": self.last_error}

    async def ping(self) -> bool:
        """True if Redis answers within the timeout."""
        try:
            await self.guard(self.client.ping(), "ping")
            return True
        except RedisStoreError:
            return False

    async def write_cycle(self, timeframe: str, *, latest: tuple[Sequence[str], Sequence[bytes]] = ((), ()),
                          history: tuple[Sequence[str], Ints, Sequence[bytes], Ints] = (
                              (), (), (), ()),
                          features: tuple[Sequence[str], Sequence[bytes]] = ((), ()),
                          quiet: Sequence[str] = (), now: float = 0.0,
                          more: Sequence[TimeframeWrite] = ()) -> WriteResult:
        """Write a cycle in one round trip: the newest bar of some symbols (symbols, values),
        closed bars for the histories (symbols, opens, values), feature values (symbols, values),
        with a mode each (REPLACE | TRIM bits), and remove the features of `quiet` symbols (their
        source went silent); `more` adds other timeframes' parts to the same trip. Also tells
        whether this Redis had lost its data (restart, flush).

        Sent as raw RESP on one connection: MSETs for the values that are overwritten every
        second (no per-key TTL: a value carries its own `updated` time, and
        bench/redis_ttl.py measured a PEXPIRE per key at 6x Redis's time for the MSET), one
        EVAL for the histories of every timeframe, and the heartbeat, whose TTL says the writer
        is alive.
        """
        return await self.write_timeframes([TimeframeWrite(timeframe, latest, history, features, quiet), *more], now)

    async def write_timeframes(self, writes: Sequence[TimeframeWrite], now: float,
                               then: Callable[[], Sequence[TimeframeWrite]] | None = None,
                               reads: FeatureReads | None = None) -> WriteResult:
        """`write_cycle` for parts given per timeframe, applied in their order (the first part
        with newest bars lists the symbols). `then`, if given, makes more parts once the first
        are sent: they follow on the same connection, made while Redis applies the first.

        `reads`: features read back on the same connection, a timeframe's MGET right after the
        parts that write it (after `then`'s for a timeframe not among `writes`); each is handed
        to `reads.took` as soon as it is read, while Redis may still apply what follows it. A
        cluster member's fenced write reads nothing: the scan then reads for itself."""
        if self.fence is not None:
            return await self._write_fenced([*writes, *(then() if then is not None else ())], now)
        head, names = self._head(writes, now)
        parts, written = self._packer.pack(writes)
        counts = [written]
        sent = [*(command(*c) for c in head), *parts]
        took: dict[int, Callable[[object], object]] = {}  # reply index -> who takes it

        def read_back(timeframes: Sequence[str], at: int) -> list[bytes]:
            if reads is None:
                return []
            for k, tf in enumerate(timeframes):
                took[at + k] = functools.partial(reads.took, tf)
            return [self._mget(reads.symbols[tf], tf) for tf in timeframes]

        wanted = [tf for tf, symbols in (reads.symbols.items() if reads else ()) if symbols]
        first = {w.timeframe for w in writes}
        early = [tf for tf in wanted if tf in first or then is None]
        sent += read_back(early, len(sent))

        def more() -> tuple[list[bytes], float]:
            assert then is not None
            extra, n = self._packer.pack(then())
            counts.append(n)
            late = [tf for tf in wanted if tf not in early]
            return [*extra, *read_back(late, len(sent) + len(extra))], n * WRITE_S_PER_VALUE

        replies = await self._send(sent, len(sent), f"writing {written} values",
                                   timeout=self.timeout_s + written * WRITE_S_PER_VALUE,
                                   more=None if then is None else more, took=took)
        fresh = replies[0] is not None  # a new or emptied Redis: only what this write added is in its set
        self._listed.add(names, fresh)
        return WriteResult(sum(counts), fresh)

    def _head(self, writes: Sequence[TimeframeWrite], now: float) -> tuple[list[tuple[bytes, ...]], Sequence[str]]:
        """What every cycle's write starts with: the `alive` mark, the heartbeat, and the symbols
        not yet in the symbols set (the first part with newest bars lists them); and those symbols."""
        head: list[tuple[bytes, ...]] = [
            (b"SET", self.keys.alive().encode(), b"1", b"NX"),
            (b"SET", self.keys.heartbeat().encode(), b"%.3f" % now, b"PX", b"%d" % self.features_ttl_ms)]
        names = self._listed.missing(next((w.latest[0] for w in writes if len(w.latest[0])), ()))
        if names:
            head.append((b"SADD", self.keys.symbols().encode(), *(s.encode() for s in names)))
        return head, names

    async def _write_fenced(self, writes: Sequence[TimeframeWrite], now: float) -> WriteResult:
        """A cluster member's cycle: one transaction (one Redis) or a script per partition (a
        Redis Cluster) that writes nothing for a partition unless the member's token is its fence
        (`redis_fenced.py`); the partitions refused are reported to `on_fenced`, the others written."""
        assert self.fence is not None and self._fenced is not None
        tokens = [self.fence(p) for p in range(self.keys.partitions)]
        w = self._fenced.build(writes, tokens)
        head, names = self._head(writes, now)
        self._listed.add(names)
        what = f"writing {w.written} values"
        if self._fenced.raw:
            refused, fresh = await self._transact(writes, tokens, w, [command(*c) for c in head], what)
        else:
            replies = await self._run([*head, *w.args], what, fenced_ok=True)
            refused = {p for p, r in zip(w.fenced, replies[len(head):], strict=True) if isinstance(r, Exception)}
            fresh = replies[0] is not None
        if refused and self.on_fenced is not None:
            self.on_fenced(refused)
        return WriteResult(w.written, fresh)

    async def _transact(self, writes: Sequence[TimeframeWrite], tokens: list[int | None], w: FencedWrite,
                        head: list[bytes], what: str) -> tuple[set[int], bool]:
        """Send a member's write (one transaction) after `head`; when it aborts, built and sent
        again without the partitions whose token the check found stale (and once more if a fence
        moved between the check and the EXEC). The partitions refused, and whether Redis had
        lost its data."""
        assert self._fenced is not None
        refused, fresh = set[int](), False
        for _ in range(3):
            if not (head or w.replies):  # every partition refused
                return refused, fresh
            replies = await self._send(b"".join([*head, w.resp]), len(head) + w.replies, what,
                                       timeout=self.timeout_s + w.written * WRITE_S_PER_VALUE)
            check = replies[len(head) + 1] if w.replies else None
            if head:
                fresh, head = replies[0] is not None, []
            if not w.replies or replies[-1] is not None:  # nothing to write, or written
                return refused, fresh
            stale = {w.fenced[i - 1] for i in check}  # type: ignore[attr-defined]
            refused |= stale
            tokens = [None if p in stale else t for p, t in enumerate(tokens)]
            w = self._fenced.build(writes, tokens)
        log.warning("%s: the transaction aborted 3 times (fences moving); this cycle's write is dropped", what)
        return refused, fresh

    async def write_bars(self, latest: Iterable[Bar] = (), closed: Iterable[Bar] = ()) -> WriteResult:
        """`write_cycle` for Bars of any timeframes (re-seeding, backfill, revisions): newest
        bars and closed bars, in one round trip."""
        latest, closed = list(latest), list(closed)
        writes = []
        for timeframe in sorted({b.timeframe for b in (*latest, *closed)}):
            new = [b for b in latest if b.timeframe == timeframe]
            old = [b for b in closed if b.timeframe == timeframe]
            writes.append(TimeframeWrite(timeframe, ([b.symbol for b in new], [pack(b) for b in new]),
                                         ([b.symbol for b in old], [b.ts for b in old], [pack(b) for b in old],
                                          [REPLACE | TRIM] * len(old))))
        return await self.write_timeframes(writes, 0.0) if writes else WriteResult(0, False)

    async def remove_history(self, symbol: str, timeframe: str, opens: Sequence[int]) -> None:
        """Remove the bars with these opens from a symbol's history (replaced under new rules)."""
        if opens:
            key = self.keys.history(symbol, timeframe).encode()
            await self._run([(b"ZREMRANGEBYSCORE", key, b"%d" % ts, b"%d" % ts) for ts in opens],
                            "removing replaced bars")

    async def _run(self, commands: Sequence[tuple[bytes, ...]], what: str, fenced_ok: bool = False) -> list[object]:
        """Commands in one round trip (one per node of a Redis Cluster); their replies, error
        replies as exception objects (FENCED ones only when `fenced_ok`)."""
        if not self.cluster_client:
            return await self._send(b"".join(command(*c) for c in commands), len(commands), what, fenced_ok)
        pipe = self.client.pipeline()
        for c in commands:
            pipe.execute_command(c[0].decode(), *c[1:])  # its routing reads the name as text
        try:
            async with asyncio.timeout(self.timeout_s * 4):  # a failover's redirects and re-learning included
                out = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(what, exc) from exc
        return self._checked(out, what, fenced_ok)

    def _checked(self, out: list[object], what: str, fenced_ok: bool, reads: Collection[int] = ()) -> list[object]:
        """The replies, unless one is an error (inside an EXEC's too; not read: the `reads`' values)."""
        errors = [r for r in out if isinstance(r, Exception) and not (fenced_ok and str(r).startswith("FENCED"))]
        errors += [x for i, r in enumerate(out) if type(r) is list and i not in reads for x in r if isinstance(x, Exception)]
        if errors:
            raise self._failed(what, str(errors[0]))
        self.ok, self.last_error = True, None
        return out

    async def _send(self, packed: bytes | list[bytes], replies: int, what: str, fenced_ok: bool = False,
                    timeout: float | None = None,
                    more: Callable[[], tuple[list[bytes], float]] | None = None,
                    took: Mapping[int, Callable[[object], object]] | None = None) -> list[object]:
        """Send pre-packed commands on one pooled connection, replies read within `timeout` (or
        the store's); `more`, called once they are sent, gives commands to send after them (one
        reply each) and the seconds they add to the deadline; `took`, by reply index, is handed
        that reply (an array) as soon as it is read. A connection that failed mid-way is closed,
        never pooled with replies pending."""
        pool = self._pool
        assert pool is not None, "pre-packed commands go to one Redis, not a cluster"
        timeout = self.timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout) as deadline:
                conn = await pool.get_connection()
                conn.socket_timeout = timeout  # (its own, while this connection is ours)
                try:
                    await conn.send_packed_command(packed)
                    if more is not None:
                        extra, seconds = more()
                        deadline.reschedule((deadline.when() or 0.0) + seconds)
                        # No health check: its PING would take the first reply pending here for its
                        # PONG, fail, and send the rest on a new connection, every reply after it one
                        # off (due when the last read was ~5 s ago: a 50,000-symbol daemon died of it).
                        await conn.send_packed_command(extra, check_health=False)
                        replies += len(extra)
                    out = []
                    for i in range(replies):
                        out.append(reply := await _reply(conn))
                        if took and i in took and isinstance(reply, list):  # an MGET's reply is an array
                            took[i](reply)
                except BaseException:
                    await conn.disconnect()
                    raise
                finally:
                    conn.socket_timeout = self.timeout_s
                    await pool.release(conn)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(what, exc) from exc
        return self._checked(out, what, fenced_ok, took or ())

    async def latest(self, symbol: str, timeframe: str) -> Bar | None:
        """The newest bar of a symbol, or None."""
        raw = await self.guard(self.client.get(self.keys.latest(symbol, timeframe)), "reading a bar")
        return unpack(raw) if raw else None

    async def history(self, symbol: str, timeframe: str, start: int, end: int, limit: int) -> list[Bar]:
        """Closed bars with open in [start, end], oldest first, at most `limit` (the newest ones)."""
        key = self.keys.history(symbol, timeframe)
        raw = await self.guard(self.client.zrange(key, end, start, byscore=True, desc=True, offset=0, num=limit),
                               "reading a history")
        return [unpack(m) for m in reversed(raw)]

    async def features(self, symbols: Sequence[str], timeframe: str) -> list[bytes | None]:
        """Every symbol's features value (None where absent or expired), in one MGET.

        The MGET of a symbol set is packed once and its bytes reused: packing thousands of
        key names every second cost redis-py more than Redis's whole answer.
        """
        if not symbols:
            return []
        if self.cluster_client:  # keys in many slots: one MGET per slot, grouped per node by redis-py
            return await self.guard(self.client.mget_nonatomic([self.keys.features(s, timeframe) for s in symbols]),
                                    "reading features")
        (reply,) = await self._send(self._mget(symbols, timeframe), 1, "reading features")
        return reply  # type: ignore[return-value]

    def _mget(self, symbols: Sequence[str], timeframe: str) -> bytes:
        """The MGET of some symbols' features, packed once per symbol set and timeframe."""
        names = tuple(symbols)
        cached = self._mget_cache.get(timeframe)
        if cached is None or cached[0] != names:
            cached = self._mget_cache[timeframe] = (names, command(b"MGET", *(self.keys.features(s, timeframe).encode()
                                                                               for s in symbols)))
        return cached[1]

    async def guard(self, call: Awaitable[Any], what: str = "read") -> Any:
        """A redis-py call within the timeout; its failure as a RedisStoreError."""
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(what, exc) from exc
        self.ok, self.last_error = True, None
        return out

    def _failed(self, what: str, exc: BaseException | str) -> RedisStoreError:
        """Record a failure (for `health()`) and make its error."""
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.ok, self.last_error = False, f"{what} failed: {text}"
        return RedisStoreError(self.last_error)


async def _reply(conn: Any) -> object:
    """One reply; an error reply (a refused fenced write, say) as its exception object, so the
    replies after it are still read off the connection."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc
