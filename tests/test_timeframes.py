"""Higher timeframes built from the exchange's minutes equal an independent reference.

The reference is a few lines of pandas over the exchange's truth, written here: bucket keys
from local wall-clock arithmetic (09:30 New York session opens, London or New York day
starts, the UTC grid), then first/max/min/last/sum per key. The daemon's aggregator gets the
same minutes the way the live loop does, in cycles of random size with a forming minute and
idle cycles between, and must close every bucket exactly once with the reference's values.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from sidecar.bars import FORMING
from sidecar.clock import ManualClock
from sidecar.cycle.aggregate import Aggregator
from sidecar.cycle.batch import Batch
from sidecar.cycle.table import SymbolTable
from sidecar.exchange import Exchange, Market
from sidecar.exchange.market import MinuteBars
from sidecar.symbols import AssetClass, lookup
from sidecar.timeframes import Buckets, DayStart

from .conftest import SEED

HIGHER = ("5m", "15m", "1h", "4h", "1d")
STEP = {"5m": 300, "15m": 900, "1h": 3600, "4h": 14400}


def _utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp())


def truth(symbol: str, start: int, end: int) -> MinuteBars:
    """The minutes with trades the exchange's market made (its real sessions)."""
    exchange = Exchange(Market(SEED), clock=ManualClock(start=end + 86400))
    return exchange.truth(lookup(symbol).yahoo, start, end)


def reference(m: MinuteBars, tf: str, kind: str, day: tuple[int, int, str] = (0, 0, "UTC")) -> dict[int, tuple]:
    """Bars per bucket by plain wall-clock rules: (ts) -> (open, high, low, close, volume)."""
    df = pd.DataFrame({"o": m.open, "h": m.high, "l": m.low, "c": m.close, "v": m.volume},
                      index=pd.to_datetime(m.ts, unit="s", utc=True))
    if kind == "equity":  # anchored at the 09:30 New York open; the day is the session
        ny = df.index.tz_convert("America/New_York").tz_localize(None)
        opens = ny.normalize() + pd.Timedelta(hours=9, minutes=30)
        naive = opens if tf == "1d" else opens + (ny - opens) // pd.Timedelta(seconds=STEP[tf]) * pd.Timedelta(
            seconds=STEP[tf])
        key = naive.tz_localize("America/New_York")
    elif tf == "1d":  # the local date, shifted so the day starts at hour:minute
        hour, minute, zone = day
        shift = pd.Timedelta(hours=hour, minutes=minute)
        local = df.index.tz_convert(zone).tz_localize(None)
        key = ((local - shift).normalize() + shift).tz_localize(zone)
    else:
        key = df.index.floor(f"{STEP[tf]}s")
    g = df.groupby(key).agg(o=("o", "first"), h=("h", "max"), l=("l", "min"), c=("c", "last"), v=("v", "sum"))
    return {int(k.timestamp()): tuple(r) for k, r in zip(g.index, g.itertuples(index=False), strict=True)}


def run_live(symbol: str, tf: str, m: MinuteBars, buckets: Buckets, seed: int) -> tuple[dict[int, tuple], int]:
    """Feed the minutes to an aggregator cycle by cycle, as the loop does (random catch-up
    sizes, a partial forming minute, idle cycles up to the next minute's end); every closed
    bar once, and how many forming bars matched the reference of what had happened so far."""
    rng = np.random.default_rng(seed)
    table = SymbolTable({c: (0.0, np.inf) for c in AssetClass}, ["yahoo"])
    slot = table.add(lookup(symbol), [])
    agg = Aggregator(tf, table, buckets)
    agg.reset(np.array([slot]), since=0)
    out: dict[int, tuple] = {}
    checked = i = 0

    def rows(sel: slice | np.ndarray, flags: int = 0) -> Batch:
        n = len(m.ts[sel])
        return Batch(np.full(n, slot), m.ts[sel], m.open[sel], m.high[sel], m.low[sel], m.close[sel],
                     m.volume[sel], np.full(n, flags), np.zeros(n, dtype=np.int16), np.full(n, np.inf))

    def collect(closed: Batch) -> None:
        for ts, *values in zip(closed.ts.tolist(), closed.open.tolist(), closed.high.tolist(), closed.low.tolist(),
                               closed.close.tolist(), closed.volume.tolist(), strict=True):
            assert ts not in out, f"{tf} bar {ts} closed twice"
            out[ts] = tuple(values)

    while i < len(m.ts):
        k = int(rng.integers(1, 40))
        closed = rows(slice(i, i + k))
        i += k
        forming = rows(slice(i, i + 1), FORMING)  # the next minute, as far as it has traded
        table.lt_ts[slot] = forming.ts[0] if len(forming) else closed.ts[-1]
        table.lt_flags[slot] = FORMING if len(forming) else 0
        now = float(closed.ts[-1] + 60 + rng.uniform(0, 3))
        step = agg.step(closed, forming, now)
        assert not len(step.rebuild)
        collect(step.closed)
        if out:  # the newest closed bar is what its committed features are stamped with
            assert agg.ref_ts[slot] == max(out) and agg.ref_close[slot] == out[max(out)][3]
        if len(step.forming):  # the forming bar: its bucket's minutes so far, the forming one included
            start = int(step.forming.ts[0])
            upto = m.ts[: i + 1]
            bucket = buckets.bounds(lookup(symbol).asset_class, tf, upto)[0] == start
            want = (m.open[: i + 1][bucket][0], m.high[: i + 1][bucket].max(), m.low[: i + 1][bucket].min(),
                    m.close[i], m.volume[: i + 1][bucket].sum())
            got = (step.forming.open[0], step.forming.high[0], step.forming.low[0], step.forming.close[0],
                   step.forming.volume[0])
            assert np.allclose(got, want, rtol=1e-12), (tf, start, got, want)
            checked += 1
        if i < len(m.ts) and rng.random() < 0.3:  # an idle cycle: nothing new, the clock moves on
            table.lt_ts[slot], table.lt_flags[slot] = closed.ts[-1], 0
            collect(agg.step(Batch.empty(), Batch.empty(), float(rng.uniform(now, m.ts[i] + 60))).closed)
    collect(agg.step(Batch.empty(), Batch.empty(), float(m.ts[-1] + 10 * 86400)).closed)
    return out, checked


def _assert_same(got: dict[int, tuple], want: dict[int, tuple], what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: bucket opens differ"
    for ts, values in want.items():
        assert np.allclose(got[ts], values, rtol=1e-12, atol=0), (what, ts, got[ts], values)


@pytest.mark.parametrize("tf", HIGHER)
def test_nyse_weeks_with_a_dst_change_a_holiday_and_the_thanksgiving_early_close(tf: str) -> None:
    # 2025-10-27 .. 2025-11-28: New York leaves DST on Nov 2, Thanksgiving (Nov 27) is closed,
    # Nov 28 closes at 13:00.
    m = truth("AAPL", _utc(2025, 10, 27), _utc(2025, 11, 29))
    assert (np.diff(m.ts) == 60).mean() < 1  # minutes without trades inside sessions are in the data
    got, forming = run_live("AAPL", tf, m, Buckets(), seed=1)
    want = reference(m, tf, "equity")
    _assert_same(got, want, f"AAPL {tf}")
    assert forming > 100
    opens = {dt.datetime.fromtimestamp(ts, tz=dt.UTC) for ts in got}
    assert all(o.strftime("%H:%M") in ("13:30", "14:30") for o in opens) if tf == "1d" else True
    thanksgiving = [ts for ts in got if _utc(2025, 11, 27) <= ts < _utc(2025, 11, 28)]
    assert thanksgiving == []
    if tf == "4h":  # 09:30-13:30 and 13:30-16:00; on the early close only 09:30-13:00
        assert sorted(ts for ts in got if _utc(2025, 11, 28) <= ts < _utc(2025, 11, 29)) == [_utc(2025, 11, 28, 14, 30)]
        assert sorted(ts for ts in got if _utc(2025, 10, 31) <= ts < _utc(2025, 11, 1)) == [
            _utc(2025, 10, 31, 13, 30), _utc(2025, 10, 31, 17, 30)]  # still DST: 09:30 is 13:30 UTC
        assert sorted(ts for ts in got if _utc(2025, 11, 3) <= ts < _utc(2025, 11, 4)) == [
            _utc(2025, 11, 3, 14, 30), _utc(2025, 11, 3, 18, 30)]


@pytest.mark.parametrize("tf", HIGHER)
def test_a_crypto_weekend_on_the_utc_grid(tf: str) -> None:
    m = truth("BTCUSD", _utc(2025, 11, 7, 20), _utc(2025, 11, 10, 4))
    got, _ = run_live("BTCUSD", tf, m, Buckets(), seed=2)
    _assert_same(got, reference(m, tf, "utc", (0, 0, "UTC")), f"BTCUSD {tf}")


@pytest.mark.parametrize("tf", HIGHER)
@pytest.mark.parametrize("day", [(0, 0, "Europe/London"), (17, 0, "America/New_York")])
def test_fx_weeks_across_london_midnight_and_the_new_york_rollover(tf: str, day: tuple[int, int, str]) -> None:
    # 2025-10-23 .. 2025-11-05: London leaves DST on Oct 26, New York on Nov 2.
    m = truth("EURUSD", _utc(2025, 10, 23), _utc(2025, 11, 5))
    buckets = Buckets({AssetClass.FX: DayStart(*day)})
    got, _ = run_live("EURUSD", tf, m, buckets, seed=3)
    _assert_same(got, reference(m, tf, "fx", day), f"EURUSD {tf} day from {day}")
    if tf == "1d" and day[2] == "Europe/London":
        assert _utc(2025, 10, 27) in got and _utc(2025, 10, 23, 23) in got  # GMT after Oct 26, BST before


def test_futures_days_start_at_new_york_midnight() -> None:
    m = truth("XAUUSD", _utc(2025, 11, 2), _utc(2025, 11, 8))
    got, _ = run_live("XAUUSD", "1d", m, Buckets(), seed=4)
    _assert_same(got, reference(m, "1d", "futures", (0, 0, "America/New_York")), "XAUUSD 1d")
    assert _utc(2025, 11, 4, 5) in got  # New York midnight in EST


def test_a_late_minute_of_a_closed_bucket_and_one_from_before_the_start_go_to_a_rebuild() -> None:
    table = SymbolTable({c: (0.0, np.inf) for c in AssetClass}, ["yahoo"])
    slot = table.add(lookup("BTCUSD"), [])
    agg = Aggregator("5m", table, Buckets())
    t0 = _utc(2026, 1, 5, 10)
    agg.reset(np.array([slot]), since=t0 + 30)  # followed from 10:00:30: the 10:00 bucket is rebuilt from the store

    def minute(ts: int) -> Batch:
        return Batch(np.array([slot]), np.array([ts]), *(np.array([x]) for x in (1.0, 2.0, 0.5, 1.5, 10.0)),
                     np.array([0]), np.zeros(1, dtype=np.int16), np.array([np.inf]))

    first = agg.step(minute(t0), Batch.empty(), t0 + 61)
    assert first.rebuild.tolist() == [[slot, t0, t0 + 300]] and not len(first.closed)
    agg.step(minute(t0 + 300), Batch.empty(), t0 + 361)
    closed = agg.step(minute(t0 + 600), Batch.empty(), t0 + 661).closed
    assert closed.ts.tolist() == [t0 + 300]  # closed by a minute of the next bucket
    late = agg.step(minute(t0 + 420), Batch.empty(), t0 + 662)
    assert late.rebuild.tolist() == [[slot, t0 + 300, t0 + 600]] and not len(late.closed)


def test_forming_refreshes_are_spread_over_the_cycles_and_closes_are_never_delayed() -> None:
    from sidecar.cycle.higher import HigherTimeframes
    from sidecar.metrics import Metrics

    table = SymbolTable({c: (0.0, np.inf) for c in AssetClass}, ["yahoo"])
    slots = np.array([table.add(lookup(f"Q{i:03d}"), []) for i in range(20)])
    higher = HigherTimeframes(("1m", "5m", "1h"), table=table, buckets=Buckets(), sqlite=None,  # type: ignore[arg-type]
                              metrics=Metrics(), clock=ManualClock(), features=None, warmup_bars=0, forming_every=5)
    higher.reset(slots, 0)
    table.asset_class[slots] = list(AssetClass).index(AssetClass.CRYPTO)
    t0 = _utc(2026, 1, 5, 10, 3)

    def rows(ts: int, flags: int) -> Batch:
        n = len(slots)
        return Batch(slots, np.full(n, ts), *(np.full(n, x) for x in (1.0, 2.0, 0.5, 1.5, 10.0)), np.full(n, flags),
                     np.zeros(n, dtype=np.int16), np.full(n, np.inf))

    seen: dict[str, list[int]] = {"5m": [], "1h": []}
    for k in range(5):
        table.lt_ts[slots], table.lt_flags[slots] = t0, FORMING
        for out in higher.step(rows(t0 - 60, 0), rows(t0, FORMING), t0 + k + 1):
            seen[out.timeframe] += out.latest.slot[(out.latest.flags & FORMING) != 0].tolist()
    for timeframe, refreshed in seen.items():
        assert sorted(refreshed) == sorted(slots.tolist()), timeframe  # each symbol once in five cycles
    # 10:05: every symbol's 10:00 bucket closes in the first cycle after its end, due or not
    table.lt_ts[slots], table.lt_flags[slots] = t0 + 120, FORMING
    out = higher.step(rows(t0 + 60, 0), rows(t0 + 120, FORMING), t0 + 121)
    assert sorted(out[0].closed.slot.tolist()) == sorted(slots.tolist()) and set(out[0].closed.ts.tolist()) == {t0 - 180}
