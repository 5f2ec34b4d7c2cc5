"""The features value: what any msgpack reader decodes equals the values encoded, nil where an
indicator is still warming up, in every mix of missing values the encoder's block path sees."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from sidecar.features import OUTPUTS
from sidecar.features.codec import FeatureCodec


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_values_with_missing_ones_decode_with_plain_msgpack_and_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    values = rng.normal(100, 10, (len(OUTPUTS), n))
    # a few shared warm-up patterns (whole outputs missing), and scattered single NaNs
    for j, cut in enumerate(rng.integers(0, len(OUTPUTS), n).tolist()):
        if j % 3 == 0:
            values[:cut, j] = np.nan
    values[rng.random(values.shape) < 0.02] = np.nan
    close = rng.normal(100, 1, n)
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
