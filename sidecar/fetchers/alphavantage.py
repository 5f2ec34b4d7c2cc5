"""Alpha Vantage intraday series: `GET /query?function=TIME_SERIES_INTRADAY|FX_INTRADAY|CRYPTO_INTRADAY`
(providers.md section 2).

Everything arrives as HTTP 200: the series, and also the errors and the rate limits, each a
body with one top-level key (`Error Message`, `Information`, `Note`); the status code is not
to be trusted. Values are strings, timestamps are naive exchange-local strings (US/Eastern for
stocks, UTC for FX and crypto), newest first.
"""

from __future__ import annotations

from ..bars import timeframe_seconds
from ..clock import Clock
from ..errors import ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import (
    FetchResult,
    HttpFetcher,
    bars_from_rows,
    decode_json,
    local_time_zone,
    naive_to_epoch,
    raise_for_server_error,
)

SOURCE = "alphavantage"
_INTERVALS = {"1m": "1min", "5m": "5min", "15m": "15min", "1h": "60min"}
COMPACT_BARS = 100  # outputsize=compact: the newest 100 bars; full: the last 30 days


class AlphaVantageFetcher(HttpFetcher):
    """Alpha Vantage over one pooled session; the key goes in every query (`apikey`).

    :param api_key: the key; never logged.
    """

    name = SOURCE
    max_window_s = 30 * 86400
    max_age_s = 30 * 86400 - 3600
    reach = {"1m": (max_age_s, 30 * 86400)}

    def __init__(self, *, base_url: str, api_key: str, timeout_s: float, max_connections: int,
                 clock: Clock | None = None) -> None:
        super().__init__(base_url=base_url, timeout_s=timeout_s, max_connections=max_connections, clock=clock)
        self._key = api_key
        if not api_key:
            self.disabled_reason = "no API key (SIDECAR_ALPHAVANTAGE_API_KEY)"

    def serves(self, info: SymbolInfo) -> bool:
        """Whether it has an intraday series for the symbol (not for indices and metals)."""
        return info.alphavantage is not None

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars in [start, end): the compact series when it reaches back far enough, else the full one."""
        params = info.alphavantage
        if params is None:
            raise ProviderError(SOURCE, info.symbol, "no intraday series for this instrument", status=404)
        step = timeframe_seconds(timeframe)
        now = self.source_time()
        size = "compact" if start >= now - COMPACT_BARS * step else "full"
        query = {**params, "interval": _INTERVALS[timeframe], "outputsize": size, "datatype": "json"}
        status, payload = await self._query(query, info.symbol, timeout_s)
        if not isinstance(payload, dict):
            raise ProviderError(SOURCE, info.symbol, f"HTTP {status}: unexpected body", status=status)
        series = next((v for k, v in payload.items() if k.startswith("Time Series")), None)
        if not isinstance(series, dict):
            raise ProviderError(SOURCE, info.symbol, f"HTTP {status}: no time series in {sorted(payload)[:3]}",
                                status=status if status >= 400 else None)
        zone = local_time_zone(info.asset_class)
        rows = []
        for stamp, row in series.items():
            r = row if isinstance(row, dict) else {}
            rows.append((naive_to_epoch(stamp, zone), r.get("1. open"), r.get("2. high"), r.get("3. low"),
                         r.get("4. close"), r.get("5. volume")))  # FX has no volume key
        return bars_from_rows(info.symbol, SOURCE, timeframe, step, rows, start, end, self.source_time())


    async def fetch_etf_profile(self, info: SymbolInfo, timeout_s: float | None = None) -> dict:
        """ETF_PROFILE of a fund (net assets, expense ratio as strings); a symbol that is no fund
        (an empty object) raises ProviderError 404."""
        _status, payload = await self._query({"function": "ETF_PROFILE", "symbol": info.symbol}, info.symbol,
                                             timeout_s)
        if not isinstance(payload, dict) or "net_assets" not in payload:
            raise ProviderError(SOURCE, info.symbol, "no ETF profile for this symbol", status=404)
        return payload

    async def fetch_earnings_calendar(self, horizon: str = "3month", timeout_s: float | None = None) -> str:
        """EARNINGS_CALENDAR over `horizon` for every company: the CSV text (its limits and
        errors come as JSON and are raised as for the series)."""
        _status, text = await self._query({"function": "EARNINGS_CALENDAR", "horizon": horizon}, "earnings",
                                          timeout_s, csv=True)
        return str(text)

    async def _query(self, query: dict[str, str], label: str, timeout_s: float | None,
                     csv: bool = False) -> tuple[int, object]:
        """`GET /query` with the key: (status, the decoded JSON body, or with `csv` the body's
        text); the error and limit bodies (JSON, HTTP 200) raised as typed errors."""
        status, _headers, body = await self._request(f"{self.base_url}/query", {**query, "apikey": self._key}, label,
                                                     timeout_s)
        raise_for_server_error(SOURCE, label, status, body)
        if csv and not body.lstrip().startswith(b"{"):
            return status, body.decode("utf-8", errors="replace")
        payload = decode_json(body, SOURCE, label)
        if isinstance(payload, dict):
            _raise_for_message(payload, label, self.clock.time())
        return status, body.decode("utf-8", errors="replace") if csv else payload


def _raise_for_message(payload: dict, symbol: str, now: float) -> None:
    """Alpha Vantage's error and limit bodies, all HTTP 200, as typed errors."""
    if "Error Message" in payload:
        text = str(payload["Error Message"])
        raise ProviderError(SOURCE, symbol, text[:200], status=401 if "apikey" in text else 400)
    if "Note" in payload:  # the legacy per-minute limit
        raise RateLimited(SOURCE, symbol, f"rate limit: {str(payload['Note'])[:120]}", retry_after=60.0)
    if "Information" in payload:
        text = str(payload["Information"])
        if "rate limit" in text:  # "... our standard API rate limit is 25 requests per day"
            raise RateLimited(SOURCE, symbol, f"daily limit: {text[:120]}", retry_after=86400 - now % 86400)
        raise ProviderError(SOURCE, symbol, f"refused: {text[:120]}", status=403)  # premium endpoint, demo key


__all__ = ["SOURCE", "AlphaVantageFetcher"]
