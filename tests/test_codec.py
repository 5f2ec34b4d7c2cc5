"""The features value: what any msgpack reader decodes equals the values encoded, nil where an
indicator is still warming up, in every mix of missing values the encoder's block paths see
(a few shared warm-up patterns, cut pattern by pattern; scattered nils, cut by one mask)."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from sidecar.features import OUTPUTS
from sidecar.features.codec import FeatureCodec


@pytest.mark.parametrize("scattered", [False, True], ids=["warm-up patterns", "scattered"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_values_with_missing_ones_decode_with_plain_msgpack_and_round_trip(seed: int, scattered: bool) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    values = rng.normal(100, 10, (len(OUTPUTS), n))
    # a few shared warm-up patterns (leading outputs missing, as many as the history is short)
    for j, cut in enumerate(rng.choice([1, 5, len(OUTPUTS) - 2], n).tolist()):
        if j % 3 == 0:
            values[:cut, j] = np.nan
    close = rng.normal(100, 1, n)
    if scattered:  # and single NaNs anywhere: hundreds of patterns
        values[rng.random(values.shape) < 0.02] = np.nan
        close[rng.random(n) < 0.05] = np.nan
    ts = rng.integers(1_700_000_000, 1_800_000_000, n) // 60 * 60
    provisional = rng.random(n) < 0.5
    codec = FeatureCodec(OUTPUTS, "5m")
    rows = codec.encode(ts, close, provisional, 1_800_000_000.5, values)
    for j, raw in enumerate(rows):
        m = msgpack.unpackb(raw)
        assert m["tf"] == "5m" and m["ts"] == ts[j] and m["provisional"] == bool(provisional[j])
        assert m["updated"] == 1_800_000_000.5
        assert (m["close"] is None) if math.isnan(close[j]) else m["close"] == close[j]
        for i, name in enumerate(OUTPUTS):
            want = values[i, j]
            assert (m[name] is None) if math.isnan(want) else m[name] == want, (j, name)
    frame = codec.decode(rows)
    assert frame.present.all() and (frame.ts == ts).all()
    assert np.array_equal(frame.values, values, equal_nan=True)
    assert np.array_equal(frame.close, close, equal_nan=True) and (frame.provisional == provisional).all()


def test_decode_of_a_mixed_mget_equals_plain_msgpack_row_by_row() -> None:
    """Missing keys, rows of several patterns of nils in any order, rows another writer packed
    its own way (other key order, float32, an extra key), and values that are no features map at
    all (empty, not msgpack, a list, a map without the fields): each row decodes to what msgpack
    reads from it, the junk reads as absent, and with `fields` only those outputs are filled."""
    rng = np.random.default_rng(5)
    n = 240
    codec = FeatureCodec(OUTPUTS, "1m")
    values = rng.normal(50, 5, (len(OUTPUTS), n))
    values[:4, rng.random(n) < 0.3] = np.nan
    values[-2:, rng.random(n) < 0.5] = np.nan
    close = rng.normal(100, 1, n)
    raws: list[bytes | None] = list(codec.encode(np.full(n, 1_800_000_000), close, rng.random(n) < 0.5,
                                                 1_800_000_001.0, values))
    for j in range(0, n, 17):  # another writer's rows: the same map, packed its own way
        m = msgpack.unpackb(raws[j])  # type: ignore[arg-type]
        raws[j] = msgpack.packb({"extra": 1, **dict(reversed(list(m.items())))}, use_single_float=j % 2 == 0)
    for j in range(5, n, 23):
        raws[j] = None
    junk = {j: raw for j, raw in zip(range(7, n, 37), [b"", b"\xc1", msgpack.packb([1, 2]),
                                                        msgpack.packb({"tf": "1m"}), b"\x81"], strict=False)}
    for j, raw in junk.items():  # not features maps at all: read as absent, nothing raised
        raws[j] = raw
    order = rng.permutation(n)
    raws = [raws[j] for j in order]
    for fields in (None, {"rsi_14", "macd"}):
        frame = codec.decode(raws, fields)
        for j, raw in enumerate(raws):
            if raw is None or raw in junk.values():
                assert not frame.present[j] and np.isnan(frame.values[:, j]).all()
                continue
            m = msgpack.unpackb(raw)
            assert frame.present[j] and frame.ts[j] == m["ts"] and frame.provisional[j] == m["provisional"]
            assert frame.close[j] == np.float64(m["close"]) and frame.updated[j] == np.float64(m["updated"])
            for i, name in enumerate(OUTPUTS):
                got, want = frame.values[i, j], m[name]
                if (fields is not None and name not in fields) or want is None:
                    assert np.isnan(got), (j, name)
                else:
                    assert got == np.float64(want), (j, name)
