"""The market's noise: a counter-based hash (splitmix64), so any number of any (symbol, time)
draw is computed directly, vectorized, with no generator state to keep or replay."""

from __future__ import annotations

import zlib

import numpy as np


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(key: int | np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers, one per counter, fixed for a key."""
    c = np.asarray(counter, dtype=np.int64).astype(np.uint64)
    h = _splitmix(_splitmix(c) ^ np.uint64(key))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def normal(key: int | np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Standard normal numbers (Box-Muller), one per counter, fixed for a key."""
    u1 = uniform(key, counter)
    u2 = uniform(key ^ 0x5DEECE66D, counter)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def key(seed: int, symbol: str, salt: str) -> int:
    """The key of one stream of noise: a seed, a symbol and what the stream is for."""
    return zlib.crc32(f"{seed}|{symbol}|{salt}".encode()) | (zlib.crc32(f"{salt}|{symbol}".encode()) << 32)
