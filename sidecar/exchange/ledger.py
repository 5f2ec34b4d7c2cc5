"""The exchange's ledger: the faults queued for its answers, what it served, what it counted.

Both the Yahoo endpoints (server.py) and the other providers' (providers.py) take their faults
from here and record here what they served, so a test reads one ground truth whatever endpoint
answered, and neither endpoint module needs the other.
"""

from __future__ import annotations

import asyncio
import collections
import math
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from .market import MinuteBars

BAR_FAULTS = frozenset({
    "high_below_low", "negative_price", "zero_price", "negative_volume", "misaligned_ts",
    "future_ts", "string_price", "nan_price", "spike",
})
RESPONSE_FAULTS = frozenset({"malformed_json", "http_500", "http_429", "http_429_retry_after", "slow",
                             "invalid_crumb"})
META_FAULTS = frozenset({"bare_meta"})  # a chart body without the optional meta (period bounds, market time)
QUOTE_FAULTS = frozenset({"negative_price", "zero_price", "nan_price", "stale"})
PROVIDER_BAR_FAULTS = frozenset({"high_below_low", "negative_price", "nan_price", "duplicate", "out_of_order"})
QUOTE_ENDPOINT = "@quote"  # the fault queue of Yahoo's batch quote endpoint (response faults)
RETRY_AFTER_S = 2  # what the http_429_retry_after fault asks the client to wait
FAULT_KINDS = BAR_FAULTS | RESPONSE_FAULTS | QUOTE_FAULTS | PROVIDER_BAR_FAULTS | META_FAULTS

@dataclass(slots=True)
class _PendingFault:
    kind: str
    remaining: int


class Ledger:
    """Fault queues by key (a Yahoo symbol, `provider:NAME`, `@provider`, `@quote`), the bars
    served per Yahoo symbol, the fault log, request counters and outages.

    :param slow_s: how long a `slow` fault holds its response.
    """

    def __init__(self, slow_s: float = 3.0) -> None:
        self.slow_s = slow_s
        self.served: dict[str, dict[int, tuple[float, float, float, float, float]]] = collections.defaultdict(dict)
        self.fault_log: list[dict[str, object]] = []
        self.requests: collections.Counter[str] = collections.Counter()
        self.down_until: dict[str, float] = {}  # provider -> every request to it fails with 503 until then
        self.garble: set[int] = set()  # id() of requests whose answer a malformed_json fault cuts in half
        self._faults: dict[str, collections.deque[_PendingFault]] = collections.defaultdict(collections.deque)

    def inject(self, key: str, kind: str, count: int = 1) -> None:
        """Queue `count` faults of `kind` for the next answers about `key`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        self._faults[key].append(_PendingFault(kind, count))

    def pending(self, key: str) -> bool:
        """Whether any fault is queued for `key` (a cheap check before `take`)."""
        return bool(self._faults.get(key))

    def pending_among(self, keys: tuple[str, ...]) -> list[int]:
        """The indices of `keys` with a fault queued (one pass, no call per key)."""
        queued = self._faults
        return [i for i, key in enumerate(keys) if queued.get(key)] if queued else []

    def take(self, key: str, kinds: frozenset[str]) -> str | None:
        """The next fault for `key` if it is one of `kinds` (used up once its count runs out)."""
        queue = self._faults.get(key)
        if not queue or queue[0].kind not in kinds:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault.kind

    def put_back(self, key: str, kind: str) -> None:
        """A fault that found nothing to corrupt waits for the next answer."""
        self._faults[key].appendleft(_PendingFault(kind, 1))

    def record_served(self, symbol: str, bars: MinuteBars, closed: np.ndarray) -> None:
        """Closed bars with trades that went out for a Yahoo symbol: the ground truth tests compare with."""
        served = self.served[symbol]
        b = bars.select(bars.traded & closed)
        for row in zip(b.ts.tolist(), b.open.tolist(), b.high.tolist(), b.low.tolist(),
                       b.close.tolist(), b.volume.tolist(), strict=True):
            served[row[0]] = row[1:]

    def outage(self, provider: str, until: float) -> None:
        """Every request to `provider` fails with 503 until `until` (wall time)."""
        self.down_until[provider] = until

    async def fault_response(self, fault: str | None, text_429: str = "Too Many Requests") -> web.Response | None:
        """The answer a response fault makes (a `slow` one only delays), or None to answer normally;
        Yahoo's 429 is the plain text `Too Many Requests`, other providers' may be empty."""
        if fault == "http_429":
            return web.Response(status=429, text=text_429)
        if fault == "http_429_retry_after":
            return web.Response(status=429, text=text_429, headers={"Retry-After": str(RETRY_AFTER_S)})
        if fault == "http_500":
            return web.Response(status=500, text="Internal Server Error")
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        return None

    def apply_provider_fault(self, key: str, yahoo: str, bars: MinuteBars, now: int) -> MinuteBars:
        """A bar fault queued for `provider:NAME` (the provider's own name), applied to bars of the
        market's `yahoo` symbol about to be served: the newest closed bar corrupted (its truth then
        unserved), duplicated, or swapped with the one before."""
        fault = self.take(key, PROVIDER_BAR_FAULTS) if self.pending(key) else None
        closed = np.flatnonzero(bars.ts + 60 <= now)
        if fault is None:
            return bars
        if not len(closed) or len(bars) < 2:
            self.put_back(key, fault)
            return bars
        i = int(closed[-1])
        b = MinuteBars(*(getattr(bars, f).copy() for f in MinuteBars.__slots__))
        if fault == "duplicate":
            b = MinuteBars(*(np.insert(getattr(b, f), i, getattr(b, f)[i]) for f in MinuteBars.__slots__))
        elif fault == "out_of_order":
            j = i - 1 if i > 0 else i + 1  # the neighbour: the bar before, or the forming one after
            for f in MinuteBars.__slots__:
                col = getattr(b, f)
                col[j], col[i] = col[i].copy(), col[j].copy()
        else:
            self.served[yahoo].pop(int(b.ts[i]), None)
            if fault == "high_below_low":
                b.high[i], b.low[i] = b.low[i] - 1.0, b.high[i] + 1.0
            elif fault == "negative_price":
                b.close[i] = -b.close[i]
            elif fault == "nan_price":
                b.close[i] = math.nan
        self.fault_log.append({"symbol": key, "kind": fault, "ts": int(bars.ts[i]), "served_ts": int(bars.ts[i])})
        return b
