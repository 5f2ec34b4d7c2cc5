"""A cluster member's cycle write: per partition it owns, a part that writes nothing unless the
member's token is still the partition's fence, so a member that lost a partition can never
overwrite its new owner's keys. Rows of partitions the member does not own are not sent at all.

On one Redis the parts go as one transaction (`FencedScripts._transaction`): WATCH every fence and
`refused` key, a check script (`CHECK_FENCES`: each stale token increments its `refused`, which
aborts the EXEC, and is named in the reply), MULTI, one MSET of the newest values, one UNLINK of
the quiet symbols' features, the history script for a minute's closed bars, EXEC. An aborted
transaction is sent again without the partitions the check named (`RedisStore._transact`). One
transaction per partition instead cost a member at 5,000 symbols ~8 ms a cycle in building and
~5 ms in reading ~200 replies, which is what held the members of bench/cluster.py above the
single daemon's cycle.
The values do not pass through Lua: as arguments of one script (`WRITE_FENCED`) they cost Redis
2-3x, and the two members of bench/cluster.py at 2 x 10,000 symbols 40.8 % of a core. The RESP
is pre-packed, each symbol's keys packed once; a large part (the minute's newest bars and
features at thousands of symbols) is packed from the cycle's columns by NumPy, each key with its
symbol's partition (`resp_rows`). Row by row, hashing each symbol and formatting each key
every second, this cost ~110 ms a cycle at 10,000 symbols (bench/test_stages.py
`test_redis_write[...-member]`). A Redis Cluster's client routes each part by its slot itself, so
there a part is one `WRITE_FENCED` script, its arguments built row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..cluster.partitions import partition_of
from ..packed import NameColumn, Packed, SlotNames, resp_rows
from .redis_wire import CHECK_FENCES, WRITE_FENCED, WRITE_HISTORY, RedisKeys, TimeframeWrite, bulk, command

COLUMNS_FROM = 300
"""Rows from which a part of the write is packed by NumPy: each shape of row costs its own
structured array, so for fewer rows the row-by-row path is faster (building a cycle's bars and
features in 64 partitions: 100 rows 0.72 ms by columns vs 0.41 ms row by row, 400 rows 0.97 vs
1.13 ms, 1,600 rows 2.3 vs 2.9 ms)."""


class _Part:
    """The rows of a write (all owned partitions' on one Redis, one partition's for a Redis
    Cluster's client): MSET pairs, keys to unlink, history rows (RESP on one Redis, arguments
    for a Redis Cluster's client)."""

    __slots__ = ("pairs", "unlink", "rows", "n_pairs", "n_rows")

    def __init__(self) -> None:
        self.pairs: list[bytes] = []
        self.unlink: list[bytes] = []
        self.rows: list[bytes] = []
        self.n_pairs = 0  # (key, value) pairs in `pairs`
        self.n_rows = 0  # (key, ts, member, mode) rows in `rows`


@dataclass(slots=True)
class FencedWrite:
    """A member's cycle write: on one Redis one transaction (`resp`, and how many `replies` it
    gets: the check's is the 2nd, the EXEC's the last), none when no owned partition has rows;
    for a Redis Cluster one script per partition in `fenced`."""

    written: int  # values written
    fenced: list[int]  # the partitions written, whose fences guard the write
    resp: bytes = b""
    replies: int = 0
    args: list[tuple[bytes, ...]] = field(default_factory=list)


class FencedScripts:
    """Builds a member's fenced writes, remembering each symbol's partition and keys.

    :param keys: the key names (with `partitions`).
    :param history_len: the histories' cap.
    :param raw: RESP for one Redis (else arguments, for a Redis Cluster's client).
    """

    def __init__(self, keys: RedisKeys, history_len: int, raw: bool) -> None:
        self.keys, self.history_len, self.raw = keys, history_len, raw
        self._partitions: dict[str, int] = {}  # symbol -> its partition
        self._keys: dict[tuple[str, str, str], bytes] = {}  # (kind, symbol, tf) -> key (RESP when raw)
        self._by_slot: tuple[NameColumn, np.ndarray] | None = None  # slot -> partition, for one column
        self._arounds: dict[tuple[str, str], tuple[list[bytes], bytes]] = {}  # key parts by partition

    def build(self, writes: Sequence[TimeframeWrite], tokens: Sequence[int | None]) -> FencedWrite:
        """A cycle's write given the member's token per partition (None: not its own)."""
        n, raw = self.keys.partitions, self.raw
        owned = np.array([t is not None for t in tokens])
        touched = np.zeros(n, dtype=bool)  # the owned partitions with rows in this write
        one = _Part()  # one Redis: every owned partition's rows together
        groups = {p: one if raw else _Part() for p in range(n) if owned[p]}
        partitions, key = self._partitions, self._key
        arg = bulk if raw else _same

        def group(symbol: str) -> _Part | None:
            p = partitions.get(symbol)
            if p is None:
                p = partitions[symbol] = partition_of(symbol, n)
            g = groups.get(p)
            if g is not None:
                touched[p] = True
            return g

        written = 0
        for w in writes:
            tf = w.timeframe
            for kind, (symbols, values) in (("latest", w.latest), ("features", w.features)):
                if raw and len(symbols) >= COLUMNS_FROM and isinstance(symbols, SlotNames) and isinstance(values, Packed):
                    one.n_pairs += (k := self._columns(kind, tf, symbols, owned, [values], one.pairs, touched))
                    written += k
                    continue
                for s, v in zip(symbols, values, strict=True):
                    if (g := group(s)) is not None:
                        g.pairs += (key(kind, s, tf), arg(v))
                        g.n_pairs += 1
                        written += 1
            for s in w.quiet:
                if (g := group(s)) is not None:
                    g.unlink.append(key("features", s, tf))
            symbols, opens, members, modes = w.history
            if (raw and len(symbols) >= COLUMNS_FROM and isinstance(symbols, SlotNames) and isinstance(members, Packed)
                    and np.min(opens, initial=0) >= 0):
                one.n_rows += (k := self._columns("history", tf, symbols, owned, [
                    Packed.digits(np.asarray(opens)), members, Packed.digits(np.asarray(modes))], one.rows, touched))
                written += k
                continue
            for s, ts, m, mode in zip(symbols, opens, members, modes, strict=True):
                if (g := group(s)) is not None:
                    g.rows += (key("history", s, tf), arg(b"%d" % ts), arg(m), arg(b"%d" % mode))
                    g.n_rows += 1
                    written += 1
        out = FencedWrite(written=written, fenced=np.flatnonzero(touched).tolist())
        if raw:
            if out.fenced:
                out.resp, out.replies = self._transaction(one, out.fenced, tokens)
            return out
        for p in out.fenced:
            g = groups[p]
            out.args.append((b"EVAL", WRITE_FENCED.encode(), b"2", self.keys.fence(p).encode(),
                             self.keys.refused(p).encode(), b"%d" % tokens[p],  # type: ignore[str-format]
                             b"%d" % self.history_len, b"%d" % g.n_pairs, b"%d" % len(g.unlink),
                             *g.pairs, *g.unlink, *g.rows))
        return out

    def _transaction(self, g: _Part, fenced: list[int], tokens: Sequence[int | None]) -> tuple[bytes, int]:
        """The rows as one transaction fenced by the partitions written (see the module's
        docstring), and how many replies it gets."""
        keys = [self.keys.fence(p).encode() for p in fenced] + [self.keys.refused(p).encode() for p in fenced]
        queued = [b"".join([b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * g.n_pairs), *g.pairs])] if g.n_pairs else []
        if g.unlink:
            queued.append(b"*%d\r\n$6\r\nUNLINK\r\n" % (1 + len(g.unlink)) + b"".join(g.unlink))
        if g.n_rows:  # inside the transaction, fenced by the check: the plain history script
            queued.append(b"".join([b"*%d\r\n" % (4 + 4 * g.n_rows), *map(bulk, (
                b"EVAL", WRITE_HISTORY.encode(), b"0", b"%d" % self.history_len)), *g.rows]))
        resp = b"".join([command(b"WATCH", *keys),
                         command(b"EVAL", CHECK_FENCES.encode(), b"%d" % len(keys), *keys,
                                 *(b"%d" % tokens[p] for p in fenced)),  # type: ignore[str-format]
                         b"*1\r\n$5\r\nMULTI\r\n", *queued, b"*1\r\n$4\r\nEXEC\r\n"])
        return resp, 4 + len(queued)

    def _columns(self, kind: str, timeframe: str, symbols: SlotNames, owned: np.ndarray, fields: list[Packed],
                 into: list[bytes], touched: np.ndarray) -> int:
        """Rows given as columns: those of owned partitions as RESP appended to `into` (and
        their partitions marked `touched`); how many."""
        partition = self._slot_partitions(symbols.column)[symbols.slots]
        keep = owned[partition]
        if not keep.all():
            symbols, partition, fields = symbols.take(keep), partition[keep], [f.take(keep) for f in fields]
        touched[partition] = True
        if (kind, timeframe) not in self._arounds:
            parts = [self.keys.around(kind, timeframe, p) for p in range(self.keys.partitions)]
            self._arounds[(kind, timeframe)] = ([x[0] for x in parts if x], parts[0][1] if parts[0] else b"")
        pres, suf = self._arounds[(kind, timeframe)]
        into.append(resp_rows(symbols, pres, suf, fields, partition))
        return len(symbols)

    def _slot_partitions(self, column: NameColumn) -> np.ndarray:
        """Every slot's partition (made once per column of names, i.e. per membership change)."""
        if self._by_slot is None or self._by_slot[0] is not column:
            n = self.keys.partitions
            self._by_slot = (column, np.array([partition_of(s, n) for s in column.text], dtype=np.int64))
        return self._by_slot[1]

    def _key(self, kind: str, symbol: str, timeframe: str) -> bytes:
        """A key of a symbol (made once): a RESP bulk string when raw, else bytes."""
        key = self._keys.get((kind, symbol, timeframe))
        if key is None:
            key = getattr(self.keys, kind)(symbol, timeframe).encode()
            key = self._keys[(kind, symbol, timeframe)] = bulk(key) if self.raw else key
        return key


def _same(value: bytes) -> bytes:
    return value
