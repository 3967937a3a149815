"""Transactional outbox: events are rows committed with the business change, then relayed.

A unit of work calls `add_event(session, event, message)`; the row commits or rolls back with
the change it describes, so there is never an event without a change or a change without an event.
The commit that added events wakes the relay (through the Database), so no servicer or consumer
has to tell it; the relay also polls, for events committed by another replica or before a crash.
`OutboxRelay` publishes pending rows in order with `Nats-Msg-Id` = event id and marks them: a crash
between publishing and marking republishes, which JetStream's duplicate window (and every
consumer's inbox) turns into a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from prometheus_client import Counter, Gauge
from sqlalchemy import JSON, Column, Index, LargeBinary, Row, delete, update
from sqlalchemy import select as sa_select
from sqlmodel import Field, Session, col

from services.foundation.bus import EventBus
from services.foundation.db import Database, UTCDateTime, after_commit, utcnow
from services.foundation.events import Event
from services.foundation.ids import new_id
from services.foundation.schema import KitTable, table_of
from services.foundation.stopping import sleep_or_stop, wait_or_stop

log = logging.getLogger("alliance.outbox")

PUBLISHED = Counter("alliance_outbox_published_total", "events relayed from the outbox to NATS", ["subject"])
PENDING = Gauge("alliance_outbox_pending", "outbox rows not yet published (last seen by the relay)")


class OutboxEvent(KitTable, table=True):
    __tablename__ = "outbox_event"
    __table_args__ = (Index("ix_outbox_event_pending", "published_at", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    subject: str = Field(max_length=128)
    event_type: str = Field(max_length=128)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def event_row(event: Event[Message], message: Message, *, headers: dict[str, str] | None = None) -> dict[str, object]:
    """The outbox row of an event, for `add_event_rows`. Sets `message.event_id` if it has one."""
    event.check(message)
    subject = event.subject
    event_id = getattr(message, "event_id", "") or new_id()
    if hasattr(message, "event_id"):
        setattr(message, "event_id", event_id)  # noqa: B010 - not every event message has the field
    return {
        "event_id": event_id,
        "subject": subject,
        "event_type": message.DESCRIPTOR.full_name,
        "payload": message.SerializeToString(deterministic=True),
        "headers": headers or {},
        "created_at": utcnow(),
        "published_at": None,
    }


def add_event(
    session: Session, event: Event[Message], message: Message, *, headers: dict[str, str] | None = None
) -> str:
    """Stage an event in the caller's transaction; returns its event id."""
    _check_published(session, [event.subject])
    row = event_row(event, message, headers=headers)
    session.add(OutboxEvent.model_validate(row))
    _wake_relay_after_commit(session)
    return str(row["event_id"])


def add_event_rows(session: Session, rows: list[dict[str, object]]) -> None:
    """Stage many `event_row`s with one bulk insert (the Earn batch's path)."""
    if rows:
        _check_published(session, {str(row["subject"]) for row in rows})
        session.connection().execute(table_of(OutboxEvent).insert(), rows)
        _wake_relay_after_commit(session)


def _check_published(session: Session, subjects: Iterable[str]) -> None:
    # An event outside the service's catalogs would have no stream of its own (the relay would
    # retry it for ever) or land in another service's: refuse it before it is written.
    db = Database.of(session)
    if db is not None and db.publishes is not None:
        for subject in subjects:
            if subject not in db.publishes:
                raise ValueError(f"{subject} is not in the catalogs this service publishes")


_WAKE_STAGED = "alliance.outbox.wake"


def _wake_relay_after_commit(session: Session) -> None:
    if session.info.get(_WAKE_STAGED):
        return
    session.info[_WAKE_STAGED] = True
    db = Database.of(session)
    if db is not None:
        after_commit(session, db.events_committed)


# How long the drain on shutdown may take; it must fit in the host's shutdown grace.
FINAL_FLUSH_SECONDS = 5.0


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        batch_size: int = 64,
        idle_seconds: float = 1.0,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.idle_seconds = idle_seconds
        self.retention = retention
        self._wake = asyncio.Event()
        self.waiting = False  # idle until woken or the next poll (tests wait for it)

    def notify(self) -> None:
        """Called after a commit that added events, so they go out now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        await wait_or_stop(self.bus.ready.wait(), stop)
        purge_every = 0
        while not stop.is_set():
            # Cleared before reading the pending rows: a commit while they are read or published
            # sets it again, so the loop goes round once more instead of waiting for the poll.
            self._wake.clear()
            try:
                published = await self.relay_once()
                purge_every = (purge_every + 1) % 3600
                if purge_every == 0:
                    await self.db.run(self._purge)
            except Exception as error:
                log.warning("outbox relay failed, will retry", extra={"error": repr(error)})
                published = 0
                await sleep_or_stop(stop, 1.0)
            if published < self.batch_size:
                self.waiting = True
                await wait_or_stop(asyncio.wait_for(self._wake.wait(), self.idle_seconds), stop)
                self.waiting = False
        # Drain on shutdown, so events committed by the final calls are not left waiting for the
        # next start. The final calls can leave more than one batch.
        try:
            if self.bus.ready.is_set():
                await asyncio.wait_for(self._drain(), FINAL_FLUSH_SECONDS)
        except Exception as error:
            log.warning("final outbox flush failed; events stay queued", extra={"error": repr(error)})

    async def _drain(self) -> None:
        while await self.relay_once() == self.batch_size:
            pass

    async def relay_once(self) -> int:
        rows = await self.db.run(self._pending)
        PENDING.set(len(rows))
        if not rows:
            return 0
        # Publish in order but pipelined: the acks are awaited together.
        results = await self.bus.publish_many(
            [(r.subject, r.payload, r.event_id, r.event_type, r.headers or {}) for r in rows]
        )
        done = [r.seq for r, res in zip(rows, results, strict=True) if not isinstance(res, BaseException)]
        if done:
            await self.db.run(lambda s: self._mark(s, done))
        for row, res in zip(rows, results, strict=True):
            if isinstance(res, BaseException):
                raise res
            PUBLISHED.labels(row.subject).inc()
        return len(rows)

    def _pending(self, session: Session) -> list[Row[Any]]:
        # Plain rows, not ORM objects: the relay reads every event once, at Earn's pace.
        table = table_of(OutboxEvent)
        query = (
            sa_select(
                table.c.seq, table.c.event_id, table.c.subject, table.c.event_type, table.c.payload, table.c.headers
            )
            .where(table.c.published_at.is_(None))
            .order_by(table.c.seq)
            .limit(self.batch_size)
        )
        return list(session.connection().execute(query))

    @staticmethod
    def _mark(session: Session, seqs: list[int | None]) -> None:
        session.exec(update(OutboxEvent).where(col(OutboxEvent.seq).in_(seqs)).values(published_at=utcnow()))

    def _purge(self, session: Session) -> None:
        cutoff = utcnow() - self.retention
        session.exec(delete(OutboxEvent).where(col(OutboxEvent.published_at) < cutoff))
