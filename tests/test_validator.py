"""The validator rejects each kind of bad bar with its own reason and passes good ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sidecar.bars import Bar
from sidecar.symbols import AssetClass
from sidecar.validator import REASONS, Validator

NOW = 1_800_000_000.0
GOOD = Bar("AAPL", "1m", 1_799_999_940, 10.0, 10.5, 9.5, 10.2, 100.0, "yahoo")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"close": math.nan}, "non_finite"),
    ({"high": math.inf}, "non_finite"),
    ({"open": 0.0}, "non_positive_price"),
    ({"low": -1.0}, "non_positive_price"),
    ({"high": 9.0, "low": 11.0}, "high_below_open_close"),
    ({"high": 10.1}, "high_below_open_close"),
    ({"low": 10.1}, "low_above_open_close"),
    ({"volume": -1.0}, "negative_volume"),
    ({"ts": 1_800_003_600}, "future_ts"),
    ({"ts": 1_799_999_957}, "misaligned_ts"),
])
def test_each_invalid_bar_gets_its_reason(changes: dict[str, float], reason: str) -> None:
    assert reason in REASONS
    assert Validator(future_tolerance_s=5).check(replace(GOOD, **changes), NOW) == reason


def test_valid_bars_pass_including_flat_and_zero_volume() -> None:
    v = Validator(future_tolerance_s=5)
    assert v.check(GOOD, NOW) is None
    assert v.check(replace(GOOD, open=10.0, high=10.0, low=10.0, close=10.0, volume=0.0), NOW) is None
    assert v.check(replace(GOOD, ts=1_800_000_000), NOW) is None  # the forming bar of this minute


def test_prices_outside_the_asset_class_range_are_rejected() -> None:
    v = Validator(future_tolerance_s=5, bounds={AssetClass.FX: (0.5, 2.0)})
    assert v.check(GOOD, NOW, AssetClass.EQUITY) is None
    assert v.check(replace(GOOD, open=1e7, high=1e7), NOW, AssetClass.EQUITY) == "out_of_bounds"
    fx = replace(GOOD, open=1.1, high=1.2, low=1.0, close=1.15)
    assert v.check(fx, NOW, AssetClass.FX) is None
    assert v.check(replace(fx, high=2.5), NOW, AssetClass.FX) == "out_of_bounds"  # configured: 0.5..2
    assert v.check(replace(GOOD, open=3e-9, high=4e-9, low=2e-9, close=3e-9), NOW, AssetClass.CRYPTO) is None


def test_the_vectorized_check_gives_the_same_reason_as_the_scalar_one() -> None:
    import numpy as np

    from sidecar.validator import REASONS

    v = Validator(future_tolerance_s=5.0)
    now = 1_800_000_000.0
    rng = np.random.default_rng(7)
    rows = []
    for i in range(2000):
        o, c = rng.uniform(1, 100, 2)
        h, low = max(o, c) + rng.uniform(0, 2), min(o, c) - rng.uniform(0, 0.9)
        ts, vol = int(now) // 60 * 60 - 60 * int(rng.integers(0, 100)), float(rng.integers(0, 1000))
        fault = i % 10
        if fault == 1:
            c = float("nan")
        elif fault == 2:
            o = -o
        elif fault == 3:
            h = 2e6
        elif fault == 4:
            h = max(o, c) - 0.5
        elif fault == 5:
            low = min(o, c) + 0.5
        elif fault == 6:
            vol = -1.0
        elif fault == 7:
            ts += 3600
        elif fault == 8:
            ts += 7
        rows.append((ts, o, h, low, c, vol))
    a = np.array(rows)
    codes = v.check_arrays(60, a[:, 0].astype(np.int64), a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5],
                           np.full(len(a), 1e-4), np.full(len(a), 1e6), now)
    scalar = [v.check(Bar("X", "1m", int(r[0]), *r[1:], "yahoo"), now, AssetClass.EQUITY) for r in rows]
    assert [REASONS[k] if k >= 0 else None for k in codes.tolist()] == scalar
    assert len({s for s in scalar if s}) == 8  # every reason occurs
