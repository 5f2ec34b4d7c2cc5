"""What every fetcher returns, the pooled HTTP client they share, and their JSON decoding."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

import aiohttp
import numpy as np
import orjson

from ..actions import Action
from ..bars import FORMING, Bar
from ..calendars import NEW_YORK
from ..clock import Clock, SystemClock
from ..errors import FetchError, FetchTimeout, MalformedResponse, ProviderError
from ..symbols import AssetClass, SymbolInfo


@dataclass(slots=True)
class FetchResult:
    """The bars one request returned for one symbol, oldest first; the forming bar is flagged."""

    symbol: str
    source: str
    bars: list[Bar] = field(default_factory=list)
    ignored: int = 0  # provider rows that are not bars of the session (e.g. Yahoo's close print)
    # Dividends and splits reported with the bars: (ex-date, "dividend" | "split", amount | ratio)
    actions: list[Action] = field(default_factory=list)
    # The provider's clock when it answered (the local clock where it does not say): a closed bar
    # that ended just before it may still change. Infinite: the closed bars are final.
    provider_time: float = math.inf


@dataclass(slots=True)
class QuoteBatch:
    """Quote snapshots from one batch request: parallel arrays; `index` points into the list of
    symbols asked for (a symbol the source left out has no row)."""

    source: str
    index: np.ndarray  # int64
    price: np.ndarray  # last trade price
    time: np.ndarray  # int64 unix second of the last trade
    day_volume: np.ndarray  # volume traded so far in the symbol's day
    parse_s: float = 0.0  # seconds spent turning the body into these arrays
    # The source's own bar of the minute of each row's last trade, (6, n): open (epoch s), open,
    # high, low, close, volume; NaN where it sent none. None: the source has no minute bars.
    minute: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> QuoteBatch:
        """The rows selected by an index or boolean mask."""
        return replace(self, index=self.index[rows], price=self.price[rows], time=self.time[rows],
                       day_volume=self.day_volume[rows], minute=None if self.minute is None else self.minute[:, rows])

    @classmethod
    def of(cls, source: str, index: list[int], price: list[float], time: list[int], volume: list[float],
           minute: list[tuple[float, ...]] | None = None) -> QuoteBatch:
        """A batch from the row lists a parser collected."""
        bars = None if minute is None else np.array(minute, dtype=np.float64).reshape(-1, 6).T
        return cls(source, np.array(index, dtype=np.int64), np.array(price, dtype=np.float64),
                   np.array(time, dtype=np.int64), np.array(volume, dtype=np.float64), minute=bars)


def decode_json(body: bytes, source: str, symbol: str) -> object:
    """Parse a JSON body with orjson; fall back to the stdlib for bare NaN/Infinity tokens,
    so one bad value costs one bar (rejected by the validator), not the whole response."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponse(source, symbol, f"body is not JSON: {exc}") from None


def to_float(value: object) -> float:
    """A provider's number as a float; anything that is not a number becomes NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # type: ignore[arg-type]  # providers that send "291.3500"
    except (TypeError, ValueError):
        return math.nan


KEEPALIVE_S = 70.0
"""How long an idle pooled connection is kept. The history catch-up asks most at each minute's
close; with aiohttp's default (15 s) its connections were closed in between and each minute
opened them again, up to SIDECAR_YAHOO_MAX_CONNECTIONS of them, on the event loop of the
minute-closing cycle. A server that drops an idle connection sooner makes the pool open a new
one, as before."""

_LIVE_POOL: ContextVar[bool] = ContextVar("live_pool", default=False)


@contextmanager
def live_pool() -> Iterator[None]:
    """Requests made within go through each fetcher's own pool for the live quotes, so a
    second's batch quotes never queue for a connection behind the history catch-up's requests
    (an answer that comes after its second is over is of no use to the bar builder)."""
    token = _LIVE_POOL.set(True)
    try:
        yield
    finally:
        _LIVE_POOL.reset(token)


class HttpFetcher:
    """A pooled aiohttp session for one provider, with the error mapping every fetcher shares.

    :param base_url: the provider's base URL (or the local exchange's).
    :param timeout_s: total deadline of one live request.
    :param max_connections: size of the connection pool.
    :param headers: sent with every request.
    :param clock: decides which bar is still forming, for providers that do not say.
    """

    name = "http"
    disabled_reason: str | None = None  # set when the source cannot be used (e.g. no API key)
    delay_s = 0.0  # the plan's delay (SIDECAR_SOURCE_DELAYS): its bars are as of this long ago
    max_window_s = 7 * 86400  # the longest window one request may ask for
    max_age_s = 30 * 86400 - 3600  # how far back the finest timeframe goes (an hour of margin)
    reach: dict[str, tuple[int, int]] = {"1m": (max_age_s, 6 * 86400)}  # per timeframe: how far back, window size

    def __init__(self, *, base_url: str, timeout_s: float, max_connections: int,
                 headers: Mapping[str, str] | None = None, clock: Clock | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 2.0))
        self._headers = {"Accept": "application/json", **(headers or {})}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._live: aiohttp.ClientSession | None = None  # the live quotes' pool (see `live_pool`)

    async def start(self) -> None:
        """Open the pooled sessions: one for everything, one for the live quotes; they share
        their cookies (Yahoo's crumb belongs to its cookie)."""
        # unsafe: also keep cookies set by an IP-addressed host (the local exchange)
        jar = aiohttp.CookieJar(unsafe=True)
        self._session, self._live = (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300,
                                                                 keepalive_timeout=KEEPALIVE_S),
                                  headers=self._headers, timeout=self._timeout, cookie_jar=jar) for _ in range(2))

    async def close(self) -> None:
        """Close the sessions and their connections."""
        for session in (self._session, self._live):
            if session is not None:
                await session.close()
        self._session = self._live = None

    def source_time(self) -> float:
        """The source's clock: what time its data is as of (the local clock less its delay); a
        bar that has not ended by it is still forming."""
        return self.clock.time() - self.delay_s

    async def fetch_bars(self, info: SymbolInfo, timeframe: str, start: int, end: int,
                         timeout_s: float | None = None) -> FetchResult:
        """Bars of `timeframe` whose open lies in [start, end), oldest first, the forming one
        flagged; `timeout_s` overrides the live timeout. Each provider implements it."""
        raise NotImplementedError

    def serves(self, info: SymbolInfo) -> bool:
        """Whether the provider has intraday bars for this symbol."""
        return True

    async def _request(self, url: str, params: Mapping[str, str], label: str, timeout_s: float | None,
                       headers: Mapping[str, str] | None = None) -> tuple[int, Mapping[str, str], bytes]:
        """GET `url`: (status, headers, body); a timeout or a connection error as a typed FetchError."""
        session = self._live if _LIVE_POOL.get() else self._session
        assert session is not None, "start() the fetcher first"
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s, connect=2.0)
        try:
            async with session.get(url, params=params, timeout=timeout, headers=headers) as resp:
                return resp.status, resp.headers, await resp.read()
        except TimeoutError:
            raise FetchTimeout(self.name, label, f"no answer within {round(timeout.total or 0, 2)}s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(self.name, label, f"{type(exc).__name__}: {exc}") from None


def raise_for_server_error(source: str, symbol: str, status: int, body: bytes) -> None:
    """A 5xx (its body is often a plain-text page, not the provider's JSON) as a ProviderError
    with its status, so it counts as transient and is retried."""
    if status >= 500:
        text = body[:120].decode(errors="replace").strip()
        raise ProviderError(source, symbol, f"HTTP {status}: {text}", status=status)


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (None when absent or not a number)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def local_time_zone(asset_class: AssetClass) -> ZoneInfo | dt.timezone:
    """The zone of a provider's naive timestamps: New York for US stocks and indices, UTC for the rest."""
    return NEW_YORK if asset_class in (AssetClass.EQUITY, AssetClass.INDEX) else dt.UTC


def naive_to_epoch(text: str, zone: ZoneInfo | dt.timezone) -> int:
    """'YYYY-MM-DD HH:MM:SS' (or a date) in `zone` as unix seconds; -1 when it is not a time
    (the validator then rejects the bar as misaligned)."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return -1
    return int(moment.replace(tzinfo=zone).timestamp())


def bars_from_rows(symbol: str, source: str, timeframe: str, step: int, rows: list[tuple[int, object, object, object,
                   object, object]], start: int, end: int, now: float) -> FetchResult:
    """Rows (ts, o, h, l, c, v) in any order into a result: oldest first, within [start, end),
    one bar per ts (the last copy wins), the bar whose minute is still running flagged forming."""
    out = FetchResult(symbol, source, provider_time=now)
    seen: dict[int, Bar] = {}
    for ts, o, h, l, c, v in rows:
        if ts != -1 and not start <= ts < end:
            continue
        seen[ts] = Bar(symbol=symbol, timeframe=timeframe, ts=ts, open=to_float(o), high=to_float(h),
                       low=to_float(l), close=to_float(c), volume=0.0 if v is None else to_float(v), source=source,
                       flags=FORMING if ts + step > now else 0)
    out.bars = [seen[t] for t in sorted(seen)]
    return out
