"""The reference endpoints of the local exchange, in each provider's format and behind the
same faults, keys and budgets as its bar endpoints (providers.md 8.3, 8.4):

- Yahoo `GET /v10/finance/quoteSummary/{symbol}` (crumb and cookie, as the batch quote);
- Polygon `GET /v3/reference/tickers/{ticker}`;
- Alpha Vantage `function=ETF_PROFILE` and `function=EARNINGS_CALENDAR` on `/query`
  (dispatched here by the Alpha Vantage handler once the key and budget passed);
- Twelve Data `GET /earnings_calendar` (40 credits a request);
- admin: `GET /_exchange/earnings?start=&end=` (the schedule: the tests' oracle) and
  `POST /_exchange/earnings` `{"symbol", "date", "time", "estimate"}` (move a report).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from . import names
from .providers import ProviderEndpoints
from .reference import Reference

TD_CALENDAR_CREDITS = 40
REFERENCE_FUNCTIONS = frozenset({"ETF_PROFILE", "EARNINGS_CALENDAR"})


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class ReferenceEndpoints:
    """Reference routes over one `Reference` (instruments and the earnings schedule).

    :param reference: the data.
    :param providers: the bar endpoints' keys, budgets and faults, shared.
    :param yahoo_auth: whether a request carries a valid Yahoo cookie and crumb.
    :param av_time_column: whether the earnings CSV has the newer `timeOfTheDay` column.
    """

    def __init__(self, reference: Reference, providers: ProviderEndpoints,
                 yahoo_auth: Callable[[web.Request], bool], av_time_column: bool = True) -> None:
        self.reference, self.providers, self.yahoo_auth = reference, providers, yahoo_auth
        self.av_time_column = av_time_column

    def mount(self, app: web.Application) -> None:
        """Add the routes to the exchange's application."""
        app.router.add_get("/v10/finance/quoteSummary/{symbol}", self._quote_summary)
        app.router.add_get("/v3/reference/tickers/{ticker}", self._polygon_ticker)
        app.router.add_get("/earnings_calendar", self._twelvedata_calendar)
        app.router.add_get("/_exchange/earnings", self._get_earnings)
        app.router.add_post("/_exchange/earnings", self._post_earnings)

    def today(self) -> dt.date:
        """The exchange's date (New York)."""
        return dt.datetime.fromtimestamp(self.providers.clock.time(), ZoneInfo("America/New_York")).date()

    async def _quote_summary(self, request: web.Request) -> web.Response:
        p = self.providers
        p.ledger.requests["quote_summary"] += 1
        if (early := await p._respond_fault(p._common_fault("yahoo"), request)) is not None:
            return early
        if not self.yahoo_auth(request):
            error = {"finance": {"result": None, "error": {"code": "Unauthorized", "description": "Invalid Crumb"}}}
            return _json(error, status=401)
        symbol = request.match_info["symbol"]
        category = self.reference.category(symbol)
        if category is None:
            return _json({"quoteSummary": {"result": None, "error": {
                "code": "Not Found", "description": "No fundamentals data found for any of the "
                                                   f"summaryTypes={request.query.get('modules', '')}"}}}, status=404)
        fund = self.reference.yahoo_quote(symbol)
        assets, expense = float(fund["netAssets"]), float(fund["netExpenseRatio"])  # type: ignore[arg-type]
        result = {"fundProfile": {"family": str(fund["longName"]).split(" ")[0], "categoryName": category,
                                  "legalType": "Exchange Traded Fund",
                                  "feesExpensesInvestment": {"annualReportExpenseRatio": expense / 100}},
                  "defaultKeyStatistics": {"totalAssets": assets, "category": category}}
        return _json({"quoteSummary": {"result": [result], "error": None}})

    async def _polygon_ticker(self, request: web.Request) -> web.Response:
        if (refused := await self.providers.polygon_gate(request, "polygon_reference")) is not None:
            return refused
        ticker = request.match_info["ticker"]
        info = names.polygon(ticker)
        doc = None if info is None else self.reference.polygon_ticker(ticker, info.yahoo)
        if doc is None:
            return _json({"status": "NOT_FOUND", "request_id": "local",
                          "message": "Ticker not found."}, status=404)
        return _json({"results": doc, "status": "OK", "request_id": "local"})

    def alphavantage(self, function: str, q: Mapping[str, str]) -> web.Response:
        """An Alpha Vantage reference function (key and budget already checked)."""
        if function == "ETF_PROFILE":
            profile = self.reference.etf_profile(q.get("symbol", ""))
            if profile is None:  # what Alpha Vantage sends for a symbol that is no fund
                return _json({})
            return _json(profile)
        csv = self.reference.alphavantage_csv(self.today(), q.get("horizon", "3month"), q.get("symbol", ""),
                                              time_column=self.av_time_column)
        return web.Response(body=csv.encode(), content_type="text/csv")

    async def _twelvedata_calendar(self, request: web.Request) -> web.Response:
        p = self.providers
        if (refused := await p.twelvedata_gate(request, "twelvedata_earnings", ["credit"] * TD_CALENDAR_CREDITS)):
            return refused
        q = request.query
        try:
            start = dt.date.fromisoformat(q["start_date"]) if "start_date" in q else self.today()
            end = dt.date.fromisoformat(q["end_date"]) if "end_date" in q else start + dt.timedelta(days=7)
        except ValueError:
            return p._td_error(400, "**start_date** or **end_date** is not a date in YYYY-MM-DD")
        return _json(self.reference.twelvedata_calendar(start, end))

    async def _get_earnings(self, request: web.Request) -> web.Response:
        q = request.query
        start = dt.date.fromisoformat(q.get("start", self.today().isoformat()))
        end = dt.date.fromisoformat(q.get("end", (start + dt.timedelta(days=90)).isoformat()))
        return _json([{"symbol": r.symbol, "date": r.date.isoformat(), "time": r.time, "estimate": r.estimate}
                      for r in self.reference.reports(start, end)])

    async def _post_earnings(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            date = dt.date.fromisoformat(body["date"]) if body.get("date") else None
            self.reference.set_report(str(body["symbol"]), date, str(body.get("time", "")), body.get("estimate", 1.0))
        except (ValueError, KeyError, TypeError) as exc:
            return _json({"error": f"expected symbol, date, time, estimate: {exc}"}, status=400)
        return _json({"ok": True})
