"""Polygon (Massive): `GET /v2/aggs/ticker/{ticker}/range/1/minute/{from}/{to}` (providers.md 4).

Bar opens are unix milliseconds, minutes without trades are left out, and a result cut at
`limit` carries a `next_url` without the key, so the key is sent as a header on every page.
Errors: 429 (per-minute limit), 401 (unknown key), 403 (not entitled), with the text under
`error` or `message`.
"""

from __future__ import annotations

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import MalformedResponse, ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import FetchResult, HttpFetcher, raise_for_server_error, bars_from_rows, decode_json, retry_after

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
            status, headers, body = await self._request(url, params, info.symbol, timeout_s)
            raise_for_server_error(SOURCE, info.symbol, status, body)
            payload = decode_json(body, SOURCE, info.symbol) if body.strip() else {}
            if status == 429:
                raise RateLimited(SOURCE, info.symbol, f"HTTP 429: {_message(payload)}",
                                  retry_after=retry_after(headers.get("Retry-After")) or 60 - self.clock.time() % 60)
            if status >= 400 or not isinstance(payload, dict) or payload.get("status") not in ("OK", "DELAYED"):
                raise ProviderError(SOURCE, info.symbol, f"HTTP {status}: {_message(payload)}", status=status)
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
        return bars_from_rows(info.symbol, SOURCE, timeframe, step, rows, start, end, self.clock.time())


def _message(payload: object) -> str:
    if isinstance(payload, dict):
        return str(payload.get("error") or payload.get("message") or payload.get("status") or "")[:160]
    return ""


__all__ = ["SOURCE", "PolygonFetcher"]
