"""INSERT ... ON CONFLICT for the two databases we support, behind one call."""

from __future__ import annotations

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

# Either dialect's INSERT with ON CONFLICT; they share the interface used here.
Insert = postgresql.Insert | sqlite.Insert


def insert_ignoring_conflicts(connection: Connection, table: Table) -> Insert:
    """An insert of `table` that skips rows whose key already exists."""
    return _dialect_insert(connection, table).on_conflict_do_nothing()


def insert_or_replace(connection: Connection, table: Table, key: list[str], columns: list[str]) -> Insert:
    """An insert of `table` that overwrites `columns` of rows whose `key` already exists."""
    statement = _dialect_insert(connection, table)
    return statement.on_conflict_do_update(
        index_elements=key, set_={name: getattr(statement.excluded, name) for name in columns}
    )


def _dialect_insert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for {connection.dialect.name}")


def insert_or_add(connection: Connection, table: Table, key: list[str], columns: list[str]) -> Insert:
    """An insert of `table` that adds `columns` to those of a row whose `key` already exists
    (counters: one statement, no read, safe under concurrent writers)."""
    statement = _dialect_insert(connection, table)
    return statement.on_conflict_do_update(
        index_elements=key, set_={name: table.c[name] + getattr(statement.excluded, name) for name in columns}
    )
