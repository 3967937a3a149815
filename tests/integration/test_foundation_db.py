"""Database on its own, on a real SQLite file and a fresh PostgreSQL database: units of work commit
or roll back whole, after-commit callbacks, snapshot reads beside a writer, retries of a lost
race, UTC datetimes, and the outbox's wake-up after a commit that staged events.

Units that must stay open while the test looks are held on a threading.Event (the unit runs on a
worker thread); every wait for one has a deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from google.protobuf.empty_pb2 import Empty
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.exc import StatementError
from sqlmodel import Session, col

from services.foundation.db import Database, UTCDateTime, after_commit
from services.foundation.events import Event
from services.foundation.outbox import OutboxEvent, add_event, add_event_rows, event_row
from services.foundation.schema import table_of
from tests.support import database_with, eventually

DEADLINE = 10.0

metadata = MetaData()
thing = Table(
    "kit_test_thing",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=True),
)

HAPPENED = Event("kittest.v1.happened", Empty)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    with database_with(database_url, metadata) as database:
        yield database


class Boom(Exception):
    pass


def put(key: str, value: int = 1, at: datetime | None = None) -> Callable[[Session], None]:
    def unit(session: Session) -> None:
        session.execute(insert(thing).values(key=key, value=value, at=at))

    return unit


def keys(session: Session) -> list[str]:
    return list(session.execute(select(thing.c.key).order_by(thing.c.key)).scalars())


def keys_seen_by_another_connection(db: Database) -> list[str]:
    """What a separate engine (another process, as far as the database knows) sees committed."""
    engine = create_engine(db.url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(thing.c.key).order_by(thing.c.key)).scalars())
    finally:
        engine.dispose()


async def until_set(flag: threading.Event) -> None:
    async def probe() -> bool:
        return flag.is_set()

    await eventually(probe, timeout=DEADLINE, every=0.01)


async def test_run_commits_and_returns_the_units_result(db: Database) -> None:
    def unit(session: Session) -> str:
        session.execute(insert(thing).values(key="a", value=1))
        return "done"

    assert await db.run(unit) == "done"
    assert keys_seen_by_another_connection(db) == ["a"]
    assert await db.read(keys) == ["a"]


async def test_an_exception_rolls_the_unit_back_and_is_not_retried(db: Database) -> None:
    attempts = 0

    def unit(session: Session) -> None:
        nonlocal attempts
        attempts += 1
        session.execute(insert(thing).values(key="gone", value=1))
        session.flush()
        raise Boom

    with pytest.raises(Boom):
        await db.run(unit)
    assert attempts == 1
    assert await db.read(keys) == []
    assert keys_seen_by_another_connection(db) == []


async def test_after_commit_callbacks_run_after_the_commit_on_the_event_loop(db: Database) -> None:
    seen: list[tuple[list[str], int]] = []

    def unit(session: Session) -> None:
        session.execute(insert(thing).values(key="c", value=1))
        # What the callback sees from another connection proves the commit came first.
        after_commit(session, lambda: seen.append((keys_seen_by_another_connection(db), threading.get_ident())))

    await db.run(unit)
    assert seen == [(["c"], threading.get_ident())]


async def test_after_commit_callbacks_never_run_after_a_rollback(db: Database) -> None:
    called: list[str] = []

    def unit(session: Session) -> None:
        after_commit(session, lambda: called.append("rolled back"))
        session.execute(insert(thing).values(key="r", value=1))
        raise Boom

    with pytest.raises(Boom):
        await db.run(unit)
    # A later committed unit runs its own callbacks only, not the rolled-back one's.
    await db.run(lambda s: after_commit(s, lambda: called.append("committed")))
    assert called == ["committed"]


async def test_a_failing_after_commit_callback_does_not_undo_the_commit_or_skip_the_others(db: Database) -> None:
    called: list[str] = []

    def fail() -> None:
        raise RuntimeError("callback failed")

    def unit(session: Session) -> str:
        session.execute(insert(thing).values(key="f", value=1))
        after_commit(session, fail)
        after_commit(session, lambda: called.append("second"))
        return "ok"

    assert await db.run(unit) == "ok"
    assert called == ["second"]
    assert await db.read(keys) == ["f"]


async def test_after_commit_runs_when_the_awaiting_caller_was_cancelled_while_the_worker_committed(
    db: Database,
) -> None:
    started, release = threading.Event(), threading.Event()
    called = asyncio.Event()

    def unit(session: Session) -> None:
        session.execute(insert(thing).values(key="late", value=1))
        after_commit(session, called.set)
        started.set()
        assert release.wait(DEADLINE), "the test never released the unit"

    caller = asyncio.create_task(db.run(unit))
    try:
        await until_set(started)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, DEADLINE)
        assert not called.is_set()  # the unit has not committed yet
    finally:
        release.set()
    await asyncio.wait_for(called.wait(), DEADLINE)
    assert await db.read(keys) == ["late"]


async def test_read_sees_committed_data_and_does_not_wait_for_a_writer_holding_the_lock(db: Database) -> None:
    await db.run(put("committed"))
    started, release = threading.Event(), threading.Event()

    def writer(session: Session) -> None:
        session.execute(insert(thing).values(key="in-flight", value=1))
        session.flush()
        started.set()
        assert release.wait(DEADLINE), "the test never released the writer"

    writing = asyncio.create_task(db.run(writer))
    try:
        await until_set(started)  # the writer holds the write lock (BEGIN IMMEDIATE on SQLite)
        # Well inside SQLite's 10 s busy timeout: a read queued behind the writer would time out here.
        assert await asyncio.wait_for(db.read(keys), 3.0) == ["committed"]
        assert not writing.done()
    finally:
        release.set()
    await asyncio.wait_for(writing, DEADLINE)
    assert await db.read(keys) == ["committed", "in-flight"]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_read_that_meets_a_connection_the_server_dropped_is_run_again(db: Database) -> None:
    # Reads check out pooled connections without a ping; a restart of PostgreSQL (here: every
    # connection of this database terminated) must not reach the caller as an error.
    await db.run(put("kept"))
    assert await db.read(keys) == ["kept"]  # the read pool now holds a connection
    with psycopg.connect(db.url.set(drivername="postgresql").render_as_string(hide_password=False)) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert await db.read(keys) == ["kept"]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_the_loser_of_a_race_on_a_key_is_retried_whole_and_sees_the_winners_row(db: Database) -> None:
    both_looked = threading.Barrier(2, timeout=DEADLINE)
    attempts: dict[str, int] = {"one": 0, "two": 0}
    committed: list[tuple[str, int]] = []

    def unit_of(name: str, value: int) -> Callable[[Session], tuple[str, int]]:
        def unit(session: Session) -> tuple[str, int]:
            attempts[name] += 1
            attempt = attempts[name]
            after_commit(session, lambda: committed.append((name, attempt)))
            found = session.execute(select(thing.c.value).where(thing.c.key == "k")).scalar_one_or_none()
            if attempt == 1:
                both_looked.wait()  # both first attempts found nothing before either inserts
            if found is not None:
                return ("saw", found)
            session.execute(insert(thing).values(key="k", value=value))
            return ("inserted", value)

        return unit

    one, two = await asyncio.wait_for(asyncio.gather(db.run(unit_of("one", 1)), db.run(unit_of("two", 2))), DEADLINE)

    assert sorted([one[0], two[0]]) == ["inserted", "saw"]
    winner, loser = ("one", "two") if one[0] == "inserted" else ("two", "one")
    winner_value = 1 if winner == "one" else 2
    assert (one if loser == "one" else two) == ("saw", winner_value)
    assert attempts == {winner: 1, loser: 2}
    # Only the attempts that committed ran their callbacks: not the loser's first.
    assert sorted(committed) == sorted([(winner, 1), (loser, 2)])
    rows = await db.read(lambda s: [tuple(row) for row in s.execute(select(thing.c.key, thing.c.value))])
    assert rows == [("k", winner_value)]


async def test_utc_datetime_refuses_naive_datetimes(db: Database) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await db.run(put("naive", at=datetime(2026, 3, 1, 12, 0)))
    assert await db.read(keys) == []


async def test_utc_datetime_returns_aware_utc_for_the_same_instant(db: Database) -> None:
    shanghai = timezone(timedelta(hours=8))
    moment = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=shanghai)
    await db.run(put("aware", at=moment))
    await db.run(put("earlier", at=moment - timedelta(seconds=1)))

    stored = await db.read(lambda s: s.execute(select(thing.c.at).where(thing.c.key == "aware")).scalar_one())
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored == moment
    assert stored == datetime(2026, 3, 1, 1, 30, 15, 123456, tzinfo=UTC)
    # Comparisons bind aware values too, in any zone.
    later = await db.read(
        lambda s: list(s.execute(select(thing.c.key).where(thing.c.at >= moment.astimezone(UTC))).scalars())
    )
    assert later == ["aware"]


async def test_database_of_a_session_is_the_database_inside_a_unit_only(db: Database) -> None:
    assert await db.run(Database.of) is db
    with Session(db.engine) as session:
        assert Database.of(session) is None


async def test_events_committed_is_called_after_a_commit_that_staged_an_event_and_not_after_a_rollback(
    db: Database,
) -> None:
    table_of(OutboxEvent).create(db.engine)
    wakes: list[int] = []
    db.events_committed = lambda: wakes.append(len(keys_seen_by_another_connection(db)))

    await db.run(put("no-event"))
    assert wakes == []  # a commit without events does not wake the relay

    def two_events(session: Session) -> None:
        session.execute(insert(thing).values(key="with-events", value=1))
        add_event(session, HAPPENED, Empty())
        add_event(session, HAPPENED, Empty())

    await db.run(two_events)
    assert wakes == [2]  # once per commit, after it (the row is visible elsewhere)

    def rolled_back(session: Session) -> None:
        add_event(session, HAPPENED, Empty())
        raise Boom

    with pytest.raises(Boom):
        await db.run(rolled_back)
    assert wakes == [2]

    await db.run(lambda s: add_event_rows(s, [event_row(HAPPENED, Empty()), event_row(HAPPENED, Empty())]))
    assert wakes == [2, 2]

    staged = await db.read(lambda s: s.execute(select(col(OutboxEvent.event_id))).all())
    assert len(staged) == 4
