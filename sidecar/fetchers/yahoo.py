"""Yahoo Finance chart API: `GET /v8/finance/chart/{symbol}` (providers.md section 1.1).

A row whose five values are all null is a minute without trades and is skipped. The last
row is the forming bar unless the provider's own clock (`regularMarketTime`) has passed its
end or the regular session is over. The zero-volume print Yahoo stamps at the session close
is not a bar of the session and is ignored.
"""

from __future__ import annotations


import aiohttp

from ..bars import Bar, BarFlag, timeframe_seconds
from ..errors import FetchError, FetchTimeout, MalformedResponse, ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import FetchResult, decode_json, to_float

SOURCE = "yahoo"
_FORMING = int(BarFlag.FORMING)  # a plain int: IntFlag arithmetic costs ~1 us per bar downstream
_INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "60m", "1d": "1d"}


class YahooFetcher:
    """A pooled aiohttp client for Yahoo's chart endpoint.

    :param base_url: e.g. https://query2.finance.yahoo.com, or the local exchange.
    :param user_agent: Yahoo answers generic user agents with 429.
    :param timeout_s: total deadline for one request.
    :param max_connections: size of the connection pool.
    """

    name = SOURCE
    # What Yahoo serves at 1m (providers.md 1.1): 7 days per request, the last 30 days.
    max_window_s = 7 * 86400
    max_age_s = 30 * 86400 - 3600  # an hour of margin: a window that straddles the limit fails whole
    # How far back each timeframe goes, and the history window asked for at once: finest first.
    reach = {"1m": (max_age_s, 6 * 86400), "5m": (60 * 86400 - 3600, 15 * 86400),
             "1h": (730 * 86400 - 3600, 90 * 86400)}

    def __init__(self, *, base_url: str, user_agent: str, timeout_s: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 2.0))
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pooled session."""
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars of `timeframe` whose open lies in [start, end), the forming one included;
        `timeout_s` overrides the live timeout (history windows take longer)."""
        assert self._session is not None, "start() the fetcher first"
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s, connect=2.0)
        url = f"{self.base_url}/v8/finance/chart/{info.yahoo}"
        params = {"interval": _INTERVALS[timeframe], "period1": str(start), "period2": str(end),
                  "includePrePost": "false", "events": "div,splits"}
        try:
            async with self._session.get(url, params=params, timeout=timeout) as resp:
                body = await resp.read()
                if resp.status == 429:
                    raise RateLimited(SOURCE, info.symbol, "HTTP 429 Too Many Requests",
                                      retry_after=_retry_after(resp.headers.get("Retry-After")))
                if resp.status >= 400:
                    raise ProviderError(SOURCE, info.symbol, f"HTTP {resp.status}: {_error_text(body)}",
                                        status=resp.status)
        except TimeoutError:
            raise FetchTimeout(SOURCE, info.symbol, f"no answer within {timeout.total}s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(SOURCE, info.symbol, f"{type(exc).__name__}: {exc}") from None
        return parse_chart(decode_json(body, SOURCE, info.symbol), info, timeframe)


def parse_chart(payload: object, info: SymbolInfo, timeframe: str) -> FetchResult:
    """Turn a chart payload into bars; raise MalformedResponse when the shape is wrong."""
    step = timeframe_seconds(timeframe)
    out = FetchResult(info.symbol, SOURCE)
    try:
        chart = payload["chart"]  # type: ignore[index]
        if chart.get("error"):
            raise ProviderError(SOURCE, info.symbol, str(chart["error"].get("description")))
        result = chart["result"][0]
        meta = result["meta"]
        stamps = result.get("timestamp") or []  # absent on a day without trading
        quote = result["indicators"]["quote"][0]
        columns = [quote.get(k) or [None] * len(stamps) for k in ("open", "high", "low", "close", "volume")]
        market_time = int(meta.get("regularMarketTime") or 0)
        session_end = int(meta["currentTradingPeriod"]["regular"]["end"])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(SOURCE, info.symbol, f"unexpected chart shape: {exc!r}") from None
    if any(len(c) != len(stamps) for c in columns):
        raise MalformedResponse(SOURCE, info.symbol, "quote arrays and timestamp differ in length")

    session_over = market_time >= session_end
    last = len(stamps) - 1
    for i, (ts, o, h, l, c, v) in enumerate(zip(stamps, *columns, strict=True)):
        if o is None and h is None and l is None and c is None and v is None:
            continue  # a minute without trades
        if ts >= session_end and v == 0 and o == h == l == c:
            out.ignored += 1  # the close print, stamped at the session's end
            continue
        closed = i < last or session_over or ts + step <= market_time
        out.bars.append(Bar(
            # A timestamp that is not an integer gets -1, which the validator rejects as misaligned.
            symbol=info.symbol, timeframe=timeframe, ts=ts if isinstance(ts, int) else -1,
            open=to_float(o), high=to_float(h), low=to_float(l), close=to_float(c), volume=to_float(v),
            source=SOURCE, flags=0 if closed else _FORMING,
        ))
    return out


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_text(body: bytes) -> str:
    """Yahoo's `chart.error.description`, or the start of a non-JSON body (its 429 is plain text)."""
    try:
        payload = decode_json(body, SOURCE, "")
        return str(payload["chart"]["error"]["description"])  # type: ignore[index]
    except (MalformedResponse, KeyError, TypeError):
        return body[:200].decode(errors="replace").strip()


__all__ = ["SOURCE", "YahooFetcher", "parse_chart"]
