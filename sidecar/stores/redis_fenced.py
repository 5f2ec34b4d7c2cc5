"""A cluster member's cycle write: per partition it owns, one part that writes nothing unless the
member's token is still the partition's fence, so a member that lost a partition can never
overwrite its new owner's keys. Rows of partitions the member does not own are not sent at all.

On one Redis a part is a transaction: WATCH the fence and `refused` keys, a check script
(`CHECK_FENCE`: a stale token increments `refused`, which aborts the EXEC), MULTI, an MSET of
the newest values, an UNLINK of the quiet symbols' features, the history script for a minute's
closed bars, EXEC. The values do not pass through Lua: as arguments of one script
(`WRITE_FENCED`) they cost Redis 2-3x, and the two members of bench/cluster.py at 2 x 10,000
symbols 40.8 % of a core. The RESP is pre-packed, each symbol's keys packed once; a large part
(the minute's newest bars and features at thousands of symbols) is cut from the cycle's columns
into each partition's arguments by NumPy (`resp_rows_grouped`). Row by row, hashing each symbol
and formatting each key every second, this cost ~110 ms a cycle at 10,000 symbols
(bench/test_stages.py `test_redis_write[...-member]`). A Redis Cluster's client routes each part
by its slot itself, so there a part is one `WRITE_FENCED` script, its arguments built row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..cluster.partitions import partition_of
from ..packed import NameColumn, Packed, SlotNames, resp_rows_grouped
from .redis_wire import CHECK_FENCE, WRITE_FENCED, WRITE_HISTORY, RedisKeys, TimeframeWrite, bulk, command

COLUMNS_FROM = 64
"""Rows per owned partition from which a part of the write is cut by NumPy: each shape of row
costs its structured array and each partition a cut of it, so for fewer rows the row-by-row
path is faster (at 64 partitions: 300 rows 7.0 vs 1.5 ms, 4,000 rows 14.2 vs 13.0 ms, 8,000
rows 18.7 vs 27.7 ms)."""


class _Part:
    """One partition's share of a write: its MSET pairs, keys to unlink, history rows (as RESP
    on one Redis, as arguments for a Redis Cluster's client)."""

    __slots__ = ("pairs", "unlink", "rows", "n_pairs", "n_rows")

    def __init__(self) -> None:
        self.pairs: list[bytes] = []
        self.unlink: list[bytes] = []
        self.rows: list[bytes] = []
        self.n_pairs = 0  # (key, value) pairs in `pairs`
        self.n_rows = 0  # (key, ts, member, mode) rows in `rows`


@dataclass(slots=True)
class FencedWrite:
    """A member's cycle write, one part per partition it owns."""

    order: list[int]  # the partitions written, in order
    written: int  # values written
    resp: list[bytes] = field(default_factory=list)  # one Redis: each partition's commands as RESP
    replies: list[int] = field(default_factory=list)  # ... and how many replies they get (the check's is 2nd)
    args: list[tuple[bytes, ...]] = field(default_factory=list)  # a Redis Cluster: each partition's script


class FencedScripts:
    """Builds a member's fenced scripts, remembering each symbol's partition and keys.

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
        n = self.keys.partitions
        owned = np.array([t is not None for t in tokens])
        groups = {p: _Part() for p in range(n) if owned[p]}
        enough = COLUMNS_FROM * len(groups)  # rows from which a part goes by columns
        partitions, key, raw = self._partitions, self._key, self.raw
        arg = bulk if raw else _same

        def group(symbol: str) -> _Part | None:
            p = partitions.get(symbol)
            if p is None:
                p = partitions[symbol] = partition_of(symbol, n)
            return groups.get(p)

        written = 0
        for w in writes:
            tf = w.timeframe
            for kind, (symbols, values) in (("latest", w.latest), ("features", w.features)):
                if raw and len(symbols) >= enough and isinstance(symbols, SlotNames) and isinstance(values, Packed):
                    written += self._columns(kind, tf, symbols, owned, [values], groups, "pairs")
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
            if (raw and len(symbols) >= enough and isinstance(symbols, SlotNames) and isinstance(members, Packed)
                    and np.min(opens, initial=0) >= 0):
                written += self._columns("history", tf, symbols, owned, [
                    Packed.digits(np.asarray(opens)), members, Packed.digits(np.asarray(modes))], groups, "rows")
                continue
            for s, ts, m, mode in zip(symbols, opens, members, modes, strict=True):
                if (g := group(s)) is not None:
                    g.rows += (key("history", s, tf), arg(b"%d" % ts), arg(m), arg(b"%d" % mode))
                    g.n_rows += 1
                    written += 1
        out = FencedWrite(order=[p for p, g in groups.items() if g.n_pairs or g.unlink or g.n_rows], written=written)
        for p in out.order:
            g, token = groups[p], b"%d" % tokens[p]  # type: ignore[str-format]
            fence, refused = self.keys.fence(p).encode(), self.keys.refused(p).encode()
            if not raw:
                out.args.append((b"EVAL", WRITE_FENCED.encode(), b"2", fence, refused, token, b"%d" % self.history_len,
                                 b"%d" % g.n_pairs, b"%d" % len(g.unlink), *g.pairs, *g.unlink, *g.rows))
                continue
            # WATCH, then the check: a stale token increments `refused`, a watched key, so the
            # EXEC aborts; a new owner's fence INCR meanwhile aborts it too.
            queued = [b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * g.n_pairs) + b"".join(g.pairs)] if g.n_pairs else []
            if g.unlink:
                queued.append(b"*%d\r\n$6\r\nUNLINK\r\n" % (1 + len(g.unlink)) + b"".join(g.unlink))
            if g.n_rows:  # inside the transaction, fenced by the check: the plain history script
                queued.append(b"".join([b"*%d\r\n" % (4 + 4 * g.n_rows), *map(bulk, (
                    b"EVAL", WRITE_HISTORY.encode(), b"0", b"%d" % self.history_len)), *g.rows]))
            out.resp.append(b"".join([command(b"WATCH", fence, refused),
                                      command(b"EVAL", CHECK_FENCE.encode(), b"2", fence, refused, token),
                                      b"*1\r\n$5\r\nMULTI\r\n", *queued, b"*1\r\n$4\r\nEXEC\r\n"]))
            out.replies.append(4 + len(queued))
        return out

    def _columns(self, kind: str, timeframe: str, symbols: SlotNames, owned: np.ndarray, fields: list[Packed],
                 groups: dict[int, _Part], into: str) -> int:
        """Rows given as columns, those of owned partitions as RESP appended to their
        partitions' pairs or rows (`into`); how many rows."""
        partition = self._slot_partitions(symbols.column)[symbols.slots]
        keep = owned[partition]
        if not keep.all():
            symbols, partition, fields = symbols.take(keep), partition[keep], [f.take(keep) for f in fields]
        n = self.keys.partitions
        if (kind, timeframe) not in self._arounds:
            parts = [self.keys.around(kind, timeframe, p) for p in range(n)]
            self._arounds[(kind, timeframe)] = ([x[0] for x in parts if x], parts[0][1] if parts[0] else b"")
        pres, suf = self._arounds[(kind, timeframe)]
        counts = np.bincount(partition, minlength=n)
        for p, chunk in resp_rows_grouped(symbols, partition, pres, suf, fields).items():
            g = groups[p]
            if into == "pairs":
                g.pairs.append(chunk)
                g.n_pairs += int(counts[p])
            else:
                g.rows.append(chunk)
                g.n_rows += int(counts[p])
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
