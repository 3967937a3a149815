"""Scheduled singleton jobs on real SQLite and PostgreSQL: replicas are ScheduledJob runners with
Database objects of their own on one database, as two processes would be."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, time, timedelta
from functools import partial
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from sqlmodel import Session, col

from services.foundation.db import Database, utcnow
from services.foundation.scheduled import (
    JobContext,
    LeaseLost,
    Outcome,
    RunResult,
    ScheduledJob,
    ScheduledRun,
    occurrence_key,
)
from services.foundation.schema import KitTable
from tests.support import eventually

T = TypeVar("T")

TZ = "Asia/Shanghai"
LEASE = 1.5  # seconds: short, so takeovers happen within a test; renewed every 0.5 s
BOUND = 30  # seconds any one test may take

# A table of the job's own, written batch by batch and keyed by the occurrence.
JOB_TABLES = MetaData()
PROGRESS = Table(
    "job_progress",
    JOB_TABLES,
    Column("occurrence", String(32), primary_key=True),
    Column("batch", Integer, primary_key=True),
)


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[tuple[Database, Database]]:
    first, second = Database(database_url), Database(database_url)
    KitTable.metadata.create_all(first.engine, tables=[ScheduledRun.__table__])  # type: ignore[attr-defined]
    JOB_TABLES.create_all(first.engine)
    yield first, second
    first.close()
    second.close()


def soon(seconds: float) -> tuple[time, datetime]:
    """A whole second a little after now: the local time for `at`, and its instant."""
    instant = (utcnow() + timedelta(seconds=seconds + 1)).replace(microsecond=0)
    return instant.astimezone(ZoneInfo(TZ)).time(), instant


def holds(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return check()

    return probe


async def stored(db: Database, job: str, occurrence: datetime) -> ScheduledRun | None:
    return await db.read(lambda s: s.get(ScheduledRun, (job, occurrence_key(occurrence))))


async def finished(db: Database, job: str, occurrence: datetime) -> ScheduledRun:
    async def probe() -> ScheduledRun | None:
        row = await stored(db, job, occurrence)
        return row if row is not None and row.finished_at is not None else None

    found = await eventually(probe, timeout=BOUND / 2)
    assert found is not None
    return found


def waiting_for(caplog: pytest.LogCaptureFixture, job: str, occurrence: datetime) -> set[str]:
    """Replicas that have logged waiting for `occurrence`: they are done with every earlier one."""
    key = occurrence_key(occurrence)
    return {
        getattr(r, "replica", "")
        for r in caplog.records
        if r.getMessage() == "scheduled job waiting"
        and (getattr(r, "job", ""), getattr(r, "occurrence", "")) == (job, key)
    }


async def stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def test_two_replicas_run_an_occurrence_once(
    replicas: tuple[Database, Database], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alliance.scheduled")
    at, instant = soon(1)
    runs: list[tuple[str, datetime]] = []

    async def cutoff(ctx: JobContext) -> None:
        runs.append((ctx.owner, ctx.occurrence))
        await asyncio.sleep(LEASE)  # long enough to renew, so the other replica finds the lease live

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            ScheduledJob("cutoff", at, TZ, cutoff, lease_seconds=LEASE, catch_up=timedelta(0)).run_forever(
                db, stop, f"replica-{n}"
            )
        )
        for n, db in enumerate(replicas)
    ]
    async with asyncio.timeout(BOUND):
        try:
            row = await finished(replicas[0], "cutoff", instant)
            # Both replicas have moved on to tomorrow: neither will run today's again.
            tomorrow = instant + timedelta(days=1)
            await eventually(holds(lambda: waiting_for(caplog, "cutoff", tomorrow) == {"replica-0", "replica-1"}))
        finally:
            await stopped(stop, tasks)
    assert len(runs) == 1
    owner, occurrence = runs[0]
    assert occurrence == instant
    assert (row.owner, row.attempts, row.outcome, row.error) == (owner, 1, "succeeded", None)


async def test_replicas_racing_for_one_occurrence_and_triggers_run_it_once(
    replicas: tuple[Database, Database],
) -> None:
    occurrence = datetime.fromisoformat("2026-11-23T17:00:00+08:00")
    runs: list[str] = []

    async def cutoff(ctx: JobContext) -> None:
        runs.append(ctx.owner)
        await asyncio.sleep(0.2)

    jobs = [ScheduledJob("cutoff", time(17), TZ, cutoff, lease_seconds=LEASE) for _ in range(4)]
    async with asyncio.timeout(BOUND):
        results = await asyncio.gather(
            *(job.run_occurrence(replicas[n % 2], occurrence, f"replica-{n}") for n, job in enumerate(jobs))
        )
        again = await jobs[0].trigger(replicas[1], occurrence)
    assert sorted(r.outcome for r in results) == sorted([Outcome.SUCCEEDED] + [Outcome.HELD] * 3), results
    assert len(runs) == 1
    assert again == RunResult(Outcome.DONE)
    assert len(runs) == 1


async def test_a_dead_owner_is_taken_over_after_its_lease_lapses_and_the_job_resumes(
    replicas: tuple[Database, Database],
) -> None:
    at, instant = soon(1)
    attempts: list[tuple[str, int]] = []
    batches: set[tuple[str, int]] = set()  # the job's own progress, keyed by occurrence
    resumed_from: list[set[tuple[str, int]]] = []
    first_started = asyncio.Event()

    async def cutoff(ctx: JobContext) -> None:
        attempts.append((ctx.owner, ctx.attempt))
        if ctx.attempt == 1:
            batches.add((ctx.key, 1))
            first_started.set()
            await asyncio.Event().wait()  # its replica dies here
        resumed_from.append(set(batches))
        batches.add((ctx.key, 2))

    stop = asyncio.Event()
    tasks = {
        f"replica-{n}": asyncio.create_task(
            ScheduledJob("cutoff", at, TZ, cutoff, lease_seconds=LEASE, catch_up=timedelta(0)).run_forever(
                db, stop, f"replica-{n}"
            )
        )
        for n, db in enumerate(replicas)
    }
    async with asyncio.timeout(BOUND):
        try:
            await first_started.wait()
            dead = attempts[0][0]
            tasks[dead].cancel()  # no finish, no release: like SIGKILL
            died_at = utcnow()
            row = await finished(replicas[0], "cutoff", instant)
        finally:
            await stopped(stop, list(tasks.values()))
    survivor = next(name for name in tasks if name != dead)
    assert attempts == [(dead, 1), (survivor, 2)]
    assert resumed_from == [{(occurrence_key(instant), 1)}]
    assert (row.owner, row.attempts, row.outcome) == (survivor, 2, "succeeded")
    assert row.finished_at is not None and row.finished_at > died_at


async def test_a_lapsed_lease_is_taken_over_and_a_live_one_is_left_alone(replicas: tuple[Database, Database]) -> None:
    occurrence = datetime.fromisoformat("2026-11-23T17:00:00+08:00")
    seen: list[int] = []

    async def cutoff(ctx: JobContext) -> None:
        seen.append(ctx.attempt)

    job = ScheduledJob("cutoff", time(17), TZ, cutoff, lease_seconds=LEASE)
    live_until = utcnow() + timedelta(minutes=5)

    def ghost(session: Session) -> None:
        session.add(
            ScheduledRun(
                job="cutoff",
                occurrence=occurrence_key(occurrence),
                owner="ghost",
                lease_until=live_until,
                attempts=1,
                started_at=utcnow() - timedelta(minutes=1),
            )
        )

    async with asyncio.timeout(BOUND):
        await replicas[0].run(ghost)
        held = await job.run_occurrence(replicas[1], occurrence, "replica-1")
        assert held == RunResult(Outcome.HELD, live_until)
        lapse = update(ScheduledRun).values(lease_until=utcnow() - timedelta(seconds=1))
        await replicas[0].run(lambda s: s.execute(lapse))
        resumed = await job.run_occurrence(replicas[1], occurrence, "replica-1")
    assert resumed == RunResult(Outcome.SUCCEEDED)
    assert seen == [2]
    row = await stored(replicas[0], "cutoff", occurrence)
    assert row is not None
    assert (row.owner, row.attempts, row.outcome) == ("replica-1", 2, "succeeded")


async def _steal(db: Database, occurrence: datetime) -> None:
    """Another replica takes the occurrence over (as if this one had stalled past its lease)."""
    steal = (
        update(ScheduledRun)
        .where(col(ScheduledRun.occurrence) == occurrence_key(occurrence))
        .values(owner="thief", attempts=ScheduledRun.attempts + 1, lease_until=utcnow() + timedelta(minutes=5))
    )
    await db.run(lambda s: s.execute(steal))


async def test_a_lost_renewal_cancels_the_job(replicas: tuple[Database, Database]) -> None:
    occurrence = datetime.fromisoformat("2026-11-23T17:00:00+08:00")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def cutoff(ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = ScheduledJob("cutoff", time(17), TZ, cutoff, lease_seconds=LEASE)
    async with asyncio.timeout(BOUND):
        running = asyncio.create_task(job.run_occurrence(replicas[0], occurrence, "replica-0"))
        await started.wait()
        await _steal(replicas[1], occurrence)
        result = await running  # the next renewal (within LEASE / 3) finds the row gone to the thief
    assert result == RunResult(Outcome.LOST)
    assert cancelled.is_set()
    row = await stored(replicas[0], "cutoff", occurrence)
    assert row is not None
    assert (row.owner, row.attempts, row.finished_at) == ("thief", 2, None)


async def test_guarded_writes_commit_only_while_the_lease_is_held(replicas: tuple[Database, Database]) -> None:
    occurrence = datetime.fromisoformat("2026-11-23T17:00:00+08:00")
    first_batch, stolen = asyncio.Event(), asyncio.Event()
    refused: list[LeaseLost] = []

    def write_batch(ctx: JobContext, batch: int) -> Callable[[Session], None]:
        def unit(session: Session) -> None:
            session.connection().execute(PROGRESS.insert().values(occurrence=ctx.key, batch=batch))
            ctx.guard(session)

        return unit

    async def cutoff(ctx: JobContext) -> None:
        await replicas[0].run(write_batch(ctx, 1))
        first_batch.set()
        await stolen.wait()
        try:
            await replicas[0].run(write_batch(ctx, 2))
        except LeaseLost as error:
            refused.append(error)
            raise

    # A long lease: the renewal loop stays out of the way, so the guard is what notices the loss.
    job = ScheduledJob("cutoff", time(17), TZ, cutoff, lease_seconds=60)
    async with asyncio.timeout(BOUND):
        running = asyncio.create_task(job.run_occurrence(replicas[0], occurrence, "replica-0"))
        await first_batch.wait()
        await _steal(replicas[1], occurrence)
        stolen.set()
        result = await running
    assert result == RunResult(Outcome.LOST)
    assert len(refused) == 1
    written = await replicas[1].read(lambda s: s.connection().execute(select(PROGRESS.c.batch)).scalars().all())
    assert written == [1]


async def test_a_failed_attempt_is_retried_after_its_lease_and_the_last_one_gives_up(
    replicas: tuple[Database, Database], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alliance.scheduled")
    flaky_at, flaky_instant = soon(1)
    attempts: dict[str, list[int]] = {"flaky": [], "broken": []}

    async def flaky(ctx: JobContext) -> None:
        attempts["flaky"].append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("flaky attempt 1")

    async def broken(ctx: JobContext) -> None:
        attempts["broken"].append(ctx.attempt)
        raise RuntimeError(f"broken attempt {ctx.attempt}")

    def job(name: str, run: Callable[[JobContext], Awaitable[None]]) -> ScheduledJob:
        return ScheduledJob(name, flaky_at, TZ, run, lease_seconds=LEASE, catch_up=timedelta(0), max_attempts=2)

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(job("flaky", flaky).run_forever(replicas[0], stop, "a")),
        asyncio.create_task(job("broken", broken).run_forever(replicas[1], stop, "b")),
    ]
    async with asyncio.timeout(BOUND):
        try:
            recovered = await finished(replicas[0], "flaky", flaky_instant)
            failed = await finished(replicas[0], "broken", flaky_instant)
        finally:
            await stopped(stop, tasks)
    assert attempts == {"flaky": [1, 2], "broken": [1, 2]}
    assert (recovered.outcome, recovered.attempts) == ("succeeded", 2)
    assert recovered.error is not None and "flaky attempt 1" in recovered.error  # the last failure, kept
    assert (failed.outcome, failed.attempts) == ("failed", 2)
    assert failed.error is not None and "broken attempt 2" in failed.error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "alliance.scheduled"]
    assert [getattr(r, "job", None) for r in errors] == ["broken"]


async def test_on_start_a_missed_occurrence_runs_once_within_catch_up_and_is_skipped_beyond(
    replicas: tuple[Database, Database], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alliance.scheduled")
    missed = (utcnow() - timedelta(minutes=10)).replace(microsecond=0)
    at = missed.astimezone(ZoneInfo(TZ)).time()
    runs: list[tuple[str, str, datetime]] = []

    async def cutoff(ctx: JobContext) -> None:
        runs.append((ctx.job, ctx.owner, ctx.occurrence))

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            ScheduledJob(name, at, TZ, cutoff, lease_seconds=LEASE, catch_up=catch_up).run_forever(
                db, stop, f"replica-{n}"
            )
        )
        for name, catch_up in (("late-ok", timedelta(hours=1)), ("too-late", timedelta(minutes=5)))
        for n, db in enumerate(replicas)
    ]
    tomorrow = missed + timedelta(days=1)

    def both_waiting(job: str) -> bool:
        return waiting_for(caplog, job, tomorrow) == {"replica-0", "replica-1"}

    async with asyncio.timeout(BOUND):
        try:
            row = await finished(replicas[0], "late-ok", missed)
            for name in ("late-ok", "too-late"):
                await eventually(holds(partial(both_waiting, name)))
        finally:
            await stopped(stop, tasks)
    assert [(job, occurrence) for job, _, occurrence in runs] == [("late-ok", missed)]
    assert row.owner == runs[0][1]
    assert await stored(replicas[0], "too-late", missed) is None
    skipped = [
        r
        for r in caplog.records
        if getattr(r, "job", None) == "too-late" and "older than the catch-up window" in r.getMessage()
    ]
    assert {getattr(r, "occurrence", None) for r in skipped} == {occurrence_key(missed)}
