"""What the daemon and its readers agree on in Redis: key names, the value format, the RESP
commands the cycle pre-packs, and the write scripts (plain and fenced). The store
(`redis_store`) sends them; the client (`sidecar.client`) reads the same keys.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import UnixDomainSocketConnection

from ..bars import Bar
from ..cluster.partitions import partition_of
from ..packed import NameColumn, Packed, SlotNames, resp_rows

# ARGV[1] history length, then (history key, ts, member, mode) per closed bar. Mode bit 1: the
# bar may have an older copy at the same open (a revision, a re-sent or re-fetched bar), removed
# first; bit 2: cap the history after adding. The live loop sets neither for a bar newer than any
# it wrote (most bars): a remove and a cap per bar were two thirds of the script's time.
WRITE_HISTORY = """
local cap, trim = tonumber(ARGV[1]), {}
for i = 2, #ARGV, 4 do
  local key, ts, mode = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 3])
  if mode % 2 == 1 then redis.call('ZREMRANGEBYSCORE', key, ts, ts) end
  redis.call('ZADD', key, ts, ARGV[i + 2])
  if mode >= 2 then trim[key] = true end
end
for key in pairs(trim) do
  redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
end
return (#ARGV - 1) / 4
"""

_FENCE = """
local fence = redis.call('GET', KEYS[1])
if fence ~= ARGV[1] then
  redis.call('INCR', KEYS[2])
  return redis.error_reply('FENCED ' .. (fence or 'none'))
end
"""
"""The fence check WRITE_FENCED opens with: KEYS[1] the fence, KEYS[2] the refused counter,
ARGV[1] the writer's token; a stale token is counted and refused."""

# A cluster member's cycle on one Redis is one transaction for all the partitions it writes:
# WATCH every fence and `refused` key, this check, MULTI, MSET / UNLINK / the history script,
# EXEC. A stale token increments its `refused` (a watched key), so the EXEC aborts and nothing is
# written; a new owner's fence INCR aborts it too. The check returns the positions (1-based) of
# the stale tokens, so the writer can send the rest again without them. KEYS: n fences, then
# their n `refused` counters; ARGV: the n tokens. Passing the values through WRITE_FENCED instead
# cost Redis 2-3x (every argument becomes a Lua string).
CHECK_FENCES = """
local n, stale = #ARGV, {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) ~= ARGV[i] then
    redis.call('INCR', KEYS[n + i])
    stale[#stale + 1] = i
  end
end
return stale
"""

# A cluster member's write for one partition. KEYS[1] fence, KEYS[2] refused counter. ARGV[1] the
# writer's token, ARGV[2] history length, ARGV[3] values to set (pairs), ARGV[4] keys to unlink,
# then the pairs, the keys, and (history key, ts, member, mode) rows as in WRITE_HISTORY.
# Refused, writing nothing, when the fence holds another token: a newer owner exists.
WRITE_FENCED = _FENCE + """local cap, pairs_n, unlink_n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local i, last = 5, 4 + 2 * pairs_n
while i <= last do  -- in chunks: unpack() is bounded by Lua's stack
  local j = math.min(i + 3999, last)
  redis.call('MSET', unpack(ARGV, i, j))
  i = j + 1
end
last = i + unlink_n - 1
while i <= last do
  local j = math.min(i + 3999, last)
  redis.call('UNLINK', unpack(ARGV, i, j))
  i = j + 1
end
local trim = {}
while i <= #ARGV do
  local key, ts, mode = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 3])
  if mode % 2 == 1 then redis.call('ZREMRANGEBYSCORE', key, ts, ts) end
  redis.call('ZADD', key, ts, ARGV[i + 2])
  if mode >= 2 then trim[key] = true end
  i = i + 4
end
for key in pairs(trim) do
  redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
end
return 1
"""


Ints = Sequence[int] | np.ndarray
"""Integers by row: a list, or an array from the cycle."""


@dataclass(slots=True, frozen=True)
class TimeframeWrite:
    """One timeframe's part of a cycle's write (see `RedisStore.write_cycle`)."""

    timeframe: str
    latest: tuple[Sequence[str], Sequence[bytes]] = ((), ())
    history: tuple[Sequence[str], Ints, Sequence[bytes], Ints] = ((), (), (), ())
    features: tuple[Sequence[str], Sequence[bytes]] = ((), ())
    quiet: Sequence[str] = ()


class ListedSymbols:
    """The symbols a Redis has in its symbols set, as this writer added them. For the column of
    names the cycle hands out, also a mask by slot: 5,000 names looked up in the set cost
    0.31 ms every cycle, the mask 0.007 ms."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._mask: tuple[NameColumn | None, np.ndarray] = (None, np.zeros(0, dtype=bool))

    def missing(self, names: Sequence[str]) -> Sequence[str]:
        """The symbols of `names` not in the set."""
        if not isinstance(names, SlotNames):
            return [s for s in names if s not in self.names]
        if self._mask[0] is not names.column:  # the symbols changed: the mask is made again, once
            self._mask = (names.column, np.array([s in self.names for s in names.column.text], dtype=bool))
        return names.take(~self._mask[1][names.slots])

    def add(self, names: Sequence[str], fresh: bool = False) -> None:
        """`names` are in the set now; `fresh`: only they are (a new or emptied Redis)."""
        if fresh:
            self.names, self._mask = set(names), (None, self._mask[1])
            return
        self.names.update(names)
        if isinstance(names, SlotNames) and names.column is self._mask[0]:
            self._mask[1][names.slots] = True


REPLACE, TRIM = 1, 2
"""History write modes (bits): remove an older copy at the same open first; cap the history."""


CLUSTER_SCHEME = "redis+cluster://"
"""A Redis Cluster: redis+cluster://host:port[,host:port...] (any of its nodes)."""


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The startup nodes of a redis+cluster:// URL."""
    nodes = []
    for part in url[len(CLUSTER_SCHEME):].split("/")[0].split(","):
        host, _, port = part.rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return nodes


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*parts: bytes) -> bytes:
    """One RESP command."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


@dataclass(slots=True, frozen=True)
class RedisKeys:
    """Key names under one prefix. On one daemon a symbol's keys are tagged by the symbol
    (`sidecar:{AAPL}:bar:1m`); in a cluster of `partitions` by its partition
    (`sidecar:{p17}:AAPL:bar:1m`), so one script writes a partition's keys with its fence.

    {prefix}:{SYMBOL}:bar:{tf}    string  msgpack map of the newest bar (forming or closed)
    {prefix}:{SYMBOL}:bars:{tf}   zset    score = bar open (epoch s), member = msgpack map;
                                          closed bars only, the newest `history_len` kept
    {prefix}:{SYMBOL}:features:{tf}  string  msgpack map of the newest features; its `updated`
                                          field says when; removed when the symbol goes quiet
    {prefix}:symbols              set     canonical symbols written so far
    {prefix}:signals              stream  scanner signals (also PUBLISHed on the same name)
    {prefix}:alive                string  set by the first write; missing means Redis lost its data
    {prefix}:heartbeat            string  wall time of the writer's last cycle; expires after
                                          SIDECAR_FEATURE_TTL_S (2 s) when the writer stops
    {prefix}:deadletter           hash    symbol -> JSON {reason, error, since}: symbols whose source fails
    {prefix}:quarantine           list    JSON of bars held out by the spike filter, newest first (1,000)
    """

    prefix: str
    partitions: int = 0

    def _head(self, symbol: str) -> str:
        if self.partitions:
            return f"{self.prefix}:{{p{partition_of(symbol, self.partitions)}}}:{symbol}"
        return f"{self.prefix}:{{{symbol}}}"

    def around(self, kind: str, timeframe: str, partition: int | None = None) -> tuple[bytes, bytes] | None:
        """What comes before and after the symbol in every key of a kind ("latest", "history",
        "features") and timeframe; in a cluster, where the partition is in the key too, the
        keys of one `partition` (None without one)."""
        before, _, after = getattr(self, kind)("\0", timeframe).partition("\0")
        if self.partitions:
            if partition is None:
                return None
            before = f"{self.prefix}:{{p{partition}}}:"
        return before.encode(), after.encode()

    def latest(self, symbol: str, timeframe: str) -> str:
        """The newest bar of a symbol and timeframe."""
        return f"{self._head(symbol)}:bar:{timeframe}"

    def history(self, symbol: str, timeframe: str) -> str:
        """The capped history of closed bars, scored by bar open."""
        return f"{self._head(symbol)}:bars:{timeframe}"

    def features(self, symbol: str, timeframe: str) -> str:
        """The newest feature values of a symbol (expire unless refreshed)."""
        return f"{self._head(symbol)}:features:{timeframe}"

    def fence(self, partition: int) -> str:
        """The newest fencing token issued for a partition (cluster mode)."""
        return f"{self.prefix}:{{p{partition}}}:fence"

    def lease(self, partition: int) -> str:
        """A partition's lease: "member token", expiring unless renewed (cluster mode)."""
        return f"{self.prefix}:{{p{partition}}}:lease"

    def refused(self, partition: int) -> str:
        """How many writes for a partition its fence refused (cluster mode)."""
        return f"{self.prefix}:{{p{partition}}}:refused"

    def budget(self, provider: str, part: str) -> str:
        """A provider key's shared budget (cluster mode; one slot per provider)."""
        return f"{self.prefix}:{{budget-{provider}}}:{part}"

    def cluster(self, name: str) -> str:
        """The cluster's own keys (members, their info, the partition count, job leases), in one slot."""
        return f"{self.prefix}:{{cluster}}:{name}"

    def symbols(self) -> str:
        """The set of symbols written."""
        return f"{self.prefix}:symbols"

    def signals(self) -> str:
        """The stream (and pub/sub channel) of scanner signals; events go to the stream too."""
        return f"{self.prefix}:signals"

    def events(self) -> str:
        """The pub/sub channel of events (end of day, earnings)."""
        return f"{self.prefix}:events"

    def earnings(self, symbol: str) -> str:
        """A symbol's upcoming-earnings flag (JSON; expires a day after it was last set)."""
        return f"{self._head(symbol)}:earnings"

    def deadletter(self) -> str:
        """Symbols whose every fetch currently fails, with the reason."""
        return f"{self.prefix}:deadletter"

    def quarantine(self) -> str:
        """Bars the spike filter held out, newest first."""
        return f"{self.prefix}:quarantine"

    def alive(self) -> str:
        """Written once per Redis lifetime: its absence means the data is gone."""
        return f"{self.prefix}:alive"

    def heartbeat(self) -> str:
        """The writer's last cycle time; expires when the daemon stops writing."""
        return f"{self.prefix}:heartbeat"


@dataclass(slots=True, frozen=True)
class WriteResult:
    """What one cycle's write did: values written, and whether Redis had lost its data."""

    written: int
    fresh: bool


@dataclass(slots=True, frozen=True)
class FeatureReads:
    """Features to read back with a cycle's write: the symbols per timeframe, and what takes each
    timeframe's values (None where absent) as soon as they are read."""

    symbols: Mapping[str, Sequence[str]]
    took: Callable[[str, list[bytes | None]], object]


def pack(bar: Bar) -> bytes:
    """The documented value format: a msgpack map with named fields."""
    return msgpack.packb(bar.as_map())


def unpack(raw: bytes) -> Bar:
    """Inverse of `pack`."""
    return Bar.from_map(msgpack.unpackb(raw))


SEND_BUFFER = 4 << 20  # bytes asked for a Unix-socket connection's send buffer (the kernel caps it)


class WideUnixConnection(UnixDomainSocketConnection):
    """A Unix-socket connection to Redis whose send buffer holds a cycle's write in one go.

    With the default buffer (~208 KB) a 2.8 MB write goes to Redis in a dozen turns of writer
    and reader: 6-9 ms, against 3.9 ms when the kernel takes it at once (bench/redis_send.py).
    The kernel caps the size at `net.core.wmem_max`. TCP needs nothing: the kernel grows a TCP
    send buffer itself, up to `net.ipv4.tcp_wmem` (4.5 ms on loopback); a size set by hand would
    stop that."""

    async def _connect(self) -> None:
        await super()._connect()
        sock = None if self._writer is None else self._writer.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class CyclePacker:
    """A cycle's writes as RESP commands: an MSET for the newest bars and one for the features of
    each timeframe, an UNLINK of the features of symbols gone quiet, and one EVAL of
    WRITE_HISTORY for the closed bars of every timeframe given. Rows given as columns (slots into
    a name column, packed values) are packed by NumPy (`resp_rows`); others row by row, each
    key made once.

    :param keys: the key names.
    :param history_len: the closed bars WRITE_HISTORY keeps per history.
    """

    def __init__(self, keys: RedisKeys, history_len: int) -> None:
        self.keys, self.history_len = keys, history_len
        self._heads: dict[tuple[str, str, str], bytes] = {}  # (kind, symbol, tf) -> the key as RESP

    def pack(self, writes: Sequence[TimeframeWrite]) -> tuple[list[bytes], int]:
        """The commands of `writes`, in their order, and the values they write."""
        parts: list[bytes] = []
        rows: list[bytes] = []
        n_rows = 0
        for w in writes:
            if w.latest[0]:
                parts.append(self._mset("latest", w.timeframe, w.latest[0], w.latest[1]))
            if w.features[0]:
                parts.append(self._mset("features", w.timeframe, w.features[0], w.features[1]))
            if w.quiet:
                parts.append(b"*%d\r\n$6\r\nUNLINK\r\n" % (len(w.quiet) + 1)
                             + b"".join(self.key("features", s, w.timeframe) for s in w.quiet))
            symbols, opens, members, modes = w.history
            tf = w.timeframe
            fast = self._around("history", tf, symbols, members)
            if fast is not None and len(symbols) and np.min(opens) >= 0:  # digits are cut for opens >= 0
                rows.append(resp_rows(symbols, *fast, [Packed.digits(np.asarray(opens)), members,  # type: ignore
                                                       Packed.digits(np.asarray(modes))]))
            else:
                rows += [b"%s%s%s$1\r\n%d\r\n" % (self.key("history", s, tf), bulk(b"%d" % ts), bulk(m), mode)
                         for s, ts, m, mode in zip(symbols, opens, members, modes, strict=True)]
            n_rows += len(symbols)
        if rows:
            parts.append(b"".join([b"*%d\r\n$4\r\nEVAL\r\n" % (4 * n_rows + 4), bulk(WRITE_HISTORY.encode()),
                                   b"$1\r\n0\r\n", bulk(b"%d" % self.history_len), *rows]))
        return parts, sum(len(w.latest[0]) + len(w.features[0]) for w in writes) + n_rows

    def key(self, kind: str, symbol: str, timeframe: str) -> bytes:
        """A key of a symbol as a RESP bulk string (made once)."""
        head = self._heads.get((kind, symbol, timeframe))
        if head is None:
            head = self._heads[(kind, symbol, timeframe)] = bulk(getattr(self.keys, kind)(symbol, timeframe).encode())
        return head

    def _mset(self, kind: str, timeframe: str, symbols: Sequence[str], values: Sequence[bytes]) -> bytes:
        head = b"*%d\r\n$4\r\nMSET\r\n" % (2 * len(symbols) + 1)
        fast = self._around(kind, timeframe, symbols, values)
        if fast is not None:
            return head + resp_rows(symbols, *fast, [values])  # type: ignore[arg-type, list-item]
        return b"".join([head, *[b"%s$%d\r\n%s\r\n" % (self.key(kind, s, timeframe), len(v), v)
                                 for s, v in zip(symbols, values, strict=True)]])

    def _around(self, kind: str, timeframe: str, symbols: Sequence[str],
                *columns: object) -> tuple[list[bytes], bytes] | None:
        """The key's parts around the symbol, as `resp_rows` takes them, when the rows can be
        packed by NumPy: slots into a name column, values already packed, and keys without a
        partition."""
        if isinstance(symbols, SlotNames) and all(isinstance(c, Packed) for c in columns):
            parts = self.keys.around(kind, timeframe)
            return None if parts is None else ([parts[0]], parts[1])
        return None
