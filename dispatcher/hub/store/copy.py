"""`polyarch-dispatcher state copy --to postgresql://...`: a SQLite state moved over to
PostgreSQL whole, in one transaction, into a database that holds no polyarch rows yet.

Every row goes as it is (ids included, so the HTTP API's job ids and the dashboard's
pages stay the same), then the identity columns move on past the copied ids. Leases
held at the time of the copy go too: runners get a fresh heartbeat period from the
dispatcher started on the copy, as after any restart.
"""

from __future__ import annotations

from pathlib import Path

from dispatcher.common.errors import StateError
from dispatcher.hub.store.database import Database
from dispatcher.hub.store.postgres import IDENTITIES, TABLES, PgDatabase

BATCH = 1000


def copy_state(source: Path, target: str) -> dict[str, int]:
    """Rows copied per table. StateError when the target already holds polyarch rows."""
    src = Database(source, readonly=True)
    try:
        dst = PgDatabase(target)
        try:
            if not dst.is_empty():
                raise StateError(f"{dst.path} already holds a polyarch state; copy into an empty database "
                                 "(createdb a new one), never over another state")
            return _copy(src, dst)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: Database, dst: PgDatabase) -> dict[str, int]:
    counts = {}
    with src.read() as s, dst.tx() as d:
        for table in TABLES:
            columns = [row[1] for row in s.execute(f"PRAGMA table_info({table})")]
            if table == "commits":
                columns.append("rowid")  # SQLite's own; a column of its own on PostgreSQL
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            rows = s.execute(f"SELECT {names} FROM {table}")  # noqa: S608 - names from the schema
            counts[table] = 0
            while batch := rows.fetchmany(BATCH):
                d.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608
                              [tuple(r) for r in batch])
                counts[table] += len(batch)
        for table, column in IDENTITIES:
            d.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "  # noqa: S608 - constants
                      f"coalesce(max({column}), 0) + 1, false) FROM {table}")
    return counts
