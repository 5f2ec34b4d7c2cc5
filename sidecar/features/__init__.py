"""The feature engine: 28 indicator outputs per symbol, state in NumPy arrays with one slot
per symbol, updated for every symbol with a new closed bar in one vectorized step.

`FeatureEngine` (and numba with it) loads on first use: importing the configuration does not
compile anything."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import OUTPUTS, FeatureConfig

if TYPE_CHECKING:
    from .engine import FeatureEngine

__all__ = ["OUTPUTS", "FeatureConfig", "FeatureEngine"]


def __getattr__(name: str) -> Any:
    if name == "FeatureEngine":
        from .engine import FeatureEngine

        return FeatureEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
