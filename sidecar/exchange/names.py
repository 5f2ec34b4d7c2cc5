"""The exchange's own reading of each provider's instrument names (providers.md 5): which
instrument of its market a Twelve Data, Polygon or Alpha Vantage name means.

Written apart from the daemon's `symbols` module on purpose: the exchange is the oracle the
daemon's fetchers are tested against, so a wrong provider name in the daemon must come back as
"symbol not found" here, not be inverted by the same code that produced it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..symbols import AssetClass

_FIAT = frozenset("USD EUR GBP JPY CHF AUD NZD CAD SEK NOK DKK HKD SGD CNH MXN ZAR TRY PLN".split())
_METALS = {"XAU": "GC=F", "XAG": "SI=F"}  # spot metals, served from the futures' path
_INDICES = {"NDX": "^NDX", "DJI": "^DJI", "SPX": "^GSPC"}  # Twelve Data's codes; Polygon's with "I:"
_TICKER = re.compile(r"[A-Z0-9]{1,12}(\.[A-Z0-9]{1,4})?")
_COIN = re.compile(r"[A-Z0-9]{2,10}")


@dataclass(slots=True, frozen=True)
class Instrument:
    """An instrument of the exchange's market as one provider named it."""

    yahoo: str  # the market's key
    asset_class: AssetClass
    name: str  # the provider's own name (answers and fault keys use it)


def asset_class_of(yahoo: str) -> AssetClass:
    """The asset class of a Yahoo symbol, from Yahoo's own conventions."""
    if yahoo.startswith("^"):
        return AssetClass.INDEX
    if yahoo.endswith("=X"):
        return AssetClass.FX
    if yahoo.endswith("=F"):
        return AssetClass.FUTURES
    if yahoo.endswith(("-USD", "-USDT")):
        return AssetClass.CRYPTO
    return AssetClass.EQUITY


def _pair(base: str, quote: str, name: str) -> Instrument | None:
    if base in _METALS and quote == "USD":
        return Instrument(_METALS[base], AssetClass.FUTURES, name)
    if base in _FIAT and quote in _FIAT and base != quote:
        return Instrument(f"{base}{quote}=X", AssetClass.FX, name)
    if quote in ("USD", "USDT") and base not in _FIAT and _COIN.fullmatch(base):
        return Instrument(f"{base}-{quote}", AssetClass.CRYPTO, name)
    return None


def _equity(ticker: str, name: str) -> Instrument | None:
    if not _TICKER.fullmatch(ticker) or (len(ticker) == 6 and ticker[:3] in _FIAT and ticker[3:] in _FIAT):
        return None
    return Instrument(ticker.replace(".", "-"), AssetClass.EQUITY, name)


def twelvedata(name: str) -> Instrument | None:
    """`AAPL`, `EUR/USD`, `BTC/USD`, `XAU/USD`, `NDX`; None for a name Twelve Data does not use."""
    if name in _INDICES:
        return Instrument(_INDICES[name], AssetClass.INDEX, name)
    base, slash, quote = name.partition("/")
    return _pair(base, quote, name) if slash else _equity(name, name)


def polygon(name: str) -> Instrument | None:
    """`AAPL`, `C:EURUSD`, `C:XAUUSD`, `X:BTCUSD`, `I:NDX`; None for a name Polygon does not use."""
    prefix, colon, rest = name.partition(":")
    if not colon:
        return _equity(name, name)
    if prefix == "I":
        return Instrument(_INDICES[rest], AssetClass.INDEX, name) if rest in _INDICES else None
    if prefix == "C" and len(rest) == 6:
        found = _pair(rest[:3], rest[3:], name)
        return found if found is not None and found.asset_class is not AssetClass.CRYPTO else None
    if prefix == "X" and rest.endswith("USD"):
        found = _pair(rest[:-3], "USD", name)
        return found if found is not None and found.asset_class is AssetClass.CRYPTO else None
    return None


def alphavantage(query: Mapping[str, str]) -> Instrument | None:
    """The instrument of an intraday query: TIME_SERIES_INTRADAY `symbol`, FX_INTRADAY
    `from_symbol`/`to_symbol`, CRYPTO_INTRADAY `symbol`/`market`; None otherwise."""
    function = query.get("function", "")
    if function == "TIME_SERIES_INTRADAY":
        return _equity(query.get("symbol", ""), query.get("symbol", ""))
    if function == "FX_INTRADAY":
        base, quote = query.get("from_symbol", ""), query.get("to_symbol", "")
        found = _pair(base, quote, base + quote)
        return found if found is not None and found.asset_class is AssetClass.FX else None
    if function == "CRYPTO_INTRADAY":
        base, quote = query.get("symbol", ""), query.get("market", "")
        found = _pair(base, quote, base + quote)
        return found if found is not None and found.asset_class is AssetClass.CRYPTO else None
    return None
