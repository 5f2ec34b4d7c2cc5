"""Yahoo Finance: the chart API, `GET /v8/finance/chart/{symbol}` (providers.md 1.1), and the
batch quote, `GET /v7/finance/quote?symbols=..` (1.2) with its cookie and crumb (1.4).

A row whose five values are all null is a minute without trades and is skipped. The last
row is the forming bar unless the provider's own clock (`regularMarketTime`) has passed its
end. The zero-volume print Yahoo stamps at the session close is not a bar of the session and
is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np

from ..actions import parse_yahoo_events
from ..bars import FORMING, Bar, timeframe_seconds
from ..clock import Clock
from ..errors import MalformedResponse, ProviderError, RateLimited
from ..symbols import SymbolInfo
from .base import FetchResult, HttpFetcher, QuoteBatch, decode_json, retry_after, to_float

log = logging.getLogger(__name__)

SOURCE = "yahoo"
FULL_DAY_S = 86400 - 60  # the regular period of a 24-hour market (providers.md 8.1)
_INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "1h": "60m", "1d": "1d"}


class YahooFetcher(HttpFetcher):
    """Yahoo's chart and batch quote endpoints over one pooled session.

    :param base_url: e.g. https://query2.finance.yahoo.com, or the local exchange.
    :param user_agent: Yahoo answers generic user agents with 429.
    :param timeout_s: total deadline for one request.
    :param max_connections: size of the connection pool.
    :param cookie_url: where the quote's cookie comes from (default: fc.yahoo.com for Yahoo,
        the base URL's root for the local exchange).
    """

    name = SOURCE
    # What Yahoo serves at 1m (providers.md 1.1): 7 days per request, the last 30 days.
    max_window_s = 7 * 86400
    max_age_s = 30 * 86400 - 3600  # an hour of margin: a window that straddles the limit fails whole
    # How far back each timeframe goes, and the history window asked for at once: finest first.
    # Daily bars go back decades in one request (`period1`/`period2`; `range=max` would answer monthly bars).
    reach = {"1m": (max_age_s, 6 * 86400), "5m": (60 * 86400 - 3600, 15 * 86400),
             "1h": (730 * 86400 - 3600, 90 * 86400), "1d": (60 * 365 * 86400, 40 * 365 * 86400)}

    def __init__(self, *, base_url: str, user_agent: str, timeout_s: float, max_connections: int,
                 cookie_url: str = "", clock: Clock | None = None) -> None:
        super().__init__(base_url=base_url, timeout_s=timeout_s, max_connections=max_connections,
                         headers={"User-Agent": user_agent}, clock=clock)
        host = urlsplit(self.base_url).hostname or ""
        self.cookie_url = cookie_url or ("https://fc.yahoo.com" if host.endswith("yahoo.com") else self.base_url + "/")
        self._crumb: str | None = None
        self._crumb_lock = asyncio.Lock()

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars of `timeframe` whose open lies in [start, end), the forming one included;
        `timeout_s` overrides the live timeout (history windows take longer)."""
        params = {"interval": _INTERVALS[timeframe], "period1": str(start), "period2": str(end),
                  "includePrePost": "false", "events": "div,splits"}
        body = await self._get(f"/v8/finance/chart/{info.yahoo}", params, info.symbol, timeout_s)
        return parse_chart(decode_json(body, SOURCE, info.symbol), info, timeframe, self.source_time())

    def quote_cost(self, infos: Sequence[SymbolInfo]) -> int:
        """Requests one `fetch_quotes` makes (a crumb refresh aside)."""
        return 1

    async def fetch_quotes(self, infos: Sequence[SymbolInfo], timeout_s: float | None = None) -> QuoteBatch:
        """One batch quote for `infos` (keep it to a few hundred symbols); the crumb is fetched
        on first use and once more when Yahoo calls it invalid."""
        label = f"{len(infos)} symbols"
        body = await self._quote_body(infos, label, timeout_s)
        t0 = self.clock.monotonic()
        batch = parse_quote_body(body, infos)
        batch.parse_s = self.clock.monotonic() - t0
        return batch

    async def fetch_reference(self, infos: Sequence[SymbolInfo], timeout_s: float | None = None) -> list[dict]:
        """The batch quote's result rows for `infos` (type, names, exchange, fund size): one
        request; symbols Yahoo does not know are left out or say `quoteType: NONE`."""
        label = f"{len(infos)} symbols"
        payload = decode_json(await self._quote_body(infos, label, timeout_s), SOURCE, label)
        try:
            rows = payload["quoteResponse"]["result"] or []  # type: ignore[index]
        except (KeyError, TypeError) as exc:
            raise MalformedResponse(SOURCE, label, f"unexpected quote shape: {exc!r}") from None
        return [r for r in rows if isinstance(r, dict)]

    async def fetch_fund_profile(self, info: SymbolInfo, timeout_s: float | None = None) -> dict:
        """`quoteSummary` modules fundProfile and defaultKeyStatistics of a fund (404: none)."""
        params = {"modules": "fundProfile,defaultKeyStatistics", "formatted": "false"}
        body = await self._with_crumb(f"/v10/finance/quoteSummary/{info.yahoo}", params, info.symbol, timeout_s)
        try:
            return dict(decode_json(body, SOURCE, info.symbol)["quoteSummary"]["result"][0])  # type: ignore[index]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MalformedResponse(SOURCE, info.symbol, f"unexpected quoteSummary shape: {exc!r}") from None

    async def _quote_body(self, infos: Sequence[SymbolInfo], label: str, timeout_s: float | None) -> bytes:
        params = {"symbols": ",".join(i.yahoo for i in infos), "formatted": "false", "lang": "en-US", "region": "US"}
        return await self._with_crumb("/v7/finance/quote", params, label, timeout_s)

    async def _with_crumb(self, path: str, params: dict[str, str], label: str, timeout_s: float | None) -> bytes:
        """GET an endpoint that needs the crumb: fetched on first use, and once more when Yahoo
        calls it invalid."""
        for attempt in (1, 2):
            crumb = await self._ensure_crumb(label, refresh=attempt == 2)
            try:
                return await self._get(path, {**params, "crumb": crumb}, label, timeout_s)
            except ProviderError as exc:
                if exc.status == 401 and attempt == 1:
                    continue  # the crumb expired or the cookie was dropped: once more with new ones
                raise
        raise AssertionError("unreachable")

    async def _ensure_crumb(self, label: str, refresh: bool) -> str:
        async with self._crumb_lock:  # one crumb flow at a time, however many chunks wait for it
            if self._crumb is None or refresh:
                await self._request(self.cookie_url, {}, label, None)  # only the cookie matters, whatever the status
                body = await self._get("/v1/test/getcrumb", {}, label, None)
                crumb = body.decode(errors="replace").strip()
                if not crumb or "<" in crumb or "Too Many Requests" in crumb:
                    raise ProviderError(SOURCE, label, f"no crumb in the getcrumb answer: {crumb[:80]!r}", status=401)
                self._crumb = crumb
                log.info("yahoo crumb obtained")
            return self._crumb

    async def _get(self, path: str, params: dict[str, str], label: str, timeout_s: float | None) -> bytes:
        """GET base_url + path; the body on success, a typed FetchError otherwise."""
        status, headers, body = await self._request(self.base_url + path, params, label, timeout_s)
        if status == 429:
            raise RateLimited(SOURCE, label, "HTTP 429 Too Many Requests",
                              retry_after=retry_after(headers.get("Retry-After")))
        if status >= 400:
            raise ProviderError(SOURCE, label, f"HTTP {status}: {_error_text(body)}", status=status)
        return body


class _QuoteRow(msgspec.Struct):
    """The four fields of a batch quote row the cycle reads (any type: checked below)."""

    symbol: Any = None
    regularMarketPrice: Any = None  # noqa: N815 - Yahoo's names
    regularMarketVolume: Any = 0  # noqa: N815
    regularMarketTime: Any = None  # noqa: N815


class _QuoteResponse(msgspec.Struct):
    result: list[_QuoteRow] | None = None
    error: Any = None


class _QuotePayload(msgspec.Struct):
    quoteResponse: _QuoteResponse  # noqa: N815


# Decodes only the fields above: a row's thirty others are skipped without becoming objects
# (half the time of a full parse at 500 symbols per request).
_QUOTES = msgspec.json.Decoder(_QuotePayload)


def parse_quote_body(body: bytes, infos: Sequence[SymbolInfo]) -> QuoteBatch:
    """A batch quote's body into arrays aligned with `infos` (see `parse_quotes`). A body the
    typed decoder refuses (bare NaN tokens, an unexpected shape) takes the general path, which
    keeps what it can and says what is wrong."""
    try:
        response = _QUOTES.decode(body).quoteResponse
    except msgspec.DecodeError:
        return parse_quotes(decode_json(body, SOURCE, f"{len(infos)} symbols"), infos)
    if response.error:
        raise ProviderError(SOURCE, f"{len(infos)} symbols", str(response.error))
    rows = response.result or []
    return _quote_batch([r.symbol for r in rows], [r.regularMarketPrice for r in rows],
                        [r.regularMarketVolume for r in rows], [r.regularMarketTime for r in rows], infos)


def parse_quotes(payload: object, infos: Sequence[SymbolInfo]) -> QuoteBatch:
    """A `quoteResponse` into arrays aligned with `infos`; symbols Yahoo left out get no row.

    Each field is read across all rows in one list comprehension and converted by NumPy in one
    call; a value NumPy cannot take as a number (a string that is not one, a bool, a nested
    object) sends that column through `to_float` one by one instead."""
    try:
        response = payload["quoteResponse"]  # type: ignore[index]
        if response.get("error"):
            raise ProviderError(SOURCE, f"{len(infos)} symbols", str(response["error"]))
        rows = response["result"] or []
        columns = ([row.get("symbol") for row in rows], [row.get("regularMarketPrice") for row in rows],
                   [row.get("regularMarketVolume", 0) for row in rows], [row.get("regularMarketTime") for row in rows])
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedResponse(SOURCE, f"{len(infos)} symbols", f"unexpected quote shape: {exc!r}") from None
    return _quote_batch(*columns, infos)


def _quote_batch(symbols: list[Any], prices: list[Any], volumes: list[Any], times: list[Any],
                 infos: Sequence[SymbolInfo]) -> QuoteBatch:
    """The rows of the symbols asked for, by their position in `infos`."""
    position = {info.yahoo: i for i, info in enumerate(infos)}
    try:
        keep = [j for j, symbol in enumerate(symbols) if symbol in position]
    except TypeError as exc:  # a symbol that is not a string
        raise MalformedResponse(SOURCE, f"{len(infos)} symbols", f"unexpected quote shape: {exc!r}") from None
    index = [position[symbols[j]] for j in keep]
    if len(keep) < len(symbols):
        prices, volumes, times = ([column[j] for j in keep] for column in (prices, volumes, times))
    at = times
    try:
        stamps = np.array(at, dtype=np.int64)  # unix seconds, as `formatted=false` sends them
    except (TypeError, ValueError, OverflowError):
        stamps = np.array([t if type(t) is int else -1 for t in at], dtype=np.int64)  # -1: the builder rejects it
    return QuoteBatch(SOURCE, np.array(index, dtype=np.int64), _numbers(prices), stamps, _numbers(volumes))


def _numbers(values: list[object]) -> np.ndarray:
    """Provider numbers as float64, anything that is not a number as NaN (what `to_float` does)."""
    if all(type(v) is float or type(v) is int for v in values):
        return np.array(values, dtype=np.float64)
    return np.array([to_float(v) for v in values], dtype=np.float64)


def parse_chart(payload: object, info: SymbolInfo, timeframe: str, now: float) -> FetchResult:
    """Turn a chart payload into bars; raise MalformedResponse when the shape is wrong.

    A bar is closed when a later row exists or the provider's clock (`regularMarketTime`) has
    passed its end; never by the session metadata alone: for the 24-hour markets Yahoo's
    regular period ends at 23:59 while that minute is still trading (providers.md 8.1). The
    session's end only identifies the close print, and only for a session that closes (not a
    24-hour market's 23:59). Optional meta fields may be missing: then the provider's clock is
    `now` (the local clock) and no row is taken for a close print.
    """
    step = timeframe_seconds(timeframe)
    try:
        chart = payload["chart"]  # type: ignore[index]
        if chart.get("error"):
            raise ProviderError(SOURCE, info.symbol, str(chart["error"].get("description")))
        result = chart["result"][0]
        meta = result.get("meta") or {}
        stamps = result.get("timestamp") or []  # absent on a day without trading
        quote = (result.get("indicators") or {}).get("quote") or [{}]
        columns = [quote[0].get(k) or [None] * len(stamps) for k in ("open", "high", "low", "close", "volume")]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(SOURCE, info.symbol, f"unexpected chart shape: {exc!r}") from None
    if any(len(c) != len(stamps) for c in columns):
        raise MalformedResponse(SOURCE, info.symbol, "quote arrays and timestamp differ in length")
    market_time = _meta_int(meta, "regularMarketTime")
    provider_time = float(market_time) if market_time is not None else now
    regular = (meta.get("currentTradingPeriod") or {}).get("regular") or {}
    session_start, session_end = _meta_int(regular, "start"), _meta_int(regular, "end")
    # Only a session that closes has a close print: a 24-hour market's period ends at 23:59 and
    # its 23:59 bar (flat and without volume a few seconds in, or always for FX) is a real bar.
    if session_start is None or session_end is None or session_end - session_start >= FULL_DAY_S:
        session_end = None
    out = FetchResult(info.symbol, SOURCE, provider_time=provider_time)
    out.actions, bad = parse_yahoo_events(result.get("events"))
    out.ignored += bad
    last = len(stamps) - 1
    for i, (ts, o, h, l, c, v) in enumerate(zip(stamps, *columns, strict=True)):
        if o is None and h is None and l is None and c is None and v is None:
            continue  # a minute without trades
        if session_end is not None and ts >= session_end and v == 0 and o == h == l == c:
            out.ignored += 1  # the close print, stamped at the session's end
            continue
        closed = i < last or ts + step <= provider_time
        out.bars.append(Bar(
            # A timestamp that is not an integer gets -1, which the validator rejects as misaligned.
            symbol=info.symbol, timeframe=timeframe, ts=ts if isinstance(ts, int) else -1,
            open=to_float(o), high=to_float(h), low=to_float(l), close=to_float(c), volume=to_float(v),
            source=SOURCE, flags=0 if closed else FORMING,
        ))
    return out


def _meta_int(meta: object, name: str) -> int | None:
    """An integer field of a meta object, or None when it is missing or not an integer."""
    value = meta.get(name) if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_text(body: bytes) -> str:
    """Yahoo's error description (chart, quote or finance), or the start of a non-JSON body
    (its 429 is plain text)."""
    try:
        payload = decode_json(body, SOURCE, "")
        top = next(iter(payload.values())) if isinstance(payload, dict) else {}
        return str(top["error"]["description"])
    except (MalformedResponse, KeyError, TypeError, AttributeError, StopIteration):
        return body[:200].decode(errors="replace").strip()


__all__ = ["SOURCE", "YahooFetcher", "parse_chart", "parse_quote_body", "parse_quotes"]
