"""Bar validation: a bar either passes or is rejected with one reason. Rejected bars are
counted by reason by the caller and never stored."""

from __future__ import annotations

import math

from .bars import Bar, timeframe_seconds

REASONS = (
    "non_finite",  # NaN, infinity, or a value that was not a number
    "non_positive_price",
    "high_below_open_close",  # high < max(open, close); also catches high < low
    "low_above_open_close",  # low > min(open, close)
    "negative_volume",
    "future_ts",
    "misaligned_ts",  # the open is not on the timeframe's grid
)


class Validator:
    """Checks each bar against the OHLCV invariants and the clock.

    :param future_tolerance_s: clock skew allowed between the source and us.
    """

    def __init__(self, *, future_tolerance_s: float) -> None:
        self.future_tolerance_s = future_tolerance_s

    def check(self, bar: Bar, now: float) -> str | None:
        """None if the bar is valid, else the reason (one of REASONS) it is rejected."""
        o, h, l, c, v = bar.open, bar.high, bar.low, bar.close, bar.volume
        if not all(math.isfinite(x) for x in (o, h, l, c, v)):
            return "non_finite"
        if min(o, h, l, c) <= 0:
            return "non_positive_price"
        if h < max(o, c):
            return "high_below_open_close"
        if l > min(o, c):
            return "low_above_open_close"
        if v < 0:
            return "negative_volume"
        if bar.ts > now + self.future_tolerance_s:
            return "future_ts"
        if bar.ts % timeframe_seconds(bar.timeframe) != 0:
            return "misaligned_ts"
        return None
