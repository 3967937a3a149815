"""EventConsumer on its own: a real nats-server, a real SQLite file and a fresh PostgreSQL database.

Each test publishes on a subject of its own in the test domain's stream (KITTEST) and runs a
durable consumer of its own name. The handler's unit writes an "effect" row, so how many times an
event was applied is counted in the database. Waits are on rows and on the consumer's info
(nothing pending, nothing awaiting an ack), each with a deadline.

Events are alliance.v1.ReferralConverted (a shared contract in protos/, with an event_id field);
the consumer takes the event id from the payload, falling back to the Nats-Msg-Id header.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlmodel import Session, col

from alliance.v1 import referral_events_pb2
from services.foundation.bus import EVENT_TYPE_HEADER, MSG_ID_HEADER, EventBus
from services.foundation.db import Database
from services.foundation.errors import InvalidArgument
from services.foundation.inbox import (
    Delivery,
    EventConsumer,
    Handler,
    InboxEntry,
    ParkedEvent,
    PermanentEventError,
)
from services.foundation.nats_server import EmbeddedNats
from services.foundation.schema import KitTable
from tests.support import connected_bus, eventually

Converted = referral_events_pb2.ReferralConverted
EVENT_TYPE = Converted.DESCRIPTOR.full_name
STREAM = "KITTEST"
DEADLINE = 20.0

metadata = MetaData()
effect = Table(
    "kit_test_effect",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False),
    Column("referrer_id", String(64), nullable=False),
    Column("delivery", Integer, nullable=False),
)


@dataclass
class Kit:
    db: Database
    bus: EventBus
    url: str
    subject: str = field(default_factory=lambda: f"kittest.v1.e{uuid.uuid4().hex[:12]}")
    name: str = field(default_factory=lambda: f"kit-{uuid.uuid4().hex[:12]}")

    def msg_id(self, name: str) -> str:
        """A message id of this test's own: JetStream drops a repeated Nats-Msg-Id stream-wide
        (duplicate window), and the stream is shared by every test of the session."""
        return f"{name}.{self.name}"

    async def publish(self, event: Converted, *, msg_id: str, event_type: str = EVENT_TYPE) -> None:
        await self.bus.publish(
            self.subject, event.SerializeToString(), event_id=self.msg_id(msg_id), event_type=event_type
        )

    async def publish_raw(self, payload: bytes, headers: dict[str, str] | None = None) -> None:
        assert self.bus.js is not None
        await self.bus.js.publish(self.subject, payload, headers=headers)

    async def drained(self) -> bool:
        """Every message of the consumer delivered and settled (acked or terminated)."""
        assert self.bus.js is not None
        try:
            info = await self.bus.js.consumer_info(STREAM, self.name)
        except NotFoundError:
            return False
        return bool(info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0)

    def consumed(self, outcome: str) -> int:
        """The consumer's own count of events by outcome (applied, duplicate, parked)."""
        labels = {"consumer": self.name, "outcome": outcome}
        return int(REGISTRY.get_sample_value("alliance_events_consumed_total", labels) or 0)

    async def effects(self) -> list[tuple[str, int]]:
        query = select(effect.c.event_id, effect.c.delivery).order_by(effect.c.id)
        return await self.db.read(lambda s: [(r.event_id, r.delivery) for r in s.execute(query)])

    async def inbox(self) -> list[str]:
        query = (
            select(col(InboxEntry.event_id))
            .where(col(InboxEntry.consumer) == self.name)
            .order_by(col(InboxEntry.event_id))
        )
        return await self.db.read(lambda s: list(s.execute(query).scalars()))

    async def parked(self) -> list[ParkedEvent]:
        query = select(ParkedEvent).where(col(ParkedEvent.consumer) == self.name).order_by(col(ParkedEvent.id))
        return await self.db.read(lambda s: list(s.execute(query).scalars()))

    def consumer(
        self,
        handler: Handler[Converted],
        *,
        db: Database | None = None,
        bus: EventBus | None = None,
        max_deliver: int = 5,
        ack_wait_seconds: float = 30.0,
    ) -> EventConsumer[Converted]:
        return EventConsumer(
            db=db or self.db,
            bus=bus or self.bus,
            name=self.name,
            subject=self.subject,
            message_type=Converted,
            handler=handler,
            max_deliver=max_deliver,
            ack_wait_seconds=ack_wait_seconds,
        )


@pytest.fixture
async def kit(database_url: str, nats_server: EmbeddedNats) -> AsyncIterator[Kit]:
    db = Database(database_url)
    KitTable.metadata.create_all(db.engine)
    metadata.create_all(db.engine)
    try:
        async with connected_bus(nats_server.url, "kit-inbox-test") as bus:
            await bus.ensure_stream("kittest")
            yield Kit(db, bus, nats_server.url)
    finally:
        db.close()


@asynccontextmanager
async def running(*consumers: EventConsumer[Converted]) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)


class Recorder:
    """A handler: records each delivery; its unit writes an effect row. `fail` decides, per
    delivery, whether (and where) to raise instead."""

    def __init__(
        self, fail: Callable[[Delivery[Converted]], Exception | None] = lambda d: None, *, fail_in_unit: bool = False
    ) -> None:
        self.deliveries: list[tuple[str, int]] = []
        self.fail = fail
        self.fail_in_unit = fail_in_unit

    async def __call__(self, delivery: Delivery[Converted]) -> Callable[[Session], None]:
        self.deliveries.append((delivery.event_id, delivery.deliveries))
        error = self.fail(delivery)
        if error is not None and not self.fail_in_unit:
            raise error

        def unit(session: Session) -> None:
            session.execute(
                insert(effect).values(
                    event_id=delivery.event_id, referrer_id=delivery.event.referrer_id, delivery=delivery.deliveries
                )
            )
            session.flush()  # the effect is written: a failure below must roll it back with the inbox row
            if error is not None:
                raise error

        return unit


def converted(event_id: str, referrer: str = "r-1") -> Converted:
    return Converted(event_id=event_id, referrer_id=referrer, referred_id="u-2", product="loan", level=1)


async def test_an_event_delivered_twice_is_applied_once(kit: Kit) -> None:
    handler = Recorder()
    async with running(kit.consumer(handler)):
        # Two messages (two Nats-Msg-Ids, so JetStream stores both) carrying one event id.
        await kit.publish(converted("ev-1"), msg_id="msg-a")
        await kit.publish(converted("ev-1", referrer="r-again"), msg_id="msg-b")
        await kit.publish(converted("ev-2"), msg_id="msg-c")
        await eventually(kit.drained, timeout=DEADLINE)

    assert [event_id for event_id, _ in handler.deliveries] == ["ev-1", "ev-1", "ev-2"]  # the copy did arrive
    assert await kit.effects() == [("ev-1", 1), ("ev-2", 1)]
    assert (kit.consumed("applied"), kit.consumed("duplicate")) == (2, 1)
    assert await kit.inbox() == ["ev-1", "ev-2"]
    assert await kit.parked() == []


async def test_an_event_without_an_id_in_its_payload_is_known_by_its_message_id(kit: Kit) -> None:
    handler = Recorder()
    async with running(kit.consumer(handler)):
        await kit.publish(converted(""), msg_id="header-id")
        await eventually(kit.drained, timeout=DEADLINE)
    assert handler.deliveries == [(kit.msg_id("header-id"), 1)]
    assert await kit.inbox() == [kit.msg_id("header-id")]


async def test_a_redelivery_racing_the_first_delivery_on_another_replica_is_applied_once(kit: Kit) -> None:
    """Replica A holds the event past ack_wait inside its transaction; JetStream redelivers it to
    replica B, whose unit of work must then find A's inbox row and not apply it again."""
    started, release = threading.Event(), threading.Event()

    class Slow(Recorder):
        async def __call__(self, delivery: Delivery[Converted]) -> Callable[[Session], None]:
            unit = await super().__call__(delivery)

            def held(session: Session) -> None:
                unit(session)
                started.set()
                assert release.wait(DEADLINE), "the test never released replica A"

            return held

    replica_a, replica_b = Slow(), Recorder()
    db_b = Database(str(kit.db.url.render_as_string(hide_password=False)))
    try:
        async with connected_bus(kit.url, "kit-inbox-test") as bus_b:
            a = kit.consumer(replica_a, ack_wait_seconds=1.0)
            async with running(a):
                await kit.publish(converted("ev-race"), msg_id="msg-race")

                async def a_holds() -> bool:
                    return started.is_set()

                await eventually(a_holds, timeout=DEADLINE, every=0.02)
                b = kit.consumer(replica_b, db=db_b, bus=bus_b, ack_wait_seconds=1.0)
                try:
                    async with running(b):

                        async def b_got_the_redelivery() -> bool:
                            return bool(replica_b.deliveries)

                        await eventually(b_got_the_redelivery, timeout=DEADLINE)
                        release.set()
                        await eventually(kit.drained, timeout=DEADLINE)
                finally:
                    release.set()
    finally:
        db_b.close()

    assert replica_a.deliveries == [("ev-race", 1)]
    assert replica_b.deliveries[0] == ("ev-race", 2)
    assert await kit.effects() == [("ev-race", 1)]  # applied once, by A
    assert (kit.consumed("applied"), kit.consumed("duplicate")) == (1, 1)  # B acknowledged a duplicate
    assert await kit.inbox() == ["ev-race"]
    assert await kit.parked() == []


async def test_an_undecodable_payload_is_parked_and_terminated(kit: Kit) -> None:
    handler = Recorder()
    async with running(kit.consumer(handler)):
        await kit.publish_raw(
            b"\xff\xff\xff\xff", {MSG_ID_HEADER: kit.msg_id("bad-bytes"), EVENT_TYPE_HEADER: EVENT_TYPE}
        )
        parked = await eventually(kit.parked, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)  # terminated: nothing awaits an ack or redelivery

    assert handler.deliveries == []
    [row] = parked
    assert row.event_id == kit.msg_id("bad-bytes")
    assert row.subject == kit.subject
    assert row.payload == b"\xff\xff\xff\xff"
    assert row.headers.get(EVENT_TYPE_HEADER) == EVENT_TYPE
    assert row.deliveries == 1
    assert f"payload is not a valid {EVENT_TYPE}" in row.error
    assert await kit.inbox() == [] and await kit.effects() == []


async def test_a_wrong_event_type_header_is_parked(kit: Kit) -> None:
    handler = Recorder()
    async with running(kit.consumer(handler)):
        await kit.publish(converted("ev-typed"), msg_id="msg-typed", event_type="alliance.v1.PointsAwarded")
        parked = await eventually(kit.parked, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)

    assert handler.deliveries == []
    [row] = parked
    assert row.deliveries == 1
    assert "alliance.v1.PointsAwarded" in row.error and EVENT_TYPE in row.error
    assert row.payload == converted("ev-typed").SerializeToString()
    assert await kit.inbox() == [] and await kit.effects() == []


async def test_an_event_with_no_id_at_all_is_parked(kit: Kit) -> None:
    handler = Recorder()
    async with running(kit.consumer(handler)):
        await kit.publish_raw(converted("").SerializeToString(), {EVENT_TYPE_HEADER: EVENT_TYPE})
        parked = await eventually(kit.parked, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)

    assert handler.deliveries == []
    [row] = parked
    assert "no event_id" in row.error and row.event_id == ""
    assert await kit.inbox() == []


@pytest.mark.parametrize("fail_in_unit", [False, True], ids=["in-handler", "in-unit"])
@pytest.mark.parametrize(
    "refusal",
    [
        lambda level: PermanentEventError(f"level {level} is impossible"),
        # A value validated like a request's: the same refusal, without converting it by hand.
        lambda level: InvalidArgument("level", f"{level} is impossible"),
    ],
    ids=["permanent", "invalid-argument"],
)
async def test_a_permanent_error_parks_the_event_at_once(
    kit: Kit, fail_in_unit: bool, refusal: Callable[[int], Exception]
) -> None:
    handler = Recorder(lambda d: refusal(d.event.level), fail_in_unit=fail_in_unit)
    async with running(kit.consumer(handler, max_deliver=5)):
        await kit.publish(converted("ev-bad"), msg_id="msg-bad")
        parked = await eventually(kit.parked, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)

    assert handler.deliveries == [("ev-bad", 1)]  # not retried
    [row] = parked
    assert row.event_id == "ev-bad" and row.deliveries == 1
    assert row.error.endswith("1 is impossible")
    assert await kit.inbox() == [] and await kit.effects() == []


@pytest.mark.parametrize("fail_in_unit", [False, True], ids=["in-handler", "in-unit"])
async def test_a_transient_failure_is_redelivered_and_applied_later(kit: Kit, fail_in_unit: bool) -> None:
    handler = Recorder(
        lambda d: RuntimeError("database hiccup") if d.deliveries == 1 else None, fail_in_unit=fail_in_unit
    )
    async with running(kit.consumer(handler, max_deliver=5)):
        await kit.publish(converted("ev-flaky"), msg_id="msg-flaky")

        async def applied() -> list[tuple[str, int]]:
            return await kit.effects()

        effects = await eventually(applied, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)

    assert handler.deliveries == [("ev-flaky", 1), ("ev-flaky", 2)]
    # The failed first attempt left nothing behind (in-unit: its effect and inbox row rolled back).
    assert effects == [("ev-flaky", 2)]
    assert await kit.inbox() == ["ev-flaky"]
    assert await kit.parked() == []


async def test_an_event_failing_max_deliver_times_is_parked(kit: Kit) -> None:
    handler = Recorder(lambda d: RuntimeError(f"still failing at delivery {d.deliveries}"), fail_in_unit=True)
    async with running(kit.consumer(handler, max_deliver=2)):
        await kit.publish(converted("ev-doomed"), msg_id="msg-doomed")
        parked = await eventually(kit.parked, timeout=DEADLINE)
        await eventually(kit.drained, timeout=DEADLINE)

    assert handler.deliveries == [("ev-doomed", 1), ("ev-doomed", 2)]
    [row] = parked
    assert row.event_id == "ev-doomed" and row.deliveries == 2
    assert row.error.startswith("failed 2 times") and "still failing at delivery 2" in row.error
    assert await kit.inbox() == [] and await kit.effects() == []


async def test_a_parked_event_does_not_hold_up_the_events_behind_it(kit: Kit) -> None:
    handler = Recorder(lambda d: PermanentEventError("no") if d.event_id == "ev-1" else None)
    async with running(kit.consumer(handler)):
        await kit.publish(converted("ev-1"), msg_id="m-1")
        await kit.publish(converted("ev-2"), msg_id="m-2")
        await kit.publish(converted("ev-3"), msg_id="m-3")
        await eventually(kit.drained, timeout=DEADLINE)

    assert [p.event_id for p in await kit.parked()] == ["ev-1"]
    assert await kit.effects() == [("ev-2", 1), ("ev-3", 1)]


async def test_an_event_whose_id_does_not_fit_the_inbox_is_parked_not_dropped(kit: Kit) -> None:
    long_id = "ev-" + "x" * 77  # 80 characters: a producer's id the inbox columns cannot hold
    handler = Recorder()
    async with running(kit.consumer(handler, max_deliver=2, ack_wait_seconds=1.0)):
        await kit.publish(converted(long_id), msg_id="msg-long")

        async def handled() -> bool:
            return bool(await kit.effects() or await kit.parked())

        await eventually(handled, timeout=12.0)
