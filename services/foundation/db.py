"""The database: SQLite by default, PostgreSQL in production, chosen by DATABASE_URL.

Service code is written as plain synchronous sqlmodel units of work (`def unit(session) -> T`) and
`Database.run` executes each one in a transaction on a worker thread, so the asyncio loop never
blocks on I/O. SQLite allows one writer at a time, so it gets one worker thread and `BEGIN
IMMEDIATE` (no lock-upgrade deadlocks with other processes); PostgreSQL gets a pool of workers,
and units that lose a race (unique violation, serialization failure, deadlock) are retried whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, create_engine

from services.foundation.checkpoints import Checkpointer

log = logging.getLogger("alliance.db")

T = TypeVar("T")

# PostgreSQL SQLSTATEs worth a retry: serialization_failure, deadlock_detected.
_RETRYABLE_PG_STATES = {"40001", "40P01"}
# Reader connections beside SQLite's single writer; reads are short, two keep one core busy.
_SQLITE_READERS = 2


def normalize_url(url: str) -> URL:
    """Accept the URL forms ops write and pick the drivers this project ships."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both SQLite and PostgreSQL.

    SQLite has no time zones; storing naive UTC everywhere keeps comparisons and ordering right.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _call_all(callbacks: list[Callable[[], None]]) -> None:
    # The transaction has committed: a failing callback must not turn that into an error.
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("an after-commit callback failed")


def _after_cancelled(work: asyncio.Future[tuple[Any, list[Callable[[], None]]]]) -> None:
    if not work.cancelled() and work.exception() is None:
        _call_all(work.result()[1])


def utcnow() -> datetime:
    return datetime.now(UTC)


_AFTER_COMMIT = "alliance.after_commit"
_DATABASE = "alliance.database"


def _nothing() -> None:
    pass


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the unit of work `session` belongs to has committed (never if it rolls
    back). Under `Database.run` it runs on the event loop, so it may touch the service's memory."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def _configure_sqlite(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue our BEGIN instead of pysqlite's lazy one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's thread does it
        cursor.execute("PRAGMA foreign_keys=ON")
        if read_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # Writers take the write lock up front (no lock-upgrade deadlocks); readers take a WAL
        # snapshot and never wait for writers.
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _is_retryable(error: DBAPIError) -> bool:
    if isinstance(error, IntegrityError):
        return True
    state = getattr(error.orig, "sqlstate", None)
    if state in _RETRYABLE_PG_STATES:
        return True
    return isinstance(error, OperationalError) and "database is locked" in str(error.orig)


class Database:
    """`run` for units that write, `read` for units that only read. Reads get their own
    connections: on SQLite they read a snapshot beside the single writer instead of queueing
    behind it; on PostgreSQL they skip the checkout ping (so a replica may hold up to twice
    `pool_size` connections)."""

    def __init__(self, url: str, *, pool_size: int = 8, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                self.url, echo=echo, connect_args={"check_same_thread": False}, pool_size=1, max_overflow=0
            )
            _configure_sqlite(self.engine)
            workers = 1
        else:
            self.engine = create_engine(self.url, echo=echo, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
            workers = pool_size
        # Set by the host to wake its outbox relay; called after a commit that added events.
        self.events_committed: Callable[[], None] = _nothing
        # Set by the host: the subjects the service publishes; the outbox refuses any other.
        self.publishes: frozenset[str] | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="db")
        self._checkpointer: Checkpointer | None = None
        self._read_engine, self._read_executor = self.engine, self._executor
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            self._checkpointer = Checkpointer(str(self.url.database))
            self._read_engine = create_engine(
                self.url,
                echo=echo,
                connect_args={"check_same_thread": False},
                pool_size=_SQLITE_READERS,
                max_overflow=0,
            )
            _configure_sqlite(self._read_engine, read_only=True)
            self._read_executor = ThreadPoolExecutor(max_workers=_SQLITE_READERS, thread_name_prefix="db-read")
        elif not self.is_sqlite:
            # Reads check out connections without the liveness ping (a round trip before every
            # unit, a fifth of a short query's time): a read is safe to run again, so one that
            # meets a connection the server dropped is retried on a fresh one instead.
            self._read_engine = create_engine(self.url, echo=echo, pool_size=pool_size, max_overflow=0)
            self._read_executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="db-read")

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False, info={_DATABASE: self})

    @staticmethod
    def of(session: Session) -> Database | None:
        """The Database whose unit of work `session` is (None for a session made elsewhere)."""
        found = session.info.get(_DATABASE)
        return found if isinstance(found, Database) else None

    def run_sync(self, unit: Callable[[Session], T], *, attempts: int = 5) -> T:
        """Run `unit` in one transaction; commit if it returns, roll back if it raises."""
        result, committed = self._run_unit(unit, attempts)
        _call_all(committed)
        return result

    async def run(self, unit: Callable[[Session], T], *, attempts: int = 5) -> T:
        """`run_sync` on a worker thread; `after_commit` callbacks then run on the event loop,
        also when the caller was cancelled meanwhile (the worker commits regardless)."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, lambda: self._run_unit(unit, attempts))
        try:
            result, committed = await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(_after_cancelled)
            raise
        _call_all(committed)
        return result

    def _run_unit(self, unit: Callable[[Session], T], attempts: int) -> tuple[T, list[Callable[[], None]]]:
        for attempt in range(1, attempts + 1):
            try:
                with self.session() as session:
                    with session.begin():
                        result = unit(session)
                    if self._checkpointer is not None:
                        self._checkpointer.committed()
                    # Only the attempt that committed: a retried attempt's callbacks went with it.
                    return result, session.info.pop(_AFTER_COMMIT, [])
            except DBAPIError as error:
                if attempt == attempts or not _is_retryable(error):
                    raise
                log.debug("retrying a unit of work after %s", type(error).__name__)
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    async def read(self, unit: Callable[[Session], T]) -> T:
        """Run a unit that only reads, in one transaction (one consistent snapshot)."""
        if self._read_engine is self.engine:
            return await self.run(unit)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, lambda: self._read_sync(unit))

    def _read_sync(self, unit: Callable[[Session], T]) -> T:
        for attempt in (1, 2):
            try:
                with Session(self._read_engine, expire_on_commit=False) as session, session.begin():
                    return unit(session)
            except DBAPIError as error:
                # SQLAlchemy has discarded the pool's connections of before the drop by now.
                if attempt == 2 or not error.connection_invalidated:
                    raise
                log.info("a read met a dropped database connection; running it again")
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._read_engine is not self.engine:
            self._read_executor.shutdown(wait=True)
            self._read_engine.dispose()
