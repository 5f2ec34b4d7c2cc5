"""Reference data on the local exchange: what each provider says an instrument is, and the
earnings calendar (providers.md 8.3, 8.4), deterministic from the market's seed.

- Yahoo's batch quote carries `quoteType`, names, exchange, and for ETFs `netAssets` and
  `netExpenseRatio` (percent); `/v10/finance/quoteSummary` adds the fund's category.
- Polygon `GET /v3/reference/tickers/{ticker}`: `type` (CS, ETF, ETN, INDEX), `market`, names.
- Alpha Vantage `function=ETF_PROFILE` (ratios as fractions, all strings) and
  `function=EARNINGS_CALENDAR` (CSV, the newer `timeOfTheDay` column included).
- Twelve Data `GET /earnings_calendar` (40 credits a request), grouped by date.

A ticker starting `ZZ` stands for a delisted instrument: Yahoo says `NONE`, Polygon 404. The
earnings schedule is seeded per company (one report a quarter) and can be overridden by a test
(`set_report`), which is the ground truth the daemon's flags are checked against.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache

from ..symbols import AssetClass
from .names import asset_class_of


@dataclass(slots=True, frozen=True)
class Fund:
    """An exchange-traded fund (or note) as the providers describe it."""

    name: str
    category: str
    net_assets: float  # dollars
    expense_pct: float  # percent a year (Yahoo's unit; Alpha Vantage sends the fraction)
    exchange: str = "ARCX"  # Polygon's primary exchange (MIC)
    note: bool = False  # an exchange-traded note: Polygon says ETN


def _funds(family: str, rows: str, category_default: str = "", expense: float = 0.0) -> dict[str, Fund]:
    out = {}
    for line in rows.strip().splitlines():
        sym, name, category, assets, *rest = [p.strip() for p in line.split("|")]
        out[sym] = Fund(f"{family} {name}".strip(), category or category_default, float(assets) * 1e9,
                        float(rest[0]) if rest else expense)
    return out


FUNDS: dict[str, Fund] = {
    **_funds("", """
SPY|SPDR S&P 500 ETF Trust|Large Blend|630|0.0945
QQQ|Invesco QQQ Trust|Large Growth|360|0.20
IWM|iShares Russell 2000 ETF|Small Blend|65|0.19
DIA|SPDR Dow Jones Industrial Average ETF Trust|Large Value|33|0.16
VTI|Vanguard Total Stock Market ETF|Large Blend|490|0.03
VUG|Vanguard Growth ETF|Large Growth|190|0.04
IWF|iShares Russell 1000 Growth ETF|Large Growth|120|0.18
SCHG|Schwab U.S. Large-Cap Growth ETF|Large Growth|46|0.04
SPYG|SPDR Portfolio S&P 500 Growth ETF|Large Growth|40|0.04
MGK|Vanguard Mega Cap Growth ETF|Large Growth|29|0.07
VONG|Vanguard Russell 1000 Growth ETF|Large Growth|32|0.07
IVW|iShares S&P 500 Growth ETF|Large Growth|63|0.18
VTV|Vanguard Value ETF|Large Value|140|0.04
IWD|iShares Russell 1000 Value ETF|Large Value|63|0.19
SCHV|Schwab U.S. Large-Cap Value ETF|Large Value|13|0.04
SPYV|SPDR Portfolio S&P 500 Value ETF|Large Value|28|0.04
MGV|Vanguard Mega Cap Value ETF|Large Value|9.9|0.07
VONV|Vanguard Russell 1000 Value ETF|Large Value|13|0.07
IVE|iShares S&P 500 Value ETF|Large Value|40|0.18
RPV|Invesco S&P 500 Pure Value ETF|Large Value|1.4|0.35
"""),
    **_funds("The", """
XLB|Materials Select Sector SPDR Fund|Natural Resources|5.3
XLC|Communication Services Select Sector SPDR Fund|Communications|22
XLE|Energy Select Sector SPDR Fund|Equity Energy|27
XLF|Financial Select Sector SPDR Fund|Financial|50
XLI|Industrial Select Sector SPDR Fund|Industrials|22
XLK|Technology Select Sector SPDR Fund|Technology|80
XLP|Consumer Staples Select Sector SPDR Fund|Consumer Defensive|16
XLRE|Real Estate Select Sector SPDR Fund|Real Estate|7.5
XLU|Utilities Select Sector SPDR Fund|Utilities|18
XLV|Health Care Select Sector SPDR Fund|Health|36
XLY|Consumer Discretionary Select Sector SPDR Fund|Consumer Cyclical|22
""", expense=0.08),
    **_funds("Vanguard", """
VGT|Information Technology ETF|Technology|100
VHT|Health Care ETF|Health|16
VFH|Financials ETF|Financial|13
VCR|Consumer Discretionary ETF|Consumer Cyclical|6.5
VDC|Consumer Staples ETF|Consumer Defensive|7.6
VDE|Energy ETF|Equity Energy|7.2
VIS|Industrials ETF|Industrials|6.2
VAW|Materials ETF|Natural Resources|2.9
VNQ|Real Estate ETF|Real Estate|34|0.13
VOX|Communication Services ETF|Communications|5.5
VPU|Utilities ETF|Utilities|7.8
""", expense=0.09),
    "VXX": Fund("iPath Series B S&P 500 VIX Short-Term Futures ETN", "Trading--Volatility", 0.45e9, 0.89,
                exchange="BATS", note=True),
}

COMPANIES: dict[str, tuple[str, str]] = {  # ticker -> (name, Polygon's primary exchange)
    "AAPL": ("Apple Inc.", "XNAS"), "MSFT": ("Microsoft Corporation", "XNAS"),
    "NVDA": ("NVIDIA Corporation", "XNAS"), "AMZN": ("Amazon.com, Inc.", "XNAS"),
    "GOOGL": ("Alphabet Inc.", "XNAS"), "META": ("Meta Platforms, Inc.", "XNAS"), "TSLA": ("Tesla, Inc.", "XNAS"),
    "AVGO": ("Broadcom Inc.", "XNAS"), "JPM": ("JPMorgan Chase & Co.", "XNYS"), "V": ("Visa Inc.", "XNYS"),
}
_YAHOO_EXCHANGES = {"XNAS": ("NMS", "NasdaqGS"), "XNYS": ("NYQ", "NYSE"), "ARCX": ("PCX", "NYSEArca"),
                    "BATS": ("BTS", "Cboe BZX")}
_INDEX_NAMES = {"^NDX": "NASDAQ 100", "^DJI": "Dow Jones Industrial Average", "^GSPC": "S&P 500"}
_QUOTE_TYPES = {AssetClass.INDEX: "INDEX", AssetClass.FX: "CURRENCY", AssetClass.CRYPTO: "CRYPTOCURRENCY",
                AssetClass.FUTURES: "FUTURE"}
_TYPE_DISP = {"EQUITY": "Equity", "ETF": "ETF", "INDEX": "Index", "CURRENCY": "Currency",
              "CRYPTOCURRENCY": "Cryptocurrency", "FUTURE": "Futures"}
_DELAYED_MINUTES = {AssetClass.FUTURES: 10, AssetClass.INDEX: 0}
TIMES = ("pre-market", "post-market", "")
TD_TIMES = {"pre-market": "Pre Market", "post-market": "After Hours", "": "Time Not Supplied"}
QUARTER_DAYS = 91


@dataclass(slots=True, frozen=True)
class Report:
    """One scheduled earnings release."""

    symbol: str
    name: str
    date: dt.date
    fiscal_end: dt.date
    estimate: float | None
    time: str  # pre-market, post-market or ""


def delisted(ticker: str) -> bool:
    """Whether the exchange plays this ticker as delisted (no source knows it)."""
    return ticker.startswith("ZZ")


class Reference:
    """The reference data and the earnings schedule of one seeded market.

    :param seed: the market's seed; the schedule follows from it.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.overrides: dict[str, Report | None] = {}  # symbol -> its next report (None: none)
        self.yahoo_quote = lru_cache(maxsize=65536)(self._yahoo_quote)  # merged into every quote result

    def _hash(self, text: str) -> int:
        return int.from_bytes(hashlib.blake2b(f"{self.seed}:{text}".encode(), digest_size=8).digest(), "big")

    # -- instruments ---------------------------------------------------------------------------

    def _yahoo_quote(self, yahoo: str) -> dict[str, object]:
        """The reference fields of one result of Yahoo's batch quote (read, never changed)."""
        asset_class = asset_class_of(yahoo)
        if delisted(yahoo):
            return {"quoteType": "NONE", "symbol": yahoo}
        fund = FUNDS.get(yahoo)
        quote_type = "ETF" if fund else _QUOTE_TYPES.get(asset_class, "EQUITY")
        mic = fund.exchange if fund else COMPANIES.get(yahoo, ("", "XNAS"))[1]
        exchange, full = _YAHOO_EXCHANGES[mic] if asset_class is AssetClass.EQUITY else ("", "")
        doc: dict[str, object] = {"quoteType": quote_type, "typeDisp": _TYPE_DISP[quote_type],
                                  "longName": self.name(yahoo), "shortName": self.name(yahoo)[:32],
                                  "exchangeDataDelayedBy": _DELAYED_MINUTES.get(asset_class, 0)}
        if exchange:
            doc["exchange"], doc["fullExchangeName"] = exchange, full
        if fund:
            doc["netAssets"], doc["netExpenseRatio"] = fund.net_assets, fund.expense_pct
        return doc

    def name(self, yahoo: str) -> str:
        """The instrument's long name."""
        if yahoo in FUNDS:
            return FUNDS[yahoo].name
        if yahoo in COMPANIES:
            return COMPANIES[yahoo][0]
        if yahoo in _INDEX_NAMES:
            return _INDEX_NAMES[yahoo]
        asset_class = asset_class_of(yahoo)
        if asset_class is AssetClass.FX:
            return f"{yahoo[:3]}/{yahoo[3:6]}"
        if asset_class is AssetClass.CRYPTO:
            return yahoo.replace("-", " ")
        if asset_class is AssetClass.FUTURES:
            return {"GC=F": "Gold", "SI=F": "Silver"}.get(yahoo, yahoo) + " futures"
        return f"{yahoo} Holdings Inc."

    def polygon_ticker(self, ticker: str, yahoo: str) -> dict[str, object] | None:
        """`results` of `/v3/reference/tickers/{ticker}`; None when Polygon does not know it."""
        if delisted(yahoo):
            return None
        asset_class = asset_class_of(yahoo)
        fund = FUNDS.get(yahoo)
        doc: dict[str, object] = {"ticker": ticker, "name": self.name(yahoo), "locale": "us", "active": True,
                                  "currency_name": "usd"}
        if asset_class is AssetClass.EQUITY:
            doc.update(market="stocks", type="ETN" if fund and fund.note else "ETF" if fund else "CS",
                       primary_exchange=fund.exchange if fund else COMPANIES.get(yahoo, ("", "XNAS"))[1])
        elif asset_class is AssetClass.INDEX:
            doc.update(market="indices", type="INDEX")
        elif asset_class is AssetClass.CRYPTO:
            doc.update(market="crypto", locale="global")
        else:  # FX, and the metals Polygon lists as currencies
            doc.update(market="fx", locale="global")
        return doc

    def etf_profile(self, symbol: str) -> dict[str, object] | None:
        """Alpha Vantage's ETF_PROFILE body (strings, fractions); None for a symbol that is no fund."""
        fund = FUNDS.get(symbol)
        if fund is None:
            return None
        return {"net_assets": str(int(fund.net_assets)), "net_expense_ratio": f"{fund.expense_pct / 100:.6g}",
                "portfolio_turnover": "0.05", "dividend_yield": "0.012", "inception_date": "2004-01-26",
                "leveraged": "NO", "sectors": [], "holdings": []}

    def category(self, yahoo: str) -> str | None:
        """The fund's category (Yahoo's quoteSummary `fundProfile.categoryName`)."""
        fund = FUNDS.get(yahoo)
        return fund.category if fund else None

    # -- earnings ------------------------------------------------------------------------------

    def set_report(self, symbol: str, date: dt.date | None, time: str = "", estimate: float | None = 1.0) -> None:
        """Replace a company's next report (None: it has none scheduled)."""
        self.overrides[symbol] = None if date is None else Report(
            symbol, self.name(symbol), date, _quarter_end_before(date), estimate, time)

    def reports(self, start: dt.date, end: dt.date) -> list[Report]:
        """Every report dated within [start, end], by date then symbol."""
        out = [r for sym in sorted({*COMPANIES, *self.overrides}) for r in self._schedule(sym, start, end)]
        return sorted(out, key=lambda r: (r.date, r.symbol))

    def _schedule(self, symbol: str, start: dt.date, end: dt.date) -> list[Report]:
        if symbol in self.overrides:
            r = self.overrides[symbol]
            return [r] if r is not None and start <= r.date <= end else []
        h = self._hash(symbol)
        epoch = dt.date(2020, 1, 6) + dt.timedelta(days=h % QUARTER_DAYS)
        first = epoch + dt.timedelta(days=max(0, (start - epoch).days // QUARTER_DAYS) * QUARTER_DAYS)
        out = []
        for k in range(-1, (end - first).days // QUARTER_DAYS + 1):
            day = first + dt.timedelta(days=k * QUARTER_DAYS)
            date = day + dt.timedelta(days=7 - day.weekday() if day.weekday() > 4 else 0)  # a weekend: Monday
            if start <= date <= end:
                n = self._hash(f"{symbol}:{day.isoformat()}")
                estimate = None if n % 11 == 0 else round(0.25 + (n % 400) / 100, 2)
                out.append(Report(symbol, self.name(symbol), date, _quarter_end_before(date), estimate,
                                  TIMES[n % len(TIMES)]))
        return out

    def alphavantage_csv(self, today: dt.date, horizon: str, symbol: str = "", time_column: bool = True) -> str:
        """EARNINGS_CALENDAR's CSV from `today` over the horizon (3month, 6month, 12month)."""
        months = {"3month": 3, "6month": 6, "12month": 12}.get(horizon, 3)
        rows = [r for r in self.reports(today, today + dt.timedelta(days=months * 30)) if not symbol or r.symbol == symbol]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        header = ["symbol", "name", "reportDate", "fiscalDateEnding", "estimate", "currency"]
        writer.writerow(header + ["timeOfTheDay"] if time_column else header)
        for r in rows:
            row = [r.symbol, r.name, r.date.isoformat(), r.fiscal_end.isoformat(),
                   "" if r.estimate is None else f"{r.estimate:.2f}", "USD"]
            writer.writerow(row + [r.time] if time_column else row)
        return out.getvalue()

    def twelvedata_calendar(self, start: dt.date, end: dt.date) -> dict[str, object]:
        """`/earnings_calendar`'s body: reports grouped by date."""
        grouped: dict[str, list[dict[str, object]]] = {}
        for r in self.reports(start, end):
            exchange = "NYSE" if COMPANIES.get(r.symbol, ("", ""))[1] == "XNYS" else "NASDAQ"
            grouped.setdefault(r.date.isoformat(), []).append({
                "symbol": r.symbol, "name": r.name, "currency": "USD", "exchange": exchange,
                "mic_code": "XNYS" if exchange == "NYSE" else "XNGS", "country": "United States",
                "time": TD_TIMES[r.time], "eps_estimate": r.estimate, "eps_actual": None, "difference": None,
                "surprise_prc": None})
        return {"earnings": grouped, "status": "ok"}


def _quarter_end_before(day: dt.date) -> dt.date:
    """The last day of the calendar quarter before the one `day` falls in."""
    first_month = (day.month - 1) // 3 * 3 + 1
    return dt.date(day.year, first_month, 1) - dt.timedelta(days=1)
