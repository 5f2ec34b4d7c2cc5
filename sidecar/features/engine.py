"""Incremental indicators, vectorized across symbols, equal to TA-Lib.

Every piece of state is a NumPy array with one row per symbol (a slot). A step takes one
new closed bar for each symbol in a mask and updates every indicator of every masked slot
in one call of a compiled kernel (kernel.py): there is no Python loop over symbols or bars.
`peek` runs the same arithmetic for a forming bar and writes nothing. The arithmetic was
first written as ~250 NumPy array operations per step; at 5,000 symbols their dispatch and
temporaries cost 1.8 ms, the compiled loop a fraction of that (bench/features.py).

Windows live in rings holding the last p-1 committed values, so the window of a new bar is
"the ring plus the bar" and a peek needs no write. Sums over windows are kept as running
partial sums in TA-Lib's own order (add the new value, output, subtract the trailing one) and
recomputed from the rings, oldest value first, at anchor bars fixed by the bars' opens (every
64th bar of the timeframe's grid): float drift cannot build up, and from an anchor on a value
depends only on the bars since, so the daemon after a restart (warmed from its newest bars)
and a replay from the first stored bar (the training export) agree bit for bit. Window loops
run oldest first too, never in the ring's storage order. Variances are two-pass over the window (TA-Lib 0.8.1's are
exact: E[x^2]-E[x]^2 cancels to nothing when the spread is 1e-9 of the price). Seeding,
first valid bar and degenerate cases follow TA-Lib 0.8.1 (`../shared/indicators.md`), whose
zero tests are exact: a tiny positive value is not zero. An output is NaN until its
warm-up is complete.

Warm-up is a replay of stored history through this same step, so the warm-up, incremental
and forming-bar paths are one piece of arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import kernel as K
from .config import OUTPUTS, FeatureConfig

__all__ = ["OUTPUTS", "Bars", "FeatureConfig", "FeatureEngine"]


@dataclass(slots=True)
class Bars:
    """One bar per slot (values of unmasked slots are ignored); `session_start` marks a bar
    that opens a new trading session, where the session VWAP restarts."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    session_start: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # bars at which the running sums are recomputed from the rings (empty: every 1,024 bars of a slot)
    anchor: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class FeatureEngine:
    """Indicator state for up to `capacity` slots (grown as symbols are added).

    State, one row per slot: `n` committed bars; `prev` close/high/low/typical price of the
    last bar; `sums` running partial sums (one per SMA, then kernel.S_*); `rec` recurrences
    and their warm-up seeds (two per EMA, then kernel.R_*); `fk`/`sk` the last few %K and slow
    %K; `rings` the last p-1 values of each windowed series, written at column `pos` (= n % size).

    :param config: periods.
    :param capacity: initial number of slots.
    """

    def __init__(self, config: FeatureConfig | None = None, capacity: int = 16) -> None:
        self.config = c = config or FeatureConfig()
        self.outputs = c.outputs
        self._lookback = np.array(c.lookbacks, dtype=np.int64)
        self._sma_p = np.array(c.sma, dtype=np.int64)
        self._ema_p = np.array(c.ema, dtype=np.int64)
        self._ip = np.array([c.rsi, *c.macd, *c.stoch, c.cci, c.willr, c.atr, c.bb, c.hv, c.volume_ma, c.rvol,
                             c.adx, c.mfi, c.mom, c.roc], dtype=np.int64)
        self.commits = 0
        self._alloc(max(1, capacity))

    def _alloc(self, slots: int) -> None:
        """Fresh state for `slots` slots."""
        c = self.config
        self.capacity = slots
        self._all = np.ones(slots, dtype=bool)
        self._no_sessions = np.zeros(slots, dtype=bool)
        self.n = np.zeros(slots, dtype=np.int64)
        self.pos = np.zeros((slots, K.N_POS), dtype=np.int64)  # each ring's next write column
        self.hv_scale = np.ones(slots)
        self.prev = np.full((slots, 4), np.nan)
        self.sums = np.zeros((slots, len(c.sma) + K.N_SUMS))
        self.rec = np.full((slots, 2 * len(c.ema) + K.N_REC), np.nan)
        e = 2 * len(c.ema)
        seeds = [2 * k + 1 for k in range(len(c.ema))] + [
            e + r for r in (K.R_RSI_GS, K.R_RSI_LS, K.R_MFS, K.R_MSS, K.R_MGS, K.R_ATRS, K.R_ADXS)]
        self.rec[:, seeds] = 0.0
        self.fk = np.full((slots, c.stoch[1] - 1), np.nan)
        self.sk = np.full((slots, c.stoch[2] - 1), np.nan)
        close_lags = [p - 1 for p in (*c.sma, c.bb)] + [c.mom, c.roc]
        self.rings = {
            "close": np.zeros((slots, max(close_lags))),
            "vol": np.zeros((slots, max(c.volume_ma - 1, c.rvol))),
            "tp": np.zeros((slots, c.cci - 1)),
            "bb": np.zeros((slots, c.bb - 1)),
            "logret": np.zeros((slots, c.hv - 1)),
            "flow": np.zeros((slots, c.mfi - 1)),  # signed money flow: + positive, - negative
            "high_k": np.full((slots, c.stoch[0] - 1), -np.inf),
            "low_k": np.full((slots, c.stoch[0] - 1), np.inf),
            "high_w": np.full((slots, c.willr - 1), -np.inf),
            "low_w": np.full((slots, c.willr - 1), np.inf),
        }
        self.out = np.full((len(self.outputs), slots), np.nan)
        self._scratch = np.empty((0, 0))  # `peek`'s, sized at its first use

    def _slot_rows(self) -> list[np.ndarray]:
        """Every state array whose first axis is the slot."""
        return [self.n, self.pos, self.hv_scale, self.prev, self.sums, self.rec, self.fk, self.sk, *self.rings.values()]

    def grow(self, slots: int) -> None:
        """Make room for at least `slots` slots, keeping every existing slot's state."""
        if slots <= self.capacity:
            return
        keep, old_rows, old_out = self.capacity, self._slot_rows(), self.out
        self._alloc(max(slots, 2 * keep))
        for new, old in zip(self._slot_rows(), old_rows, strict=True):
            new[:keep] = old
        self.out[:, :keep] = old_out

    def reset(self, slots: np.ndarray) -> None:
        """Forget the state of some slots (a removed or re-warmed symbol)."""
        fresh = FeatureEngine(self.config, capacity=1)
        self.copy_slots(fresh, np.zeros(len(slots), dtype=np.int64), np.asarray(slots, dtype=np.int64))

    def copy_slots(self, src: FeatureEngine, src_slots: np.ndarray, dst_slots: np.ndarray) -> None:
        """Copy whole slot states from another engine (e.g. one that replayed a symbol's history)."""
        for dst, source in zip(self._slot_rows(), src._slot_rows(), strict=True):
            dst[dst_slots] = source[src_slots]
        self.out[:, dst_slots] = src.out[:, src_slots]

    RUNNING = ("obv", "vwap_pv", "vwap_v")  # the running sums: no replay of recent bars recovers them

    @property
    def _running_rows(self) -> list[int]:
        """The columns of `rec` holding the RUNNING sums."""
        e = 2 * len(self.config.ema)
        return [e + K.R_OBV, e + K.R_VPV, e + K.R_VV]

    def running(self, slots: np.ndarray) -> np.ndarray:
        """The running sums of some slots after their last commit, (len(RUNNING), slots): OBV,
        and the session's sums of price x volume and of volume behind VWAP."""
        return self.rec[slots][:, self._running_rows].T

    def set_running(self, slot: int, sums: np.ndarray) -> None:
        """Continue a slot's running sums (as `running` gave them) after a replay of recent bars
        whose last bar is the one they were taken at."""
        self.rec[slot, self._running_rows] = sums
        self.out[self.outputs.index("obv"), slot] = sums[0]
        if sums[2] > 0:
            self.out[self.outputs.index("vwap"), slot] = sums[1] / sums[2]

    # -- the step ---------------------------------------------------------------------------------

    def step(self, bars: Bars, mask: np.ndarray | None = None) -> np.ndarray:
        """Commit one closed bar for every slot in `mask` (all slots when None); return the
        (outputs, slots) array of values after the commit."""
        self._run(True, bars, self._all if mask is None else mask, self.out)
        self.commits += 1
        return self.out

    def peek(self, bars: Bars, mask: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """Values the slots in `mask` would have if `bars` closed now (forming bars); changes
        nothing. Columns outside the mask are NaN; with `cols` (slots in the mask), only theirs
        (outputs, len(cols)), computed in a kept buffer instead of a new NaN-filled one."""
        if cols is None:
            out = np.full_like(self.out, np.nan)
        elif (out := self._scratch).shape != self.out.shape:
            out = self._scratch = np.empty_like(self.out)
        self._run(False, bars, self._all if mask is None else mask, out)
        return out if cols is None else out[:, cols]

    def prepare(self) -> None:
        """Load (or on first use compile) the kernels now, so the first cycle, or the first
        symbols a cluster member takes over, do not pay for it (a stall of seconds would outlive
        the member's leases)."""
        one = np.ones(1)
        engine = FeatureEngine(self.config, capacity=1)
        engine.peek(Bars(one, one, one, one, one))
        engine.replay(np.ones((1, 1), dtype=bool), np.ones((4, 1, 1)), np.zeros((1, 1), dtype=bool),
                      np.zeros((1, 1), dtype=bool), np.zeros((1, 1), dtype=np.int64), np.empty((len(engine.out), 1)))

    def replay(self, mask: np.ndarray, bars: np.ndarray, session_start: np.ndarray, anchor: np.ndarray,
               rows: np.ndarray, result: np.ndarray) -> None:
        """Commit a series of closed bars, one (depth, slots) row at a time, in compiled code:
        `bars` is (4, depth, slots) high, low, close, volume, `mask` marks the slots with a bar
        at each depth; the outputs after slot j's bar at depth d go to result[:, rows[d, j]]."""
        r = self.rings
        state = (self.n, self.pos, self.prev, self.sums, self.rec, self.fk, self.sk, r["close"], r["vol"], r["tp"],
                 r["bb"], r["logret"], r["flow"], r["high_k"], r["low_k"], r["high_w"], r["low_w"], self.hv_scale)
        K.replay_kernel(mask, bars[0], bars[1], bars[2], bars[3], session_start, anchor, rows, state, self._sma_p,
                        self._ema_p, self._ip, float(self.config.bb_dev), self._lookback, self.out, result)
        self.commits += len(mask)

    def _run(self, commit: bool, b: Bars, mask: np.ndarray, out: np.ndarray) -> None:
        r = self.rings
        K.step_kernel(
            commit, mask, b.high, b.low, b.close, b.volume,
            b.session_start if b.session_start.size else self._no_sessions, b.anchor,
            self.n, self.pos, self.prev, self.sums, self.rec, self.fk, self.sk, r["close"], r["vol"], r["tp"], r["bb"],
            r["logret"], r["flow"], r["high_k"], r["low_k"], r["high_w"], r["low_w"], self.hv_scale,
            self._sma_p, self._ema_p, self._ip, float(self.config.bb_dev), self._lookback, out)
