"""Every output of the incremental engine equals TA-Lib on the same history, to
1e-9 x max(1, |value|), with the same first valid bar: bar by bar for many symbols at once,
for forming bars (peek), and after warm-up from history."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.features import OUTPUTS, FeatureConfig, FeatureEngine
from sidecar.features.engine import Bars

from .talib_oracle import max_error, session_vwap, talib_outputs

TOL = 1e-9
T, S = 650, 5  # > 500 bars: ADX agreement at 1e-9 needs the long warm-up (indicators.md)


def _corpus(kind: str, seed: int = 1) -> tuple[np.ndarray, ...]:
    """(high, low, close, volume), each (T, S), for one kind of market."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        c = np.full((T, S), 42.0)
        return c, c, c, np.full((T, S), 100.0)
    if kind == "trend":
        c = 100 + np.arange(T)[:, None] * np.linspace(0.05, 2.0, S)[None, :]
        return c + 0.5, c - 0.5, c, np.full((T, S), 250.0)
    scale = {"walk": 100.0, "tiny": 1e-4, "huge": 1e5, "zero_volume": 30.0, "gap": 55.0}[kind]
    c = scale * np.exp(np.cumsum(rng.normal(0, 0.01, (T, S)), axis=0))
    h = c * (1 + rng.uniform(0, 0.01, (T, S)))
    l = c * (1 - rng.uniform(0, 0.01, (T, S)))
    v = rng.integers(0, 5000, (T, S)).astype(float)
    if kind == "zero_volume":
        v[:] = 0.0
    if kind == "gap":  # the market was closed: a jump between consecutive bars
        c[T // 2:] *= 1.3
        h[T // 2:] *= 1.3
        l[T // 2:] *= 1.3
    return h, l, c, v


def _check(got: np.ndarray, h, l, c, v, cfg: FeatureConfig, what: str) -> None:  # type: ignore[no-untyped-def]
    """got: (bars, outputs) for one slot."""
    want = talib_outputs(h, l, c, v, cfg)
    errors = {name: max_error(got[:, i], want[name]) for i, name in enumerate(cfg.outputs)}
    bad = {k: e for k, e in errors.items() if e > TOL}
    assert not bad, f"{what}: {bad}"


@pytest.mark.parametrize("kind", ["walk", "trend", "flat", "zero_volume", "gap", "tiny", "huge"])
def test_incremental_and_forming_bar_paths_equal_talib(kind: str) -> None:
    h, l, c, v = _corpus(kind)
    eng = FeatureEngine(capacity=S)
    got = np.empty((T, len(OUTPUTS), S))
    for t in range(T):
        bars = Bars(c[t], h[t], l[t], c[t], v[t])
        forming = eng.peek(bars)  # the same bar, seen while forming
        got[t] = eng.step(bars)
        np.testing.assert_array_equal(forming, got[t])  # peek == what the commit then yields
    for s in range(S):
        _check(got[:, :, s], h[:, s], l[:, s], c[:, s], v[:, s], eng.config, f"{kind} slot {s}")


def test_a_peek_changes_nothing() -> None:
    h, l, c, v = _corpus("walk")
    a, b = FeatureEngine(capacity=S), FeatureEngine(capacity=S)
    for t in range(60):
        bars = Bars(c[t], h[t], l[t], c[t], v[t])
        for _ in range(3):  # three forming versions of this bar...
            a.peek(Bars(c[t] * 1.01, h[t] * 1.02, l[t], c[t] * 1.01, v[t] / 2))
        np.testing.assert_array_equal(a.step(bars), b.step(bars))  # ...then the close: as if never peeked


def test_symbols_that_skip_bars_follow_their_own_history() -> None:
    h, l, c, v = _corpus("walk", seed=5)
    rng = np.random.default_rng(9)
    masks = rng.uniform(size=(T, S)) > 0.3
    masks[:, 0] = True
    eng = FeatureEngine(capacity=S)
    got: list[list[np.ndarray]] = [[] for _ in range(S)]
    for t in range(T):
        out = eng.step(Bars(c[t], h[t], l[t], c[t], v[t]), masks[t])
        for s in np.flatnonzero(masks[t]):
            got[s].append(out[:, s].copy())
    for s in range(S):
        m = masks[:, s]
        _check(np.array(got[s]), h[m, s], l[m, s], c[m, s], v[m, s], eng.config, f"slot {s}")


def test_session_vwap_restarts_at_each_session_and_equals_talib_per_session() -> None:
    h, l, c, v = _corpus("walk", seed=2)
    starts = np.zeros((T, S), dtype=bool)
    starts[::130] = True  # a session every 130 bars
    eng = FeatureEngine(capacity=S)
    vwap = np.array([eng.step(Bars(c[t], h[t], l[t], c[t], v[t], starts[t]))[OUTPUTS.index("vwap")].copy()
                     for t in range(T)])
    for s in range(S):
        assert max_error(vwap[:, s], session_vwap(h[:, s], l[:, s], c[:, s], v[:, s], starts[:, s])) <= TOL


def test_outputs_are_missing_until_their_warm_up_is_complete() -> None:
    h, l, c, v = _corpus("walk")
    eng = FeatureEngine(capacity=S)
    lookbacks = dict(zip(OUTPUTS, eng.config.lookbacks, strict=True))
    assert lookbacks["adx_14"] == 27 and lookbacks["macd"] == 33 and lookbacks["stoch_k"] == 17
    assert len(OUTPUTS) == 28
    for t in range(40):
        out = eng.step(Bars(c[t], h[t], l[t], c[t], v[t]))
        for i, name in enumerate(OUTPUTS):
            assert np.isnan(out[i]).all() == (t < lookbacks[name]), (name, t)


def test_non_default_periods_also_equal_talib() -> None:
    cfg = FeatureConfig(sma=(5, 10), ema=(3, 7), rsi=7, macd=(5, 13, 4), stoch=(9, 4, 2), cci=10, willr=9, atr=7,
                        bb=10, bb_dev=1.5, hv=10, volume_ma=10, rvol=10, adx=9, mfi=9, mom=4, roc=6)
    h, l, c, v = _corpus("walk", seed=3)
    eng = FeatureEngine(cfg, capacity=S)
    got = np.array([eng.step(Bars(c[t], h[t], l[t], c[t], v[t])).copy() for t in range(T)])
    for s in range(S):
        _check(got[:, :, s], h[:, s], l[:, s], c[:, s], v[:, s], cfg, f"slot {s}")
