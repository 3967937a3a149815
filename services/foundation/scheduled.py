"""Scheduled singleton jobs: run at a wall-clock time in a time zone, once per occurrence across
every replica of a service.

    job = ScheduledJob("daily-cutoff", time(17, 0), "Asia/Shanghai", cutoff, lease_seconds=30)
    await job.run_forever(db, stop, replica_id)      # on every replica; the host does this

    async def cutoff(ctx: JobContext) -> None:       # keyed by ctx.occurrence, so a rerun is harmless
        ...

Each occurrence is a row of `scheduled_run` in the service's own database, keyed by (job,
occurrence). The replica whose insert wins runs it and holds a lease it renews every lease/3; if
it dies, the lease lapses and another replica takes the row over with a conditional update (the
attempt number is the fencing token) and runs the job again: `ctx.attempt` is then 2, and the job
resumes, which it can do safely because its work is keyed by the occurrence. `ctx.guard(session)`
inside a unit of work makes its writes commit only while the lease is still this replica's.

Why a lease row, and not NATS KV or a PostgreSQL advisory lock: it works on SQLite and PostgreSQL
alike; it needs no NATS (a cutoff must still run when NATS is down: the outbox catches up); the
"done" mark commits to the same database as the job's own writes; and it survives
transaction-mode poolers, behind which a session advisory lock can be stranded (PgBouncer).

Clocks: leases compare the replicas' UTC clocks (the holder's sets lease_until, the taker's reads
it), so a taker whose clock runs ahead by d sees a lease lapse d early. Leases must be far longer
than any expected skew between replicas (NTP keeps it to milliseconds; 30 s leases allow seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from prometheus_client import Counter
from sqlalchemy import Column, ColumnElement, Table, Text, select, update
from sqlmodel import Field, Session

from services.foundation.db import Database, UTCDateTime, utcnow
from services.foundation.ids import replica_id as new_replica_id
from services.foundation.schema import KitTable, table_of
from services.foundation.stopping import sleep_or_stop, wait_or_stop
from services.foundation.upsert import insert_ignoring_conflicts

log = logging.getLogger("alliance.scheduled")

RUNS = Counter(
    "alliance_scheduled_runs_total", "tries at a scheduled occurrence on this replica, by outcome", ["job", "outcome"]
)

# The longest single sleep: a wall clock that jumps (NTP step, a resumed VM) is noticed this soon.
_MAX_SLEEP_SECONDS = 60.0
_ERROR_CHARS = 2000


class ScheduledRun(KitTable, table=True):
    """One occurrence of a scheduled job: who holds it, until when, and how it ended."""

    __tablename__ = "scheduled_run"

    job: str = Field(primary_key=True, max_length=64)
    occurrence: str = Field(primary_key=True, max_length=32)  # occurrence_key(): ISO UTC
    owner: str = Field(max_length=128)  # replica holding (or last holding) the lease
    lease_until: datetime = Field(sa_type=UTCDateTime)
    attempts: int  # attempts started; also the fencing token of the current one
    started_at: datetime = Field(sa_type=UTCDateTime)  # the first attempt's start
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str | None = Field(default=None, max_length=16)  # "succeeded" or "failed"
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # the last failure


_RUN: Table = table_of(ScheduledRun)


# -- when ------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give a time zone")
    return moment.astimezone(UTC)


def occurrences(at: time, tz: str, after: datetime, until: datetime) -> list[datetime]:
    """The instants (UTC) when the local time `at` in zone `tz` happens, `after` < t <= `until`.

    Daylight saving time: a local time the clocks skip (02:30 on a spring-forward night) happens at
    the same distance past the jump (03:30); a local time that happens twice (autumn) happens once,
    at the first (or the second with `at.fold == 1`). So every local day has exactly one.
    """
    if at.tzinfo is not None:
        raise ValueError("`at` is a local wall-clock time: give its zone as `tz`, not on the time")
    after, until = _utc(after), _utc(until)
    zone = ZoneInfo(tz)
    day = after.astimezone(zone).date() - timedelta(days=1)
    last = until.astimezone(zone).date() + timedelta(days=1)
    found = []
    while day <= last:
        instant = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
        if after < instant <= until:
            found.append(instant)
        day += timedelta(days=1)
    return found


def next_occurrence(at: time, tz: str, after: datetime) -> datetime:
    """The first occurrence strictly after `after`."""
    return occurrences(at, tz, after, _utc(after) + timedelta(days=3))[0]


def catch_up_window(at: time, tz: str, now: datetime, catch_up: timedelta) -> tuple[list[datetime], datetime]:
    """On start: the occurrences missed but still worth running (within `catch_up` before `now`,
    oldest first), and the latest one too old to run (skipped, unless some replica ran it)."""
    now = _utc(now)
    due = occurrences(at, tz, now - catch_up, now)
    too_old = occurrences(at, tz, now - catch_up - timedelta(days=3), now - catch_up)[-1]
    return due, too_old


def occurrence_key(occurrence: datetime) -> str:
    """The row key of an occurrence: its UTC time in ISO 8601, e.g. 2026-11-23T09:00:00Z."""
    return _utc(occurrence).replace(tzinfo=None).isoformat() + "Z"


# -- what a run sees and returns --------------------------------------------------------------------


class LeaseLost(Exception):
    """Another replica has taken the occurrence over: this one must stop working on it."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # ran here and finished
    FAILED = "failed"  # out of attempts: finished as failed (logged at ERROR)
    RETRY = "retry"  # this attempt failed; retried once its lease lapses
    LOST = "lost"  # the lease went to another replica mid-run; the job was cancelled
    STOPPED = "stopped"  # shutdown cancelled the job and released the lease for another replica
    DONE = "done"  # already finished (by anyone): nothing run
    HELD = "held"  # another replica holds a live lease: nothing run


# Outcomes after which nobody will run the occurrence again.
SETTLED = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.DONE})


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    retry_at: datetime | None = None  # when the current lease lapses (HELD, RETRY)


class JobContext:
    """What a job gets: the occurrence it runs for, and ways to check it still holds it."""

    def __init__(self, job: ScheduledJob, db: Database, occurrence: datetime, attempt: int, owner: str) -> None:
        self.job = job.name
        self.occurrence = occurrence  # UTC; key the job's work by it, so a rerun is idempotent
        self.key = occurrence_key(occurrence)
        self.attempt = attempt  # > 1: an earlier attempt died or failed; resume
        self.owner = owner
        self.lost = False
        self._scheduled = job
        self._db = db
        self.valid_until = job.now() + job.lease

    async def renew(self) -> None:
        """Extend the lease now (a job may call it between batches); raises LeaseLost if another
        replica has taken the occurrence over."""
        await self._db.run(self.guard)

    def guard(self, session: Session) -> None:
        """Inside a unit of work that writes: renew the lease in the same transaction, raising
        LeaseLost (which rolls the unit back) if another replica has taken the occurrence over.
        Writes guarded so commit only while this attempt holds the occurrence."""
        now = self._scheduled.now()
        renewed = session.connection().execute(
            update(_RUN).where(*self._mine()).values(lease_until=now + self._scheduled.lease)
        )
        if renewed.rowcount != 1:
            self.lost = True
            raise LeaseLost(f"{self.job} {self.key}: attempt {self.attempt} no longer holds the lease")
        self.valid_until = now + self._scheduled.lease

    def _mine(self) -> tuple[ColumnElement[bool], ...]:
        return (
            _RUN.c.job == self.job,
            _RUN.c.occurrence == self.key,
            _RUN.c.owner == self.owner,
            _RUN.c.attempts == self.attempt,
            _RUN.c.finished_at.is_(None),
        )


Job = Callable[[JobContext], Awaitable[None]]


# -- the job -----------------------------------------------------------------------------------------


class ScheduledJob:
    """`run` at local time `at` in zone `tz` every day, once per occurrence across all replicas.

    lease_seconds: how long a silent replica keeps an occurrence before another takes it over (the
        holder renews every third of it). Far longer than clock skew; short in tests (1-2 s).
        Renewals queue with the job's own units of work (on SQLite, behind the one writer), so
        each unit must be much shorter than the lease.
    catch_up: occurrences missed while no replica ran (all down) are run on start if they are
        at most this old; older ones are skipped with a log line. Set it longer than a run lasts,
        so that a replica started mid-run still watches the occurrence and takes it over if needed.
    max_attempts: attempts (failed or died) before the occurrence is finished as "failed".
    now: the clock (tests inject one).
    """

    def __init__(
        self,
        name: str,
        at: time,
        tz: str,
        run: Job,
        *,
        lease_seconds: float = 30.0,
        catch_up: timedelta = timedelta(hours=1),
        max_attempts: int = 3,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        if not 0 < len(name) <= 64:
            raise ValueError("a job name has 1 to 64 characters")
        if lease_seconds <= 0 or max_attempts < 1 or catch_up < timedelta(0):
            raise ValueError("lease_seconds > 0, max_attempts >= 1 and catch_up >= 0, please")
        next_occurrence(at, tz, utcnow())  # an unknown zone or a zoned `at` fails here, not at 17:00
        self.name = name
        self.at = at
        self.tz = tz
        self.run = run
        self.lease_seconds = lease_seconds
        self.lease = timedelta(seconds=lease_seconds)
        self.catch_up = catch_up
        self.max_attempts = max_attempts
        self.now = now

    # -- on every replica ---------------------------------------------------------------------------

    async def run_forever(self, db: Database, stop: asyncio.Event, replica_id: str) -> None:
        """Run each occurrence as it comes (and, on start, those missed within `catch_up`), until
        `stop`. Occurrences are seen through one at a time: held elsewhere, it waits to see the
        holder finish or to take it over; failed, it retries."""
        started = self.now()
        due, too_old = catch_up_window(self.at, self.tz, started, self.catch_up)
        await self._report_skipped(db, too_old)
        for occurrence in due:
            log.info("catching up on a missed occurrence", extra=self._fields(occurrence, replica_id))
            await self._see_through(db, occurrence, replica_id, stop)
        after = started
        while not stop.is_set():
            occurrence = next_occurrence(self.at, self.tz, after)
            log.info("scheduled job waiting", extra=self._fields(occurrence, replica_id))
            await self._sleep_until(occurrence, stop)
            if stop.is_set():
                return
            await self._see_through(db, occurrence, replica_id, stop)
            after = occurrence

    async def trigger(self, db: Database, when: datetime, replica_id: str | None = None) -> RunResult:
        """Ops' "run now": one attempt at the occurrence keyed by `when`, through the same claim,
        so triggering the same `when` twice (or on two replicas) runs it once."""
        return await self.run_occurrence(db, when, replica_id or new_replica_id())

    async def run_occurrence(
        self, db: Database, occurrence: datetime, replica_id: str, *, stop: asyncio.Event | None = None
    ) -> RunResult:
        """One attempt: claim the occurrence (or take over a lapsed lease) and run the job, or say
        why not. Cancelling the caller abandons the lease to lapse, like a crash would."""
        occurrence = _utc(occurrence)
        claimed = await db.run(lambda session: self._claim(session, occurrence_key(occurrence), replica_id))
        if isinstance(claimed, RunResult):
            result = claimed
        else:
            result = await self._run_claimed(db, JobContext(self, db, occurrence, claimed, replica_id), stop)
        RUNS.labels(self.name, result.outcome.value).inc()
        return result

    # -- one attempt --------------------------------------------------------------------------------

    def _claim(self, session: Session, key: str, replica_id: str) -> int | RunResult:
        """The attempt number if this replica now holds the occurrence, else why not."""
        now = self.now()
        connection = session.connection()
        this = (_RUN.c.job == self.name, _RUN.c.occurrence == key)
        first = {"job": self.name, "occurrence": key, "owner": replica_id, "lease_until": now + self.lease}
        # RETURNING says whether this insert won (an INSERT's rowcount is not kept on psycopg).
        insert = insert_ignoring_conflicts(connection, _RUN).values(**first, attempts=1, started_at=now)
        if connection.execute(insert.returning(_RUN.c.attempts)).first() is not None:
            return 1
        row = connection.execute(select(_RUN).where(*this)).one()
        if row.finished_at is not None:
            return RunResult(Outcome.DONE)
        if row.lease_until >= now:
            return RunResult(Outcome.HELD, row.lease_until)
        # The lease lapsed: its holder died or failed. Only the update that still sees the same
        # holder and attempt wins, so two replicas taking over at once cannot both win.
        lapsed = update(_RUN).where(
            *this,
            _RUN.c.owner == row.owner,
            _RUN.c.attempts == row.attempts,
            _RUN.c.finished_at.is_(None),
            _RUN.c.lease_until < now,
        )
        fields = {**self._fields(key, replica_id), "previous_owner": row.owner, "attempts": row.attempts}
        if row.attempts >= self.max_attempts:
            error = row.error or f"attempt {row.attempts} stopped renewing its lease (owner {row.owner})"
            gave_up = connection.execute(lapsed.values(finished_at=now, outcome=Outcome.FAILED.value, error=error))
            if gave_up.rowcount != 1:
                return RunResult(Outcome.HELD)
            log.error("scheduled job gave up: out of attempts", extra={**fields, "error": error})
            return RunResult(Outcome.FAILED)
        taken = connection.execute(
            lapsed.values(owner=replica_id, lease_until=now + self.lease, attempts=row.attempts + 1)
        )
        if taken.rowcount != 1:
            return RunResult(Outcome.HELD)
        log.warning("resuming an occurrence whose lease lapsed", extra=fields)
        return int(row.attempts) + 1

    async def _run_claimed(self, db: Database, ctx: JobContext, stop: asyncio.Event | None) -> RunResult:
        fields = {**self._fields(ctx.key, ctx.owner), "attempt": ctx.attempt}
        log.info("scheduled job started", extra=fields)

        async def attempt() -> None:
            await self.run(ctx)

        job = asyncio.create_task(attempt(), name=f"job {self.name} {ctx.key}")
        keeper = asyncio.create_task(self._keep_lease(ctx, job), name=f"lease {self.name} {ctx.key}")
        try:
            await (wait_or_stop(asyncio.wait({job}), stop) if stop else asyncio.wait({job}))
        finally:
            # Cancelled ourselves: the job goes too and the lease is left to lapse, as in a crash.
            keeper.cancel()
            job.cancel()
        if not job.done():
            return await self._release(db, ctx, job)
        error = asyncio.CancelledError("the job was cancelled") if job.cancelled() else job.exception()
        if ctx.lost or isinstance(error, LeaseLost):
            log.warning("scheduled job stopped: another replica took its occurrence over", extra=fields)
            return RunResult(Outcome.LOST)
        if error is None:
            if not await db.run(lambda session: self._finish(session, ctx)):
                log.warning("scheduled job finished after losing its lease", extra=fields)
                return RunResult(Outcome.LOST)
            log.info("scheduled job succeeded", extra=fields)
            return RunResult(Outcome.SUCCEEDED)
        result = await db.run(lambda session: self._fail(session, ctx, error))
        fields["error"] = repr(error)
        if result.outcome is Outcome.FAILED:
            log.error("scheduled job failed its last attempt; giving up", extra=fields, exc_info=error)
        elif result.outcome is Outcome.RETRY:
            log.warning("scheduled job failed, will retry", extra=fields, exc_info=error)
        else:
            log.warning("scheduled job failed after losing its lease", extra=fields, exc_info=error)
        return result

    async def _keep_lease(self, ctx: JobContext, job: asyncio.Task[None]) -> None:
        every = self.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                await ctx.renew()
                continue
            except LeaseLost:
                reason = "another replica took the occurrence over"
            except Exception as error:
                # Cannot tell whether we still hold it: keep working only while the lease surely
                # lasts, and stop before another replica may take over.
                if self.now() + timedelta(seconds=every) < ctx.valid_until:
                    log.warning("renewing a lease failed, will retry", extra={"job": self.name, "error": repr(error)})
                    continue
                reason = f"could not renew the lease: {error!r}"
            ctx.lost = True
            log.warning(
                "scheduled job lost its lease; cancelling it",
                extra={**self._fields(ctx.key, ctx.owner), "attempt": ctx.attempt, "reason": reason},
            )
            job.cancel()
            return

    def _finish(self, session: Session, ctx: JobContext) -> bool:
        done = session.connection().execute(
            update(_RUN).where(*ctx._mine()).values(finished_at=self.now(), outcome=Outcome.SUCCEEDED.value)
        )
        return done.rowcount == 1

    def _fail(self, session: Session, ctx: JobContext, error: BaseException) -> RunResult:
        now = self.now()
        text = repr(error)[:_ERROR_CHARS]
        if ctx.attempt >= self.max_attempts:
            values: dict[str, object] = {"error": text, "finished_at": now, "outcome": Outcome.FAILED.value}
            result = RunResult(Outcome.FAILED)
        else:
            # The lease is left to lapse a full lease from now: that is the retry's back-off, and
            # whichever replica sees it lapse first runs the next attempt.
            values = {"error": text, "lease_until": now + self.lease}
            result = RunResult(Outcome.RETRY, now + self.lease)
        if session.connection().execute(update(_RUN).where(*ctx._mine()).values(**values)).rowcount != 1:
            return RunResult(Outcome.LOST)
        return result

    async def _release(self, db: Database, ctx: JobContext, job: asyncio.Task[None]) -> RunResult:
        """Shutdown: the job is cancelled and, once it has stopped, its lease released, so that a
        replica that looks at the occurrence next (at the lease's end, or on start) takes it at
        once instead of finding it held."""
        fields = {**self._fields(ctx.key, ctx.owner), "attempt": ctx.attempt}
        await asyncio.wait({job}, timeout=self.lease_seconds)
        if not job.done():
            log.warning("scheduled job ignores cancellation; its lease will lapse", extra=fields)
            return RunResult(Outcome.STOPPED)
        release = update(_RUN).where(*ctx._mine()).values(lease_until=self.now())
        try:
            await db.run(lambda session: session.connection().execute(release))
        except Exception as error:
            log.warning("releasing a lease failed; it will lapse", extra={**fields, "error": repr(error)})
        log.info("scheduled job stopped for shutdown; lease released", extra=fields)
        return RunResult(Outcome.STOPPED)

    # -- seeing an occurrence through ---------------------------------------------------------------

    async def _see_through(self, db: Database, occurrence: datetime, replica_id: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                result = await self.run_occurrence(db, occurrence, replica_id, stop=stop)
            except Exception as error:
                log.warning(
                    "scheduled job could not reach its database, will retry",
                    extra={**self._fields(occurrence, replica_id), "error": repr(error)},
                )
                await sleep_or_stop(stop, min(self.lease_seconds, 5.0))
                continue
            if result.outcome in SETTLED or result.outcome is Outcome.STOPPED:
                return
            if result.retry_at is not None:
                # Just past the lease's end: takeover needs lease_until < now.
                await self._sleep_until(result.retry_at + self.lease / 10, stop)

    async def _sleep_until(self, moment: datetime, stop: asyncio.Event) -> None:
        while not stop.is_set():
            seconds = (moment - self.now()).total_seconds()
            if seconds <= 0:
                return
            await sleep_or_stop(stop, min(seconds, _MAX_SLEEP_SECONDS))

    async def _report_skipped(self, db: Database, occurrence: datetime) -> None:
        key = occurrence_key(occurrence)
        try:
            query = select(_RUN).where(_RUN.c.job == self.name, _RUN.c.occurrence == key)
            row = await db.read(lambda session: session.connection().execute(query).one_or_none())
        except Exception as error:
            log.warning("could not check for skipped occurrences", extra={"job": self.name, "error": repr(error)})
            return
        fields = {**self._fields(key, None), "catch_up_s": self.catch_up.total_seconds()}
        if row is None:
            log.warning("occurrence not run: it is older than the catch-up window", extra=fields)
        elif row.finished_at is None and row.lease_until < self.now():
            log.warning("occurrence left unfinished and older than the catch-up window", extra=fields)

    def _fields(self, occurrence: datetime | str, replica_id: str | None) -> dict[str, object]:
        key = occurrence if isinstance(occurrence, str) else occurrence_key(occurrence)
        return {"job": self.name, "occurrence": key, "replica": replica_id}
