"""Canonical symbols: validation, asset class, and each symbol's name at a provider.

A canonical symbol is what users, Redis keys and SQLite rows use (NAS100, EURUSD, AAPL).
Anything arriving from outside passes `parse_symbol` before it reaches a key, a SQL
statement or a file path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import SymbolError

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,12}(?:[.-][A-Z0-9]{1,4})?$")

FIAT = frozenset("USD EUR GBP JPY CHF AUD NZD CAD SEK NOK DKK HKD SGD CNH MXN ZAR TRY PLN".split())
CRYPTO = frozenset("BTC ETH SOL XRP ADA DOGE LTC DOT AVAX LINK BCH XLM".split())


class AssetClass(StrEnum):
    """What kind of instrument a symbol is; it decides the trading calendar."""

    EQUITY = "equity"  # US stocks and ETFs: NYSE regular session
    INDEX = "index"  # US cash indices: NYSE regular session
    FX = "fx"  # 24x5, Sunday 17:00 to Friday 17:00 New York
    CRYPTO = "crypto"  # 24x7
    FUTURES = "futures"  # CME Globex: Sunday 18:00 to Friday 17:00 New York, daily 17-18 break


@dataclass(slots=True, frozen=True)
class SymbolInfo:
    """A canonical symbol with its asset class and its name at each provider (providers.md 5)."""

    symbol: str
    asset_class: AssetClass
    yahoo: str

    @property
    def twelvedata(self) -> str:
        """Twelve Data's name: AAPL, EUR/USD, BTC/USD, XAU/USD, NDX."""
        if self.symbol in _INDEX_CODES:
            return _INDEX_CODES[self.symbol]
        if self.asset_class in (AssetClass.FX, AssetClass.CRYPTO) or self.symbol in _METALS:
            base, quote = _pair(self.symbol)
            return f"{base}/{quote}"
        return self.symbol

    @property
    def polygon(self) -> str:
        """Polygon's ticker: AAPL, C:EURUSD, C:XAUUSD (metals trade as currencies), X:BTCUSD, I:NDX."""
        if self.symbol in _INDEX_CODES:
            return f"I:{_INDEX_CODES[self.symbol]}"
        if self.asset_class is AssetClass.FX or self.symbol in _METALS:
            return f"C:{self.symbol}"
        if self.asset_class is AssetClass.CRYPTO:
            return "X:" + "".join(_pair(self.symbol))
        return self.symbol

    @property
    def alphavantage(self) -> dict[str, str] | None:
        """Alpha Vantage's intraday function and its symbol parameters, or None where it has no
        intraday series (indices, metals: daily only)."""
        if self.asset_class is AssetClass.EQUITY:
            return {"function": "TIME_SERIES_INTRADAY", "symbol": self.symbol}
        if self.asset_class is AssetClass.FX:
            base, quote = _pair(self.symbol)
            return {"function": "FX_INTRADAY", "from_symbol": base, "to_symbol": quote}
        if self.asset_class is AssetClass.CRYPTO:
            base, quote = _pair(self.symbol)
            return {"function": "CRYPTO_INTRADAY", "symbol": base, "market": quote}
        return None


_INDEX_CODES = {"NAS100": "NDX", "US30": "DJI", "SPX500": "SPX"}
_METALS = frozenset({"XAUUSD", "XAGUSD"})


def _pair(symbol: str) -> tuple[str, str]:
    for quote in ("USDT", "USD", *sorted(FIAT)):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise SymbolError(symbol, "not a currency pair")


def from_provider(provider: str, name: str) -> SymbolInfo:
    """The symbol behind a provider's name (the local exchange uses it to serve every provider
    from one market); raises SymbolError for a name the mapping does not produce."""
    raw = name
    if provider == "polygon":
        prefix, _, rest = name.partition(":")
        if rest:
            if prefix == "I":
                raw = next((c for c, code in _INDEX_CODES.items() if code == rest), "")
            elif prefix in ("C", "X"):
                raw = rest
            else:
                raw = ""
    elif provider == "twelvedata":
        raw = next((c for c, code in _INDEX_CODES.items() if code == name), name.replace("/", ""))
    info = lookup(raw) if raw else None
    if info is None or getattr(info, provider) != name:
        raise SymbolError(name, f"not a {provider} name this sidecar produces")
    return info


# The instruments whose provider names cannot be derived from the canonical name.
_KNOWN: dict[str, tuple[AssetClass, str]] = {
    "NAS100": (AssetClass.INDEX, "^NDX"),
    "US30": (AssetClass.INDEX, "^DJI"),
    "SPX500": (AssetClass.INDEX, "^GSPC"),
    "XAUUSD": (AssetClass.FUTURES, "GC=F"),
    "XAGUSD": (AssetClass.FUTURES, "SI=F"),
}

DEFAULT_SYMBOLS: tuple[str, ...] = (
    "NAS100", "US30", "XAUUSD", "EURUSD", "BTCUSD", "AAPL", "MSFT", "TSLA", "GOOGL", "SPY",
)


def parse_symbol(raw: str) -> str:
    """Return the canonical form of `raw` (upper-cased), or raise SymbolError."""
    sym = raw.strip().upper()
    if not _SYMBOL_RE.fullmatch(sym):
        raise SymbolError(raw, "expected 1-12 letters or digits, optionally '.' or '-' and 1-4 more")
    return sym


def lookup(raw: str) -> SymbolInfo:
    """Resolve a symbol to its asset class and Yahoo name (unknown tickers are US equities)."""
    sym = parse_symbol(raw)
    if sym in _KNOWN:
        asset_class, yahoo = _KNOWN[sym]
        return SymbolInfo(sym, asset_class, yahoo)
    if len(sym) == 6 and sym[:3] in FIAT and sym[3:] in FIAT:
        return SymbolInfo(sym, AssetClass.FX, f"{sym}=X")
    for quote in ("USDT", "USD"):
        base = sym[: -len(quote)]
        if sym.endswith(quote) and base in CRYPTO:
            return SymbolInfo(sym, AssetClass.CRYPTO, f"{base}-{quote}")
    return SymbolInfo(sym, AssetClass.EQUITY, sym.replace(".", "-"))


def yahoo_asset_class(yahoo_symbol: str) -> AssetClass:
    """The asset class implied by a Yahoo symbol's form (^index, =X fx, =F futures, -USD crypto)."""
    if yahoo_symbol.startswith("^"):
        return AssetClass.INDEX
    if yahoo_symbol.endswith("=X"):
        return AssetClass.FX
    if yahoo_symbol.endswith("=F"):
        return AssetClass.FUTURES
    base, _, quote = yahoo_symbol.partition("-")
    if base in CRYPTO and quote in ("USD", "USDT"):
        return AssetClass.CRYPTO
    return AssetClass.EQUITY
