"""The daemon's HTTP server (aiohttp), bound to 127.0.0.1 unless configured otherwise.

    GET /health                    JSON health document; 503 when status is "down"
    GET /metrics                   Prometheus text format
    GET /bars/{symbol}             closed bars from Redis: ?tf=1m&start=&end=&limit=
    GET /bars/{symbol}/latest      the newest bar (forming or closed)
    GET /features/{symbol}         the newest features: ?tf=1m
    GET /signals                   signals from the stream: ?since=<epoch s>&limit=
    GET /symbols                   the symbols followed, with asset class, provider names and the
                                   symbols table's type, name, exchange, fund size: ?type=etf&universe=U
    GET /earnings                  releases not yet out within ?days=7 (the symbols followed)
    POST /symbols                  {"add": [...], "remove": [...]}: change them while running

A malformed symbol or parameter gets 400 with a one-line JSON message, a symbol the daemon
does not follow 404 (a cluster member serves the reads of every symbol of the cluster), a body
over 256 kB 413, an unknown path 404 and a wrong method 405, all as JSON `{"error": ...}`; an
unexpected error is logged and answered 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..clock import Clock
from ..errors import RedisStoreError, SymbolError
from ..features.codec import FeatureCodec
from ..metrics import Metrics
from ..reference import ReferenceData, parse_type
from ..setting_parsers import parse_number
from ..stores import RedisStore
from ..symbols import SymbolInfo, parse_symbol
from .status import PAGE

log = logging.getLogger(__name__)

MAX_LIMIT = 5000
MAX_BODY = 256 * 1024  # a POST /symbols of 10,000 symbols fits; more is refused with 413
MAX_LINE = 32 * 1024  # request lines and headers up to this reach the handlers (which answer in JSON)
FUTURE_SLACK_S = 86400  # a `since` further ahead than this is a mistake, not a query


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(cls: type[web.HTTPClientError], message: str) -> web.HTTPClientError:
    return cls(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


def _bad_request(message: str) -> web.HTTPClientError:
    return _error(web.HTTPBadRequest, message)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(s, str) for s in value)


@web.middleware
async def _json_errors(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every error as a one-line JSON body: aiohttp's own (404, 405, 413) and unexpected ones."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return _json({"error": exc.reason if exc.status != 413 else f"body over {MAX_BODY} bytes"},
                     status=exc.status)
    except Exception:
        log.exception("internal error serving %s", request.path[:200])
        return _json({"error": "internal error"}, status=500)


class HttpServer:
    """Serves health, metrics and bar reads.

    :param host: listen address.
    :param port: listen port (0 picks one).
    :param health: returns the health document.
    :param metrics: the daemon's metrics.
    :param redis: where bars are read from.
    :param symbols: the symbols the daemon follows (its live mapping, read on each request).
    :param clock: the default `since` of /signals is an hour before now.
    :param update_symbols: adds and removes symbols; returns the list afterwards.
    :param broker_symbols: broker names by canonical symbol.
    :param timeframes: the timeframes built; `tf` must be one of them.
    :param readable: symbols whose bars and features may be read besides those followed: a
        cluster member serves every symbol of the cluster, all members writing one Redis.
    """

    def __init__(self, *, host: str, port: int, health: Callable[[], dict[str, Any]], metrics: Metrics,
                 redis: RedisStore, symbols: Mapping[str, SymbolInfo], clock: Clock,
                 update_symbols: Callable[[list[str], list[str]], Awaitable[list[str]]],
                 broker_symbols: Mapping[str, str], timeframes: Sequence[str] = ("1m",),
                 reference: ReferenceData | None = None,
                 universe: Callable[[str], Sequence[str]] | None = None,
                 status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 readable: Container[str] | None = None) -> None:
        self.host, self.port, self.clock = host, port, clock
        self._readable: Container[str] = frozenset() if readable is None else readable
        self.reference, self._universe, self._status = reference, universe, status
        self.timeframes = tuple(timeframes)
        self._update_symbols, self._broker = update_symbols, broker_symbols
        self._health, self._metrics, self._redis, self._symbols = health, metrics, redis, symbols
        self._runner: web.AppRunner | None = None
        # Longer lines than aiohttp's default (8 kB) reach the handlers, so a hostile 10 kB
        # symbol gets the JSON 400 every other bad input gets instead of a bare parser error.
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors],
                                   handler_args={"max_line_size": MAX_LINE, "max_field_size": MAX_LINE})
        self.app.router.add_get("/", self._get_page)
        self.app.router.add_get("/status", self._get_page)
        self.app.router.add_get("/status.json", self._get_status)
        self.app.router.add_get("/health", self._get_health)
        self.app.router.add_get("/metrics", self._get_metrics)
        self.app.router.add_get("/bars/{symbol}", self._get_bars)
        self.app.router.add_get("/bars/{symbol}/latest", self._get_latest)
        self.app.router.add_get("/features/{symbol}", self._get_features)
        self.app.router.add_get("/signals", self._get_signals)
        self.app.router.add_get("/symbols", self._get_symbols)
        self.app.router.add_post("/symbols", self._post_symbols)
        self.app.router.add_get("/earnings", self._get_earnings)

    async def start(self) -> None:
        """Listen; `port` becomes the bound port (when 0 was asked for)."""
        # Requests still open at shutdown get 2 s (aiohttp's default is 60 s, past any supervisor's patience).
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.host, self.port = self._runner.addresses[0][:2]

    async def close(self) -> None:
        """Stop listening and finish open requests (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def health(self) -> dict[str, object]:
        """Whether it listens, and where."""
        return {"state": "ok" if self._runner is not None else "down", "address": f"{self.host}:{self.port}"}

    async def _get_page(self, request: web.Request) -> web.Response:
        if self._status is None:
            return _json({"error": "no status page here"}, status=404)
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy":
                                     "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    async def _get_status(self, request: web.Request) -> web.Response:
        if self._status is None:
            return _json({"error": "no status page here"}, status=404)
        return _json(await self._status())

    async def _get_health(self, request: web.Request) -> web.Response:
        doc = self._health()
        return _json(doc, status=503 if doc["status"] == "down" else 200)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self._metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    def _symbol(self, request: web.Request) -> str:
        try:
            symbol = parse_symbol(request.match_info["symbol"])
        except SymbolError as exc:
            raise _bad_request(str(exc)) from None
        if symbol not in self._symbols and symbol not in self._readable:
            raise _error(web.HTTPNotFound, f"symbol {symbol} is not followed")
        return symbol

    def _timeframe(self, request: web.Request) -> str:
        tf = request.query.get("tf", "1m")
        if tf not in self.timeframes:
            raise _bad_request(f"tf must be one of {', '.join(self.timeframes)} (SIDECAR_TIMEFRAMES), "
                               f"got {tf[:40]!r}")
        return tf

    @staticmethod
    def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            return int(parse_number(raw, int, lo, hi))
        except ValueError as exc:
            raise _bad_request(f"{name}: {exc}") from None

    async def _get_bars(self, request: web.Request) -> web.Response:
        symbol, tf = self._symbol(request), self._timeframe(request)
        start = self._int_param(request, "start", 0, 0, 2**40)
        end = self._int_param(request, "end", 2**40, 0, 2**40)
        limit = self._int_param(request, "limit", 500, 1, MAX_LIMIT)
        if start > end:
            raise _bad_request("start must not be after end")
        try:
            bars = await self._redis.history(symbol, tf, start, end, limit)
        except RedisStoreError as exc:
            return _json({"error": str(exc)}, status=503)
        return _json({"symbol": symbol, "tf": tf, "bars": [b.as_map() for b in bars]})

    async def _get_latest(self, request: web.Request) -> web.Response:
        symbol, tf = self._symbol(request), self._timeframe(request)
        try:
            bar = await self._redis.latest(symbol, tf)
        except RedisStoreError as exc:
            return _json({"error": str(exc)}, status=503)
        if bar is None:
            return _json({"error": f"no {tf} bar for {symbol} yet"}, status=404)
        return _json(bar.as_map())

    async def _get_features(self, request: web.Request) -> web.Response:
        symbol, tf = self._symbol(request), self._timeframe(request)
        try:
            (raw,) = await self._redis.features([symbol], tf)
        except RedisStoreError as exc:
            return _json({"error": str(exc)}, status=503)
        if raw is None:
            return _json({"error": f"no fresh {tf} features for {symbol}"}, status=404)
        return _json({"symbol": symbol, **FeatureCodec.to_map(raw)})

    async def _get_signals(self, request: web.Request) -> web.Response:
        raw = request.query.get("since")
        now = self.clock.time()
        try:
            since = float(parse_number(raw, float, 0, now + FUTURE_SLACK_S)) if raw is not None else now - 3600
        except ValueError as exc:
            raise _bad_request(f"since (epoch seconds, not in the future): {exc}") from None
        limit = self._int_param(request, "limit", 1000, 1, 10_000)
        try:
            signals = await self._redis.signals(int(since * 1000), limit)
        except RedisStoreError as exc:
            return _json({"error": str(exc)}, status=503)
        return _json({"since": since, "signals": signals})

    async def _get_symbols(self, request: web.Request) -> web.Response:
        names = list(self._symbols)
        if "universe" in request.query and self._universe is not None:
            try:
                members = set(self._universe(request.query["universe"][:64]))
            except ValueError as exc:
                raise _bad_request(str(exc)) from None
            names = [n for n in names if n in members]
        rows = {r["symbol"]: r for r in self.reference.listing(names)} if self.reference is not None else {}
        kind = request.query.get("type")
        if kind is not None:
            try:
                kind = parse_type(kind[:16])
            except ValueError as exc:
                raise _bad_request(str(exc)) from None
            names = [n for n in names if rows.get(n, {}).get("type") == kind]
        return _json({"symbols": [
            {**rows.get(n, {}), "symbol": n, "asset_class": str(self._symbols[n].asset_class),
             "yahoo": self._symbols[n].yahoo, "broker": self._broker.get(n, n)} for n in names]})

    async def _get_earnings(self, request: web.Request) -> web.Response:
        days = self._int_param(request, "days", 7, 0, 366)
        if self.reference is None:
            return _json({"error": "reference data is off (SIDECAR_REFERENCE_DATA)"}, status=503)
        return _json({"days": days, "synced_age_s": self.reference.health()["earnings"]["synced_age_s"],  # type: ignore[index]
                      "earnings": self.reference.upcoming(days, list(self._symbols))})

    async def _post_symbols(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        add = body.get("add", []) if isinstance(body, dict) else None
        remove = body.get("remove", []) if isinstance(body, dict) else None
        if not (_strings(add) and _strings(remove)):
            raise _bad_request('expected {"add": [symbols], "remove": [symbols]}')
        assert isinstance(add, list) and isinstance(remove, list)
        if len(add) > 10_000 or len(remove) > 10_000:
            raise _bad_request("at most 10000 symbols per request")
        try:
            symbols = await self._update_symbols(add, remove)
        except SymbolError as exc:
            raise _bad_request(str(exc)) from None
        return _json({"symbols": symbols})
