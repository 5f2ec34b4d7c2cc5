"""Stores: Redis for hot data other processes read, SQLite for the durable record."""

from .redis_store import RedisKeys, RedisStore
from .sqlite_store import SQLiteStore

__all__ = ["RedisKeys", "RedisStore", "SQLiteStore"]
