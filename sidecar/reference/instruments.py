"""What an instrument is: its type, names, exchange and, for funds, size and cost, from each
provider's reference answer (providers.md 8.3), with the name-shape rule as the last resort.

Parsers take the decoded bodies the fetchers return and never raise on a missing optional
field: a field a source does not send stays None, and the next source may fill it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..fetchers.base import to_float
from ..symbols import AssetClass, SymbolInfo

TYPES = ("equity", "etf", "etn", "fund", "index", "fx", "crypto", "future", "other")
_YAHOO_TYPES = {"EQUITY": "equity", "ETF": "etf", "MUTUALFUND": "fund", "INDEX": "index", "CURRENCY": "fx",
                "CRYPTOCURRENCY": "crypto", "FUTURE": "future"}
# Polygon's type codes (/v3/reference/tickers/types): common and preferred stock, ADRs, and the rest.
_POLYGON_TYPES = {"CS": "equity", "PFD": "equity", "ADRC": "equity", "ADRP": "equity", "ADRR": "equity",
                  "ADRW": "equity", "GDR": "equity", "NYRS": "equity", "OS": "equity", "ETF": "etf", "ETN": "etn",
                  "ETV": "etf", "ETS": "etf", "FUND": "fund", "INDEX": "index"}
_POLYGON_MARKETS = {"fx": "fx", "crypto": "crypto", "indices": "index"}
_BY_CLASS = {AssetClass.EQUITY: "equity", AssetClass.INDEX: "index", AssetClass.FX: "fx",
             AssetClass.CRYPTO: "crypto", AssetClass.FUTURES: "future"}
COLUMNS = ("symbol", "asset_class", "type", "name", "exchange", "currency", "net_assets", "expense_ratio",
           "category", "data_delay_s", "source", "updated")


@dataclass(slots=True, frozen=True)
class Instrument:
    """One row of the symbols table."""

    symbol: str
    asset_class: str
    type: str  # one of TYPES
    name: str | None = None
    exchange: str | None = None
    currency: str | None = None
    net_assets: float | None = None  # funds: total assets, dollars
    expense_ratio: float | None = None  # funds: a fraction a year (0.002 = 0.20 %)
    category: str | None = None  # funds: e.g. "Large Growth"
    data_delay_s: int | None = None  # how late the source's quotes are (Yahoo's exchangeDataDelayedBy)
    source: str = "name"  # where the type came from: yahoo, polygon, or name (the shape of the symbol)
    updated: float = 0.0

    def row(self) -> tuple[object, ...]:
        """The values in COLUMNS order."""
        return tuple(getattr(self, c) for c in COLUMNS)

    def doc(self) -> dict[str, object]:
        """The row as JSON-ready fields."""
        return asdict(self)

    @property
    def fund(self) -> bool:
        """An ETF, ETN or fund: has size and cost."""
        return self.type in ("etf", "etn", "fund")


def by_name(info: SymbolInfo, now: float) -> Instrument:
    """The fallback when no source knows the symbol: the asset class its name implies."""
    return Instrument(info.symbol, info.asset_class.value, _BY_CLASS[info.asset_class], source="name", updated=now)


def _text(row: dict, *keys: str) -> str | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _object(doc: dict, key: str) -> dict:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    x = to_float(value)
    return x if x == x else None  # NaN: not sent


def from_yahoo(row: dict, info: SymbolInfo, now: float) -> Instrument | None:
    """A batch quote result; None when Yahoo does not know the symbol (`quoteType` NONE or absent).
    ETNs come as `ETF` with "ETN" in the name; `netExpenseRatio` is in percent."""
    kind = _YAHOO_TYPES.get(str(row.get("quoteType", "")).upper())
    if kind is None:
        return None
    name = _text(row, "longName", "shortName")
    if kind == "etf" and name is not None and " ETN" in f" {name.upper()} ":
        kind = "etn"
    expense = _number(row.get("netExpenseRatio"))
    delay = _number(row.get("exchangeDataDelayedBy"))
    return Instrument(info.symbol, info.asset_class.value, kind, name=name,
                      exchange=_text(row, "fullExchangeName", "exchange"), currency=_text(row, "currency"),
                      net_assets=_number(row.get("netAssets")), expense_ratio=None if expense is None else expense / 100,
                      data_delay_s=None if delay is None else int(delay * 60), source="yahoo", updated=now)


def from_polygon(results: dict, info: SymbolInfo, now: float) -> Instrument | None:
    """`/v3/reference/tickers/{ticker}` results; None when the answer names no type or market."""
    kind = _POLYGON_TYPES.get(str(results.get("type", "")).upper()) or _POLYGON_MARKETS.get(
        str(results.get("market", "")).lower())
    if kind is None:
        if results.get("market") != "stocks":
            return None
        kind = "other"  # a stock-market type we do not classify (warrant, right, unit, ...)
    currency = _text(results, "currency_name")
    return Instrument(info.symbol, info.asset_class.value, kind, name=_text(results, "name"),
                      exchange=_text(results, "primary_exchange"), currency=currency.upper() if currency else None,
                      source="polygon", updated=now)


def with_fund_profile(inst: Instrument, summary: dict) -> Instrument:
    """Yahoo's quoteSummary (fundProfile, defaultKeyStatistics: ratios as fractions) fills the
    category and whatever size or cost is still missing."""
    profile, stats = _object(summary, "fundProfile"), _object(summary, "defaultKeyStatistics")
    fees = _object(profile, "feesExpensesInvestment")
    return replace(inst, category=inst.category or _text(profile, "categoryName") or _text(stats, "category"),
                   net_assets=inst.net_assets if inst.net_assets is not None else _number(stats.get("totalAssets")),
                   expense_ratio=inst.expense_ratio if inst.expense_ratio is not None else _number(
                       fees.get("annualReportExpenseRatio")))


def with_etf_profile(inst: Instrument, profile: dict) -> Instrument:
    """Alpha Vantage's ETF_PROFILE (strings; the ratio a fraction) fills missing size and cost."""
    return replace(inst, net_assets=inst.net_assets if inst.net_assets is not None else _number(
        profile.get("net_assets")), expense_ratio=inst.expense_ratio if inst.expense_ratio is not None else _number(
        profile.get("net_expense_ratio")))


def parse_type(raw: str) -> str:
    """A type filter as users write it (ETF, etf); ValueError naming the known types."""
    kind = raw.strip().lower()
    if kind not in TYPES:
        raise ValueError(f"unknown type {raw!r}; known: {', '.join(TYPES)}")
    return kind
