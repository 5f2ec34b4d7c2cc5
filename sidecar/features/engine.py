"""Incremental indicators, vectorized across symbols, equal to TA-Lib.

Every piece of state is a NumPy array with one slot per symbol (the last axis). A step
takes one new closed bar for each symbol in a mask and updates every indicator of every
masked symbol in a fixed sequence of array operations: there is no Python loop over
symbols or bars. `peek` runs the same arithmetic for a forming bar and writes nothing.

Windows live in rings holding the last p-1 committed values, so the window of a new bar is
"the ring plus the bar" and a peek needs no write. Sums over windows are kept as running
partial sums in TA-Lib's own order (add the new value, output, subtract the trailing one)
and re-anchored from the rings every `reanchor_every` commits, so float drift cannot build
up over millions of updates. Variances are two-pass over the window (TA-Lib 0.8.1's are
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
    reanchor_every: int = 1024

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


OUTPUTS: tuple[str, ...] = FeatureConfig().outputs
"""The 28 outputs of the default configuration."""


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


class _Ring:
    """The last `size` committed values of one series, shape (size, slots). Each slot writes
    at its own position (slots advance independently); positions are kept by the engine as
    flat indices per ring size, so no modulo is computed per step."""

    __slots__ = ("size", "data", "flat")

    def __init__(self, size: int, slots: int, fill: float = 0.0) -> None:
        self.size = size
        self.data = np.full((size, slots), fill)
        self.flat = self.data.reshape(-1)


class FeatureEngine:
    """Indicator state for up to `capacity` slots (grown as symbols are added).

    :param config: periods.
    :param capacity: initial number of slots.
    """

    def __init__(self, config: FeatureConfig | None = None, capacity: int = 16) -> None:
        self.config = c = config or FeatureConfig()
        self.outputs = c.outputs
        self.index = {name: i for i, name in enumerate(self.outputs)}
        self._lookback = np.array(c.lookbacks, dtype=np.int64)
        self._warm_at = int(self._lookback.max())
        self.capacity = 0
        self.commits = 0
        self._alloc(max(1, capacity))

    # -- state ------------------------------------------------------------------------------------

    def _alloc(self, slots: int) -> None:
        """Fresh state for `slots` slots."""
        c = self.config
        nan = lambda: np.full(slots, np.nan)  # noqa: E731
        zero = lambda: np.zeros(slots)  # noqa: E731
        self.capacity = slots
        self._ar = np.arange(slots, dtype=np.int64)
        self.n = np.zeros(slots, dtype=np.int64)  # committed bars per slot
        self.hv_scale = np.ones(slots)
        self.prev = {k: nan() for k in ("c", "h", "l", "tp")}
        close_lags = [p - 1 for p in (*c.sma, c.bb)] + [c.mom, c.roc]
        self.rings = {
            "close": _Ring(max(close_lags), slots),
            "vol": _Ring(max(c.volume_ma - 1, c.rvol), slots),
            "tp": _Ring(c.cci - 1, slots),
            "bb": _Ring(c.bb - 1, slots),  # the BB window's closes, for its two-pass variance
            "logret": _Ring(c.hv - 1, slots),
            "flow": _Ring(c.mfi - 1, slots),  # signed money flow: + positive, - negative
        }
        for w in {c.stoch[0], c.willr}:
            self.rings[f"high{w}"] = _Ring(w - 1, slots, -np.inf)
            self.rings[f"low{w}"] = _Ring(w - 1, slots, np.inf)
        # write position of each ring size: bar n goes to row n % size (kept, never recomputed)
        self.pos = {size: np.zeros(slots, dtype=np.int64) for size in {r.size for r in self.rings.values()}}
        # the last few %K and slow %K values, shifted each bar (too short to need a ring)
        self.fk = [nan() for _ in range(c.stoch[1] - 1)]
        self.sk = [nan() for _ in range(c.stoch[2] - 1)]
        # running partial sums of the last p-1 values (TA-Lib's order), re-anchored from rings
        self.sums = {f"close{p}": zero() for p in {*c.sma, c.bb}}
        self.sums.update({"tp": zero(), "vol_ma": zero(), "vol_prev": zero(), "logret": zero(),
                          "pos_flow": zero(), "neg_flow": zero()})
        # recurrences and their warm-up accumulators
        self.s = {k: nan() for k in (
            *(f"ema{p}" for p in c.ema), "macd_fast", "macd_slow", "macd_signal", "rsi_gain", "rsi_loss", "atr",
            "dm_plus", "dm_minus", "dm_tr", "adx", "obv", "vwap_pv", "vwap_v")}
        self.s.update({k: zero() for k in (
            *(f"ema{p}_seed" for p in c.ema), "macd_fast_seed", "macd_slow_seed", "macd_signal_seed",
            "rsi_gain_seed", "rsi_loss_seed", "atr_seed", "adx_seed")})
        self.out = np.full((len(self.outputs), slots), np.nan)
        # reused by every step's two-pass spreads (CCI, BB, HV)
        self._scratch = {size: np.empty((size, slots)) for size in {c.cci - 1, c.bb - 1, c.hv - 1}}

    def _state_arrays(self) -> list[tuple[object, str]]:
        """Every per-slot array as (container, key): for copying and growing slots."""
        items: list[tuple[object, str]] = [(self, "n"), (self, "hv_scale"), (self, "out")]
        items += [(self.prev, k) for k in self.prev] + [(self.sums, k) for k in self.sums]
        items += [(self.s, k) for k in self.s] + [(ring, "data") for ring in self.rings.values()]
        items += [(self.fk, i) for i in range(len(self.fk))] + [(self.sk, i) for i in range(len(self.sk))]
        items += [(self.pos, size) for size in sorted(self.pos)]
        return items

    @staticmethod
    def _get(container: object, key: str | int) -> np.ndarray:
        if isinstance(container, (dict, list)):
            return container[key]  # type: ignore[index]
        return getattr(container, key)  # type: ignore[arg-type]

    @staticmethod
    def _set(container: object, key: str | int, value: np.ndarray) -> None:
        if isinstance(container, (dict, list)):
            container[key] = value  # type: ignore[index]
        else:
            setattr(container, key, value)  # type: ignore[arg-type]

    def grow(self, slots: int) -> None:
        """Make room for at least `slots` slots, keeping every existing slot's state."""
        if slots <= self.capacity:
            return
        old = FeatureEngine.__new__(FeatureEngine)
        old.__dict__.update(self.__dict__)
        old.prev, old.sums, old.s, old.rings = dict(self.prev), dict(self.sums), dict(self.s), dict(self.rings)
        keep = self.capacity
        self._alloc(max(slots, 2 * keep))
        for (new_c, key), (old_c, _) in zip(self._state_arrays(), old._state_arrays(), strict=True):
            self._get(new_c, key)[..., :keep] = self._get(old_c, key)

    def reset(self, slots: np.ndarray) -> None:
        """Forget the state of some slots (a removed or re-warmed symbol)."""
        fresh = FeatureEngine(self.config, capacity=1)
        self.copy_slots(fresh, np.zeros(len(slots), dtype=np.int64), np.asarray(slots, dtype=np.int64))

    def copy_slots(self, src: FeatureEngine, src_slots: np.ndarray, dst_slots: np.ndarray) -> None:
        """Copy whole slot states from another engine (e.g. one that replayed a symbol's history)."""
        for (dst_c, key), (src_c, _) in zip(self._state_arrays(), src._state_arrays(), strict=True):
            self._get(dst_c, key)[..., dst_slots] = self._get(src_c, key)[..., src_slots]

    # -- the step ---------------------------------------------------------------------------------

    def step(self, bars: Bars, mask: np.ndarray | None = None) -> np.ndarray:
        """Commit one closed bar for every slot in `mask` (all slots when None); return the
        (outputs, slots) array of values after the commit."""
        all_slots = mask is None or bool(mask.all())
        out, state, writes = self._compute(bars)
        if all_slots:
            for container, key, value in state:
                self._set(container, key, value)
            for ring, idx, value in writes:
                ring.flat[idx] = value
            self.out = out
        else:
            for container, key, value in state:
                self._set(container, key, np.where(mask, value, self._get(container, key)))
            for ring, idx, value in writes:
                ring.flat[idx[mask]] = value[mask]
            self.out = np.where(mask, out, self.out)
        self.commits += 1
        if self.commits % self.config.reanchor_every == 0:
            self.reanchor()
        return self.out

    def peek(self, bars: Bars) -> np.ndarray:
        """Values every slot would have if `bars` closed now (forming bars); changes nothing."""
        return self._compute(bars)[0]

    def _compute(self, b: Bars) -> tuple[np.ndarray, list, list]:
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN before warm-up; x/0 handled below
            return self._compute_unchecked(b)

    def _compute_unchecked(self, b: Bars) -> tuple[np.ndarray, list, list]:
        c = self.config
        n, ar, R, S, P = self.n, self._ar, self.rings, self.s, self.sums
        h, l, cl, v = b.high, b.low, b.close, b.volume  # the open is no input of these indicators
        pc, ph, pl, ptp = self.prev["c"], self.prev["h"], self.prev["l"], self.prev["tp"]
        warm = bool(n.min() > self._warm_at)  # steady state: no seeding branches needed
        first = n == 0
        slots = self.capacity
        state: list[tuple[object, str | int, np.ndarray]] = []
        writes: list[tuple[_Ring, np.ndarray, np.ndarray]] = []
        out = np.empty((len(self.outputs), slots))
        row = iter(range(len(self.outputs)))

        # Row written by bar n in each ring size, and the row `lag` bars back.
        write_row = {}
        for size, pos in self.pos.items():
            write_row[size] = pos * slots + ar
            nxt = pos + 1
            nxt[nxt == size] = 0
            state.append((self.pos, size, nxt))

        def lag_index(size: int, lag: int) -> np.ndarray:
            if lag == size:
                return write_row[size]
            back = self.pos[size] - lag
            back[back < 0] += size
            return back * slots + ar

        def seeded(key: str, p: int, start: int, x: np.ndarray, recur: np.ndarray) -> np.ndarray:
            """A recurrence seeded with the mean of x over bars start..start+p-1."""
            if warm:
                return recur
            seed = S[f"{key}_seed"]
            in_seed = (n >= start) & (n < start + p - 1)
            state.append((S, f"{key}_seed", np.where(in_seed, seed + x, seed)))
            value = np.where(n == start + p - 1, (seed + x) / p, recur)
            return np.where(n < start + p - 1, np.nan, value)

        # Close ring: the values leaving each SMA window, and the MOM/ROC base.
        ring = R["close"]
        writes.append((ring, write_row[ring.size], cl))
        lagged = {k: ring.flat[lag_index(ring.size, k)] for k in {*(p - 1 for p in (*c.sma, c.bb)), c.mom, c.roc}}

        # SMA (and the BB middle band): TA-Lib's running total.
        sma = {}
        for p in {*c.sma, c.bb}:
            tmp = P[f"close{p}"] + cl
            sma[p] = tmp / p
            state.append((P, f"close{p}", tmp - lagged[p - 1]))
        for p in c.sma:
            out[next(row)] = sma[p]

        # EMA: seeded with the SMA of the first p bars.
        for p in c.ema:
            k = 2.0 / (p + 1)
            prev = S[f"ema{p}"]
            ema = seeded(f"ema{p}", p, 0, cl, (cl - prev) * k + prev)
            state.append((S, f"ema{p}", ema))
            out[next(row)] = ema

        # RSI (Wilder): mean of the first p changes, then (avg*(p-1) + x)/p.
        p = c.rsi
        d = cl - pc
        gain, loss = np.maximum(d, 0.0), np.maximum(-d, 0.0)
        ag, al = S["rsi_gain"], S["rsi_loss"]
        ag = seeded("rsi_gain", p, 1, gain, (ag * (p - 1) + gain) / p)
        al = seeded("rsi_loss", p, 1, loss, (al * (p - 1) + loss) / p)
        state += [(S, "rsi_gain", ag), (S, "rsi_loss", al)]
        total = ag + al
        out[next(row)] = np.where(total == 0.0, 0.0, 100.0 * (ag / total))

        # MACD: slow EMA seeded on bars 0..slow-1, fast on the `fast` bars ending there,
        # signal = EMA of the MACD line seeded with the mean of its first `signal` values.
        fast, slow, sig = c.macd
        kf, ks, kg = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (sig + 1)
        f_prev, s_prev, g_prev = S["macd_fast"], S["macd_slow"], S["macd_signal"]
        f_ema = seeded("macd_fast", fast, slow - fast, cl, (cl - f_prev) * kf + f_prev)
        s_ema = seeded("macd_slow", slow, 0, cl, (cl - s_prev) * ks + s_prev)
        macd = f_ema - s_ema
        signal = seeded("macd_signal", sig, slow - 1, macd, (macd - g_prev) * kg + g_prev)
        state += [(S, "macd_fast", f_ema), (S, "macd_slow", s_ema), (S, "macd_signal", signal)]
        out[next(row)] = macd
        out[next(row)] = signal
        out[next(row)] = macd - signal

        # Stochastic (SMA smoothing) and Williams %R over highest high / lowest low.
        extremes = {}
        for w in {c.stoch[0], c.willr}:
            hi_ring, lo_ring = R[f"high{w}"], R[f"low{w}"]
            extremes[w] = (np.maximum(hi_ring.data.max(axis=0), h), np.minimum(lo_ring.data.min(axis=0), l))
            writes += [(hi_ring, write_row[hi_ring.size], h), (lo_ring, write_row[lo_ring.size], l)]
        k_p, sk_p, sd_p = c.stoch
        hh, ll = extremes[k_p]
        diff = (hh - ll) / 100.0
        fast_k = np.where(diff != 0.0, (cl - ll) / diff, 0.0)
        slow_k = (sum(self.fk) + fast_k) / sk_p
        slow_d = (sum(self.sk) + slow_k) / sd_p
        state += [(self.fk, i, x) for i, x in enumerate([fast_k, *self.fk[:-1]])]
        state += [(self.sk, i, x) for i, x in enumerate([slow_k, *self.sk[:-1]])]
        out[next(row)] = slow_k
        out[next(row)] = slow_d

        # CCI: mean deviation over the window, recomputed from the ring each bar (as TA-Lib);
        # the window's mean comes from a running sum.
        p = c.cci
        tp = (h + l + cl) / 3.0
        tp_ring = R["tp"]
        tmp_tp = P["tp"] + tp
        avg = tmp_tp / p
        state.append((P, "tp", tmp_tp - tp_ring.flat[write_row[tp_ring.size]]))
        spread = np.subtract(tp_ring.data, avg, out=self._scratch[tp_ring.size])
        np.abs(spread, out=spread)
        mean_dev = spread.sum(axis=0) + np.abs(tp - avg)
        dev = tp - avg
        out[next(row)] = np.where((dev != 0.0) & (mean_dev != 0.0), dev / (0.015 * (mean_dev / p)), 0.0)
        writes.append((tp_ring, write_row[tp_ring.size], tp))

        # Williams %R
        hh, ll = extremes[c.willr]
        diff = (hh - ll) / -100.0
        out[next(row)] = np.where(diff != 0.0, (hh - cl) / diff, 0.0)

        # ATR (Wilder), true range from bar 1.
        p = c.atr
        tr = np.maximum(np.maximum(h - l, np.abs(h - pc)), np.abs(l - pc))
        atr_prev = S["atr"]
        atr = seeded("atr", p, 1, tr, (atr_prev * (p - 1) + tr) / p)
        state.append((S, "atr", atr))
        out[next(row)] = atr

        # Bollinger bands: SMA middle, population stdev of the window (two-pass).
        p = c.bb
        middle = sma[p]
        bb_ring = R["bb"]
        band = c.bb_dev * np.sqrt(self._variance(bb_ring, cl, middle, p))
        writes.append((bb_ring, write_row[bb_ring.size], cl))
        out[next(row)] = middle + band
        out[next(row)] = middle
        out[next(row)] = middle - band

        # Historical volatility: STDDEV(log returns, hv) scaled to a year of this timeframe.
        p = c.hv
        logret = np.log(cl / pc)
        if not warm:
            logret[first] = 0.0
        lr_ring = R["logret"]
        lr_idx = write_row[lr_ring.size]
        t1 = P["logret"] + logret
        state.append((P, "logret", t1 - lr_ring.flat[lr_idx]))
        out[next(row)] = np.sqrt(self._variance(lr_ring, logret, t1 / p, p)) * self.hv_scale
        writes.append((lr_ring, lr_idx, logret))

        # OBV from volume[0].
        obv = S["obv"] + np.sign(cl - pc) * v
        if not warm:
            obv = np.where(first, v, obv)
        state.append((S, "obv", obv))
        out[next(row)] = obv

        # Session VWAP: cumulative typical price x volume, restarted at each session's first bar.
        restart = first | b.session_start if b.session_start.size else first
        pv = np.where(restart, 0.0, S["vwap_pv"]) + tp * v
        vv = np.where(restart, 0.0, S["vwap_v"]) + v
        state += [(S, "vwap_pv", pv), (S, "vwap_v", vv)]
        out[next(row)] = np.where(vv != 0.0, pv / vv, 0.0)

        # Volume MA and relative volume (volume / mean of the previous rvol volumes).
        vol_ring = R["vol"]
        tmp_v = P["vol_ma"] + v
        out[next(row)] = tmp_v / c.volume_ma
        state.append((P, "vol_ma", tmp_v - vol_ring.flat[lag_index(vol_ring.size, c.volume_ma - 1)]))
        prev_mean = P["vol_prev"] / c.rvol
        out[next(row)] = np.where(prev_mean != 0.0, v / prev_mean, np.nan)
        state.append((P, "vol_prev", P["vol_prev"] + v - vol_ring.flat[lag_index(vol_ring.size, c.rvol)]))
        writes.append((vol_ring, write_row[vol_ring.size], v))

        # Directional movement: +DM/-DM/TR summed over bars 1..p-1, then S - S/p + x;
        # DX from bar p; ADX seeded with the mean DX of bars p..2p-1, DX skipped where +DI+-DI = 0.
        p = c.adx
        up, down = h - ph, pl - l
        # TA-Lib: -DM if down > 0 and up < down; +DM if up > 0 and up > down
        dm_minus = np.where(down > np.maximum(up, 0.0), down, 0.0)
        dm_plus = np.where(up > np.maximum(down, 0.0), up, 0.0)
        smoothed = {}
        for key, x in (("dm_plus", dm_plus), ("dm_minus", dm_minus), ("dm_tr", tr)):
            prev = S[key]
            if warm:
                value = prev - prev / p + x
            else:
                value = np.where(n <= 1, x, np.where(n < p, prev + x, prev - prev / p + x))
                value = np.where(first, np.nan, value)
            smoothed[key] = value
            state.append((S, key, value))
        s_tr = smoothed["dm_tr"]
        tr_zero = s_tr == 0.0
        plus_di = np.where(tr_zero, 0.0, 100.0 * (smoothed["dm_plus"] / s_tr))
        minus_di = np.where(tr_zero, 0.0, 100.0 * (smoothed["dm_minus"] / s_tr))
        di_sum = minus_di + plus_di
        dx_ok = ~tr_zero & (di_sum != 0.0)
        dx = 100.0 * (np.abs(minus_di - plus_di) / di_sum)
        adx_prev = S["adx"]
        adx = np.where(dx_ok, (adx_prev * (p - 1) + dx) / p, adx_prev)
        if not warm:
            seed = S["adx_seed"]
            in_seed = (n >= p) & (n < 2 * p - 1)
            state.append((S, "adx_seed", np.where(in_seed & dx_ok, seed + dx, seed)))
            seeded_adx = np.where(dx_ok, seed + dx, seed) / p
            adx = np.where(n == 2 * p - 1, seeded_adx, np.where(n < 2 * p - 1, np.nan, adx))
        state.append((S, "adx", adx))
        out[next(row)] = adx
        out[next(row)] = plus_di
        out[next(row)] = minus_di

        # MFI: positive / negative money flow over the last p bars (an equal TP counts as neither).
        p = c.mfi
        flow = tp * v
        signed = np.sign(tp - ptp) * flow
        if not warm:
            signed[first] = 0.0
        flow_ring = R["flow"]
        f_idx = write_row[flow_ring.size]
        leaving = flow_ring.flat[f_idx]
        pos_sum = P["pos_flow"] + np.maximum(signed, 0.0)
        neg_sum = P["neg_flow"] + np.maximum(-signed, 0.0)
        state.append((P, "pos_flow", pos_sum - np.maximum(leaving, 0.0)))
        state.append((P, "neg_flow", neg_sum - np.maximum(-leaving, 0.0)))
        writes.append((flow_ring, f_idx, signed))
        flows = pos_sum + neg_sum
        out[next(row)] = np.where(flows == 0.0, 0.0, 100.0 * (pos_sum / flows))

        # Momentum and rate of change.
        out[next(row)] = cl - lagged[c.mom]
        old = lagged[c.roc]
        out[next(row)] = np.where(old != 0.0, (cl / old - 1.0) * 100.0, 0.0)

        state += [(self.prev, "c", cl), (self.prev, "h", h), (self.prev, "l", l), (self.prev, "tp", tp)]
        state.append((self, "n", n + 1))
        if not warm:
            out[n[None, :] < self._lookback[:, None]] = np.nan
        return out, state, writes

    def _variance(self, ring: _Ring, x: np.ndarray, mean: np.ndarray, p: int) -> np.ndarray:
        """Population variance of the window "ring + x" around its mean, in two passes."""
        spread = np.subtract(ring.data, mean, out=self._scratch[ring.size])
        np.multiply(spread, spread, out=spread)
        tail = x - mean
        return (spread.sum(axis=0) + tail * tail) / p

    def reanchor(self) -> None:
        """Recompute every running sum from the rings, removing accumulated float drift."""
        c, ar, slots = self.config, self._ar, self.capacity

        def window(ring: _Ring, width: int) -> np.ndarray:
            """Per slot, the last `width` committed values of a ring, shape (width, slots)."""
            back = self.pos[ring.size][None, :] - np.arange(1, width + 1)[:, None]
            back %= ring.size
            return ring.flat[back * slots + ar]

        close = self.rings["close"]
        for p in {*c.sma, c.bb}:
            self.sums[f"close{p}"] = window(close, p - 1).sum(axis=0)
        self.sums["vol_ma"] = window(self.rings["vol"], c.volume_ma - 1).sum(axis=0)
        self.sums["tp"] = self.rings["tp"].data.sum(axis=0)
        self.sums["vol_prev"] = window(self.rings["vol"], c.rvol).sum(axis=0)
        self.sums["logret"] = self.rings["logret"].data.sum(axis=0)
        flow = self.rings["flow"].data
        self.sums["pos_flow"] = np.maximum(flow, 0.0).sum(axis=0)
        self.sums["neg_flow"] = np.maximum(-flow, 0.0).sum(axis=0)
