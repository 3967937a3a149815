"""The outbox relay over real NATS and SQLite: on shutdown it drains everything still queued."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from google.protobuf.empty_pb2 import Empty
from sqlalchemy import func, select
from sqlmodel import Session

from services.foundation.bus import EventBus
from services.foundation.db import Database
from services.foundation.nats_server import EmbeddedNats
from services.foundation.outbox import OutboxEvent, OutboxRelay, add_event

SUBJECT = "points.v1.awarded"


async def _stored(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("POINTS", subjects_filter=SUBJECT)
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
        await bus.ensure_stream("points")

        def queue(session: Session) -> None:
            for _ in range(10):
                add_event(session, SUBJECT, Empty())

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
