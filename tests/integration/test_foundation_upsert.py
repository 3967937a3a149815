"""upsert on its own, on a real SQLite file and a fresh PostgreSQL database, against a small table
of the test's own (composite key, two value columns) on a private MetaData."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlmodel import Session

from services.foundation.db import Database
from services.foundation.upsert import insert_ignoring_conflicts, insert_or_replace
from tests.support import database_with

metadata = MetaData()
entry = Table(
    "kit_test_entry",
    metadata,
    Column("tenant", String(16), primary_key=True),
    Column("key", String(16), primary_key=True),
    Column("a", Integer, nullable=False),
    Column("b", Integer, nullable=False),
)

Row = tuple[str, str, int, int]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with database_with(database_url, metadata) as database:
        yield database


def rows(session: Session) -> list[Row]:
    query = select(entry.c.tenant, entry.c.key, entry.c.a, entry.c.b).order_by(entry.c.tenant, entry.c.key)
    return [(r.tenant, r.key, r.a, r.b) for r in session.execute(query)]


async def seed(db: Database) -> None:
    def unit(session: Session) -> None:
        session.execute(
            insert(entry),
            [
                {"tenant": "t1", "key": "k1", "a": 1, "b": 1},
                {"tenant": "t2", "key": "k1", "a": 1, "b": 1},
            ],
        )

    await db.run(unit)


async def test_insert_ignoring_conflicts_skips_existing_keys_and_inserts_new_ones(db: Database) -> None:
    await seed(db)

    def unit(session: Session) -> None:
        statement = insert_ignoring_conflicts(session.connection(), entry)
        session.execute(
            statement,
            [
                {"tenant": "t1", "key": "k1", "a": 9, "b": 9},  # exists: skipped, not an error
                {"tenant": "t1", "key": "k2", "a": 2, "b": 2},  # new
                {"tenant": "t3", "key": "k1", "a": 3, "b": 3},  # same key, other tenant: new
            ],
        )

    await db.run(unit)
    assert await db.read(rows) == [
        ("t1", "k1", 1, 1),
        ("t1", "k2", 2, 2),
        ("t2", "k1", 1, 1),
        ("t3", "k1", 3, 3),
    ]


async def test_insert_ignoring_conflicts_keeps_the_first_of_a_key_repeated_in_one_statement(db: Database) -> None:
    def unit(session: Session) -> None:
        statement = insert_ignoring_conflicts(session.connection(), entry)
        session.execute(statement.values(tenant="t1", key="dup", a=1, b=1))
        session.execute(statement.values(tenant="t1", key="dup", a=2, b=2))

    await db.run(unit)
    assert await db.read(rows) == [("t1", "dup", 1, 1)]


async def test_concurrent_inserts_ignoring_conflicts_of_one_key_all_succeed_and_leave_one_row(db: Database) -> None:
    def unit_of(value: int) -> Callable[[Session], None]:
        def unit(session: Session) -> None:
            statement = insert_ignoring_conflicts(session.connection(), entry)
            session.execute(statement.values(tenant="t1", key="race", a=value, b=value))

        return unit

    # attempts=1: a conflict must be absorbed by the statement itself, not by a retry.
    await asyncio.wait_for(asyncio.gather(*(db.run(unit_of(v), attempts=1) for v in range(12))), 30)
    found = await db.read(rows)
    assert len(found) == 1 and found[0][:2] == ("t1", "race") and found[0][2] == found[0][3]


async def test_insert_or_replace_overwrites_only_the_named_columns(db: Database) -> None:
    await seed(db)

    def unit(session: Session) -> None:
        statement = insert_or_replace(session.connection(), entry, key=["tenant", "key"], columns=["a"])
        session.execute(
            statement,
            [
                {"tenant": "t1", "key": "k1", "a": 5, "b": 5},  # exists: a replaced, b kept
                {"tenant": "t1", "key": "k2", "a": 2, "b": 2},  # new: inserted whole
            ],
        )

    await db.run(unit)
    assert await db.read(rows) == [
        ("t1", "k1", 5, 1),
        ("t1", "k2", 2, 2),
        ("t2", "k1", 1, 1),  # the same key of another tenant is untouched
    ]


async def test_insert_or_replace_of_several_columns_replaces_each_of_them(db: Database) -> None:
    await seed(db)

    def unit(session: Session) -> None:
        statement = insert_or_replace(session.connection(), entry, key=["tenant", "key"], columns=["a", "b"])
        session.execute(statement.values(tenant="t2", key="k1", a=7, b=8))

    await db.run(unit)
    assert await db.read(rows) == [("t1", "k1", 1, 1), ("t2", "k1", 7, 8)]
