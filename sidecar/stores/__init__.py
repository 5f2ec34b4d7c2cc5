"""Stores: Redis for hot data other processes read; SQLite (one machine) or PostgreSQL (a
cluster) for the durable record."""

from .postgres_store import PostgresStore
from .redis_store import RedisStore
from .redis_wire import RedisKeys
from .sqlite_store import SQLiteStore

DurableStore = SQLiteStore | PostgresStore
"""The durable record: either store has the same methods and semantics."""

__all__ = ["DurableStore", "PostgresStore", "RedisKeys", "RedisStore", "SQLiteStore"]
