"""Indicator periods and output names: what the settings and the scanner need to know about
the features without loading the compiled engine (the local exchange imports the settings and
must not pay for numba)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Indicator periods (TA-Lib's common defaults) and engine housekeeping."""

    sma: tuple[int, ...] = (20, 50, 200)
    ema: tuple[int, ...] = (9, 21)
    rsi: int = 14
    macd: tuple[int, int, int] = (12, 26, 9)
    stoch: tuple[int, int, int] = (14, 3, 3)
    cci: int = 20
    willr: int = 14
    atr: int = 14
    bb: int = 20
    bb_dev: float = 2.0
    hv: int = 20
    volume_ma: int = 20
    rvol: int = 20
    adx: int = 14
    mfi: int = 14
    mom: int = 10
    roc: int = 10

    def __post_init__(self) -> None:
        periods = [*self.sma, *self.ema, self.rsi, *self.macd, *self.stoch, self.cci, self.willr, self.atr,
                   self.bb, self.hv, self.volume_ma, self.rvol, self.adx, self.mfi, self.mom, self.roc]
        if min(periods) < 2 or self.macd[0] >= self.macd[1]:
            raise ValueError("every period must be >= 2 and the MACD fast period below the slow one")

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output names, in the order of the rows of every output array."""
        return (
            *(f"sma_{p}" for p in self.sma), *(f"ema_{p}" for p in self.ema), f"rsi_{self.rsi}",
            "macd", "macd_signal", "macd_hist", "stoch_k", "stoch_d", f"cci_{self.cci}",
            f"willr_{self.willr}", f"atr_{self.atr}", "bb_upper", "bb_middle", "bb_lower", f"hv_{self.hv}",
            "obv", "vwap", f"volume_ma_{self.volume_ma}", f"rvol_{self.rvol}", f"adx_{self.adx}",
            f"plus_di_{self.adx}", f"minus_di_{self.adx}", f"mfi_{self.mfi}", f"mom_{self.mom}", f"roc_{self.roc}",
        )

    @property
    def lookbacks(self) -> tuple[int, ...]:
        """Index of each output's first valid bar (TA-Lib's lookback), in `outputs` order."""
        fast, slow, signal = self.macd
        k, sk, sd = self.stoch
        return (
            *(p - 1 for p in self.sma), *(p - 1 for p in self.ema), self.rsi,
            *([slow + signal - 2] * 3), *([k + sk + sd - 3] * 2), self.cci - 1, self.willr - 1, self.atr,
            *([self.bb - 1] * 3), self.hv, 0, 0, self.volume_ma - 1, self.rvol, 2 * self.adx - 1,
            self.adx, self.adx, self.mfi, self.mom, self.roc,
        )

    @property
    def warmups(self) -> tuple[int, ...]:
        """Per output, the bars after which its value equals its long-run value to 1e-9
        relative, whatever came before: a window's lookback, or for a recurrence its seed plus
        the bars its memory takes to decay below 1e-9. -1 for the cumulative outputs (OBV from
        its origin, VWAP from its session's start), which never converge."""
        def decay(alpha: float) -> int:  # bars until (1 - alpha)^k < 1e-9
            return math.ceil(math.log(1e-9) / math.log(1.0 - alpha))

        def ema(p: int) -> int:
            return p - 1 + decay(2.0 / (p + 1))

        def wilder(p: int) -> int:
            return p + decay(1.0 / p)

        fast, slow, signal = self.macd
        k, sk, sd = self.stoch
        macd = ema(slow) + ema(signal)
        return (
            *(p - 1 for p in self.sma), *(ema(p) for p in self.ema), wilder(self.rsi),
            macd, macd, macd, *([k + sk + sd - 3] * 2), self.cci - 1, self.willr - 1, wilder(self.atr),
            *([self.bb - 1] * 3), self.hv, -1, -1, self.volume_ma - 1, self.rvol, 2 * wilder(self.adx),
            wilder(self.adx), wilder(self.adx), self.mfi, self.mom, self.roc,
        )


OUTPUTS: tuple[str, ...] = FeatureConfig().outputs
"""The 28 outputs of the default configuration."""
