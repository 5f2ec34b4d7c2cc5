"""The per-bar arithmetic of every indicator, compiled with numba: one call updates every
masked slot. It mirrors TA-Lib 0.8.1 operation for operation (the parity tests hold it to
1e-9); see engine.py for the layout of the state arrays it reads and writes.

Slot-major layout: each symbol's state and windows are contiguous, so one slot's update
touches a few cache lines. With `commit` false (a forming bar) nothing is written but `out`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Row of each scalar in `prev`, and of each running sum in `sums` (after the SMA partials).
P_C, P_H, P_L, P_TP = 0, 1, 2, 3
S_BB, S_TP, S_VOLMA, S_VOLPREV, S_LR, S_POS, S_NEG = range(7)  # offset by the number of SMAs
# Row of each recurrence in `rec` (after two rows per EMA: value, seed).
(R_RSI_G, R_RSI_L, R_RSI_GS, R_RSI_LS, R_MF, R_MS, R_MG, R_MFS, R_MSS, R_MGS, R_ATR, R_ATRS,
 R_DMP, R_DMM, R_DMT, R_ADX, R_ADXS, R_OBV, R_VPV, R_VV) = range(20)
# Order of the integer parameters.
(I_RSI, I_FAST, I_SLOW, I_SIG, I_K, I_SK, I_SD, I_CCI, I_WILLR, I_ATR, I_BB, I_HV, I_VOLMA, I_RVOL, I_ADX,
 I_MFI, I_MOM, I_ROC) = range(18)
N_SUMS, N_REC = 7, 20
# Column of each ring's write position in `pos` (positions advance by compare, not modulo:
# a 64-bit division per ring per slot was half of the step's time).
W_CLOSE, W_VOL, W_TP, W_BB, W_LR, W_FLOW, W_HK, W_HW = range(8)
N_POS = 8


@njit(cache=True, error_model="numpy", inline="always")
def _back(w: int, lag: int, size: int) -> int:
    """The column `lag` bars before write position w in a ring of `size`."""
    b = w - lag
    return b + size if b < 0 else b


@njit(cache=True, error_model="numpy")
def _seeded(nj: int, start: int, p: int, seed: float, x: float, recur: float) -> tuple[float, float]:
    """(value, new seed) of a recurrence seeded with the mean of x over bars start..start+p-1."""
    last = start + p - 1
    if nj < last:
        return math.nan, seed + x if nj >= start else seed
    if nj == last:
        return (seed + x) / p, seed
    return recur, seed


@njit(cache=True, error_model="numpy", inline="always")
def _tsum(ring: np.ndarray, j: int, w: int, width: int) -> float:
    """The sum of the last `width` values before write position w, oldest first: a sum that
    depends only on the values, not on where the ring's rotation happens to stand."""
    size = ring.shape[1]
    acc = 0.0
    for lag in range(width, 0, -1):
        acc += ring[j, _back(w, lag, size)]
    return acc


@njit(cache=True, error_model="numpy", inline="always")
def _variance(ring: np.ndarray, j: int, w: int, x: float, mean: float, p: int) -> float:
    """Population variance of the window "ring row j (oldest first from w) + x" around `mean`,
    in two passes (TA-Lib 0.8.1's variances are exact; E[x^2]-E[x]^2 cancels at small spreads)."""
    size = ring.shape[1]
    acc = 0.0
    for r in range(w, size):  # the whole ring, oldest first: from w to the end, then from 0
        d = ring[j, r] - mean
        acc += d * d
    for r in range(w):
        d = ring[j, r] - mean
        acc += d * d
    d = x - mean
    return (acc + d * d) / p


@njit(cache=True, error_model="numpy")
def _dm_smooth(first: bool, nj: int, p: int, prev: float, x: float) -> float:
    """+DM, -DM and TR smoothing: summed over bars 1..p-1, then S - S/p + x."""
    if first:
        return math.nan
    if nj <= 1:
        return x
    if nj < p:
        return prev + x
    return prev - prev / p + x


@njit(cache=True, error_model="numpy")
def step_kernel(commit: bool, mask: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray,
                session_start: np.ndarray, anchor: np.ndarray, n: np.ndarray, pos: np.ndarray, prev: np.ndarray, sums: np.ndarray,
                rec: np.ndarray,
                fk: np.ndarray, sk: np.ndarray, r_close: np.ndarray, r_vol: np.ndarray, r_tp: np.ndarray,
                r_bb: np.ndarray, r_lr: np.ndarray, r_flow: np.ndarray, r_hk: np.ndarray, r_lk: np.ndarray,
                r_hw: np.ndarray, r_lw: np.ndarray, hv_scale: np.ndarray, sma_p: np.ndarray, ema_p: np.ndarray,
                ip: np.ndarray, bb_dev: float, lookback: np.ndarray, out: np.ndarray) -> None:
    """Compute every output of every masked slot for bar (h, l, c, v); with `commit`, also
    advance the slots' state past that bar."""
    nan = math.nan
    n_sma, n_ema = sma_p.shape[0], ema_p.shape[0]
    rsi_p, fast, slow, sig = ip[I_RSI], ip[I_FAST], ip[I_SLOW], ip[I_SIG]
    k_p, sk_p, sd_p, cci_p, willr_p, atr_p = ip[I_K], ip[I_SK], ip[I_SD], ip[I_CCI], ip[I_WILLR], ip[I_ATR]
    bb_p, hv_p, vma_p, rvol_p, adx_p, _mfi_p, mom_p, roc_p = (  # MFI's period is its ring's width
        ip[I_BB], ip[I_HV], ip[I_VOLMA], ip[I_RVOL], ip[I_ADX], ip[I_MFI], ip[I_MOM], ip[I_ROC])
    rc, rv = r_close.shape[1], r_vol.shape[1]
    warm_at = lookback.max()
    sb = n_sma  # first non-SMA row of `sums`
    for j in range(mask.shape[0]):
        if not mask[j]:
            continue
        nj = n[j]
        first = nj == 0
        x, hi, lo, vol = c[j], h[j], l[j], v[j]
        pc, ph, pl, ptp = prev[j, P_C], prev[j, P_H], prev[j, P_L], prev[j, P_TP]
        row = 0

        # SMA: TA-Lib's running total (add the new value, output, subtract the trailing one).
        wc = pos[j, W_CLOSE]
        for k in range(n_sma):
            p = sma_p[k]
            tmp = sums[j, k] + x
            out[row, j] = tmp / p
            row += 1
            if commit:
                sums[j, k] = tmp - r_close[j, _back(wc, p - 1, rc)]

        # EMA, seeded with the SMA of the first p bars.
        for k in range(n_ema):
            p = ema_p[k]
            kk = 2.0 / (p + 1)
            prev_ema = rec[j, 2 * k]
            val, seed = _seeded(nj, 0, p, rec[j, 2 * k + 1], x, (x - prev_ema) * kk + prev_ema)
            out[row, j] = val
            row += 1
            if commit:
                rec[j, 2 * k], rec[j, 2 * k + 1] = val, seed
        e = 2 * n_ema  # first non-EMA row of `rec`

        # RSI (Wilder): mean of the first p changes, then (avg*(p-1) + x)/p.
        d = x - pc
        gain = d if d > 0.0 else 0.0
        loss = -d if d < 0.0 else 0.0
        ag, gs = _seeded(nj, 1, rsi_p, rec[j, e + R_RSI_GS], gain, (rec[j, e + R_RSI_G] * (rsi_p - 1) + gain) / rsi_p)
        al, ls = _seeded(nj, 1, rsi_p, rec[j, e + R_RSI_LS], loss, (rec[j, e + R_RSI_L] * (rsi_p - 1) + loss) / rsi_p)
        total = ag + al
        out[row, j] = 0.0 if total == 0.0 else 100.0 * (ag / total)
        row += 1

        # MACD: slow EMA seeded on bars 0..slow-1, fast on the `fast` bars ending there; the
        # signal is the EMA of the MACD line seeded with the mean of its first `sig` values.
        kf, ks, kg = 2.0 / (fast + 1), 2.0 / (slow + 1), 2.0 / (sig + 1)
        fp, sp, gp = rec[j, e + R_MF], rec[j, e + R_MS], rec[j, e + R_MG]
        f_ema, fs = _seeded(nj, slow - fast, fast, rec[j, e + R_MFS], x, (x - fp) * kf + fp)
        s_ema, ss = _seeded(nj, 0, slow, rec[j, e + R_MSS], x, (x - sp) * ks + sp)
        macd = f_ema - s_ema
        signal, gs2 = _seeded(nj, slow - 1, sig, rec[j, e + R_MGS], macd, (macd - gp) * kg + gp)
        out[row, j], out[row + 1, j], out[row + 2, j] = macd, signal, macd - signal
        row += 3

        # Stochastic (SMA smoothing) over the highest high / lowest low.
        hh, ll = hi, lo
        for r in range(r_hk.shape[1]):
            hh = max(r_hk[j, r], hh)
            ll = min(r_lk[j, r], ll)
        diff = (hh - ll) / 100.0
        fast_k = (x - ll) / diff if diff != 0.0 else 0.0
        acc = 0.0
        for r in range(sk_p - 1):
            acc += fk[j, r]
        slow_k = (acc + fast_k) / sk_p
        acc = 0.0
        for r in range(sd_p - 1):
            acc += sk[j, r]
        out[row, j], out[row + 1, j] = slow_k, (acc + slow_k) / sd_p
        row += 2

        # CCI: the window's mean from a running sum, its mean deviation over the ring.
        tp = (hi + lo + x) / 3.0
        rt = r_tp.shape[1]
        tmp_tp = sums[j, sb + S_TP] + tp
        avg = tmp_tp / cci_p
        md = 0.0
        wt0 = pos[j, W_TP]
        for r in range(wt0, rt):  # oldest first
            md += abs(r_tp[j, r] - avg)
        for r in range(wt0):
            md += abs(r_tp[j, r] - avg)
        md += abs(tp - avg)
        dev = tp - avg
        out[row, j] = dev / (0.015 * (md / cci_p)) if dev != 0.0 and md != 0.0 else 0.0
        row += 1

        # Williams %R (the %K window's extremes when the periods are equal, as by default)
        whh, wll = hh, ll
        if willr_p != k_p:
            whh, wll = hi, lo
            for r in range(r_hw.shape[1]):
                whh = max(r_hw[j, r], whh)
                wll = min(r_lw[j, r], wll)
        diff = (whh - wll) / -100.0
        out[row, j] = (whh - x) / diff if diff != 0.0 else 0.0
        row += 1

        # ATR (Wilder), true range from bar 1.
        tr = max(max(hi - lo, abs(hi - pc)), abs(lo - pc))
        atr_prev = rec[j, e + R_ATR]
        atr, atr_seed = _seeded(nj, 1, atr_p, rec[j, e + R_ATRS], tr, (atr_prev * (atr_p - 1) + tr) / atr_p)
        out[row, j] = atr
        row += 1

        # Bollinger bands: SMA middle, population stdev of the window in two passes.
        tmp_bb = sums[j, sb + S_BB] + x
        middle = tmp_bb / bb_p
        band = bb_dev * math.sqrt(_variance(r_bb, j, pos[j, W_BB], x, middle, bb_p))
        out[row, j], out[row + 1, j], out[row + 2, j] = middle + band, middle, middle - band
        row += 3

        # Historical volatility: stdev of the log returns (two passes), annualized.
        logret = 0.0 if first else math.log(x / pc)
        t1 = sums[j, sb + S_LR] + logret
        out[row, j] = math.sqrt(_variance(r_lr, j, pos[j, W_LR], logret, t1 / hv_p, hv_p)) * hv_scale[j]
        row += 1

        # OBV from volume[0].
        if first:
            obv = vol
        elif x > pc:
            obv = rec[j, e + R_OBV] + vol
        elif x < pc:
            obv = rec[j, e + R_OBV] - vol
        else:
            obv = rec[j, e + R_OBV] + 0.0
        out[row, j] = obv
        row += 1

        # Session VWAP, restarted at each session's first bar.
        if first or session_start[j]:
            pv, vv = 0.0 + tp * vol, 0.0 + vol
        else:
            pv, vv = rec[j, e + R_VPV] + tp * vol, rec[j, e + R_VV] + vol
        out[row, j] = pv / vv if vv != 0.0 else 0.0
        row += 1

        # Volume MA and relative volume (volume / mean of the previous rvol volumes).
        wv = pos[j, W_VOL]
        tmp_v = sums[j, sb + S_VOLMA] + vol
        out[row, j] = tmp_v / vma_p
        prev_mean = sums[j, sb + S_VOLPREV] / rvol_p
        out[row + 1, j] = vol / prev_mean if prev_mean != 0.0 else nan
        row += 2

        # Directional movement: +DM/-DM/TR summed over bars 1..p-1, then S - S/p + x; DX from
        # bar p; ADX seeded with the mean DX of bars p..2p-1; a bar with +DI + -DI = 0 is skipped.
        up, down = hi - ph, pl - lo
        dm_minus = down if down > max(up, 0.0) else 0.0
        dm_plus = up if up > max(down, 0.0) else 0.0
        s_plus = _dm_smooth(first, nj, adx_p, rec[j, e + R_DMP], dm_plus)
        s_minus = _dm_smooth(first, nj, adx_p, rec[j, e + R_DMM], dm_minus)
        s_tr = _dm_smooth(first, nj, adx_p, rec[j, e + R_DMT], tr)
        if s_tr == 0.0:
            plus_di = minus_di = 0.0
            dx_ok = False
        else:
            plus_di = 100.0 * (s_plus / s_tr)
            minus_di = 100.0 * (s_minus / s_tr)
            dx_ok = (minus_di + plus_di) != 0.0
        dx = 100.0 * (abs(minus_di - plus_di) / (minus_di + plus_di)) if dx_ok else 0.0
        adx_prev, adx_seed = rec[j, e + R_ADX], rec[j, e + R_ADXS]
        if nj < 2 * adx_p - 1:
            adx = nan
            if nj >= adx_p and dx_ok:
                adx_seed = adx_seed + dx
        elif nj == 2 * adx_p - 1:
            adx = (adx_seed + dx if dx_ok else adx_seed) / adx_p
        else:
            adx = (adx_prev * (adx_p - 1) + dx) / adx_p if dx_ok else adx_prev
        out[row, j], out[row + 1, j], out[row + 2, j] = adx, plus_di, minus_di
        row += 3

        # MFI: positive / negative money flow over the last p bars (an equal TP counts as neither).
        flow = tp * vol
        if first or tp == ptp:
            signed = 0.0
        else:
            signed = flow if tp > ptp else -flow
        wf = pos[j, W_FLOW]
        leaving = r_flow[j, wf]
        pos_sum = sums[j, sb + S_POS] + max(signed, 0.0)
        neg_sum = sums[j, sb + S_NEG] + max(-signed, 0.0)
        flows = pos_sum + neg_sum
        out[row, j] = 0.0 if flows == 0.0 else 100.0 * (pos_sum / flows)
        row += 1

        # Momentum and rate of change.
        old = r_close[j, _back(wc, mom_p, rc)]
        out[row, j] = x - old
        old = r_close[j, _back(wc, roc_p, rc)]
        out[row + 1, j] = (x / old - 1.0) * 100.0 if old != 0.0 else 0.0

        if nj < warm_at:
            for r in range(out.shape[0]):
                if nj < lookback[r]:
                    out[r, j] = nan

        if not commit:
            continue
        # -- advance the slot past this bar: recurrences, running sums, shift registers, rings
        rec[j, e + R_RSI_G], rec[j, e + R_RSI_L], rec[j, e + R_RSI_GS], rec[j, e + R_RSI_LS] = ag, al, gs, ls
        rec[j, e + R_MF], rec[j, e + R_MS], rec[j, e + R_MG] = f_ema, s_ema, signal
        rec[j, e + R_MFS], rec[j, e + R_MSS], rec[j, e + R_MGS] = fs, ss, gs2
        rec[j, e + R_ATR], rec[j, e + R_ATRS] = atr, atr_seed
        rec[j, e + R_DMP], rec[j, e + R_DMM], rec[j, e + R_DMT] = s_plus, s_minus, s_tr
        rec[j, e + R_ADX], rec[j, e + R_ADXS] = adx, adx_seed
        rec[j, e + R_OBV], rec[j, e + R_VPV], rec[j, e + R_VV] = obv, pv, vv
        wt, wb, wl, wh, ww = pos[j, W_TP], pos[j, W_BB], pos[j, W_LR], pos[j, W_HK], pos[j, W_HW]
        sums[j, sb + S_TP] = tmp_tp - r_tp[j, wt]
        sums[j, sb + S_BB] = tmp_bb - r_close[j, _back(wc, bb_p - 1, rc)]
        sums[j, sb + S_LR] = t1 - r_lr[j, wl]
        sums[j, sb + S_VOLMA] = tmp_v - r_vol[j, _back(wv, vma_p - 1, rv)]
        sums[j, sb + S_VOLPREV] = sums[j, sb + S_VOLPREV] + vol - r_vol[j, _back(wv, rvol_p, rv)]
        sums[j, sb + S_POS] = pos_sum - max(leaving, 0.0)
        sums[j, sb + S_NEG] = neg_sum - max(-leaving, 0.0)
        for r in range(sk_p - 2, 0, -1):
            fk[j, r] = fk[j, r - 1]
        if sk_p > 1:
            fk[j, 0] = fast_k
        for r in range(sd_p - 2, 0, -1):
            sk[j, r] = sk[j, r - 1]
        if sd_p > 1:
            sk[j, 0] = slow_k
        r_close[j, wc] = x
        r_vol[j, wv] = vol
        r_tp[j, wt] = tp
        r_bb[j, wb] = x
        r_lr[j, wl] = logret
        r_flow[j, wf] = signed
        r_hk[j, wh], r_lk[j, wh] = hi, lo
        if willr_p != k_p:
            r_hw[j, ww], r_lw[j, ww] = hi, lo
        for q, size in ((W_CLOSE, rc), (W_VOL, rv), (W_TP, rt), (W_BB, r_bb.shape[1]), (W_LR, r_lr.shape[1]),
                        (W_FLOW, r_flow.shape[1]), (W_HK, r_hk.shape[1]), (W_HW, r_hw.shape[1])):
            w = pos[j, q] + 1
            pos[j, q] = 0 if w == size else w
        # At an anchor bar every running sum is recomputed from its ring, oldest first: from
        # there on it depends only on the bars since, not on how long the slot has run or where
        # its replay began. Anchors are fixed by the bars' opens (the caller's `anchor`), so the
        # live daemon warmed after a restart and a replay from the first stored bar pass the
        # same ones and agree bit for bit (train/serve parity); it also bounds float drift.
        # Without anchors from the caller, every 1,024 bars of the slot.
        if anchor[j] if anchor.shape[0] else nj & 1023 == 1023:  # (a mask: no division in the loop)
            wc, wv, wt, wl, wf = pos[j, W_CLOSE], pos[j, W_VOL], pos[j, W_TP], pos[j, W_LR], pos[j, W_FLOW]
            for k in range(n_sma):
                sums[j, k] = _tsum(r_close, j, wc, sma_p[k] - 1)
            sums[j, sb + S_BB] = _tsum(r_close, j, wc, bb_p - 1)
            sums[j, sb + S_TP] = _tsum(r_tp, j, wt, rt)
            sums[j, sb + S_LR] = _tsum(r_lr, j, wl, r_lr.shape[1])
            sums[j, sb + S_VOLMA] = _tsum(r_vol, j, wv, vma_p - 1)
            sums[j, sb + S_VOLPREV] = _tsum(r_vol, j, wv, rvol_p)
            sf = r_flow.shape[1]
            pos_sum = neg_sum = 0.0
            for lag in range(sf, 0, -1):
                f = r_flow[j, _back(wf, lag, sf)]
                pos_sum += max(f, 0.0)
                neg_sum += max(-f, 0.0)
            sums[j, sb + S_POS], sums[j, sb + S_NEG] = pos_sum, neg_sum
        prev[j, P_C], prev[j, P_H], prev[j, P_L], prev[j, P_TP] = x, hi, lo, tp
        n[j] = nj + 1


@njit(cache=True, error_model="numpy")
def replay_kernel(mask: np.ndarray, h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray,
                  session_start: np.ndarray, anchor: np.ndarray, rows: np.ndarray, state: tuple,
                  sma_p: np.ndarray, ema_p: np.ndarray, ip: np.ndarray, bb_dev: float, lookback: np.ndarray,
                  out: np.ndarray, result: np.ndarray) -> None:
    """`step_kernel` over a series, compiled end to end: row d of the (depth, slots) inputs is
    one closed bar per masked slot, committed in order; after it, slot j's outputs go to
    result[:, rows[d, j]]. The same arithmetic as the live step, without a Python round trip
    per bar (a history export runs thousands of steps)."""
    (n, pos, prev, sums, rec, fk, sk, r_close, r_vol, r_tp, r_bb, r_lr, r_flow, r_hk, r_lk, r_hw, r_lw,
     hv_scale) = state
    for d in range(mask.shape[0]):
        step_kernel(True, mask[d], h[d], l[d], c[d], v[d], session_start[d], anchor[d], n, pos, prev, sums, rec, fk,
                    sk, r_close, r_vol, r_tp, r_bb, r_lr, r_flow, r_hk, r_lk, r_hw, r_lw, hv_scale, sma_p, ema_p, ip,
                    bb_dev, lookback, out)
        for j in range(mask.shape[1]):
            if mask[d, j]:
                result[:, rows[d, j]] = out[:, j]
