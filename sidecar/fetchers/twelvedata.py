"""Twelve Data: `GET /time_series` (providers.md section 3).

Values are strings, newest first by default; asking with `timezone=UTC` makes every
`datetime` a naive UTC string. An error is a body with `code`, `message` and
`status: "error"`, sent with HTTP 200 or with the matching status: the body's `code` is
authoritative. The two 429s differ by their message: "current minute" or "for the day".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import (
    FetchResult,
    HttpFetcher,
    QuoteBatch,
    bars_from_rows,
    decode_json,
    naive_to_epoch,
    raise_for_server_error,
    to_float,
)

SOURCE = "twelvedata"
_INTERVALS = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "1h"}
MAX_OUTPUT = 5000  # bars per request
EARNINGS_CREDITS = 40  # what one /earnings_calendar request costs (providers.md 8.4)


class TwelveDataFetcher(HttpFetcher):
    """Twelve Data over one pooled session; the key goes in the `Authorization: apikey` header.

    :param api_key: the key; never logged.
    """

    name = SOURCE
    max_window_s = MAX_OUTPUT * 60 - 60
    max_age_s = 30 * 86400 - 3600
    reach = {"1m": (max_age_s, 3 * 86400)}

    def __init__(self, *, base_url: str, api_key: str, timeout_s: float, max_connections: int,
                 clock: Clock | None = None) -> None:
        super().__init__(base_url=base_url, timeout_s=timeout_s, max_connections=max_connections, clock=clock,
                         headers={"Authorization": f"apikey {api_key}"})
        if not api_key:
            self.disabled_reason = "no API key (SIDECAR_TWELVEDATA_API_KEY)"

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars in [start, end), the forming one included."""
        step = timeframe_seconds(timeframe)
        query = {"symbol": info.twelvedata, "interval": _INTERVALS[timeframe], "timezone": "UTC",
                 "start_date": _utc(start), "end_date": _utc(end - 1), "outputsize": str(MAX_OUTPUT)}
        status, payload = await self._get("/time_series", query, info.symbol, timeout_s, empty_ok=True)
        if payload.get("status") == "error":  # "No data is available": an empty window, not an error
            return FetchResult(info.symbol, SOURCE, provider_time=self.source_time())
        values = payload.get("values")
        if not isinstance(values, list):
            raise ProviderError(SOURCE, info.symbol, f"HTTP {status}: no values", status=status if status >= 400 else 502)
        rows = []
        for row in values:
            r = row if isinstance(row, dict) else {}
            rows.append((naive_to_epoch(r.get("datetime", ""), dt.UTC), r.get("open"), r.get("high"), r.get("low"),
                         r.get("close"), r.get("volume")))  # FX and some crypto have no volume
        return bars_from_rows(info.symbol, SOURCE, timeframe, step, rows, start, end, self.source_time())

    def quote_cost(self, infos: Sequence[SymbolInfo]) -> int:
        """Credits one `fetch_quotes` costs: one per symbol."""
        return len(infos)

    async def fetch_quotes(self, infos: Sequence[SymbolInfo], timeout_s: float | None = None) -> QuoteBatch:
        """`/quote` for all `infos` in one request: latest price (`close`), its time (`timestamp`)
        and the day's volume; a symbol with its own error entry gets no row."""
        label = f"{len(infos)} symbols"
        _status, payload = await self._get("/quote", {"symbol": ",".join(i.twelvedata for i in infos)}, label,
                                           timeout_s)
        entries = {infos[0].twelvedata: payload} if len(infos) == 1 else payload
        index, price, at, volume = [], [], [], []
        for i, info in enumerate(infos):
            entry = entries.get(info.twelvedata)
            if not isinstance(entry, dict) or entry.get("status") == "error":
                continue
            t = entry.get("timestamp")
            index.append(i)
            price.append(to_float(entry.get("close")))
            at.append(t if isinstance(t, int) else -1)
            volume.append(to_float(entry.get("volume", 0)))
        return QuoteBatch.of(SOURCE, index, price, at, volume)

    async def fetch_earnings_calendar(self, start: str, end: str, timeout_s: float | None = None) -> dict:
        """`/earnings_calendar` from `start` to `end` (YYYY-MM-DD), every company: costs
        EARNINGS_CREDITS credits."""
        _status, payload = await self._get("/earnings_calendar", {"start_date": start, "end_date": end}, "earnings",
                                           timeout_s)
        return payload

    async def _get(self, path: str, params: dict[str, str], label: str, timeout_s: float | None,
                   empty_ok: bool = False) -> tuple[int, dict]:
        """GET a JSON endpoint: (status, body); an error body (sent with HTTP 200 or its code)
        raised as a typed error, except, with `empty_ok`, "No data is available" (returned)."""
        status, _headers, body = await self._request(f"{self.base_url}{path}", params, label, timeout_s)
        raise_for_server_error(SOURCE, label, status, body)
        payload = decode_json(body, SOURCE, label)
        if not isinstance(payload, dict):
            raise ProviderError(SOURCE, label, f"HTTP {status}: unexpected body", status=status)
        if payload.get("status") == "error" and not (
                empty_ok and payload.get("code") == 400
                and str(payload.get("message", "")).startswith("No data is available")):
            self._raise_error(payload, label, status)
        return status, payload

    def _raise_error(self, payload: dict, label: str, status: int) -> None:
        code = payload.get("code")
        message = str(payload.get("message", ""))
        if code == 429:
            wait = 86400 - self.clock.time() % 86400 if "for the day" in message else 60 - self.clock.time() % 60
            raise RateLimited(SOURCE, label, message[:100], retry_after=wait)
        raise ProviderError(SOURCE, label, f"{code}: {message[:160]}", status=code if isinstance(code, int) else status)


def _utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["SOURCE", "TwelveDataFetcher"]
