"""The feature engine: 28 indicator outputs per symbol, state in NumPy arrays with one slot
per symbol, updated for every symbol with a new closed bar in one vectorized step."""

from .engine import OUTPUTS, FeatureConfig, FeatureEngine

__all__ = ["OUTPUTS", "FeatureConfig", "FeatureEngine"]
