"""Market-data sidecar: pulls bars from prioritized sources every second, validates them,
and keeps them hot in Redis and durable in SQLite."""

__version__ = "0.1.0"
