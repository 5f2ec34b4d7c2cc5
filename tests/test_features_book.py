"""The feature book: warm-up from stored history, incremental commits, symbols added and
removed while running, exactly-once commits, and float drift over a million updates."""

from __future__ import annotations

import time

import numpy as np

from sidecar.bars import Bar, BarFlag
from sidecar.calendars import session_day
from sidecar.clock import ManualClock
from sidecar.features import OUTPUTS, FeatureConfig, FeatureEngine
from sidecar.features.book import FeatureBook
from sidecar.features.engine import Bars
from sidecar.features.service import FeatureService
from sidecar.symbols import AssetClass, lookup

from .talib_oracle import max_error, session_vwap, talib_outputs

T0 = 1_795_000_000 // 60 * 60
TOL = 1e-9


def _history(symbol: str, n: int, seed: int, scale: float = 100.0) -> list[Bar]:
    rng = np.random.default_rng(seed)
    c = scale * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    hi, lo = c * (1 + rng.uniform(0, 0.002, n)), c * (1 - rng.uniform(0, 0.002, n))
    v = rng.integers(0, 10_000, n).astype(float)
    return [Bar(symbol, "1m", T0 + 60 * i, c[i], hi[i], lo[i], c[i], v[i], "test") for i in range(n)]


def _oracle_last(bars: list[Bar], asset_class: AssetClass, book: FeatureBook) -> dict[str, float]:
    h, l, c, v = (np.array([getattr(b, f) for b in bars]) for f in ("high", "low", "close", "volume"))
    want = talib_outputs(h, l, c, v, book.config, hv_scale=float(book.engine.hv_scale[book.slots[bars[0].symbol]]))
    days = session_day(asset_class, np.array([b.ts for b in bars]))
    want["vwap"] = session_vwap(h, l, c, v, np.r_[True, days[1:] != days[:-1]])
    return {name: want[name][-1] for name in OUTPUTS}


def _assert_matches(book: FeatureBook, symbol: str, bars: list[Bar]) -> None:
    got = book.values([symbol])[:, 0]
    want = _oracle_last(bars, lookup(symbol).asset_class, book)
    bad = {n: (got[i], want[n]) for i, n in enumerate(OUTPUTS)
           if max_error(np.array([got[i]]), np.array([want[n]])) > TOL}
    assert not bad, f"{symbol}: {bad}"


def test_warm_up_from_history_then_incremental_commits_equal_talib() -> None:
    symbols = ["AAPL", "EURUSD", "BTCUSD", "NAS100"]  # NYSE, FX and crypto sessions for the VWAP
    full = {s: _history(s, 900, seed=i, scale=[180.0, 1.08, 60_000.0, 17_000.0][i]) for i, s in enumerate(symbols)}
    book = FeatureBook(capacity=2)
    book.add([lookup(s) for s in symbols], {s: bars[:600] for s, bars in full.items()})
    for s in symbols:
        _assert_matches(book, s, full[s][:600])  # the warm-up path
    for i in range(600, 900, 7):  # then several bars per cycle; EURUSD's source is silent meanwhile...
        book.commit([b for s, bars in full.items() for b in bars[i:i + 7] if s != "EURUSD"])
    book.commit(full["EURUSD"][600:900])  # ...and its 300 missed bars arrive in one cycle
    for s in symbols:
        _assert_matches(book, s, full[s])  # the incremental path


def test_closed_bars_are_committed_exactly_once_in_time_order() -> None:
    bars = _history("MSFT", 400, seed=3)
    a, b = FeatureBook(), FeatureBook()
    for book in (a, b):
        book.add([lookup("MSFT")], {"MSFT": bars[:300]})
    a.commit(bars[300:])
    b.commit(list(reversed(bars[300:350])))  # out of order in one batch: sorted
    b.commit(bars[320:400])  # overlapping: the repeated ones are skipped
    b.commit(bars[100:200])  # older than what it has: ignored
    np.testing.assert_array_equal(a.values(["MSFT"]), b.values(["MSFT"]))


def test_symbols_are_added_and_removed_while_running() -> None:
    hist = {s: _history(s, 700, seed=10 + i) for i, s in enumerate(["AAPL", "MSFT", "TSLA", "SPY"])}
    book = FeatureBook(capacity=1)
    book.add([lookup("AAPL"), lookup("MSFT")], {s: hist[s][:550] for s in ("AAPL", "MSFT")})
    book.commit([b for s in ("AAPL", "MSFT") for b in hist[s][550:600]])
    book.add([lookup("TSLA")], {"TSLA": hist["TSLA"][:600]})  # joins mid-run, engine grows
    book.commit([b for s in ("AAPL", "MSFT", "TSLA") for b in hist[s][600:650]])
    book.remove(["MSFT"])
    book.add([lookup("SPY")], {"SPY": hist["SPY"][:650]})  # takes the freed slot
    book.commit([b for s in ("AAPL", "TSLA", "SPY") for b in hist[s][650:700]])
    assert "MSFT" not in book and len(book) == 3
    for s in ("AAPL", "TSLA", "SPY"):
        _assert_matches(book, s, hist[s])


def test_forming_bars_give_provisional_values_and_leave_the_state_alone() -> None:
    bars = _history("AAPL", 620, seed=4)
    service = FeatureService(FeatureConfig(), timeframe="1m", clock=ManualClock(start=T0 + 620 * 60))
    service.warm([lookup("AAPL")], {"AAPL": bars[:600]})
    before = service.book.values(["AAPL"]).copy()
    forming = Bar("AAPL", "1m", bars[600].ts, bars[600].open, bars[600].high * 1.01, bars[600].low,
                  bars[600].close * 1.01, 5.0, "test", BarFlag.FORMING)
    ((sym, tf, raw),) = service.update([], [forming])
    value = service.codec.to_map(raw)
    assert (sym, tf, value["provisional"], value["ts"]) == ("AAPL", "1m", True, forming.ts)
    np.testing.assert_array_equal(service.book.values(["AAPL"]), before)  # nothing committed
    ((_, _, raw),) = service.update(bars[600:601], [])  # the bar closes: committed, not provisional
    assert service.codec.to_map(raw)["provisional"] is False
    _assert_matches(service.book, "AAPL", bars[:601])


def test_a_million_incremental_updates_do_not_drift() -> None:
    slots, steps = 20, 50_000  # 1,000,000 updates; prices wander over several orders of magnitude
    rng = np.random.default_rng(7)
    c = np.exp(np.cumsum(rng.normal(0, 0.02, (steps, slots)), axis=0)) * np.logspace(-4, 5, slots)[None, :]
    h, l = c * (1 + rng.uniform(0, 0.01, c.shape)), c * (1 - rng.uniform(0, 0.01, c.shape))
    v = rng.integers(0, 10**6, c.shape).astype(float)
    eng = FeatureEngine(capacity=slots)
    t0 = time.perf_counter()
    for t in range(steps):
        eng.step(Bars(c[t], h[t], l[t], c[t], v[t]))
    assert eng.commits == steps and time.perf_counter() - t0 < 600
    for s in range(slots):
        want = talib_outputs(h[:, s], l[:, s], c[:, s], v[:, s], eng.config)
        for i, name in enumerate(OUTPUTS):
            got, ref = eng.out[i, s], want[name][-1]
            # price-like outputs (and momentum, a difference of prices) are compared relative to the price
            scale = max(1.0, abs(ref), abs(c[-1, s]) if name.startswith(("bb_", "sma", "ema", "mom", "vwap")) else 0.0)
            assert abs(got - ref) <= TOL * scale, (s, name, got, ref)


def test_a_compiled_replay_equals_committing_the_bars_one_by_one_bit_for_bit() -> None:
    """The export's replay (one compiled loop) and the live path (a commit per bar) give the same
    bits for every output after every bar, across session starts and histories of unequal length."""
    rng = np.random.default_rng(5)
    symbols, counts = ["AAPL", "BTCUSD", "EURUSD", "MSFT"], np.array([1300, 40, 1, 700])
    offsets = np.r_[0, np.cumsum(counts)]
    ts = np.concatenate([1_790_000_000 // 3600 * 3600 + 3600 * np.arange(n) for n in counts]).astype(np.float64)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(ts))))
    values = np.vstack([close, close * 1.01, close * 0.99, close, rng.integers(1, 9999, len(ts)).astype(float), ts])
    books = [FeatureBook(timeframe="1h", capacity=4) for _ in range(2)]
    for book in books:
        book.add([lookup(s) for s in symbols], {})
    slots = np.array([books[0].slots[s] for s in symbols])
    replayed = books[0].replay(slots, offsets, values)
    one_by_one = np.empty_like(replayed)
    for k, slot in enumerate(slots):
        for row in range(offsets[k], offsets[k + 1]):
            books[1].commit_columns(np.array([slot]), values[:, row:row + 1])
            one_by_one[:, row] = books[1].engine.out[:, slot]
    assert np.array_equal(replayed, one_by_one, equal_nan=True)
    assert np.isfinite(replayed[:, offsets[1] - 1]).all()  # warm by the end of the long history
    assert np.array_equal(books[0].last_ts, books[1].last_ts)
