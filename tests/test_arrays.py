"""`distinct` gives what np.unique gives, on every path (one value, a counted range, a sort)."""

from __future__ import annotations

import numpy as np
import pytest

from sidecar.arrays import distinct


@pytest.mark.parametrize(("dtype", "low", "high"), [
    (np.int8, 0, 5),  # asset classes
    (np.int16, -1, 3),  # source codes, -1: none
    (np.int64, 20_400, 20_403),  # days
    (np.int64, 1_700_000_000, 1_700_003_600),  # bar opens within an hour
    (np.int64, 0, 2**40),  # too wide to count: sorted
    (np.uint64, 0, 2**29),  # patterns of nils
])
@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_distinct_is_np_unique_with_a_flat_inverse(dtype: type, low: int, high: int, n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.integers(low, high, n).astype(dtype), np.full(n, high - 1, dtype=dtype)):
        uniq, inverse = distinct(values)
        want, want_inverse = np.unique(values, return_inverse=True)
        assert uniq.dtype == values.dtype
        assert uniq.tolist() == want.tolist()
        assert inverse.tolist() == want_inverse.ravel().tolist()
        assert (uniq[inverse] == values).all()
