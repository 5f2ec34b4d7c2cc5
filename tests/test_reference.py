"""Reference data: parsing every reference endpoint's real format, the providers' error and limit
shapes over real HTTP, and the daemon on `--universe dev_etfs` against the exchange: the
symbols table, the earnings flags and events, the end-of-day summary, and the calendar's
fallback from Alpha Vantage to Twelve Data within each provider's budget."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
import redis

from sidecar.app import Sidecar
from sidecar.clock import ManualClock
from sidecar.errors import MalformedResponse, ProviderError, RateLimited
from sidecar.exchange import Exchange, Market
from sidecar.exchange.providers import Limits
from sidecar.exchange.reference import FUNDS
from sidecar.fetchers import AlphaVantageFetcher, PolygonFetcher, TwelveDataFetcher
from sidecar.reference import earnings, instruments
from sidecar.settings import Settings
from sidecar.symbols import lookup

from .conftest import SEED

NY = ZoneInfo("America/New_York")
# Monday 2026-11-30 10:00 New York: the session is open.
NOW = int(dt.datetime(2026, 11, 30, 10, 0, tzinfo=NY).timestamp())

# -- parsing: the samples of providers.md 8.3 and 8.4 -------------------------------------------

AV_CSV_NEW = ("symbol,name,reportDate,fiscalDateEnding,estimate,currency,timeOfTheDay\r\n"
              "AAPL,Apple Inc.,2026-02-16,2025-12-31,2.35,USD,post-market\r\n"
              "MSFT,MICROSOFT CORP,2099-12-02,2099-09-30,,USD,pre-market\r\n")
AV_CSV_OLD = ("symbol,name,reportDate,fiscalDateEnding,estimate,currency\r\n"
              "AAPL,Apple Inc.,2026-02-16,2025-12-31,2.35,USD\r\n"
              "BRK-B,\"Berkshire Hathaway, Inc.\",2026-02-21,2025-12-31,,USD\r\n"
              "bad symbol!,X,2026-02-16,2025-12-31,1,USD\r\n"
              "IBM,IBM,not-a-date,2025-12-31,1,USD\r\n")
TD_CALENDAR = {"earnings": {"2020-05-08": [
    {"symbol": "BR", "name": "Broadridge Financial Solutions Inc", "currency": "USD", "exchange": "NYSE",
     "mic_code": "XNYS", "country": "United States", "time": "Time Not Supplied", "eps_estimate": 1.72,
     "eps_actual": 1.67, "difference": -0.05, "surprise_prc": -2.9},
    {"symbol": "XYZ", "currency": "USD", "time": "After Hours", "eps_estimate": None}]}, "status": "ok"}


def test_the_alphavantage_calendar_is_read_by_its_header_with_or_without_the_time_column() -> None:
    new = earnings.parse_alphavantage(AV_CSV_NEW, 1.0)
    assert [(r.symbol, r.report_date, r.fiscal_date_ending, r.estimate, r.currency, r.time_of_day)
            for r in new.reports] == [("AAPL", "2026-02-16", "2025-12-31", 2.35, "USD", "post-market"),
                                      ("MSFT", "2099-12-02", "2099-09-30", None, "USD", "pre-market")]
    old = earnings.parse_alphavantage("\ufeff" + AV_CSV_OLD, 1.0)
    assert [(r.symbol, r.estimate, r.time_of_day) for r in old.reports] == [("AAPL", 2.35, ""), ("BRK-B", None, "")]
    assert old.skipped == 2  # the bad symbol and the bad date are counted, never stored
    reordered = "reportDate,symbol,currency\n2026-03-01,NVDA,USD\n"  # by header, not by position
    assert [(r.symbol, r.report_date) for r in earnings.parse_alphavantage(reordered, 1.0).reports] == [
        ("NVDA", "2026-03-01")]
    with pytest.raises(MalformedResponse, match="no symbol/reportDate"):
        earnings.parse_alphavantage('{"Information": "..."}', 1.0)


def test_the_twelvedata_calendar_is_grouped_by_date() -> None:
    parsed = earnings.parse_twelvedata(TD_CALENDAR, 1.0)
    assert [(r.symbol, r.report_date, r.estimate, r.time_of_day, r.source) for r in parsed.reports] == [
        ("BR", "2020-05-08", 1.72, "", "twelvedata"), ("XYZ", "2020-05-08", None, "post-market", "twelvedata")]
    with pytest.raises(MalformedResponse):
        earnings.parse_twelvedata({"status": "ok"}, 1.0)


def test_a_release_counts_as_out_after_the_open_after_the_close_or_at_the_end_of_its_day() -> None:
    def at(day: str, time: str) -> float:
        return earnings.Report("AAPL", day, None, None, None, time, "t", 0).released_at()

    assert at("2026-12-02", "pre-market") == dt.datetime(2026, 12, 2, 9, 30, tzinfo=NY).timestamp()
    assert at("2026-12-02", "post-market") == dt.datetime(2026, 12, 2, 17, 0, tzinfo=NY).timestamp()
    assert at("2026-12-02", "") == dt.datetime(2026, 12, 3, 0, 0, tzinfo=NY).timestamp()


def test_instrument_types_come_from_each_providers_reference_answer() -> None:
    qqq = {"symbol": "QQQ", "quoteType": "ETF", "typeDisp": "ETF", "longName": "Invesco QQQ Trust", "exchange": "NGM",
           "fullExchangeName": "NasdaqGM", "market": "us_market", "currency": "USD", "exchangeDataDelayedBy": 0,
           "netAssets": 328302690000, "netExpenseRatio": 0.2}
    inst = instruments.from_yahoo(qqq, lookup("QQQ"), 5.0)
    assert inst is not None and (inst.type, inst.name, inst.exchange, inst.net_assets, inst.source) == (
        "etf", "Invesco QQQ Trust", "NasdaqGM", 328302690000.0, "yahoo")
    assert inst.expense_ratio == pytest.approx(0.002)  # Yahoo's percent as a fraction
    gc = {"symbol": "GC=F", "quoteType": "FUTURE", "shortName": "Gold Dec 26", "exchangeDataDelayedBy": 10}
    future = instruments.from_yahoo(gc, lookup("XAUUSD"), 5.0)
    assert future is not None and (future.type, future.data_delay_s) == ("future", 600)
    assert instruments.from_yahoo({"symbol": "ZZZ", "quoteType": "NONE"}, lookup("ZZZ"), 5.0) is None
    etn = instruments.from_yahoo({"quoteType": "ETF", "longName": "iPath Series B S&P 500 VIX Short-Term Futures ETN"},
                                 lookup("VXX"), 5.0)
    assert etn is not None and etn.type == "etn"

    aapl = {"ticker": "AAPL", "name": "Apple Inc.", "market": "stocks", "locale": "us", "primary_exchange": "XNAS",
            "type": "CS", "active": True, "currency_name": "usd"}
    inst = instruments.from_polygon(aapl, lookup("AAPL"), 5.0)
    assert inst is not None and (inst.type, inst.exchange, inst.currency, inst.source) == (
        "equity", "XNAS", "USD", "polygon")
    assert instruments.from_polygon({**aapl, "type": "WARRANT"}, lookup("AAPL"), 5.0).type == "other"  # type: ignore[union-attr]
    assert instruments.from_polygon({"ticker": "C:EURUSD", "market": "fx"}, lookup("EURUSD"), 5.0).type == "fx"  # type: ignore[union-attr]
    assert instruments.by_name(lookup("NAS100"), 5.0).type == "index"

    summary = {"fundProfile": {"family": "Invesco", "categoryName": "Large Growth", "legalType": "Exchange Traded Fund",
                               "feesExpensesInvestment": {"annualReportExpenseRatio": 0.002}},
               "defaultKeyStatistics": {"totalAssets": 328302690304, "category": "Large Growth"}}
    bare = instruments.Instrument("QQQ", "equity", "etf", source="polygon")
    filled = instruments.with_fund_profile(bare, summary)
    assert (filled.category, filled.net_assets, filled.expense_ratio) == ("Large Growth", 328302690304.0, 0.002)
    profile = {"net_assets": "385800000000", "net_expense_ratio": "0.002", "portfolio_turnover": "0.08",
               "leveraged": "NO", "sectors": [{"sector": "INFORMATION TECHNOLOGY", "weight": "0.533"}]}
    assert instruments.with_etf_profile(bare, profile).net_assets == 385800000000.0
    assert instruments.with_etf_profile(filled, profile).net_assets == 328302690304.0  # a value is not replaced


# -- error and limit shapes over real HTTP ----------------------------------------------------------


@pytest.fixture
async def ref_exchange() -> AsyncIterator[Exchange]:
    clock = ManualClock(start=NOW)
    ex = Exchange(Market(SEED), clock=clock, limits={"alphavantage": Limits(per_day=2)})
    await ex.start()
    yield ex
    await ex.close()


async def test_reference_endpoints_answer_errors_and_limits_in_each_providers_shape(ref_exchange: Exchange) -> None:
    url = ref_exchange.url or ""
    av = AlphaVantageFetcher(base_url=url, api_key="local", timeout_s=5, max_connections=2, clock=ref_exchange.clock)
    bad = AlphaVantageFetcher(base_url=url, api_key="nope", timeout_s=5, max_connections=2, clock=ref_exchange.clock)
    td = TwelveDataFetcher(base_url=url, api_key="local", timeout_s=5, max_connections=2, clock=ref_exchange.clock)
    pg = PolygonFetcher(base_url=url, api_key="local", timeout_s=5, max_connections=2, clock=ref_exchange.clock)
    for f in (av, bad, td, pg):
        await f.start()
    try:
        text = await av.fetch_earnings_calendar()
        assert text.startswith("symbol,name,reportDate,fiscalDateEnding,estimate,currency,timeOfTheDay\r\n")
        profile = await av.fetch_etf_profile(lookup("SPY"))
        assert profile["net_assets"] == str(int(FUNDS["SPY"].net_assets))
        with pytest.raises(RateLimited, match="daily limit"):  # the key's 2 a day are spent: JSON, HTTP 200
            await av.fetch_earnings_calendar()
        with pytest.raises(ProviderError, match="apikey") as err:
            await bad.fetch_etf_profile(lookup("SPY"))
        assert err.value.status == 401
        with pytest.raises(RateLimited, match="current minute"):  # 40 credits on a plan of 8 a minute
            await td.fetch_earnings_calendar("2026-11-30", "2026-12-31")
        with pytest.raises(ProviderError) as err:
            await pg.fetch_ticker(lookup("ZZTOP"))  # delisted: Polygon does not know it
        assert err.value.status == 404
        assert (await pg.fetch_ticker(lookup("SPY")))["type"] == "ETF"
        for _ in range(3):
            await pg.fetch_ticker(lookup("AAPL"))
        with pytest.raises(RateLimited):  # the sixth request in a minute on the free plan
            await pg.fetch_ticker(lookup("AAPL"))
    finally:
        for f in (av, bad, td, pg):
            await f.close()


# -- the daemon against the exchange ----------------------------------------------------------------


def _settings(tmp_path: Path, redis_url: str, url: str, **changes: object) -> Settings:
    base = replace(Settings(), redis_url=redis_url, db_path=tmp_path / "ref.db", http_port=0, bootstrap_days=0.0,
                   gap_scan_days=2.0, yahoo_base_url=url, polygon_base_url=url, alphavantage_base_url=url,
                   twelvedata_base_url=url, polygon_api_key="local", alphavantage_api_key="local",
                   twelvedata_api_key="local")
    return replace(base, **changes)


class Daemon:
    """An in-process daemon on a manual clock: its parts started, its loops not (the test drives them)."""

    def __init__(self, settings: Settings, clock: ManualClock) -> None:
        self.sc = Sidecar(settings, clock=clock, handle_signals=False)
        self.stream = redis.Redis.from_url(settings.redis_url)

    async def __aenter__(self) -> Daemon:
        await self.sc.sqlite.start()
        await self.sc.redis.start()
        for f in (self.sc.fetcher, *self.sc.fallbacks):
            await f.start()
        await self.sc.reference.start()
        await self.sc.http.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stream.close()
        await self.sc.close()

    def events(self, kind: str) -> list[dict]:
        return [e for _, f in self.stream.xrange("sidecar:signals") if b"event" in f
                for e in [orjson.loads(f[b"event"])] if e["type"] == kind]

    def flags(self) -> dict[str, dict]:
        return {k.decode().split("{")[1].split("}")[0]: orjson.loads(self.stream.get(k) or b"null")
                for k in self.stream.scan_iter("sidecar:*:earnings")}

    async def get(self, path: str) -> dict:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.sc.http.port}{path}") as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())


def expected_flags(ex: Exchange, followed: set[str], now: float, days: int) -> set[str]:
    """The exchange's schedule: followed symbols with a release not yet out within `days` days."""
    today = dt.datetime.fromtimestamp(now, NY).date()
    out = set()
    for r in ex.reference.reports(today, today + dt.timedelta(days=days)):
        out_at = {"pre-market": dt.time(9, 30), "post-market": dt.time(17, 0)}.get(r.time)
        released = dt.datetime.combine(r.date, out_at, NY) if out_at else dt.datetime.combine(
            r.date + dt.timedelta(days=1), dt.time(0), NY)
        if r.symbol in followed and released.timestamp() > now:
            out.add(r.symbol)
    return out


async def test_the_daemon_on_dev_etfs_fills_the_symbols_table_flags_earnings_and_summarizes_the_day(
        tmp_path: Path, redis_url: str) -> None:
    clock = ManualClock(start=NOW)
    ex = Exchange(Market(SEED), clock=clock)
    await ex.start()
    day = dt.date(2026, 11, 30)
    ex.reference.set_report("AAPL", day + dt.timedelta(days=2), "post-market", 2.35)  # Wednesday after the close
    ex.reference.set_report("MSFT", day + dt.timedelta(days=7), "pre-market")  # the edge of the 7 days
    ex.reference.set_report("NVDA", day + dt.timedelta(days=8))  # beyond it
    settings = _settings(tmp_path, redis_url, ex.url or "").with_overrides(universe="dev_etfs", symbols="AAPL,MSFT,NVDA")
    etfs = ["SPY", "QQQ", "IWM", "DIA", "VTI"]
    assert settings.symbols == ("AAPL", "MSFT", "NVDA", *etfs)
    try:
        async with Daemon(settings, clock) as d:
            sc = d.sc
            await sc.reference.refresh(sc.infos)
            listing = {r["symbol"]: r for r in (await d.get("/symbols?type=etf"))["symbols"]}
            assert sorted(listing) == sorted(etfs)
            for sym in etfs:  # the exchange's fund data, through Yahoo's quote and quoteSummary
                row = listing[sym]
                assert (row["type"], row["net_assets"], row["category"]) == (
                    "etf", FUNDS[sym].net_assets, FUNDS[sym].category)
                assert row["expense_ratio"] == pytest.approx(FUNDS[sym].expense_pct / 100)
            assert [r["symbol"] for r in (await d.get("/symbols?universe=dev_etfs&type=equity"))["symbols"]] == []
            assert {r["type"] for r in (await d.get("/symbols"))["symbols"] if r["symbol"] in ("AAPL", "NVDA")} == {
                "equity"}

            assert await sc.reference.sync_earnings()
            await sc.reference.update_flags()
            followed = set(settings.symbols)
            want = expected_flags(ex, followed, clock.time(), 7)
            assert want == {"AAPL", "MSFT"}
            flags = d.flags()
            assert set(flags) == want
            assert flags["AAPL"]["report_date"] == "2026-12-02" and flags["AAPL"]["time_of_day"] == "post-market"
            assert flags["AAPL"]["estimate"] == 2.35 and flags["AAPL"]["days"] == 2
            ttl = d.stream.ttl("sidecar:{AAPL}:earnings")
            assert 86000 < ttl <= 86400
            assert sorted(e["symbol"] for e in d.events("earnings.upcoming")) == ["AAPL", "MSFT"]
            await sc.reference.update_flags()  # each release announced once
            assert len(d.events("earnings.upcoming")) == 2
            assert [e["symbol"] for e in (await d.get("/earnings?days=7"))["earnings"]] == ["AAPL", "MSFT"]
            assert [e["symbol"] for e in (await d.get("/earnings?days=2"))["earnings"]] == ["AAPL"]
            assert sc.scanner._earnings == {"AAPL": 2, "MSFT": 7, "NVDA": 8}  # noqa: SLF001 - what rules see

            # Wednesday 18:00 New York: AAPL's release is out, its flag is gone; MSFT's stays
            clock.advance(dt.datetime(2026, 12, 2, 18, 0, tzinfo=NY).timestamp() - clock.time())
            await sc.reference.update_flags()
            assert set(d.flags()) == expected_flags(ex, followed, clock.time(), 7) == {"MSFT", "NVDA"}
            reported = d.events("earnings.reported")
            assert [(e["symbol"], e["report_date"]) for e in reported] == [("AAPL", "2026-12-02")]
            assert sorted(e["symbol"] for e in d.events("earnings.upcoming")) == ["AAPL", "MSFT", "NVDA"]

            # the session closed: the end-of-day check publishes the day's summary, per universe
            await sc.upkeep.end_of_day_check()
            (summary,) = [e for e in d.events("end_of_day") if e["date"] == "2026-12-02"]
            assert summary["symbols"] == 8 and summary["universes"]["dev_etfs"]["symbols"] == 5
            assert summary["asset_class"] == "equity" and summary["session"][1] == int(
                dt.datetime(2026, 12, 2, 16, 0, tzinfo=NY).timestamp())
            health = sc.health()["reference"]
            assert health["by_type"] == {"equity": 3, "etf": 5} and health["earnings"]["source"] == "alphavantage"
    finally:
        await ex.close()


async def test_the_calendar_falls_back_to_twelvedata_when_alphavantage_fails_within_each_budget(
        tmp_path: Path, redis_url: str) -> None:
    clock = ManualClock(start=NOW)
    # Twelve Data's calendar costs 40 credits: the plan here has 55 a minute (a Grow plan).
    ex = Exchange(Market(SEED), clock=clock, limits={"twelvedata": Limits(per_minute=55, per_day=5000)})
    await ex.start()
    ex.reference.set_report("AAPL", dt.date(2026, 12, 3), "pre-market", 2.0)
    ex.outage(30 * 86400, "alphavantage")
    try:
        settings = _settings(tmp_path, redis_url, ex.url or "", twelvedata_rate_per_min=55,
                             twelvedata_rate_per_day=5000, symbols=("AAPL", "MSFT", "SPY"))
        async with Daemon(settings, clock) as d:
            assert await d.sc.reference.sync_earnings()
            await d.sc.reference.update_flags()
            assert d.sc.reference.calendar["source"] == "twelvedata"
            assert set(d.flags()) == expected_flags(ex, {"AAPL", "MSFT", "SPY"}, clock.time(), 7) >= {"AAPL"}
            assert d.flags()["AAPL"]["time_of_day"] == "pre-market"  # "Pre Market" in Twelve Data's words
            assert ex.requests["twelvedata_earnings"] == 1
            for _ in range(3):  # synced again at once, 120 credits: the daemon waits for room in its budget
                assert await d.sc.reference.sync_earnings()
                assert d.sc.reference.calendar["source"] == "twelvedata"
            assert ex.requests["twelvedata_earnings"] == 4
        assert ex.requests["alphavantage"] >= 4  # tried first every time (until its breaker opened)
        assert ex.providers.refused["twelvedata"] == 0 and ex.providers.refused["alphavantage"] == 0
        minutes: dict[int, int] = {}
        for t, cost in ex.providers.key_log[("twelvedata", "local")]:
            minutes[int(t // 60)] = minutes.get(int(t // 60), 0) + cost
        assert max(minutes.values()) <= 55 and len(minutes) >= 3  # 160 credits spread over the minutes

        # on the free plan (8 credits a minute) the calendar cannot come from Twelve Data at all:
        # it is not asked (no 429 earned), and the health says no source answered
        free = _settings(tmp_path / "free", redis_url, ex.url or "", symbols=("AAPL",))
        before = ex.requests["twelvedata_earnings"]
        async with Daemon(free, clock) as d:
            assert not await d.sc.reference.sync_earnings()
            assert d.sc.health()["reference"]["earnings"]["last_error"].startswith("no source answered")
        assert ex.requests["twelvedata_earnings"] == before
    finally:
        await ex.close()


async def test_the_symbols_and_earnings_commands_print_the_table_and_refuse_an_unknown_type(
        exchange: Exchange, tmp_path: Path) -> None:
    import asyncio
    import sys

    from .conftest import subprocess_env

    env = subprocess_env(SIDECAR_DB_PATH=str(tmp_path / "cli.db"), SIDECAR_YAHOO_BASE_URL=exchange.url or "",
                         SIDECAR_ALPHAVANTAGE_BASE_URL=exchange.url or "", SIDECAR_ALPHAVANTAGE_API_KEY="local")

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sidecar", *args, cwd=tmp_path, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run("symbols", "--universe", "dev_etfs", "--symbols", "AAPL", "--type", "ETF")
    assert code == 0, err
    rows = orjson.loads(out)["symbols"]
    assert sorted(r["symbol"] for r in rows) == ["DIA", "IWM", "QQQ", "SPY", "VTI"]
    assert all(r["net_assets"] == FUNDS[r["symbol"]].net_assets and r["source"] == "yahoo" for r in rows)
    code, out, err = await run("symbols", "--symbols", "AAPL", "--type", "bond")
    assert code == 2 and "unknown type 'bond'; known: equity, etf, etn" in err
    ex_today = exchange.providers.reference.today()  # type: ignore[union-attr]
    exchange.reference.set_report("AAPL", ex_today + dt.timedelta(days=3), "pre-market", 2.1)
    exchange.reference.set_report("MSFT", None)  # the seeded schedule would depend on today's date
    code, out, err = await run("earnings", "--symbols", "AAPL,MSFT", "--days", "5")
    assert code == 0, err
    doc = orjson.loads(out)
    assert doc["source"] == "alphavantage" and [(e["symbol"], e["days"]) for e in doc["earnings"]] == [("AAPL", 3)]
