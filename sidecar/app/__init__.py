"""The daemon: wiring, the per-second loop, and the HTTP server."""

from .daemon import Sidecar

__all__ = ["Sidecar"]
