"""The body of Yahoo's batch quote (`/v7/finance/quote`), built as bytes from columns.

A quote poller asks for hundreds of symbols every second, and this exchange shares the
machine with the daemons it serves, so its cost per answer is a benchmark's noise: building a
dict per symbol and serialising it cost 2.1 ms per 500 symbols (`bench/test_exchange.py`). Here the fields that never change
for a symbol (names, exchange, type) are serialised once and kept as a fragment; each answer
formats its three columns (price, time, day volume) with one `orjson.dumps` each and interleaves
them with the fragments. Per-symbol Python runs only for the few symbols with a queued fault.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import numpy as np
import orjson

from ..symbols import AssetClass
from . import chart
from .ledger import QUOTE_FAULTS, Ledger
from .market import Market
from .reference import Reference

_MARKET_BY_CLASS = {
    AssetClass.EQUITY: "us_market", AssetClass.INDEX: "us_market", AssetClass.FX: "ccy_market",
    AssetClass.CRYPTO: "ccc_market", AssetClass.FUTURES: "us24_market",
}
_FRAGMENTS_KEPT = 200_000  # symbols whose fixed fields are kept serialised (about 400 bytes each)
_BATCHES_KEPT = 1024
PREPARE_FROM_S = 30
"""From this second of a minute the next minute's tables are made (40 batches of 500 symbols take ~1 s)."""
_TIME, _VOLUME = b',"regularMarketTime":', b',"regularMarketVolume":'
_STATES = (b',"marketState":"CLOSED"},', b',"marketState":"REGULAR"},')  # each result's end, by whether it is live


class BatchQuotes:
    """Answers of the batch quote endpoint, and what a `stale` fault repeats.

    :param market: the simulated market (its per-minute quote tables).
    :param reference: the instruments' reference fields merged into every result.
    :param ledger: queued faults, and the log of those served.
    """

    def __init__(self, market: Market, reference: Reference, ledger: Ledger) -> None:
        self.market, self.reference, self.ledger = market, reference, ledger
        self._fragments: dict[str, bytes] = {}  # symbol -> its fixed fields, up to the price's value
        self._batches: dict[tuple[str, ...], list[bytes]] = {}  # a batch's symbols -> their fragments
        self._last: dict[str, tuple[float, int, int]] = {}  # what a stale feed repeats
        self._preparing: set[tuple[tuple[str, ...], int]] = set()  # (batch, minute) tables asked for
        self._queue: collections.deque[tuple[tuple[str, ...], int]] = collections.deque()  # ... not yet made
        self._worker: asyncio.Task[None] | None = None

    def body(self, symbols: tuple[str, ...], now: int) -> bytes:
        """The JSON body answering `symbols` at second `now` (faults queued for them applied)."""
        q = self.market.quotes(symbols, now)
        prices, times, volumes = q.price.tolist(), q.time.tolist(), q.day_volume.astype(np.int64).tolist()
        shown = list(zip(prices, times, volumes, strict=True))
        faults = {i: self._fault(symbols[i], i, prices, times, volumes) for i in self.ledger.pending_among(symbols)}
        self._last.update(zip(symbols, shown, strict=True))
        for i, fault in faults.items():
            if fault == "stale":  # what it repeated stays the last shown
                self._last[symbols[i]] = (prices[i], times[i], volumes[i])
        n, parts = len(symbols), [b""] * (7 * len(symbols))
        parts[0::7] = self._fragments_of(symbols)
        parts[1::7] = _numbers(prices)
        parts[2::7] = [_TIME] * n
        parts[3::7] = _numbers(times)
        parts[4::7] = [_VOLUME] * n
        parts[5::7] = _numbers(volumes)
        parts[6::7] = [_STATES[live] for live in (q.time > now - 60).tolist()]
        for i, fault in faults.items():
            if fault == "nan_price":  # JSON has no NaN; Yahoo writes it anyway
                parts[7 * i + 1] = b"NaN"
        return b'{"quoteResponse":{"result":[' + b"".join(parts)[:-1] + b'],"error":null}}'

    def _fault(self, symbol: str, i: int, prices: list[float], times: list[int], volumes: list[int]) -> str | None:
        """Apply the fault queued for `symbol` (at index `i`) to the columns; the fault's kind."""
        fault = self.ledger.take(symbol, QUOTE_FAULTS)
        if fault == "stale":  # the feed repeats what it showed last
            prices[i], times[i], volumes[i] = self._last.get(symbol, (prices[i], times[i], volumes[i]))
        elif fault == "negative_price":
            prices[i] = -prices[i]
        elif fault == "zero_price":
            prices[i] = 0.0
        if fault is not None:
            self.ledger.fault_log.append({"symbol": symbol, "kind": fault, "ts": times[i], "served_ts": times[i],
                                          "endpoint": "quote"})
        return fault

    def _fragments_of(self, symbols: tuple[str, ...]) -> list[bytes]:
        """The fragments of a batch (a poller asks for the same batches every second)."""
        fragments = self._batches.get(symbols)
        if fragments is None:
            if len(self._batches) >= _BATCHES_KEPT:
                self._batches.clear()
            fragments = self._batches[symbols] = [self._fragment(s) for s in symbols]
        return fragments

    def _fragment(self, symbol: str) -> bytes:
        """`{` and the fixed fields of `symbol`'s result, up to the value of its price."""
        fragment = self._fragments.get(symbol)
        if fragment is None:
            if len(self._fragments) >= _FRAGMENTS_KEPT:
                self._fragments.clear()
            profile = self.market.profile(symbol)
            exchange, full_name, quote_type, tz_name = chart.META_BY_CLASS[profile.asset_class]
            fixed = {"language": "en-US", "region": "US", "quoteType": quote_type, "currency": "USD",
                     "exchange": exchange, "fullExchangeName": full_name, "exchangeTimezoneName": tz_name,
                     "market": _MARKET_BY_CLASS[profile.asset_class], "priceHint": profile.decimals,
                     "symbol": symbol, **self.reference.yahoo_quote(symbol)}
            fragment = self._fragments[symbol] = orjson.dumps(fixed)[:-1] + b',"regularMarketPrice":'
        return fragment

    def prepare_next_minute(self, symbols: tuple[str, ...], now: int) -> None:
        """Queue the next minute's quote table of this batch, computed during the second half of
        this minute, so that the first quotes of a minute are not held up by it (the simulator's
        cost, not Yahoo's)."""
        key = (symbols, now // 60 * 60 + 60)
        if now % 60 < PREPARE_FROM_S or key in self._preparing:
            return
        self._preparing.add(key)
        if len(self._preparing) > 256:
            self._preparing = {key}
        self._queue.append(key)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._prepare(), name="next minute's quote tables")

    async def _prepare(self) -> None:
        """One batch's table at a time, on the event loop, with the answers in between.

        Not in threads: a table is Python over NumPy that holds the GIL, and with several threads
        computing at second 45 the event loop got its turn so rarely that at 2 x 10,000 symbols
        every answer of seconds 46-47 came after its poller's 1-s deadline (a whole minute of
        every symbol's bars left to history). One table of 500 symbols is ~22 ms of work."""
        while self._queue:
            symbols, minute = self._queue.popleft()
            self.market.quotes(symbols, minute)
            await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop preparing tables (idempotent; nothing to flush)."""
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None


def _numbers(values: list[float] | list[int]) -> list[bytes]:
    """Each number as JSON text (one `orjson.dumps` for the column, split at its commas)."""
    return orjson.dumps(values)[1:-1].split(b",") if values else []
