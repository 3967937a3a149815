"""Statements straight to the database driver, for the few hot units of work where SQLAlchemy's
per-statement and per-row work (building the statement, processing each parameter and each row)
costs more than the database's work. Measured on the referral tree: a Register batch spent more
in SQLAlchemy than in SQLite.

One SQL text serves both databases: `?` marks a parameter; `{ints}` and `{texts}` stand for a
subquery of the values of a list parameter (a JSON array on SQLite, which caps the number of bound
parameters; an array on PostgreSQL). Values that are not plain numbers or text go through their
column's own conversion (`to_driver`, `from_driver`), so they are stored exactly as SQLAlchemy
stores them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Table
from sqlmodel import Session


def _for_driver(session: Session, sql: str) -> tuple[str, bool]:
    """(SQL in the driver's parameter style, whether list parameters go as JSON)."""
    if session.get_bind().dialect.name == "postgresql":
        sql = sql.replace("{ints}", "SELECT unnest(CAST(? AS BIGINT[]))")
        sql = sql.replace("{texts}", "SELECT unnest(CAST(? AS TEXT[]))")
        return sql.replace("?", "%s"), False
    sql = sql.replace("{ints}", "SELECT value FROM json_each(?)").replace("{texts}", "SELECT value FROM json_each(?)")
    return sql, True


def rows(session: Session, sql: str, *params: object) -> Sequence[Sequence[Any]]:
    """The rows of one statement in the session's transaction (none for a statement that returns
    none)."""
    sql, as_json = _for_driver(session, sql)
    if as_json:
        params = tuple(json.dumps(p) if isinstance(p, list) else p for p in params)
    result = session.connection().exec_driver_sql(sql, params)
    return result.fetchall() if result.returns_rows else []


def execute_many(session: Session, sql: str, param_rows: Sequence[Sequence[object]]) -> None:
    """One statement run once per parameter row, in the session's transaction."""
    if param_rows:
        batch = [row if isinstance(row, tuple) else tuple(row) for row in param_rows]  # the driver takes tuples
        session.connection().exec_driver_sql(_for_driver(session, sql)[0], batch)


def to_driver(session: Session, column: Column[Any]) -> Callable[[Any], Any]:
    """The conversion SQLAlchemy applies to a value bound for `column` (a UTC datetime to the
    text SQLite stores, for instance)."""
    dialect = session.get_bind().dialect
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process if process is not None else _same


def from_driver(session: Session, column: Column[Any]) -> Callable[[Any], Any]:
    """The conversion SQLAlchemy applies to a value of `column` read back."""
    dialect = session.get_bind().dialect
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return process if process is not None else _same


def _same(value: Any) -> Any:
    return value


def insert(session: Session, table: Table, values: Sequence[Mapping[str, object]]) -> None:
    """Insert rows that all name the same columns, each value converted as its column's type does."""
    if not values:
        return
    names = list(values[0])
    converted = [(i, to_driver(session, table.c[name])) for i, name in enumerate(names)]
    converted = [(i, process) for i, process in converted if process is not _same]
    param_rows: list[tuple[object, ...]] = []
    for row in values:
        params = [row[name] for name in names]
        for i, process in converted:
            params[i] = process(params[i])
        param_rows.append(tuple(params))
    sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    execute_many(session, sql, param_rows)
