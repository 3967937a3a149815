"""The outbox relay over real NATS and SQLite: a commit that added events wakes it; on shutdown it
drains everything still queued."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select
from sqlmodel import Session

from services.foundation.bus import EventBus
from services.foundation.db import Database
from services.foundation.events import Event
from services.foundation.nats_server import EmbeddedNats
from services.foundation.outbox import OutboxEvent, OutboxRelay, add_event
from tests.support import eventually

HAPPENED = Event("test.v1.happened", Empty)
SUBJECT = HAPPENED.subject


async def _stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("TEST", subjects_filter=SUBJECT)
        return int((info.state.subjects or {}).get(SUBJECT, 0))
    finally:
        await nc.close()


async def test_shutdown_drains_more_than_one_batch(tmp_path: Path, scratch_nats: EmbeddedNats) -> None:
    scratch_nats.start()
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    OutboxEvent.__table__.create(db.engine)  # type: ignore[attr-defined]
    bus = EventBus(scratch_nats.url, name="outbox-test")
    await bus.connect()
    try:
        await bus.ensure_stream("test")

        def queue(session: Session) -> None:
            for _ in range(10):
                add_event(session, HAPPENED, Empty())

        await db.run(queue)
        relay = OutboxRelay(db, bus, batch_size=4)
        stop = asyncio.Event()
        stop.set()  # shutdown already under way: only the final drain runs
        await relay.run(stop)

        assert await _stored(scratch_nats.url) == 10
        unpublished = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))  # type: ignore[union-attr]
        pending = await db.run(lambda s: s.execute(unpublished).scalar_one())
        assert pending == 0
    finally:
        await bus.close()
        db.close()


async def test_a_commit_that_added_an_event_wakes_the_relay(tmp_path: Path, scratch_nats: EmbeddedNats) -> None:
    scratch_nats.start()
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    OutboxEvent.__table__.create(db.engine)  # type: ignore[attr-defined]
    bus = EventBus(scratch_nats.url, name="outbox-test")
    await bus.connect()
    # An hour between polls: only the wake-up from the commit can publish within the deadline.
    relay = OutboxRelay(db, bus, idle_seconds=3600)
    db.events_committed = relay.notify
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await bus.ensure_stream("test")
        await eventually(lambda: _relay_idle(relay))
        await db.run(lambda s: add_event(s, HAPPENED, Empty()))
        await eventually(lambda: _stored_at_least(scratch_nats.url, 1), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await bus.close()
        db.close()


async def _relay_idle(relay: OutboxRelay) -> bool:
    return relay.waiting


async def _stored_at_least(url: str, count: int) -> bool:
    return await _stored(url) >= count


def test_an_event_is_refused_with_a_message_of_another_type() -> None:
    with Session() as session:
        try:
            add_event(session, HAPPENED, Timestamp())
        except TypeError as error:
            assert "test.v1.happened carries google.protobuf.Empty" in str(error)
        else:
            raise AssertionError("expected a TypeError")


async def test_an_event_outside_the_services_catalogs_is_refused_before_it_is_written(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    OutboxEvent.__table__.create(db.engine)  # type: ignore[attr-defined]
    db.publishes = frozenset({"other.v1.happened"})
    try:
        with pytest.raises(ValueError, match=r"test\.v1\.happened is not in the catalogs this service publishes"):
            await db.run(lambda s: add_event(s, HAPPENED, Empty()))
        count = select(func.count()).select_from(OutboxEvent)
        assert await db.run(lambda s: s.execute(count).scalar_one()) == 0
    finally:
        db.close()
