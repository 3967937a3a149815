"""The kit carries a service: notes (tests/kit_service), written on it in one short module, over real
NATS, gRPC, SQLite and PostgreSQL, in-process and as replica processes.

Shows issue 8's "must show": each service's migration holds only its own tables (and the kit's);
an RPC writes and publishes, and its event is applied once; two replicas run a daily job once per
occurrence, also when the lease holder is SIGKILLed mid-run; a broadcast reaches every replica; and
SIGTERM ends an open server stream within 2 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy import func, inspect, select
from sqlmodel import SQLModel, col

from services.foundation import migrations
from services.foundation.child_service import ServiceProcess
from services.foundation.db import Database, utcnow
from services.foundation.host import ServiceHost
from services.foundation.inbox import InboxEntry
from services.foundation.nats_server import EmbeddedNats
from services.foundation.outbox import OutboxEvent
from services.foundation.scheduled import ScheduledRun, occurrence_key
from services.foundation.schema import KitTable
from services.points.models import SCHEMA as POINTS_SCHEMA
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.kit_service.service import SCHEMA as NOTES_SCHEMA
from tests.kit_service.service import SERVICE as NOTES
from tests.kit_service.service import Note, NotesSettings, TidyStep
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]
NOTES_TABLES = {"note", "tidy_step"}
CONSUMER = "notes-notes-v1-added"  # the kit's default durable name for the notes.v1.added consumer
SERVICE_NAME = "kit.test.Notes"
LEASE = 1.5  # seconds: a takeover happens within the test
STEPS, STEP_SECONDS = 8, 0.5  # a tidy run lasts ~4 s: time to SIGKILL its holder mid-run


# -- calling notes over gRPC ---------------------------------------------------------------------


def notes_call(channel: grpc.aio.Channel, method: str):  # type: ignore[no-untyped-def]
    kind = channel.unary_stream if method == "Watch" else channel.unary_unary
    request = Empty if method == "Watch" else StringValue
    return kind(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=request.SerializeToString,
        response_deserializer=StringValue.FromString,
    )


async def add(channel: grpc.aio.Channel, text: str) -> str:
    reply = await notes_call(channel, "Add")(StringValue(value=text), timeout=10)
    return str(reply.value)


class Watching:
    """An open Watch call, read in the background: what it saw, and how and when it ended."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = notes_call(channel, "Watch")(Empty())
        self.seen: list[str] = []
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended_at: float | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for note in self.call:
                self.seen.append(note.value)
            self.code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            self.code, self.details = error.code(), error.details() or ""
        self.ended_at = time.monotonic()

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until_watching(channel: grpc.aio.Channel, watches: list[Watching]) -> None:
    """Add probe notes until every watch has received one: each replica's broadcast is subscribed
    and each Watch's listener has joined (neither is visible to a client otherwise)."""

    async def every_watch_saw_a_probe() -> bool:
        if all(w.seen for w in watches):
            return True
        await add(channel, f"probe-{uuid.uuid4().hex[:8]}")
        return False

    await eventually(every_watch_saw_a_probe, timeout=20, every=0.3)


# -- databases -----------------------------------------------------------------------------------


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Another fresh database of the same kind as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    name, url = fresh_postgres_database(admin)
    yield url
    drop_postgres_database(admin, name)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    found = Database(database_url)
    yield found
    found.close()


@pytest.fixture
def own_nats(scratch_nats: EmbeddedNats) -> EmbeddedNats:
    """A NATS server of the test's own: no stream or durable consumer left by another test."""
    scratch_nats.start()
    return scratch_nats


def holds(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A probe for `eventually` from a plain check of state the test holds."""

    async def probe() -> bool:
        return check()

    return probe


async def note(db: Database, text: str) -> Note | None:
    return await db.read(lambda s: s.get(Note, text))


async def count(db: Database, table: type[SQLModel], *where: Any) -> int:
    return int(await db.read(lambda s: s.execute(select(func.count()).select_from(table).where(*where)).scalar_one()))


# -- 1. each service's migration holds its own tables, and its models match it --------------------


def test_each_migration_holds_only_its_own_tables_and_matches_its_models(
    database_url: str, second_database_url: str
) -> None:
    notes_metadata = NOTES_SCHEMA.complete_metadata()
    points_metadata = POINTS_SCHEMA.complete_metadata()
    kit_tables = set(KitTable.metadata.tables)  # what the kit declares: outbox, inbox, parked, scheduled_run, ...
    assert {"outbox_event", "inbox_event", "parked_event", "scheduled_run"} <= kit_tables
    points_tables = set(points_metadata.tables)
    assert set(notes_metadata.tables) == NOTES_TABLES | kit_tables
    assert points_tables > kit_tables and not points_tables & NOTES_TABLES

    for url, schema, expected in [
        (database_url, NOTES_SCHEMA, NOTES_TABLES | kit_tables),
        (second_database_url, POINTS_SCHEMA, points_tables),
    ]:
        db = Database(url)
        try:
            migrations.upgrade(db, schema)
            assert set(inspect(db.engine).get_table_names()) - {"alembic_version"} == expected, schema.service
            migrations.check(db, schema)  # raises on any difference between models and migrations
        finally:
            db.close()

    # No Table object is shared: not between the services, nor with SQLModel's or the kit's registry.
    registries = {
        "notes": notes_metadata,
        "points": points_metadata,
        "SQLModel": SQLModel.metadata,
        "kit": KitTable.metadata,
    }
    owners: dict[int, str] = {}
    for name, metadata in registries.items():
        for table in metadata.tables.values():
            assert id(table) not in owners, f"{table.name} of {name} is also {owners[id(table)]}'s"
            owners[id(table)] = name
    assert not set(SQLModel.metadata.tables) & (NOTES_TABLES | points_tables - kit_tables)


# -- 2. an RPC writes and publishes; the event is applied once ------------------------------------


def notes_settings(database_url: str, nats_url: str) -> NotesSettings:
    far = utcnow() + timedelta(hours=12)  # the daily job stays out of the way
    return NotesSettings(
        grpc_port=0,
        metrics_port=0,
        database_url=database_url,
        nats_url=nats_url,
        log_level="WARNING",
        shutdown_grace_seconds=2,
        tidy_at=far.time().replace(microsecond=0),
        tidy_tz="UTC",
    )


@asynccontextmanager
async def notes_in_process(database_url: str, nats_url: str) -> AsyncIterator[grpc.aio.Channel]:
    host = ServiceHost(NOTES, notes_settings(database_url, nats_url))
    port = await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await host.stop()


async def applied(db: Database, text: str) -> bool:
    found = await note(db, text)
    return found is not None and found.seen > 0


async def test_add_writes_publishes_and_its_event_is_applied_once(
    database_url: str, own_nats: EmbeddedNats, db: Database
) -> None:
    async with asyncio.timeout(60):
        async with notes_in_process(database_url, own_nats.url) as channel:
            event_id = await add(channel, "buy milk")
            stored = await note(db, "buy milk")
            assert stored is not None and stored.event_id == event_id
            # The same request again: the first answer, and no second event.
            assert await add(channel, "buy milk") == event_id
            assert await count(db, OutboxEvent, OutboxEvent.subject == "notes.v1.added") == 1
            # One consumer applies events in stream order: once a later note is applied, so is the first.
            await add(channel, "marker one")
            await eventually(lambda: applied(db, "marker one"))
            assert [(await note(db, t)).seen for t in ("buy milk", "marker one")] == [1, 1]  # type: ignore[union-attr]
            assert await count(db, InboxEntry, InboxEntry.consumer == CONSUMER, InboxEntry.event_id == event_id) == 1

        # Redelivery: with its durable consumer deleted, the next replica reads the stream from the
        # start again, and its inbox turns every event already applied into a no-op.
        nc = await nats.connect(own_nats.url)
        try:
            await nc.jetstream().delete_consumer("NOTES", CONSUMER)
        finally:
            await nc.close()
        async with notes_in_process(database_url, own_nats.url) as channel:
            await add(channel, "marker two")
            await eventually(lambda: applied(db, "marker two"))
    assert [(await note(db, t)).seen for t in ("buy milk", "marker one")] == [1, 1]  # type: ignore[union-attr]
    assert await count(db, InboxEntry, InboxEntry.consumer == CONSUMER) == 3
    assert await count(db, OutboxEvent) == 3


# -- replica processes ---------------------------------------------------------------------------


Replicas = Callable[..., list[ServiceProcess]]


@pytest.fixture
def replicas(tmp_path: Path, database_url: str, own_nats: EmbeddedNats) -> Iterator[Replicas]:
    """`replicas(n, **env)` starts n notes processes on the test's database and NATS."""
    started: list[ServiceProcess] = []

    def start(count: int, **env: str) -> list[ServiceProcess]:
        for _ in range(count):
            process = ServiceProcess(
                "notes",
                {
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "DATABASE_URL": database_url,
                    "NATS_URL": own_nats.url,
                    "LOG_LEVEL": "INFO",
                    "TIDY_TZ": "UTC",
                    "TIDY_AT": (utcnow() + timedelta(hours=12)).strftime("%H:%M:%S"),
                    "TIDY_LEASE_SECONDS": str(LEASE),
                    "TIDY_STEPS": str(STEPS),
                    "TIDY_STEP_SECONDS": str(STEP_SECONDS),
                    **env,
                },
                tmp_path / f"notes-{len(started)}.log",
                command=[sys.executable, "-m", "tests.kit_service"],
            )
            process.start()
            started.append(process)
        return started[-count:]

    yield start
    for process in started:
        process.stop_quietly()


async def serving(processes: list[ServiceProcess]) -> None:
    await asyncio.gather(*(p.wait_serving(timeout=30) for p in processes))


def soon(seconds: float) -> tuple[str, datetime]:
    """A whole second `seconds` or more from now, UTC: TIDY_AT and its occurrence."""
    instant = (utcnow() + timedelta(seconds=seconds + 1)).replace(microsecond=0)
    return instant.strftime("%H:%M:%S"), instant


async def finished_run(db: Database, key: str) -> ScheduledRun:
    async def probe() -> ScheduledRun | None:
        row = await db.read(lambda s: s.get(ScheduledRun, ("tidy", key)))
        return row if row is not None and row.finished_at is not None else None

    found = await eventually(probe, timeout=30)
    assert found is not None
    return found


def runs_in(process: ServiceProcess, owner: str) -> bool:
    """Whether `owner` (a replica id: host-pid-random) names this process."""
    assert process.process is not None
    return owner.rsplit("-", 2)[1] == str(process.process.pid)


async def steps(db: Database, key: str) -> list[tuple[int, int]]:
    query = select(col(TidyStep.step), col(TidyStep.attempt)).where(col(TidyStep.occurrence) == key)
    return sorted((step, attempt) for step, attempt in await db.read(lambda s: s.execute(query).all()))


def started_lines(processes: list[ServiceProcess], key: str) -> int:
    return sum(
        1 for p in processes for line in p.logs().splitlines() if '"scheduled job started"' in line and key in line
    )


# -- 3. two replicas run the daily job once per occurrence, also when its holder dies --------------


async def test_two_replicas_run_the_job_once_per_occurrence(replicas: Replicas, db: Database) -> None:
    at, instant = soon(4)
    key = occurrence_key(instant)
    pair = replicas(2, TIDY_AT=at, TIDY_STEPS="3", TIDY_STEP_SECONDS="0.2")
    async with asyncio.timeout(60):
        await serving(pair)
        row = await finished_run(db, key)
        # Both replicas have moved on to tomorrow's occurrence: neither will run today's again.
        tomorrow = occurrence_key(instant + timedelta(days=1))
        await eventually(holds(lambda: all(tomorrow in p.logs() for p in pair)))
    assert (row.attempts, row.outcome, row.error) == (1, "succeeded", None)
    assert await steps(db, key) == [(0, 1), (1, 1), (2, 1)]
    assert started_lines(pair, key) == 1
    assert await count(db, ScheduledRun) == 1


async def test_a_sigkilled_lease_holder_is_taken_over_and_the_run_finishes_once(
    replicas: Replicas, db: Database
) -> None:
    at, instant = soon(4)
    key = occurrence_key(instant)
    pair = replicas(2, TIDY_AT=at)
    async with asyncio.timeout(60):
        await serving(pair)

        async def holder_mid_run() -> ServiceProcess | None:
            row = await db.read(lambda s: s.get(ScheduledRun, ("tidy", key)))
            if row is None or not await steps(db, key):
                return None
            return next(p for p in pair if runs_in(p, row.owner))

        holder = await eventually(holder_mid_run, timeout=30, every=0.05)
        assert holder is not None
        holder.kill()
        killed_at = utcnow()
        survivor = next(p for p in pair if p is not holder)
        done_before_kill = await steps(db, key)
        run = await db.read(lambda s: s.get(ScheduledRun, ("tidy", key)))
        assert run is not None and run.finished_at is None, "the run finished before its holder was killed"
        row = await finished_run(db, key)

    assert runs_in(survivor, row.owner)
    assert (row.attempts, row.outcome) == (2, "succeeded")
    assert row.finished_at is not None and row.finished_at > killed_at
    done = await steps(db, key)
    assert [step for step, _ in done] == list(range(STEPS))  # one set of steps
    assert {attempt for _, attempt in done} == {1, 2}  # the second attempt resumed the first
    assert set(done_before_kill) <= set(done)
    assert started_lines(pair, key) == 2  # one start per attempt
    assert await count(db, ScheduledRun) == 1


# -- 4. a broadcast reaches every replica ----------------------------------------------------------


async def test_a_broadcast_event_reaches_both_replicas(replicas: Replicas) -> None:
    pair = replicas(2)
    async with asyncio.timeout(60):
        await serving(pair)
        channels = [grpc.aio.insecure_channel(p.address) for p in pair]
        watches = [Watching(c) for c in channels]
        try:
            await until_watching(channels[0], watches)
            await add(channels[0], "to everyone")
            await eventually(holds(lambda: all("to everyone" in w.seen for w in watches)))
            assert [w.seen.count("to everyone") for w in watches] == [1, 1]
        finally:
            for w in watches:
                await w.close()
            for c in channels:
                await c.close()


# -- 5. SIGTERM ends an open server stream promptly -------------------------------------------------


async def test_sigterm_ends_an_open_watch_within_two_seconds(replicas: Replicas) -> None:
    # A long grace: without the broadcast closing the stream, the call would hold all of it.
    (replica,) = replicas(1, SHUTDOWN_GRACE_SECONDS="10")
    async with asyncio.timeout(60):
        await serving([replica])
        async with grpc.aio.insecure_channel(replica.address) as channel:
            watch = Watching(channel)
            await until_watching(channel, [watch])
            assert watch.ended_at is None
            signalled = time.monotonic()
            exiting = asyncio.create_task(asyncio.to_thread(replica.terminate, 20))
            await eventually(holds(lambda: watch.ended_at is not None), timeout=10, every=0.02)
            exit_code = await exiting
    assert watch.ended_at is not None
    assert watch.ended_at - signalled < 2.0, f"the stream ended {watch.ended_at - signalled:.2f} s after SIGTERM"
    assert watch.code == grpc.StatusCode.UNAVAILABLE, (watch.code, watch.details)
    assert "shutting down" in watch.details
    assert exit_code == 0, replica.logs()[-2000:]
