"""Named universes: the shipped lists, a user's directory, and how they combine with symbols."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sidecar.errors import SettingsError
from sidecar.settings import Settings
from sidecar.symbols import AssetClass, lookup
from sidecar.universes import known, members

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"dev_top_10": 10, "dev_etfs": 5, "dev_sectors": 11, "etf_growth": 8, "etf_value": 8, "etf_sectors": 11,
           "fx_majors": 7, "crypto_majors": 10, "indices": 3}


def test_every_shipped_universe_loads_with_its_members_of_the_right_class() -> None:
    assert set(SHIPPED) <= set(known())
    for name, size in SHIPPED.items():
        assert len(members(name)) == size, name
    assert {lookup(s).asset_class for s in members("fx_majors")} == {AssetClass.FX}
    assert {lookup(s).asset_class for s in members("crypto_majors")} == {AssetClass.CRYPTO}
    assert {lookup(s).asset_class for s in members("indices")} == {AssetClass.INDEX}
    assert members("dev_sectors") == ("XLB", "XLC", "XLE", "XLF", "XLI", "XLK", "XLP", "XLRE", "XLU", "XLV", "XLY")


def test_a_universe_replaces_the_default_symbols_and_joins_named_ones() -> None:
    only = Settings.from_env({"SIDECAR_UNIVERSE": "dev_etfs"}, dotenv=None)
    assert only.symbols == ("SPY", "QQQ", "IWM", "DIA", "VTI")
    both = Settings.from_env({"SIDECAR_UNIVERSE": "dev_etfs,etf_growth", "SIDECAR_SYMBOLS": "AAPL,QQQ"}, dotenv=None)
    assert both.symbols[:2] == ("AAPL", "QQQ") and len(both.symbols) == 2 + 4 + 7  # QQQ once
    flags = Settings.from_env({}, dotenv=None).with_overrides(universe="fx_majors", symbols="BTCUSD")
    assert flags.symbols == ("BTCUSD", *members("fx_majors"))


def test_unknown_universes_and_bad_members_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"SIDECAR_UNIVERSE: unknown universe 'nope'; known: .*dev_top_10"):
        Settings.from_env({"SIDECAR_UNIVERSE": "nope"}, dotenv=None)
    with pytest.raises(SettingsError, match="SIDECAR_UNIVERSE: a universe name"):
        Settings.from_env({"SIDECAR_UNIVERSE": "../etc/passwd"}, dotenv=None)
    (tmp_path / "mine.txt").write_text("# my list\nAAPL\n\nBAD SYMBOL\nMSFT  # comment\n../x\n")
    with pytest.raises(SettingsError, match=r"mine.txt:4: .*mine.txt:6: "):
        Settings.from_env({"SIDECAR_UNIVERSE": "mine", "SIDECAR_UNIVERSES_DIR": str(tmp_path)}, dotenv=None)


def test_a_users_directory_adds_universes_and_may_replace_a_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("# my list\nnvda\nEURUSD  # FX too\n")
    (tmp_path / "dev_etfs.txt").write_text("SPY\n")
    s = Settings.from_env({"SIDECAR_UNIVERSE": "mine,dev_etfs", "SIDECAR_UNIVERSES_DIR": str(tmp_path)}, dotenv=None)
    assert s.symbols == ("NVDA", "EURUSD", "SPY")
    out = subprocess.run([sys.executable, "-m", "sidecar", "universes"], cwd=ROOT, capture_output=True, text=True,
                         env={"SIDECAR_UNIVERSES_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60, check=True)
    listing = orjson.loads(out.stdout)
    assert listing["mine"] == ["NVDA", "EURUSD"] and listing["dev_etfs"] == ["SPY"] and "fx_majors" in listing
