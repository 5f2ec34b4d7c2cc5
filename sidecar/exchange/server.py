"""The local exchange's HTTP face: Yahoo's chart endpoint in Yahoo's format, plus an admin
API under `/_exchange/` to inject faults and read the ground truth of what was served.

Yahoo chart: `GET /v8/finance/chart/{symbol}?interval=1m&period1=..&period2=..` (or `range=`),
answered as `../shared/providers.md` section 1.1 describes: parallel arrays, nulls for
minutes without trades or no entry at all, the forming bar last, `chart.error` bodies on
400/404/422, and Yahoo's plain-text 429.
"""

from __future__ import annotations

import re
import secrets
import weakref
from collections.abc import Awaitable, Callable

import numpy as np
import orjson
from aiohttp import web

from ..clock import Clock, SystemClock
from ..symbols import AssetClass
from . import actions, chart
from .ledger import BAR_FAULTS, META_FAULTS, QUOTE_ENDPOINT, RESPONSE_FAULTS, Ledger
from .market import Market, MinuteBars
from .providers import Limits, ProviderEndpoints
from .quote import BatchQuotes
from .reference import Reference
from .reference_api import ReferenceEndpoints
from .sessions import DAY

_YAHOO_SYMBOL = re.compile(r"^\^?[A-Z0-9][A-Z0-9.\-]{0,14}(=X|=F)?$")


class Exchange:
    """The exchange application: serves the market and remembers what it served.

    :param market: the simulated market.
    :param clock: wall time decides which bars are closed and which one is forming.
    :param slow_s: how long a `slow` fault holds its response.
    :param keys: API keys accepted per provider (default: "local" for each).
    :param limits: each key's budget per provider (default: the free plans).
    """

    def __init__(self, market: Market, *, clock: Clock | None = None, slow_s: float = 3.0,
                 keys: dict[str, set[str]] | None = None, limits: dict[str, Limits] | None = None,
                 delays: dict[str, float] | None = None) -> None:
        self.market = market
        self.clock = clock or SystemClock()
        self.ledger = Ledger(slow_s)
        # the ledger's records, under the names tests and the admin endpoints read
        self.served, self.fault_log, self.requests = self.ledger.served, self.ledger.fault_log, self.ledger.requests
        self.down_until, self.garble = self.ledger.down_until, self.ledger.garble
        self.chart_log: list[tuple[str, int, int]] = []  # (symbol, start, end) of each chart answer
        self.request_times: list[float] = []  # wall time of every chart request, answered or not
        # (wall time, symbol, User-Agent) of every chart request: which client asked for what
        self.chart_clients: list[tuple[float, str, str]] = []
        self.quote_clients: list[tuple[float, str]] = []  # (wall time, User-Agent) of every batch quote request
        self._runner: web.AppRunner | None = None
        self.url: str | None = None  # set by start()
        self.connections = 0  # connections clients opened (a client that keeps them alive opens few)
        self._seen: weakref.WeakSet[object] = weakref.WeakSet()  # the open ones that made a request
        self.app = web.Application(middlewares=[self._count_connection, self._malformed])
        self.app.router.add_get("/v8/finance/chart/{symbol}", self._chart)
        self.app.router.add_get("/", self._cookie)  # what fc.yahoo.com does: set the A3 cookie
        self.app.router.add_get("/v1/test/getcrumb", self._getcrumb)
        self.app.router.add_get("/v7/finance/quote", self._quote)
        self._cookies: dict[str, str] = {}  # A3 cookie -> its crumb
        self._quote_lists: dict[str, tuple[str, ...]] = {}  # a batch quote's `symbols` -> the valid ones
        self.quote_log: list[tuple[float, int]] = []  # (wall time, symbols asked) of each quote request
        self.app.router.add_post("/_exchange/faults", self._post_fault)
        self.app.router.add_get("/_exchange/faults", self._get_faults)
        self.app.router.add_get("/_exchange/served", self._get_served)
        self.app.router.add_get("/_exchange/truth", self._get_truth)
        self.app.router.add_get("/_exchange/stats", self._get_stats)
        self.app.router.add_post("/_exchange/outage", self._post_outage)
        self.revisions: dict[tuple[str, int], float] = {}  # (Yahoo symbol, minute) -> price factor
        self.providers = ProviderEndpoints(market, self.clock, self.ledger, keys=keys, limits=limits, delays=delays)
        self.providers.mount(self.app)
        self.reference = Reference(market.seed)
        self.quotes = BatchQuotes(market, self.reference, self.ledger)
        self.providers.reference = ReferenceEndpoints(self.reference, self.providers, self._yahoo_auth)
        self.providers.reference.mount(self.app)
        self.actions = actions.Actions(market, self.clock)
        actions.mount(self.app, self.actions)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 picks a free port); `url` is then the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"

    async def close(self) -> None:
        """Stop listening (idempotent; nothing is held to flush)."""
        await self.quotes.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> dict[str, object]:
        """`listening` (with its URL) or `stopped`, and requests answered per provider path."""
        return {"state": "listening" if self._runner is not None else "stopped", "url": self.url,
                "requests": dict(self.requests), "faults_served": len(self.fault_log)}

    # -- faults and truth -------------------------------------------------------------------

    def inject(self, symbol: str, kind: str, count: int = 1) -> None:
        """Queue `count` faults of `kind` for the next responses about a Yahoo symbol (or a
        `provider:NAME`, `@provider`, `@quote` key)."""
        self.ledger.inject(symbol, kind, count)

    @web.middleware
    async def _count_connection(self, request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Count each connection at its first request."""
        connection = request.transport
        if connection is not None and connection not in self._seen:
            self._seen.add(connection)
            self.connections += 1
        return await handler(request)

    @web.middleware
    async def _malformed(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """A `malformed_json` fault on a provider endpoint: half of the body it was going to send."""
        response = await handler(request)
        if id(request) in self.garble:
            self.garble.discard(id(request))
            if isinstance(response, web.Response) and response.body:
                body = bytes(response.body)  # type: ignore[arg-type]
                response.body = body[: len(body) // 2]
        return response

    def truth(self, symbol: str, start: int, end: int) -> MinuteBars:
        """The closed one-minute bars with trades in [start, end), as the market made them."""
        first = -(-start // 60) * 60
        ts = np.arange(first, end, 60, dtype=np.int64)
        ts = ts[(ts + 60 <= int(self.clock.time())) & self.market.trading(symbol, ts)]
        bars = self._revised(symbol, self.market.minute_bars(symbol, ts))
        return bars.select(bars.traded)

    def traded(self, symbol: str, minute: int) -> bool:
        """Whether the market has trades in a minute (a quiet one never gets a bar)."""
        ts = np.array([minute // 60 * 60], dtype=np.int64)
        return bool(self.market.trading(symbol, ts)[0] and self.market.minute_bars(symbol, ts).traded[0])

    def revise(self, symbol: str, ts: int, factor: float = 1.001) -> None:
        """Change a Yahoo symbol's bar of minute `ts` from now on, as a provider correcting a
        settled bar does (late prints): prices scaled by `factor`, volume up by one share. The
        truth and every later chart answer show the new values."""
        self.revisions[(symbol, ts)] = factor

    def _revised(self, symbol: str, bars: MinuteBars) -> MinuteBars:
        """`bars` with the revisions of `symbol` applied (minutes that have ended only)."""
        if not self.revisions:
            return bars
        now = int(self.clock.time())
        for i, ts in enumerate(bars.ts.tolist()):
            factor = self.revisions.get((symbol, ts))
            if factor is not None and ts + 60 <= now:
                for name in ("open", "high", "low", "close"):
                    getattr(bars, name)[i] = round(float(getattr(bars, name)[i]) * factor, 6)
                bars.volume[i] += 1
        return bars

    # -- Yahoo chart --------------------------------------------------------------------------

    async def _chart(self, request: web.Request) -> web.Response:
        self.requests["chart"] += 1
        self.request_times.append(self.clock.time())
        symbol = request.match_info["symbol"]
        self.chart_clients.append((self.request_times[-1], symbol, request.headers.get("User-Agent", "")))
        if self.clock.time() < self.down_until.get("yahoo", 0.0):
            return web.Response(status=503, text="Service Unavailable")
        if not _YAHOO_SYMBOL.fullmatch(symbol):
            return chart.error(404, "Not Found", "No data found, symbol may be delisted")
        fault = self.ledger.take(symbol, RESPONSE_FAULTS)
        if (faulted := await self.ledger.fault_response(fault)) is not None:
            return faulted

        q = request.query
        interval = q.get("interval", "1m")
        if interval not in chart.INTERVALS:
            return chart.error(400, "Bad Request", f"Invalid input - interval={interval} is not supported. "
                                f"Valid intervals: [{', '.join(chart.INTERVALS)}]")
        if interval not in chart.SERVED_INTERVALS:
            return chart.error(400, "Bad Request", f"Invalid input - interval={interval} is not served by the local exchange")
        now = int(self.clock.time())
        try:
            start, end, range_name = chart.window(q, now)
        except ValueError as exc:
            return chart.error(400, "Bad Request", f"Invalid input - {exc}")
        step = chart.SERVED_INTERVALS[interval]
        self.chart_log.append((symbol, start, end))
        days_back = chart.HOW_FAR_BACK_DAYS.get(interval, 60)
        if interval == "1m" and end - start > 8 * 86400:
            return chart.error(422, "Unprocessable Entity",
                                f"1m data not available for startTime={start} and endTime={end}. "
                                "Only 7 days worth of 1m granularity data are allowed to be fetched per request.")
        if start < now - days_back * 86400:
            return chart.error(422, "Unprocessable Entity",
                                f"{interval} data not available for startTime={start} and endTime={end}. "
                                f"The requested range must be within the last {days_back} days.")
        bare = self.ledger.take(symbol, META_FAULTS) is not None
        body = self._chart_body(symbol, interval, step, start, end, now, range_name,
                                fault=self.ledger.take(symbol, BAR_FAULTS), bare=bare,
                                events=frozenset(q.get("events", "").split(",")))
        if fault == "malformed_json":
            body = body[: len(body) // 2]
        return web.Response(body=body, content_type="application/json")

    def _chart_body(self, symbol: str, interval: str, step: int, start: int, end: int, now: int,
                    range_name: str, fault: str | None, bare: bool = False, events: frozenset[str] = frozenset()) -> bytes:
        m = self.market
        profile = m.profile(symbol)
        ts = np.arange(-(-start // 60) * 60, end, 60, dtype=np.int64)
        ts = ts[(ts <= now) & m.trading(symbol, ts)]
        upto = np.minimum(now - ts, 59)
        bars = self._revised(symbol, m.minute_bars(symbol, ts, upto_second=upto))
        closed = ts + 60 <= now
        if step == 60:
            self.ledger.record_served(symbol, bars, closed)
            rows = chart.rows_1m(m, symbol, bars)
        else:
            rows = chart.rows_aggregated(bars, step, chart.anchors(m, symbol, bars.ts, step))

        session_start, session_end = m.regular_period(symbol, now)
        if (not m.always_open and profile.asset_class is AssetClass.EQUITY and step == 60
                and start <= session_end < end and session_end <= now and len(rows["ts"])):
            # Yahoo appends a zero-volume print stamped exactly at the close.
            last = rows["close"][-1] if rows["close"][-1] is not None else bars.close[bars.traded][-1]
            for key, value in (("ts", session_end), ("open", last), ("high", last), ("low", last),
                               ("close", last), ("volume", 0)):
                rows[key].append(value)
        if fault is not None:
            self._apply_bar_fault(symbol, rows, fault, now)

        traded_closes = bars.close[bars.traded]
        meta = chart.meta(m, symbol, interval, range_name, now,
                          float(traded_closes[-1]) if len(traded_closes) else None, bare)
        result: dict[str, object] = {"meta": meta}
        if rows["ts"]:
            stamps = rows.pop("ts")
            result["timestamp"] = stamps
            result["indicators"] = {"quote": [rows]}
            if step >= DAY:  # Yahoo's adjusted close comes with daily bars only
                factor = self.actions.adjustment(symbol, np.array(stamps), now).tolist()
                result["indicators"]["adjclose"] = [{"adjclose": [  # type: ignore[index]
                    None if c is None else c * f for c, f in zip(rows["close"], factor, strict=True)]}]
        else:
            result["indicators"] = {"quote": [{}]}
        happened = self.actions.events(symbol, start, min(end, now + 1)) if events & {"div", "split", "splits"} else {}
        if happened:
            result["events"] = {k: v for k, v in happened.items() if k[:3] in {e[:3] for e in events}}
        body = orjson.dumps({"chart": {"result": [result], "error": None}})
        return body.replace(repr(chart.NAN_MARK).encode(), b"NaN")

    def _apply_bar_fault(self, symbol: str, rows: dict[str, list], kind: str, now: int) -> None:
        """Corrupt the newest closed bar with trades; the truth of that minute stays unserved."""
        candidates = [i for i, t in enumerate(rows["ts"]) if t + 60 <= now and rows["close"][i] is not None]
        if not candidates:
            self.ledger.put_back(symbol, kind)  # try again on the next response
            return
        i = candidates[-1]
        ts = rows["ts"][i]
        self.served[symbol].pop(ts, None)
        chart.corrupt(rows, i, kind, now)
        self.fault_log.append({"symbol": symbol, "kind": kind, "ts": ts, "served_ts": rows["ts"][i],
                               "values": [rows[k][i] for k in ("open", "high", "low", "close", "volume")]})

    # -- Yahoo batch quote, with its cookie and crumb ----------------------------------------------

    async def _cookie(self, request: web.Request) -> web.Response:
        cookie = secrets.token_urlsafe(24)
        self._cookies[cookie] = ""
        response = web.Response(status=404, text="Not Found")  # fc.yahoo.com answers 404 too; the cookie is the point
        response.set_cookie("A3", cookie, httponly=True)
        return response

    async def _getcrumb(self, request: web.Request) -> web.Response:
        self.requests["getcrumb"] += 1
        if self.ledger.take(QUOTE_ENDPOINT, frozenset({"http_429"})):
            return web.Response(status=429, text="Too Many Requests")
        cookie = request.cookies.get("A3", "")
        if cookie not in self._cookies:
            return web.Response(status=401, text="")
        crumb = self._cookies[cookie] = secrets.token_urlsafe(8).replace(".", "")
        return web.Response(text=crumb, content_type="text/plain")

    async def _quote(self, request: web.Request) -> web.Response:
        self.requests["quote"] += 1
        now = self.clock.time()
        self.quote_clients.append((now, request.headers.get("User-Agent", "")))
        if now < self.down_until.get("yahoo", 0.0):
            return web.Response(status=503, text="Service Unavailable")
        fault = self.ledger.take(QUOTE_ENDPOINT, RESPONSE_FAULTS)
        if fault == "invalid_crumb" or not self._yahoo_auth(request):
            error = {"finance": {"result": None, "error": {"code": "Unauthorized", "description": "Invalid Crumb"}}}
            return web.Response(status=401, body=orjson.dumps(error), content_type="application/json")
        if (faulted := await self.ledger.fault_response(fault)) is not None:
            return faulted
        symbols = self._quoted(request.query.get("symbols", ""))
        self.quote_log.append((now, len(symbols)))
        body = self.quotes.body(symbols, int(now))
        self.quotes.prepare_next_minute(symbols, int(now))
        if fault == "malformed_json":
            body = body[: len(body) // 2]
        return web.Response(body=body, content_type="application/json")

    def _quoted(self, raw: str) -> tuple[str, ...]:
        """The symbols of a batch quote's `symbols` list. Unknown or malformed ones are left out,
        as Yahoo does: no per-symbol error. Kept per list: a poller asks the same lists every
        second, and checking 500 symbols cost 0.21 ms of each answer's ~2 ms."""
        symbols = self._quote_lists.get(raw)
        if symbols is None:
            if len(self._quote_lists) >= 1024:
                self._quote_lists.clear()
            symbols = self._quote_lists[raw] = tuple(s for s in raw.split(",") if _YAHOO_SYMBOL.fullmatch(s))
        return symbols

    def _yahoo_auth(self, request: web.Request) -> bool:
        """Whether the request carries a cookie this exchange set and that cookie's crumb."""
        crumb = request.query.get("crumb", "")
        return bool(crumb) and self._cookies.get(request.cookies.get("A3", "")) == crumb

    # -- admin ---------------------------------------------------------------------------------

    async def _post_fault(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            self.inject(str(body["symbol"]), str(body["kind"]), int(body.get("count", 1)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"expected {{symbol, kind, count}}: {exc}") from None
        return web.json_response({"queued": body["kind"], "symbol": body["symbol"]})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.fault_log), content_type="application/json")

    async def _get_served(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        rows = [[ts, *values] for ts, values in sorted(self.served.get(symbol, {}).items())]
        return web.Response(body=orjson.dumps({"symbol": symbol, "bars": rows}), content_type="application/json")

    async def _get_truth(self, request: web.Request) -> web.Response:
        try:
            symbol = request.query["symbol"]
            start, end = int(request.query["start"]), int(request.query["end"])
        except (KeyError, ValueError):
            raise web.HTTPBadRequest(text="expected symbol, start and end (unix seconds)") from None
        if end - start > 90 * 86400:
            raise web.HTTPBadRequest(text="at most 90 days per request")
        b = self.truth(symbol, start, end)
        rows = np.column_stack([b.ts, b.open, b.high, b.low, b.close, b.volume]).tolist()
        return web.Response(body=orjson.dumps({"symbol": symbol, "bars": rows}), content_type="application/json")

    def outage(self, seconds: float, provider: str = "yahoo") -> None:
        """Answer every request to `provider` with 503 for the next `seconds` (0 ends an outage)."""
        self.ledger.outage(provider, self.clock.time() + seconds)

    async def _post_outage(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            seconds, provider = float(body["seconds"]), str(body.get("provider", "yahoo"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='expected {"seconds": N, "provider": "yahoo"}') from None
        self.outage(seconds, provider)
        return web.json_response({"down_until": self.down_until[provider], "provider": provider})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": dict(self.requests), "connections": self.connections})
