"""Read-only access to the durable record for the offline tools (the Parquet export, the
adjusted view's actions): the SQLite file, or the PostgreSQL store of a cluster, named by
`SIDECAR_STORE_URL`. Queries are written once in SQLite's flavour (`?` placeholders) and
translated for PostgreSQL (`postgres_store.dialect`).

Bulk reads go through ADBC straight into Arrow columns, for both databases: the stdlib's row
tuples made reading most of an export's time. Small lookups return rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from .postgres_store import dialect

Database = Path | str
"""A SQLite file, or a postgresql:// URL."""


def is_postgres(db: Database) -> bool:
    """Whether `db` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def check(db: Database) -> None:
    """ValueError naming the setting when `db` is a SQLite file that does not exist."""
    if not is_postgres(db) and not Path(db).is_file():
        raise ValueError(f"SIDECAR_DB_PATH: no database at {db}")


def arrow(db: Database, sql: str, params: Sequence[object]) -> Any:
    """A query's result as one pyarrow Table (`sql` in SQLite's flavour)."""
    if is_postgres(db):
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(str(db)) as conn, conn.cursor() as cur:
            cur.execute(dialect(sql), list(params))
            return cur.fetch_arrow_table()
    import adbc_driver_sqlite.dbapi as lite

    with lite.connect(f"file:{db}?mode=ro") as conn, conn.cursor() as cur:
        cur.execute(sql, list(params))
        return cur.fetch_arrow_table()


def rows(db: Database, sql: str, params: Sequence[object], table: str) -> list[tuple[Any, ...]] | None:
    """A small query's rows, or None when `table` does not exist yet (a database from before
    the component that creates it)."""
    if is_postgres(db):
        import adbc_driver_postgresql.dbapi as pg

        with pg.connect(str(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass($1) IS NOT NULL", [table])
            found = cur.fetchone()
            if not found or not found[0]:
                return None
            cur.execute(dialect(sql), list(params))
            return [tuple(r) for r in cur.fetchall()]
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute(sql, tuple(params)).fetchall()
    except sqlite3.OperationalError:  # no such table
        return None
