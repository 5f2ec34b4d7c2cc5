"""Alpha Vantage, Twelve Data and Polygon on the local exchange, in their own formats
(providers.md sections 2-4), each with API keys, its own way of signalling limits, and a
request log per key so a test can prove a client never exceeded a limit.

Every provider serves the same simulated market as the Yahoo endpoints (the provider's
symbol is mapped back through `sidecar.symbols`), so one ground truth covers them all.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import math
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from ..clock import Clock
from ..symbols import AssetClass
from . import names
from .ledger import RESPONSE_FAULTS, Ledger
from .market import Market, MinuteBars
from .names import Instrument
from .plans import (
    AV_BAD_KEY,
    AV_DAILY_MESSAGE,
    AV_MINUTE_MESSAGE,
    DEFAULT_LIMITS,
    PG_MINUTE,
    PROVIDERS,
    TD_BAD_KEY,
    TD_DAY,
    TD_MINUTE,
    Limits,
)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class ProviderEndpoints:
    """The three providers' routes: answers from the market, faults and the record in the ledger.

    :param market: the simulated market.
    :param clock: wall time.
    :param ledger: the fault queues, the served bars, the counters (shared with the Yahoo endpoints).
    :param keys: accepted API keys per provider.
    :param limits: the budget of each key per provider.
    :param td_error_status: HTTP status of Twelve Data's error bodies (it sends 200 or the code).
    :param delays: seconds a provider's plan is delayed by (Polygon's delayed plans: bars up to
        that long ago, `status: "DELAYED"`).
    """

    def __init__(self, market: Market, clock: Clock, ledger: Ledger, *, keys: dict[str, set[str]] | None = None,
                 limits: dict[str, Limits] | None = None, td_error_status: str = "200",
                 delays: dict[str, float] | None = None) -> None:
        self.market, self.clock, self.ledger = market, clock, ledger
        self.delays = dict(delays or {})
        self.reference: Any = None  # the reference endpoints, for Alpha Vantage's reference functions
        self.keys = keys if keys is not None else {p: {"local"} for p in PROVIDERS}
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.td_error_status = td_error_status
        # every request that reached a provider with a valid key: (provider, key) -> [(wall time, cost)]
        self.key_log: dict[tuple[str, str], list[tuple[float, int]]] = collections.defaultdict(list)
        self.refused: collections.Counter[str] = collections.Counter()  # provider -> requests refused for limits

    def mount(self, app: web.Application) -> None:
        """Add the providers' routes to the exchange's application."""
        app.router.add_get("/query", self._alphavantage)
        app.router.add_get("/time_series", self._twelvedata)
        app.router.add_get("/v2/aggs/ticker/{ticker}/range/{mult}/{span}/{start}/{end}", self._polygon)
        app.router.add_get("/v2/snapshot/locale/{locale}/markets/{market}/tickers", self._polygon_snapshot)
        app.router.add_get("/quote", self._twelvedata_quote)

    # -- budgets -------------------------------------------------------------------------------

    def used(self, provider: str, key: str, now: float) -> tuple[int, int]:
        """Requests (credits) of a key in the current wall-clock minute and UTC day."""
        log = self.key_log.get((provider, key), [])
        minute, day = now // 60 * 60, now // 86400 * 86400
        return (sum(c for t, c in log if t >= minute), sum(c for t, c in log if t >= day))

    def _admit(self, provider: str, key: str, cost: int) -> str | None:
        """Record the request if the key's budget allows it; else which budget ('minute'/'day') is spent."""
        now = self.clock.time()
        limits = self.limits[provider]
        per_minute, per_day = self.used(provider, key, now)
        if limits.per_day and per_day + cost > limits.per_day:
            self.refused[provider] += 1
            return "day"
        if limits.per_minute and per_minute + cost > limits.per_minute:
            self.refused[provider] += 1
            return "minute"
        self.key_log[(provider, key)].append((now, cost))
        return None

    def _common_fault(self, provider: str) -> str | None:
        """An outage or a response fault queued for the provider's whole endpoint (`@provider`)."""

        if self.clock.time() < self.ledger.down_until.get(provider, 0.0):
            return "outage"
        return self.ledger.take(f"@{provider}", RESPONSE_FAULTS)

    async def _respond_fault(self, fault: str | None, request: web.Request) -> web.Response | None:
        if fault == "outage":
            return web.Response(status=503, text="Service Unavailable")
        if fault == "malformed_json":
            self.ledger.garble.add(id(request))  # the exchange's middleware cuts the answer in half
        return await self.ledger.fault_response(fault, text_429="")

    async def polygon_gate(self, request: web.Request, counter: str) -> web.Response | None:
        """What every Polygon route checks first (an outage or fault, the key, the minute budget):
        the answer that ends the request, or None to serve it."""
        self.ledger.requests[counter] += 1
        if (early := await self._respond_fault(self._common_fault("polygon"), request)) is not None:
            return early
        key = self._polygon_key(request)
        if key not in self.keys["polygon"]:
            return _json({"status": "ERROR", "request_id": "local", "error": "Unknown API Key"}, status=401)
        if self._admit("polygon", key, 1) is not None:
            return _json({"status": "ERROR", "request_id": "local", "error": PG_MINUTE}, status=429)
        return None

    async def twelvedata_gate(self, request: web.Request, counter: str, credits: list[str]) -> web.Response | None:
        """What every Twelve Data route checks first (an outage or fault, the key, the credits:
        one per item of `credits`): the answer that ends the request, or None to serve it."""
        self.ledger.requests[counter] += 1
        if (early := await self._respond_fault(self._common_fault("twelvedata"), request)) is not None:
            return early
        key = self._twelvedata_key(request)
        if key not in self.keys["twelvedata"]:
            return self._td_error(401, TD_BAD_KEY)
        return self._td_admit(key, credits)

    def _bars(self, info: Instrument, start: int, end: int, *, forming: bool, delay_s: float = 0.0) -> MinuteBars:
        """The market's bars with trades in [start, end) (the forming one too when asked), recorded
        as served; a delayed plan sees the market as it was `delay_s` ago."""
        now = int(self.clock.time() - delay_s)
        m = self.market
        ts = np.arange(-(-start // 60) * 60, min(end, now + 1), 60, dtype=np.int64)
        ts = ts[m.trading(info.yahoo, ts)]
        if not forming:
            ts = ts[ts + 60 <= now]
        bars = m.minute_bars(info.yahoo, ts, upto_second=np.minimum(now - ts, 59))
        bars = bars.select(bars.traded)
        self.ledger.record_served(info.yahoo, bars, bars.ts + 60 <= now)
        return bars

    # -- Alpha Vantage -------------------------------------------------------------------------

    async def _alphavantage(self, request: web.Request) -> web.Response:
        self.ledger.requests["alphavantage"] += 1
        q = request.query
        if (early := await self._respond_fault(self._common_fault("alphavantage"), request)) is not None:
            return early
        key = q.get("apikey", "")
        if key not in self.keys["alphavantage"]:
            return _json({"Error Message": AV_BAD_KEY})
        spent = self._admit("alphavantage", key, 1)
        if spent == "day":
            return _json({"Information": AV_DAILY_MESSAGE.format(n=self.limits["alphavantage"].per_day)})
        if spent == "minute":
            lim = self.limits["alphavantage"]
            return _json({"Note": AV_MINUTE_MESSAGE.format(n=lim.per_minute, d=lim.per_day or 500)})
        function = q.get("function", "")
        if function in ("ETF_PROFILE", "EARNINGS_CALENDAR") and self.reference is not None:
            return self.reference.alphavantage(function, q)
        info = names.alphavantage(q)
        interval = q.get("interval", "")
        if info is None or interval != "1min":
            return _json({"Error Message": "Invalid API call. Please retry or visit the documentation "
                                           f"(https://www.alphavantage.co/documentation/) for {function or 'this API'}."})
        now = int(self.clock.time())
        compact = q.get("outputsize", "compact") != "full"
        start = now - (3 * 86400 if compact else 30 * 86400)
        bars = self._bars(info, start, now, forming=False)
        if compact:
            bars = bars.select(np.arange(len(bars)) >= len(bars) - 100)
        bars = self.ledger.apply_provider_fault(f"alphavantage:{info.name}", info.yahoo, bars, int(self.clock.time()))
        zone = _local_zone(info.asset_class)
        decimals = max(self.market.profile(info.yahoo).decimals, 4)
        series = {}
        for i in range(len(bars) - 1, -1, -1):  # newest first
            row = {"1. open": _fmt(bars.open[i], decimals), "2. high": _fmt(bars.high[i], decimals),
                   "3. low": _fmt(bars.low[i], decimals), "4. close": _fmt(bars.close[i], decimals)}
            if info.asset_class is not AssetClass.FX:  # FX has no volume
                row["5. volume"] = str(int(bars.volume[i]))
            series[_naive(int(bars.ts[i]), zone)] = row
        name = {"TIME_SERIES_INTRADAY": "Time Series (1min)", "FX_INTRADAY": "Time Series FX (1min)",
                "CRYPTO_INTRADAY": "Time Series Crypto (1min)"}[function]
        last = next(iter(series), "")
        meta = {"1. Information": "Intraday (1min) open, high, low, close prices and volume",
                "2. Symbol": info.name, "3. Last Refreshed": last, "4. Interval": "1min",
                "5. Output Size": "Compact" if compact else "Full size",
                "6. Time Zone": "US/Eastern" if zone is not dt.UTC else "UTC"}
        return _json({"Meta Data": meta, name: series})

    # -- Twelve Data ---------------------------------------------------------------------------

    def _td_admit(self, key: str, requested: list[str]) -> web.Response | None:
        """Charge one credit per symbol, or the 429 body saying which budget is spent."""
        limits = self.limits["twelvedata"]
        spent = self._admit("twelvedata", key, max(1, len(requested)))
        if spent is None:
            return None
        per_minute, per_day = self.used("twelvedata", key, self.clock.time())
        if spent == "day":
            return self._td_error(429, TD_DAY.format(used=per_day + len(requested), limit=limits.per_day))
        return self._td_error(429, TD_MINUTE.format(used=per_minute + len(requested), limit=limits.per_minute))

    def _td_error(self, code: int, message: str) -> web.Response:
        status = code if self.td_error_status == "code" else 200
        return _json({"code": code, "message": message, "status": "error"}, status=status)

    async def _twelvedata(self, request: web.Request) -> web.Response:
        q = request.query
        requested = [n for n in q.get("symbol", "").split(",") if n]
        if (refused := await self.twelvedata_gate(request, "twelvedata", requested)) is not None:
            return refused
        if q.get("interval") != "1min":
            return self._td_error(400, "**interval** is not supported by the local exchange; use 1min")
        utc = q.get("timezone", "Exchange").upper() == "UTC"
        out = {}
        for name in requested:
            out[name] = self._td_series(name, q, utc)
        if len(requested) == 1 and out[requested[0]].get("status") == "error":
            return self._td_error(int(str(out[requested[0]]["code"])), str(out[requested[0]]["message"]))
        return _json(out[requested[0]] if len(requested) == 1 else out)

    def _td_series(self, name: str, q: object, utc: bool) -> dict[str, object]:
        get = q.get  # type: ignore[attr-defined]
        info = names.twelvedata(name)
        if info is None:
            return {"code": 404, "message": f"**symbol** not found: {name}. Please specify it correctly according "
                                            "to API Documentation.", "status": "error"}
        zone = dt.UTC if utc else _local_zone(info.asset_class)
        now = int(self.clock.time())
        try:
            start = _parse_naive(get("start_date"), zone) if get("start_date") else now - 86400
            end = _parse_naive(get("end_date"), zone) + 1 if get("end_date") else now + 1
        except ValueError:
            return {"code": 400, "message": "**start_date** or **end_date** is not a date", "status": "error"}
        bars = self._bars(info, start, end, forming=True)
        size = int(get("outputsize", "5000" if get("start_date") else "30"))
        bars = bars.select(np.arange(len(bars)) >= len(bars) - size)
        bars = self.ledger.apply_provider_fault(f"twelvedata:{info.name}", info.yahoo, bars, int(self.clock.time()))
        if not len(bars):
            return {"code": 400, "message": "No data is available on the specified dates. Try setting different "
                                            "start/end dates.", "status": "error"}
        decimals = max(self.market.profile(info.yahoo).decimals, 5)
        order = range(len(bars)) if get("order", "desc").lower() == "asc" else range(len(bars) - 1, -1, -1)
        values = []
        for i in order:
            row = {"datetime": _naive(int(bars.ts[i]), zone), "open": _fmt(bars.open[i], decimals),
                   "high": _fmt(bars.high[i], decimals), "low": _fmt(bars.low[i], decimals),
                   "close": _fmt(bars.close[i], decimals)}
            if info.asset_class is not AssetClass.FX:
                row["volume"] = str(int(bars.volume[i]))
            values.append(row)
        meta = {"symbol": name, "interval": "1min", "currency": "USD",
                "exchange_timezone": "UTC" if zone is dt.UTC else "America/New_York", "type": "Common Stock"}
        return {"meta": meta, "values": values, "status": "ok"}

    # -- batch quotes: Polygon's snapshot, Twelve Data's /quote ------------------------------------

    async def _polygon_snapshot(self, request: web.Request) -> web.Response:
        """`GET /v2/snapshot/locale/{us|global}/markets/{stocks|forex|crypto}/tickers?tickers=..`: one
        request of the budget for any number of tickers; unknown ones are left out."""
        if (refused := await self.polygon_gate(request, "polygon_snapshot")) is not None:
            return refused
        prefix = _SNAPSHOT_MARKETS.get((request.match_info["locale"], request.match_info["market"]))
        if prefix is None:
            return _json({"status": "ERROR", "request_id": "local", "error": "unknown market"}, status=404)
        infos = []
        for name in request.query.get("tickers", "").split(","):
            info = names.polygon(name)
            if info is not None and name.startswith(prefix) and (prefix or ":" not in name):
                infos.append(info)
        tickers = []
        for info, (price, at, volume) in zip(infos, _quotes(self.market, self.clock, infos), strict=True):
            # `min`: the bar of the minute of the last trade, up to that trade (it changes until the minute ends)
            m = self.market.minute_bars(info.yahoo, np.array([at // 60 * 60]), np.array([at % 60]))
            tickers.append({"ticker": info.name, "updated": at * 1_000_000_000,
                            "day": {"c": price, "v": volume},
                            "lastTrade": {"p": price, "s": 1, "t": at * 1_000_000_000, "x": 4},
                            "min": {"av": volume, "t": at // 60 * 60_000, "n": 1, "o": float(m.open[0]),
                                    "h": float(m.high[0]), "l": float(m.low[0]), "c": float(m.close[0]),
                                    "v": float(m.volume[0]), "vw": float(m.close[0])}})
        return _json({"count": len(tickers), "status": "OK", "tickers": tickers})

    async def _twelvedata_quote(self, request: web.Request) -> web.Response:
        """`GET /quote?symbol=A,B`: one credit per symbol, keyed by symbol when more than one."""
        requested = [n for n in request.query.get("symbol", "").split(",") if n]
        if (refused := await self.twelvedata_gate(request, "twelvedata_quote", requested)) is not None:
            return refused
        out: dict[str, object] = {}
        known = []
        for name in requested:
            if (info := names.twelvedata(name)) is not None:
                known.append((name, info))
            else:
                out[name] = {"code": 404, "message": f"**symbol** not found: {name}. Please specify it correctly "
                                                     "according to API Documentation.", "status": "error"}
        for (name, info), (price, at, volume) in zip(known, _quotes(self.market, self.clock, [i for _, i in known]), strict=True):
            decimals = max(self.market.profile(info.yahoo).decimals, 5)
            out[name] = {"symbol": name, "datetime": _naive(at, dt.UTC)[:10], "timestamp": at,
                         "close": _fmt(price, decimals), "volume": str(volume), "is_market_open": True}
        body = out[requested[0]] if len(requested) == 1 else out
        return _json(body)

    def _polygon_key(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return request.query.get("apiKey") or (auth[len("Bearer "):] if auth.startswith("Bearer ") else "")

    def _twelvedata_key(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return request.query.get("apikey") or (auth[len("apikey "):] if auth.startswith("apikey ") else "")

    # -- Polygon -------------------------------------------------------------------------------

    async def _polygon(self, request: web.Request) -> web.Response:
        if (refused := await self.polygon_gate(request, "polygon")) is not None:
            return refused
        q = request.query
        m = request.match_info
        ticker = m["ticker"]
        try:
            info = names.polygon(ticker)
            start, end = _ms_or_date(m["start"]), _ms_or_date(m["end"], end=True)
            if info is None or (m["mult"], m["span"]) != ("1", "minute"):
                raise ValueError("an unknown ticker, or not 1/minute")
        except ValueError:
            return _json({"status": "ERROR", "request_id": "local",
                          "error": "Could not parse the request: ticker, multiplier/timespan or from/to"}, status=400)
        limit = min(int(q.get("limit", "5000")), 50000)
        cursor = q.get("cursor")
        if cursor:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode())
        delay = self.delays.get("polygon", 0.0)
        bars = self._bars(info, start, end + 1, forming=True, delay_s=delay)  # `to` is inclusive
        bars = self.ledger.apply_provider_fault(f"polygon:{info.name}", info.yahoo, bars, int(self.clock.time()))
        body: dict[str, object] = {"ticker": ticker, "queryCount": len(bars), "resultsCount": min(len(bars), limit),
                                   "adjusted": True, "status": "DELAYED" if delay else "OK", "request_id": "local",
                                   "count": min(len(bars), limit)}
        if len(bars):
            page = bars.select(np.arange(len(bars)) < limit)
            body["results"] = [{"v": float(page.volume[i]), "o": float(page.open[i]), "c": float(page.close[i]),
                                "h": float(page.high[i]), "l": float(page.low[i]), "t": int(page.ts[i]) * 1000,
                                "n": 1 + int(page.volume[i]) // 100} for i in range(len(page))]
            if len(bars) > limit:
                nxt = int(bars.ts[limit])
                token = base64.urlsafe_b64encode(str(nxt).encode()).decode()
                body["next_url"] = (f"{request.scheme}://{request.host}/v2/aggs/ticker/{ticker}/range/{m['mult']}/"
                                    f"{m['span']}/{nxt * 1000}/{m['end']}?cursor={token}&limit={limit}")
        return _json(body)


def _quotes(market: Market, clock: Clock, infos: list[Instrument]) -> list[tuple[float, int, int]]:
    """(price, unix second, day volume) of each symbol's last trade, from the market's quote table."""
    if not infos:
        return []
    q = market.quotes(tuple(i.yahoo for i in infos), int(clock.time()))
    return list(zip(q.price.tolist(), q.time.tolist(), q.day_volume.astype(np.int64).tolist(), strict=True))


_SNAPSHOT_MARKETS = {("us", "stocks"): "", ("global", "forex"): "C:", ("global", "crypto"): "X:"}


def _fmt(value: float, decimals: int) -> str:
    return "NaN" if not math.isfinite(value) else f"{value:.{decimals}f}"


def _local_zone(asset_class: AssetClass) -> dt.tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/New_York") if asset_class in (AssetClass.EQUITY, AssetClass.INDEX) else dt.UTC


def _naive(ts: int, zone: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M:%S")


def _parse_naive(text: str, zone: dt.tzinfo) -> int:
    return int(dt.datetime.fromisoformat(text.replace("T", " ")).replace(tzinfo=zone).timestamp())


def _ms_or_date(text: str, end: bool = False) -> int:
    if text.isdigit():
        return int(text) // 1000
    day = dt.date.fromisoformat(text)
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return start + 86400 - 1 if end else start
