"""Feature engine and scanner benchmark: ours next to the peers, in one run, as a table.

    make bench-features     (or: .venv/bin/python -m bench.features [--symbols 5000])

Peers, all on the same random-walk data:
- TA-Lib 0.8 persistent `talib.stream` handles, one per symbol and indicator function
  (22 per symbol), O(1) `update` per bar: the fastest peer;
- talipp's incremental `add` (19 of the 22 functions: talipp has no MFI, MOM or RVOL);
- TA-Lib batch functions recomputed over a 500-bar window every bar;
- for the scanner: per-symbol GET + msgpack + rules in Python.
Slow peers are measured on a subset of the symbols and scaled linearly (their cost is one
independent object or call per symbol, so it is linear by construction); the table says so.
Medians and p99 over the steps; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import talib
import talib.stream as ts

from sidecar.features import OUTPUTS, FeatureEngine
from sidecar.features.codec import FeatureCodec
from sidecar.features.engine import Bars
from sidecar.scanner import DEFAULT_RULES, Scanner, parse_rules
from sidecar.stores import RedisStore

from .servers import redis_server


def market(symbols: int, bars: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(high, low, close, volume), each (bars, symbols)."""
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, (bars, symbols)), axis=0))
    return c * 1.001, c * 0.999, c, rng.integers(1, 10_000, (bars, symbols)).astype(float)


def pct(times: list[float], q: float) -> float:
    return float(np.percentile(times, q)) * 1e3


def bench_ours(h, l, c, v, history: int, steps: int) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    symbols = c.shape[1]
    eng = FeatureEngine(capacity=symbols)
    eng.step(Bars(c[0], h[0], l[0], c[0], v[0]))  # compile / load the kernel outside the timings
    eng = FeatureEngine(capacity=symbols)
    t0 = time.perf_counter()
    for t in range(history):
        eng.step(Bars(c[t], h[t], l[t], c[t], v[t]))
    warm = time.perf_counter() - t0
    step, peek = [], []
    for t in range(history, history + steps):
        bars = Bars(c[t], h[t], l[t], c[t], v[t])
        t0 = time.perf_counter()
        eng.peek(bars)
        t1 = time.perf_counter()
        eng.step(bars)
        t2 = time.perf_counter()
        peek.append(t1 - t0)
        step.append(t2 - t1)
    return {"step": (pct(step, 50), pct(step, 99)), "peek": (pct(peek, 50), pct(peek, 99)),
            "warm": (warm * 1e3, warm * 1e3)}


def _stream_handles(h, l, c, v) -> list[tuple[object, str]]:  # type: ignore[no-untyped-def]
    """One symbol's 22 persistent handles opened on its history, with the inputs each takes."""
    lr = np.log(c[1:] / c[:-1])
    return [
        (ts.SMA(c, 20), "c"), (ts.SMA(c, 50), "c"), (ts.SMA(c, 200), "c"), (ts.EMA(c, 9), "c"),
        (ts.EMA(c, 21), "c"), (ts.RSI(c, 14), "c"), (ts.MACD(c, 12, 26, 9), "c"),
        (ts.STOCH(h, l, c, 14, 3, 0, 3, 0), "hlc"), (ts.CCI(h, l, c, 20), "hlc"), (ts.WILLR(h, l, c, 14), "hlc"),
        (ts.ATR(h, l, c, 14), "hlc"), (ts.BBANDS(c, 20, 2, 2, 0), "c"), (ts.STDDEV(lr, 20, 1), "r"),
        (ts.OBV(c, v), "cv"), (ts.VWAP(h, l, c, v), "hlcv"), (ts.SMA(v, 20), "v"), (ts.RVOL(v, 20), "v"),
        (ts.ADX(h, l, c, 14), "hlc"), (ts.PLUS_DI(h, l, c, 14), "hlc"), (ts.MINUS_DI(h, l, c, 14), "hlc"),
        (ts.MFI(h, l, c, v, 14), "hlcv"), (ts.MOM(c, 10), "c"), (ts.ROC(c, 10), "c"),
    ]


def bench_talib_stream(h, l, c, v, history: int, steps: int, subset: int) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    handles = [_stream_handles(h[:history, s], l[:history, s], c[:history, s], v[:history, s])
               for s in range(subset)]
    warm = time.perf_counter() - t0
    step, peek = [], []
    for t in range(history, history + steps):
        hi, lo, cl, vo, prev = h[t].tolist(), l[t].tolist(), c[t].tolist(), v[t].tolist(), c[t - 1].tolist()
        for method, times in (("peek", peek), ("update", step)):
            t0 = time.perf_counter()
            for s in range(subset):
                args = {"c": (cl[s],), "hlc": (hi[s], lo[s], cl[s]), "cv": (cl[s], vo[s]), "v": (vo[s],),
                        "hlcv": (hi[s], lo[s], cl[s], vo[s]), "r": (np.log(cl[s] / prev[s]),)}
                for handle, kind in handles[s]:
                    getattr(handle, method)(*args[kind])
            times.append(time.perf_counter() - t0)
    return {"step": (pct(step, 50), pct(step, 99)), "peek": (pct(peek, 50), pct(peek, 99)),
            "warm": (warm * 1e3, warm * 1e3)}


def bench_talipp(h, l, c, v, history: int, steps: int, subset: int) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    import talipp.indicators as ti
    from talipp.ohlcv import OHLCV

    def open_symbol(s: int) -> list[tuple[object, str]]:
        closes = c[:history, s].tolist()
        bars = [OHLCV(c[t, s], h[t, s], l[t, s], c[t, s], v[t, s]) for t in range(history)]
        lr = np.log(c[1:history, s] / c[:history - 1, s]).tolist()
        return [
            (ti.SMA(20, closes), "c"), (ti.SMA(50, closes), "c"), (ti.SMA(200, closes), "c"), (ti.EMA(9, closes), "c"),
            (ti.EMA(21, closes), "c"), (ti.RSI(14, closes), "c"), (ti.MACD(12, 26, 9, closes), "c"),
            (ti.Stoch(14, 3, input_values=bars), "bar"), (ti.CCI(20, input_values=bars), "bar"),
            (ti.Williams(14, input_values=bars), "bar"), (ti.ATR(14, input_values=bars), "bar"),
            (ti.BB(20, 2.0, closes), "c"), (ti.StdDev(20, lr), "r"), (ti.OBV(input_values=bars), "bar"),
            (ti.VWAP(input_values=bars), "bar"), (ti.SMA(20, v[:history, s].tolist()), "v"),
            (ti.ADX(14, 14, input_values=bars), "bar"), (ti.ROC(10, closes), "c"),
        ]

    t0 = time.perf_counter()
    inds = [open_symbol(s) for s in range(subset)]
    warm = time.perf_counter() - t0
    step = []
    for t in range(history, history + steps):
        t0 = time.perf_counter()
        for s in range(subset):
            bar = OHLCV(c[t, s], h[t, s], l[t, s], c[t, s], v[t, s])
            args = {"c": c[t, s], "bar": bar, "v": v[t, s], "r": float(np.log(c[t, s] / c[t - 1, s]))}
            for ind, kind in inds[s]:
                ind.add(args[kind])
        step.append(time.perf_counter() - t0)
    return {"step": (pct(step, 50), pct(step, 99)), "warm": (warm * 1e3, warm * 1e3)}


def bench_talib_batch(h, l, c, v, history: int, steps: int, subset: int, window: int = 500) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    step = []
    for t in range(history, history + min(steps, 10)):
        t0 = time.perf_counter()
        for s in range(subset):
            a, b = max(0, t - window + 1), t + 1
            hh, ll, cc, vv = h[a:b, s], l[a:b, s], c[a:b, s], v[a:b, s]
            for fn in (lambda: talib.SMA(cc, 20), lambda: talib.SMA(cc, 50), lambda: talib.SMA(cc, 200),
                       lambda: talib.EMA(cc, 9), lambda: talib.EMA(cc, 21), lambda: talib.RSI(cc, 14),
                       lambda: talib.MACD(cc, 12, 26, 9), lambda: talib.STOCH(hh, ll, cc, 14, 3, 0, 3, 0),
                       lambda: talib.CCI(hh, ll, cc, 20), lambda: talib.WILLR(hh, ll, cc, 14),
                       lambda: talib.ATR(hh, ll, cc, 14), lambda: talib.BBANDS(cc, 20, 2, 2, 0),
                       lambda: talib.STDDEV(np.log(cc[1:] / cc[:-1]), 20, 1), lambda: talib.OBV(cc, vv),
                       lambda: talib.VWAP(hh, ll, cc, vv), lambda: talib.SMA(vv, 20), lambda: talib.RVOL(vv, 20),
                       lambda: talib.ADX(hh, ll, cc, 14), lambda: talib.PLUS_DI(hh, ll, cc, 14),
                       lambda: talib.MINUS_DI(hh, ll, cc, 14), lambda: talib.MFI(hh, ll, cc, vv, 14),
                       lambda: talib.MOM(cc, 10), lambda: talib.ROC(cc, 10)):
                fn()
        step.append(time.perf_counter() - t0)
    return {"step": (pct(step, 50), pct(step, 99))}


async def bench_scanner(symbols: int, repeat: int) -> dict[str, tuple[float, float]]:
    """Read every symbol's features from a real Redis and evaluate the default rules."""
    names = [f"S{i:05d}" for i in range(symbols)]
    codec = FeatureCodec(OUTPUTS, "1m")
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 100, (len(OUTPUTS), symbols))
    rows = codec.encode(np.full(symbols, 1_800_000_000), rng.uniform(90, 110, symbols), np.ones(symbols, bool),
                        time.time() + 3600, values)
    rules = parse_rules(DEFAULT_RULES, OUTPUTS)
    scanner = Scanner(symbols=names, broker_symbols=names, codec=codec, rules=rules, max_age_s=1e9)
    ours, naive = [], []
    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as url:
        store = RedisStore(url=url, prefix="b", max_connections=4, timeout_s=10, history_len=10, features_ttl_s=3600)
        await store.write_cycle("1m", features=(names, rows))
        for _ in range(repeat):
            t0 = time.perf_counter()
            scanner.evaluate(codec.decode(await store.features(names, "1m")), time.time())
            ours.append(time.perf_counter() - t0)
        for _ in range(max(3, repeat // 5)):
            t0 = time.perf_counter()
            state: dict[tuple[str, str], bool] = {}
            pipe = store.client.pipeline(transaction=False)
            for s in names:
                pipe.get(store.keys.features(s, "1m"))
            for s, raw in zip(names, await pipe.execute(), strict=True):
                m = msgpack.unpackb(raw)
                for rule in rules:
                    left = m[rule.condition.left] if isinstance(rule.condition.left, str) else rule.condition.left
                    right = m[rule.condition.right] if isinstance(rule.condition.right, str) else rule.condition.right
                    state[(s, rule.name)] = left is not None and right is not None and left > right
            naive.append(time.perf_counter() - t0)
        await store.close()
    return {"ours": (pct(ours, 50), pct(ours, 99)), "naive": (pct(naive, 50), pct(naive, 99))}


def main(symbols: int, history: int, steps: int) -> None:
    h, l, c, v = market(symbols, history + steps)
    print(f"{symbols} symbols, {history}-bar history, {steps} steps, 28 outputs")
    ours = bench_ours(h, l, c, v, history, steps)
    sub_stream, sub_talipp, sub_batch = min(symbols, 1000), min(symbols, 200), min(symbols, 100)
    stream = bench_talib_stream(h, l, c, v, history, min(steps, 30), sub_stream)
    tp = bench_talipp(h, l, c, v, history, min(steps, 10), sub_talipp)
    batch = bench_talib_batch(h, l, c, v, history, steps, sub_batch)
    scan = asyncio.run(bench_scanner(symbols, 30))

    def scaled(x: float, subset: int) -> float:
        return x * symbols / subset

    rows = [
        ("incremental step (p50)", ours["step"][0], "talib.stream handles .update", scaled(stream["step"][0], sub_stream),
         sub_stream),
        ("incremental step (p99)", ours["step"][1], "talib.stream handles .update", scaled(stream["step"][1], sub_stream),
         sub_stream),
        ("incremental step (p50)", ours["step"][0], "talipp .add (19 of 22 fns)", scaled(tp["step"][0], sub_talipp),
         sub_talipp),
        ("incremental step (p50)", ours["step"][0], "TA-Lib batch, 500-bar window", scaled(batch["step"][0], sub_batch),
         sub_batch),
        ("forming-bar evaluation (p50)", ours["peek"][0], "talib.stream handles .peek",
         scaled(stream["peek"][0], sub_stream), sub_stream),
        ("forming-bar evaluation (p99)", ours["peek"][1], "talib.stream handles .peek",
         scaled(stream["peek"][1], sub_stream), sub_stream),
        (f"warm start from {history} bars", ours["warm"][0], "open talib.stream handles",
         scaled(stream["warm"][0], sub_stream), sub_stream),
        ("scanner: MGET + decode + 7 rules (p50)", scan["ours"][0], "GET each + unpackb + Python rules",
         scan["naive"][0], symbols),
        ("scanner (p99)", scan["ours"][1], "GET each + unpackb + Python rules", scan["naive"][1], symbols),
    ]
    print(f"\n{'measure (' + str(symbols) + ' symbols)':<40} {'ours ms':>9}   {'peer':<32} {'peer ms':>10} "
          f"{'measured on':>11} {'speed-up':>9}")
    for name, mine, peer, theirs, subset in rows:
        print(f"{name:<40} {mine:>9.3f}   {peer:<32} {theirs:>10.2f} {subset:>11} {theirs / mine:>8.1f}x")
    print("\ntargets: step <= 1 ms p50 and <= 2 ms p99, >= 30x talib.stream, >= 250x talipp; "
          "forming bar within the step's budget; warm start <= 1000 ms; scanner <= 10 ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--history", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    main(args.symbols, args.history, args.steps)
