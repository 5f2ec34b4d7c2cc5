"""The sidecar's exception tree.

    SidecarError
     ├── SettingsError            (also ValueError)   a bad configuration value
     ├── SymbolError              (also ValueError)   a malformed or unknown symbol
     ├── FetchError               (also ConnectionError)
     │    ├── FetchTimeout        (also TimeoutError)
     │    ├── RateLimited         the source said 429; carries retry_after
     │    ├── ProviderError       the source answered with an error body
     │    └── MalformedResponse   the body could not be parsed into bars
     └── StoreError
          ├── RedisStoreError
          │    └── Fenced           a newer owner holds the partition: the write was refused
          └── DurableStoreError
               ├── SQLiteStoreError
               └── PostgresStoreError

Every fetch error carries the source and the symbol it was about.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class of every error the sidecar raises on purpose."""


class SettingsError(SidecarError, ValueError):
    """A setting has a bad value; the message names the environment variable."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class SymbolError(SidecarError, ValueError):
    """A symbol is malformed or not known to the symbol table."""

    def __init__(self, symbol: str, message: str) -> None:
        shown = symbol if len(symbol) <= 40 else symbol[:40] + "..."  # a hostile 10 kB name stays out of logs
        super().__init__(f"symbol {shown!r}: {message}")
        self.symbol = symbol


class FetchError(SidecarError, ConnectionError):
    """A source could not deliver data for a symbol."""

    def __init__(self, source: str, symbol: str, message: str) -> None:
        super().__init__(f"{source} {symbol}: {message}")
        self.source = source
        self.symbol = symbol
        self.reason = type(self).__name__


class FetchTimeout(FetchError, TimeoutError):
    """The source did not answer within the fetch timeout."""


class RateLimited(FetchError):
    """The source refused the request for rate reasons (HTTP 429 or its equivalent)."""

    def __init__(self, source: str, symbol: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(source, symbol, message)
        self.retry_after = retry_after


class ProviderError(FetchError):
    """The source answered with an error status or error body."""

    def __init__(self, source: str, symbol: str, message: str, status: int | None = None) -> None:
        super().__init__(source, symbol, message)
        self.status = status


class MalformedResponse(FetchError):
    """The body was not the JSON shape the provider documents."""


class CircuitOpen(FetchError):
    """The source is not asked: its breaker is open or it is disabled."""


class BeyondReach(FetchError):
    """No configured source serves the timeframe that far back."""


class StoreError(SidecarError):
    """A write to or read from a store failed."""


class RedisStoreError(StoreError):
    """Redis did not accept a pipeline or a read in time."""


class Fenced(RedisStoreError):
    """Redis refused a write for a partition: a newer fencing token exists, so this shard no
    longer owns it (it was paused or cut off past its lease)."""

    def __init__(self, partition: int, token: int, message: str) -> None:
        super().__init__(f"partition {partition} (token {token}): {message}")
        self.partition = partition
        self.token = token


class DurableStoreError(StoreError):
    """The durable record (SQLite or PostgreSQL) could not commit or answer."""


class SQLiteStoreError(DurableStoreError):
    """SQLite could not commit a flush."""


class PostgresStoreError(DurableStoreError):
    """PostgreSQL could not commit a flush or answer a read."""
