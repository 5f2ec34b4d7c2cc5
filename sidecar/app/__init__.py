"""The daemon: wiring, the per-second loop, and the HTTP server."""

from .daemon import Sidecar, tune_gc

__all__ = ["Sidecar", "tune_gc"]
