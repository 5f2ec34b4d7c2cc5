"""TA-Lib run on exactly the history an engine slot saw: the oracle for every output."""

from __future__ import annotations

import numpy as np
import talib

from sidecar.features import FeatureConfig


def talib_outputs(h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray, cfg: FeatureConfig,
                  hv_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Every engine output computed by TA-Lib over one symbol's whole series (one session)."""
    out: dict[str, np.ndarray] = {}
    for p in cfg.sma:
        out[f"sma_{p}"] = talib.SMA(c, p)
    for p in cfg.ema:
        out[f"ema_{p}"] = talib.EMA(c, p)
    out[f"rsi_{cfg.rsi}"] = talib.RSI(c, cfg.rsi)
    out["macd"], out["macd_signal"], out["macd_hist"] = talib.MACD(c, *cfg.macd)
    k, sk, sd = cfg.stoch
    out["stoch_k"], out["stoch_d"] = talib.STOCH(h, l, c, k, sk, 0, sd, 0)
    out[f"cci_{cfg.cci}"] = talib.CCI(h, l, c, cfg.cci)
    out[f"willr_{cfg.willr}"] = talib.WILLR(h, l, c, cfg.willr)
    out[f"atr_{cfg.atr}"] = talib.ATR(h, l, c, cfg.atr)
    out["bb_upper"], out["bb_middle"], out["bb_lower"] = talib.BBANDS(c, cfg.bb, cfg.bb_dev, cfg.bb_dev, 0)
    hv = np.full(len(c), np.nan)
    if len(c) > 1:
        hv[1:] = talib.STDDEV(np.log(c[1:] / c[:-1]), cfg.hv, 1) * hv_scale
    out[f"hv_{cfg.hv}"] = hv
    out["obv"] = talib.OBV(c, v)
    out["vwap"] = talib.VWAP(h, l, c, v)
    out[f"volume_ma_{cfg.volume_ma}"] = talib.SMA(v, cfg.volume_ma)
    out[f"rvol_{cfg.rvol}"] = talib.RVOL(v, cfg.rvol)
    out[f"adx_{cfg.adx}"] = talib.ADX(h, l, c, cfg.adx)
    out[f"plus_di_{cfg.adx}"] = talib.PLUS_DI(h, l, c, cfg.adx)
    out[f"minus_di_{cfg.adx}"] = talib.MINUS_DI(h, l, c, cfg.adx)
    out[f"mfi_{cfg.mfi}"] = talib.MFI(h, l, c, v, cfg.mfi)
    out[f"mom_{cfg.mom}"] = talib.MOM(c, cfg.mom)
    out[f"roc_{cfg.roc}"] = talib.ROC(c, cfg.roc)
    return out


def session_vwap(h: np.ndarray, l: np.ndarray, c: np.ndarray, v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """TA-Lib's VWAP run separately over each session's slice."""
    out = np.empty(len(c))
    edges = [*np.flatnonzero(starts), len(c)]
    if edges[0] != 0:
        edges.insert(0, 0)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        out[a:b] = talib.VWAP(h[a:b], l[a:b], c[a:b], v[a:b])
    return out


def max_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| / max(1, |want|); inf if the NaN patterns (first valid bar) differ."""
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    ok = ~np.isnan(want)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(got[ok] - want[ok]) / np.maximum(1.0, np.abs(want[ok]))))
