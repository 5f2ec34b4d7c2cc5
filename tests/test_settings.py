"""Settings: read from the environment and .env, validated, every setting documented."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from sidecar.errors import SettingsError
from sidecar.setting_docs import render_env_example
from sidecar.settings import ALL_SETTINGS, ExchangeSettings, Settings

from .conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_ten_default_symbols_against_the_local_exchange() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert s.symbols == ("NAS100", "US30", "XAUUSD", "EURUSD", "BTCUSD", "AAPL", "MSFT", "TSLA", "GOOGL", "SPY")
    assert s.http_host == "127.0.0.1" and s.http_port == 8787
    assert s.db_path == Path("var/sidecar.db")
    assert s.yahoo_base_url == "http://127.0.0.1:8700"


def test_environment_values_are_parsed() -> None:
    s = Settings.from_env({"SIDECAR_SYMBOLS": "aapl, eurusd,AAPL", "SIDECAR_HTTP_PORT": "9000",
                           "SIDECAR_FLUSH_INTERVAL_S": "2.5", "SIDECAR_SQLITE_SYNCHRONOUS": "normal"}, dotenv=None)
    assert s.symbols == ("AAPL", "EURUSD")
    assert s.http_port == 9000 and s.flush_interval_s == 2.5 and s.sqlite_synchronous == "NORMAL"


def test_symbols_can_come_from_a_file_too_large_for_the_environment(tmp_path: Path) -> None:
    names = [f"Q{i:05d}" for i in range(50_000)]  # ~300 kB: one environment string holds 128 kB at most
    path = tmp_path / "universe.txt"
    path.write_text("\n".join(names[:25_000]) + "\n" + ",".join(names[25_000:]) + ",AAPL\nQ00001\n")
    s = Settings.from_env({"SIDECAR_SYMBOLS": f"@{path}"}, dotenv=None)
    assert s.symbols == (*names, "AAPL")  # in order, each once
    with pytest.raises(SettingsError, match="SIDECAR_SYMBOLS: cannot read the symbols file"):
        Settings.from_env({"SIDECAR_SYMBOLS": f"@{tmp_path / 'missing.txt'}"}, dotenv=None)


@pytest.mark.parametrize(("env", "value"), [
    ("SIDECAR_HTTP_PORT", "abc"),
    ("SIDECAR_HTTP_PORT", "70000"),
    ("SIDECAR_CYCLE_INTERVAL_S", "nan"),
    ("SIDECAR_SYMBOLS", "AAPL,../etc/passwd"),
    ("SIDECAR_SYMBOLS", " , "),
    ("SIDECAR_REDIS_URL", "http://localhost"),
    ("SIDECAR_HTTP_HOST", "example.com"),
    ("SIDECAR_SQLITE_SYNCHRONOUS", "OFF"),
    ("SIDECAR_EXCHANGE_ALWAYS_OPEN", "maybe"),
    ("SIDECAR_PRICE_BOUNDS", '{"stocks": [1, 2]}'),
    ("SIDECAR_PRICE_BOUNDS", '{"fx": [2, 1]}'),
])
def test_a_bad_value_is_refused_with_the_setting_named(env: str, value: str) -> None:
    cls = ExchangeSettings if env.startswith("SIDECAR_EXCHANGE_") else Settings
    with pytest.raises(SettingsError) as err:
        cls.from_env({env: value}, dotenv=None)
    assert err.value.setting == env
    assert str(err.value).startswith(f"{env}: ")


def test_an_unknown_setting_is_refused_so_typos_do_not_pass_silently() -> None:
    with pytest.raises(SettingsError, match="SIDECAR_REDIS_ULR: unknown setting"):
        Settings.from_env({"SIDECAR_REDIS_ULR": "redis://x"}, dotenv=None)


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('SIDECAR_HTTP_PORT=9100\nSIDECAR_REDIS_PREFIX="md"\n# comment\n')
    s = Settings.from_env({"SIDECAR_HTTP_PORT": "9200"}, dotenv=env_file)
    assert s.http_port == 9200 and s.redis_prefix == "md"


def test_redacted_settings_hide_the_redis_password() -> None:
    s = Settings.from_env({"SIDECAR_REDIS_URL": "redis://user:s3cret@127.0.0.1:6379/0"}, dotenv=None)
    text = str(s.redacted())
    assert "s3cret" not in text and "user:***@127.0.0.1" in text


def test_redacted_settings_hide_the_api_keys() -> None:
    keys = {f"SIDECAR_{p}_API_KEY": f"key-of-{p}-123" for p in ("TWELVEDATA", "POLYGON", "ALPHAVANTAGE")}
    text = str(Settings.from_env(keys, dotenv=None).redacted())
    assert "key-of" not in text and text.count("<set>") == 3


def test_every_provider_has_the_same_settings_shape() -> None:
    s = Settings.from_env({"SIDECAR_POLYGON_API_KEY": "pk-secret", "SIDECAR_POLYGON_RATE_PER_MIN": "100",
                           "SIDECAR_TWELVEDATA_BASE_URL": "https://api.twelvedata.com",
                           "SIDECAR_SOURCE_DELAYS": "polygon=15m"}, dotenv=None)
    plans = s.providers()
    assert list(plans) == ["yahoo", "twelvedata", "polygon", "alphavantage"]
    polygon = plans["polygon"]
    assert (polygon.api_key, polygon.rate_per_min, polygon.rate_per_day, polygon.delay_s) == ("pk-secret", 100, 0, 900.0)
    assert plans["twelvedata"].base_url == "https://api.twelvedata.com" and plans["twelvedata"].rate_per_min == 8
    assert plans["yahoo"].api_key == "" and plans["alphavantage"].rate_per_day == 25
    assert "pk-secret" not in repr(plans)


def test_sources_must_be_known_and_distinct() -> None:
    assert Settings.from_env({"SIDECAR_SOURCES": "Polygon, yahoo"}, dotenv=None).sources == ("polygon", "yahoo")
    for bad in ("yahoo,yahoo", "yahoo,bloomberg", ""):
        with pytest.raises(SettingsError, match="SIDECAR_SOURCES"):
            Settings.from_env({"SIDECAR_SOURCES": bad}, dotenv=None)


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    assert text == render_env_example(), "regenerate: python -m sidecar settings > .env.example"
    listed = dict(re.findall(r"^# (SIDECAR_[A-Z0-9_]+)=(.*)$", text, flags=re.M))
    assert set(listed) == set(ALL_SETTINGS)
    for cls in (Settings, ExchangeSettings):
        defaults = cls.from_env({}, dotenv=None)
        for f in fields(cls):
            env = f.metadata["env"]
            assert f.metadata["parse"](listed[env]) == getattr(defaults, f.name), env


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [env for env in ALL_SETTINGS if f"`{env}`" not in readme]
    assert not missing


def test_a_bad_value_stops_start_up_with_exit_code_2_and_the_setting_named(tmp_path: Path) -> None:
    env = subprocess_env(SIDECAR_FLUSH_INTERVAL_S="often")
    proc = subprocess.run([sys.executable, "-m", "sidecar", "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "SIDECAR_FLUSH_INTERVAL_S" in proc.stderr and "often" in proc.stderr


@pytest.mark.parametrize("setting", ["SIDECAR_HTTP_PORT", "SIDECAR_DB_PATH"])
def test_a_port_in_use_or_an_unusable_db_path_stops_start_up_naming_the_setting(tmp_path: Path, setting: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = subprocess_env(SIDECAR_HTTP_PORT=str(busy.getsockname()[1]) if setting == "SIDECAR_HTTP_PORT" else "0",
                             SIDECAR_DB_PATH="/proc/no/such/dir/bars.db" if setting == "SIDECAR_DB_PATH"
                             else str(tmp_path / "bars.db"),
                             SIDECAR_REDIS_URL=f"unix://{tmp_path}/none.sock")
        proc = subprocess.run([sys.executable, "-m", "sidecar", "run"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"start-up failed: {setting}" in proc.stderr and "Traceback" not in proc.stderr


def test_bootstrap_backfill_and_status_commands_work_against_the_exchange(tmp_path: Path) -> None:
    """The CLI end to end, as an operator runs it, against an exchange process."""
    import json
    import time

    from .test_e2e import _free_port

    port = _free_port()
    exchange = subprocess.Popen([sys.executable, "-m", "sidecar.exchange", "--always-open", "--port", str(port)],
                                env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = subprocess_env(SIDECAR_YAHOO_BASE_URL=f"http://127.0.0.1:{port}", SIDECAR_DB_PATH=str(tmp_path / "b.db"),
                         SIDECAR_REDIS_URL=f"unix://{tmp_path}/none.sock")
    try:
        deadline = time.monotonic() + 30
        while True:  # until the exchange process accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "exchange did not start"
                time.sleep(0.1)

        def cli(*args: str) -> dict:
            done = subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        boot = cli("bootstrap", "--symbols", "AAPL,EURUSD", "--days", "2")
        assert boot["windows_failed"] == 0 and boot["rows"]["1m"] > 2 * 1000
        again = cli("bootstrap", "--symbols", "AAPL,EURUSD", "--days", "2")
        # Done windows are skipped; only each symbol's newest one is asked for again, from where the
        # first run stopped, if a minute passed in between (its end is the current minute).
        assert again["windows_failed"] == 0 and again["windows_fetched"] <= 2
        assert again["windows_already_done"] >= boot["windows_fetched"] - 2
        while True:
            # backfill and status scan the settled window ending an hour ago; when a minute boundary
            # passes between the two commands, status sees one minute backfill never looked at.
            fill = cli("backfill", "--symbols", "AAPL,EURUSD", "--days", "1")
            status = cli("status", "--symbols", "AAPL,EURUSD", "--days", "1")
            if status["window"] == fill["window"]:
                break
        assert fill["minutes_left"] == 0 and fill["filled"] == 0
        aapl = status["symbols"]["AAPL"]
        assert aapl["timeframes"]["1m"]["rows"] > 1000 and aapl["missing_minutes_last_1_days"] == 0
    finally:
        exchange.terminate()
        exchange.wait(timeout=10)
