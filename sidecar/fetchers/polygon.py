"""Polygon (Massive): `GET /v2/aggs/ticker/{ticker}/range/1/minute/{from}/{to}` (providers.md 4).

Bar opens are unix milliseconds, minutes without trades are left out, and a result cut at
`limit` carries a `next_url` without the key, so the key is sent as a header on every page.
Errors: 429 (per-minute limit), 401 (unknown key), 403 (not entitled), with the text under
`error` or `message`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import MalformedResponse, ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import (
    FetchResult,
    HttpFetcher,
    QuoteBatch,
    bars_from_rows,
    decode_json,
    raise_for_server_error,
    retry_after,
    to_float,
)

SOURCE = "polygon"
_SPANS = {"1m": "1/minute", "5m": "5/minute", "15m": "15/minute", "1h": "1/hour"}
MAX_PAGES = 20


class PolygonFetcher(HttpFetcher):
    """Polygon over one pooled session; the key goes in the `Authorization: Bearer` header.

    :param api_key: the key; never logged.
    :param page_limit: base aggregates per page (`limit`; Polygon's maximum is 50,000).
    """

    name = SOURCE
    max_window_s = 7 * 86400
    max_age_s = 730 * 86400 - 3600  # two years on the basic plan
    reach = {"1m": (30 * 86400 - 3600, 7 * 86400)}

    def __init__(self, *, base_url: str, api_key: str, timeout_s: float, max_connections: int,
                 page_limit: int = 50000, clock: Clock | None = None) -> None:
        super().__init__(base_url=base_url, timeout_s=timeout_s, max_connections=max_connections, clock=clock,
                         headers={"Authorization": f"Bearer {api_key}"})
        self.page_limit = page_limit
        if not api_key:
            self.disabled_reason = "no API key (SIDECAR_POLYGON_API_KEY)"

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars in [start, end), following `next_url` pages; the forming one included."""
        step = timeframe_seconds(timeframe)
        url = f"{self.base_url}/v2/aggs/ticker/{info.polygon}/range/{_SPANS[timeframe]}/{start * 1000}/{end * 1000 - 1}"
        params: dict[str, str] = {"adjusted": "true", "sort": "asc", "limit": str(self.page_limit)}
        rows = []
        for _page in range(MAX_PAGES):
            payload = await self._get(url, params, info.symbol, timeout_s, ok=("OK", "DELAYED"))
            for r in payload.get("results") or []:  # absent when empty
                if not isinstance(r, dict):
                    raise MalformedResponse(SOURCE, info.symbol, "a result that is not an object")
                t = r.get("t")
                rows.append((t // 1000 if isinstance(t, int) and t % 1000 == 0 else -1,
                             r.get("o"), r.get("h"), r.get("l"), r.get("c"), r.get("v")))
            url = payload.get("next_url") or ""
            if not url:
                break
            params = {}  # next_url carries the query (but not the key: that is the header)
        else:
            raise ProviderError(SOURCE, info.symbol, f"more than {MAX_PAGES} pages", status=None)
        return bars_from_rows(info.symbol, SOURCE, timeframe, step, rows, start, end, self.source_time())

    async def fetch_ticker(self, info: SymbolInfo, timeout_s: float | None = None) -> dict:
        """`/v3/reference/tickers/{ticker}`'s `results` (ticker, name, market, type, primary
        exchange, currency); a ticker Polygon does not know raises ProviderError 404."""
        payload = await self._get(f"{self.base_url}/v3/reference/tickers/{info.polygon}", {}, info.symbol, timeout_s,
                                  ok=("OK",))
        results = payload.get("results")
        if not isinstance(results, dict):
            raise MalformedResponse(SOURCE, info.symbol, "no results object")
        return results

    def quote_cost(self, infos: Sequence[SymbolInfo]) -> int:
        """Requests one `fetch_quotes` makes: one snapshot per market among the symbols."""
        return len({_snapshot_market(i) for i in infos} - {None}) or 1

    async def fetch_quotes(self, infos: Sequence[SymbolInfo], timeout_s: float | None = None) -> QuoteBatch:
        """The snapshot of all `infos` (one request per market: stocks, forex, crypto; indices
        have no snapshot here and get no row): last trade price and second, day volume."""
        label = f"{len(infos)} symbols"
        by_market: dict[str, list[int]] = {}
        for i, info in enumerate(infos):
            market = _snapshot_market(info)
            if market is not None:
                by_market.setdefault(market, []).append(i)
        index, price, at, volume = [], [], [], []
        minute: list[tuple[float, ...]] = []
        for market, rows in by_market.items():
            url = f"{self.base_url}/v2/snapshot/locale/{market}/tickers"
            payload = await self._get(url, {"tickers": ",".join(infos[i].polygon for i in rows)}, label, timeout_s,
                                      ok=("OK",))
            position = {infos[i].polygon: i for i in rows}
            for t in payload.get("tickers") or []:
                row = position.get(str(t.get("ticker"))) if isinstance(t, dict) else None
                if row is None:
                    continue
                trade, day = t.get("lastTrade") or {}, t.get("day") or {}
                ns = trade.get("t")
                index.append(row)
                price.append(to_float(trade.get("p")))
                at.append(ns // 1_000_000_000 if isinstance(ns, int) else -1)  # nanoseconds
                volume.append(to_float(day.get("v", 0)))
                minute.append(_minute_bar(t.get("min")))
        return QuoteBatch.of(SOURCE, index, price, at, volume, minute)

    async def _get(self, url: str, params: dict[str, str], label: str, timeout_s: float | None,
                   ok: tuple[str, ...]) -> dict:
        """A JSON answer whose `status` is one of `ok`; Polygon's 429 and error bodies as typed errors."""
        status, headers, body = await self._request(url, params, label, timeout_s)
        raise_for_server_error(SOURCE, label, status, body)
        payload = decode_json(body, SOURCE, label) if body.strip() else {}
        if status == 429:
            raise RateLimited(SOURCE, label, f"HTTP 429: {_message(payload)}",
                              retry_after=retry_after(headers.get("Retry-After")) or 60 - self.clock.time() % 60)
        if status >= 400 or not isinstance(payload, dict) or payload.get("status") not in ok:
            raise ProviderError(SOURCE, label, f"HTTP {status}: {_message(payload)}", status=status)
        return payload


def _minute_bar(bar: object) -> tuple[float, ...]:
    """A snapshot's `min` (the minute of the last trade; `t` in ms at its start) as (open
    second, o, h, l, c, v); NaNs when absent or not a whole-minute stamp."""
    if not isinstance(bar, dict) or not isinstance(bar.get("t"), int) or bar["t"] % 60_000:
        return (math.nan,) * 6
    return (bar["t"] / 1000, to_float(bar.get("o")), to_float(bar.get("h")), to_float(bar.get("l")),
            to_float(bar.get("c")), to_float(bar.get("v")))


def _snapshot_market(info: SymbolInfo) -> str | None:
    prefix = info.polygon.partition(":")[0] if ":" in info.polygon else ""
    return {"": "us/markets/stocks", "C": "global/markets/forex", "X": "global/markets/crypto"}.get(prefix)


def _message(payload: object) -> str:
    if isinstance(payload, dict):
        return str(payload.get("error") or payload.get("message") or payload.get("status") or "")[:160]
    return ""


__all__ = ["SOURCE", "PolygonFetcher"]
