"""Bar validation: a bar either passes or is rejected with one reason. Rejected bars are
counted by reason by the caller and never stored."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .bars import Bar, timeframe_seconds
from .symbols import AssetClass
from .timeframes import Buckets

REASONS = (
    "non_finite",  # NaN, infinity, or a value that was not a number
    "non_positive_price",
    "out_of_bounds",  # a price outside the plausible range of the symbol's asset class
    "high_below_open_close",  # high < max(open, close); also catches high < low
    "low_above_open_close",  # low > min(open, close)
    "negative_volume",
    "future_ts",
    "misaligned_ts",  # the open is not on the timeframe's grid
)


DEFAULT_BOUNDS: dict[AssetClass, tuple[float, float]] = {
    AssetClass.EQUITY: (1e-4, 1e6),
    AssetClass.INDEX: (1.0, 1e7),
    AssetClass.FX: (1e-5, 1e6),  # EURUSD ~1, USDJPY ~150, USDIDR ~16,000
    AssetClass.CRYPTO: (1e-10, 1e8),  # fractions of a cent to BTC and beyond
    AssetClass.FUTURES: (1e-4, 1e6),
}


class Validator:
    """Checks each bar against the OHLCV invariants, its asset class's price range, and the clock.

    :param future_tolerance_s: clock skew allowed between the source and us.
    :param bounds: plausible (low, high) prices per asset class (DEFAULT_BOUNDS where missing).
    """

    def __init__(self, *, future_tolerance_s: float,
                 bounds: Mapping[AssetClass, tuple[float, float]] | None = None) -> None:
        self.future_tolerance_s = future_tolerance_s
        self.bounds = {**DEFAULT_BOUNDS, **(bounds or {})}

    def check(self, bar: Bar, now: float, asset_class: AssetClass | None = None) -> str | None:
        """None if the bar is valid, else the reason (one of REASONS) it is rejected; the price
        range is checked when the asset class is given."""
        o, h, l, c, v = bar.open, bar.high, bar.low, bar.close, bar.volume
        if not all(math.isfinite(x) for x in (o, h, l, c, v)):
            return "non_finite"
        if min(o, h, l, c) <= 0:
            return "non_positive_price"
        if asset_class is not None:
            lo_bound, hi_bound = self.bounds[asset_class]
            if l < lo_bound or h > hi_bound:
                return "out_of_bounds"
        if h < max(o, c):
            return "high_below_open_close"
        if l > min(o, c):
            return "low_above_open_close"
        if v < 0:
            return "negative_volume"
        if bar.ts > now + self.future_tolerance_s:
            return "future_ts"
        if not _on_grid(bar, asset_class):
            return "misaligned_ts"
        return None

    def check_arrays(self, step: int, ts: np.ndarray, o: np.ndarray, h: np.ndarray, l: np.ndarray,
                     c: np.ndarray, v: np.ndarray, lo_bound: np.ndarray, hi_bound: np.ndarray,
                     now: float) -> np.ndarray:
        """`check` for many bars at once (the bar builder's): per bar the index of its reason in
        REASONS, or -1 when valid; the same order of checks, so the same reason wins."""
        reason = np.full(len(ts), -1, dtype=np.int64)
        with np.errstate(invalid="ignore"):
            tests = (
                ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(l) & np.isfinite(c) & np.isfinite(v)),
                np.minimum(np.minimum(o, h), np.minimum(l, c)) <= 0,
                (l < lo_bound) | (h > hi_bound),
                h < np.maximum(o, c),
                l > np.minimum(o, c),
                v < 0,
                ts > now + self.future_tolerance_s,
                ts % step != 0,
            )
        for code in range(len(tests) - 1, -1, -1):  # the first failing test wins
            reason[tests[code]] = code
        return reason


_RULES = Buckets()  # where a source's own hourly and daily bars start (the default day starts)


def _on_grid(bar: Bar, asset_class: AssetClass | None) -> bool:
    """Does the bar open on its timeframe's grid? Hourly and longer bars of a known asset class
    must start a bucket of its rules (a US equity's hours start at 09:30, 10:30, ...)."""
    step = timeframe_seconds(bar.timeframe)
    if asset_class is None or step < 3600:
        return bar.ts % step == 0
    return int(_RULES.bounds(asset_class, bar.timeframe, np.array([bar.ts]))[0][0]) == bar.ts
