"""Statements straight to the driver (`services.foundation.driver_sql`), on a real SQLite file and
a fresh PostgreSQL database: one SQL text with list parameters serves both, and what it writes
and reads is exactly what SQLAlchemy writes and reads for the same columns, so the two ways can
be mixed on one table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert, select

from services.foundation import driver_sql
from services.foundation.db import Database, UTCDateTime
from tests.support import database_with

metadata = MetaData()
item = Table(
    "kit_test_item",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False),
    Column("at", UTCDateTime(), nullable=True),
)
T0 = datetime(2026, 12, 2, 8, 30, tzinfo=UTC)  # whole seconds: the text SQLite stores still has microseconds


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with database_with(database_url, metadata) as database:
        yield database


def test_list_parameters_of_any_length_serve_both_databases(db: Database) -> None:
    rows = [{"id": i, "name": f"n-{i}", "at": T0} for i in range(1, 2_001)]
    db.run_sync(lambda s: driver_sql.insert(s, item, rows))
    wanted = list(range(1, 2_001, 2))  # more values than SQLite allows bound parameters in one list
    found = db.run_sync(lambda s: driver_sql.rows(s, "SELECT id FROM kit_test_item WHERE id IN ({ints})", wanted))
    assert sorted(i for (i,) in found) == wanted
    names = ["n-3", "n-4", "nobody", "it's"]
    found = db.run_sync(
        lambda s: driver_sql.rows(s, "SELECT name FROM kit_test_item WHERE name IN ({texts}) AND id > ?", names, 3)
    )
    assert [n for (n,) in found] == ["n-4"]
    assert db.run_sync(lambda s: driver_sql.rows(s, "SELECT id FROM kit_test_item WHERE id IN ({ints})", [])) == []


def test_rows_written_by_the_driver_read_back_through_sqlalchemy_and_the_other_way(db: Database) -> None:
    db.run_sync(lambda s: driver_sql.insert(s, item, [{"id": 1, "name": "raw", "at": T0}]))
    db.run_sync(lambda s: s.execute(insert(item).values(id=2, name="orm", at=T0 + timedelta(microseconds=1))))
    assert db.run_sync(lambda s: s.execute(select(item.c.at).where(item.c.id == 1)).scalar_one()) == T0

    def between(low: datetime, high: datetime) -> list[tuple[str, datetime]]:
        def unit(s):  # type: ignore[no-untyped-def]
            stored, read = driver_sql.to_driver(s, item.c.at), driver_sql.from_driver(s, item.c.at)
            sql = "SELECT name, at FROM kit_test_item WHERE at >= ? AND at <= ? ORDER BY id"
            return [(name, read(at)) for name, at in driver_sql.rows(s, sql, stored(low), stored(high))]

        return db.run_sync(unit)

    # Compared as stored: a driver-bound bound of a whole second must not sort apart from SQLAlchemy's text.
    assert between(T0, T0) == [("raw", T0)]
    assert between(T0, T0 + timedelta(microseconds=1)) == [("raw", T0), ("orm", T0 + timedelta(microseconds=1))]
    assert all(at.tzinfo is UTC for _, at in between(T0, T0 + timedelta(seconds=1)))


def test_execute_many_updates_each_row_and_skips_an_empty_batch(db: Database) -> None:
    db.run_sync(lambda s: driver_sql.insert(s, item, [{"id": i, "name": "x", "at": None} for i in (1, 2, 3)]))
    db.run_sync(
        lambda s: driver_sql.execute_many(s, "UPDATE kit_test_item SET name = ? WHERE id = ?", [("a", 1), ("c", 3)])
    )
    db.run_sync(lambda s: driver_sql.execute_many(s, "UPDATE kit_test_item SET name = ? WHERE id = ?", []))
    names = db.run_sync(lambda s: s.execute(select(item.c.id, item.c.name).order_by(item.c.id)).all())
    assert [tuple(r) for r in names] == [(1, "a"), (2, "x"), (3, "c")]
