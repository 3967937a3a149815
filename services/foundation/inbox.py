"""Consuming events: durable JetStream pull consumers, applied once through an inbox table.

A handler turns a decoded event into a unit of work (`def unit(session)`); the consumer runs it in
one transaction together with the inbox row `(consumer, event_id)`. A redelivered event finds its
inbox row and is acknowledged without running again, so "at least once" delivery becomes
"exactly once" effect. An event that cannot be decoded, or fails `max_deliver` times, is parked in
`parked_event` with the error, logged, and terminated: never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from sqlalchemy import JSON, Column, LargeBinary, Text
from sqlmodel import Field, Session

from services.foundation.bus import EVENT_TYPE_HEADER, MSG_ID_HEADER, EventBus, stream_for
from services.foundation.db import Database, UTCDateTime, utcnow
from services.foundation.errors import InvalidArgument
from services.foundation.schema import KitTable
from services.foundation.stopping import sleep_or_stop, wait_or_stop

log = logging.getLogger("alliance.inbox")

CONSUMED = Counter("alliance_events_consumed_total", "events applied", ["consumer", "outcome"])

M = TypeVar("M", bound=Message)
Unit = Callable[[Session], object]
# The inbox and parked tables hold ids and consumer names up to these lengths (a uuid4 hex is 32).
MAX_EVENT_ID = 64
MAX_CONSUMER_NAME = 64


class InboxEntry(KitTable, table=True):
    __tablename__ = "inbox_event"

    consumer: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=64)
    subject: str = Field(max_length=128)
    processed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ParkedEvent(KitTable, table=True):
    """Events that could not be applied, with the error: ops look them up in the service's
    database (a CLI to list and replay them is still to come)."""

    __tablename__ = "parked_event"

    id: int | None = Field(default=None, primary_key=True)
    consumer: str = Field(max_length=64, index=True)
    subject: str = Field(max_length=128)
    event_id: str = Field(max_length=64)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str = Field(sa_column=Column(Text, nullable=False))
    deliveries: int
    parked_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


@dataclass(frozen=True)
class Delivery(Generic[M]):
    event: M
    event_id: str
    subject: str
    deliveries: int


class PermanentEventError(Exception):
    """The event can never be applied (e.g. it names an impossible value): park it now."""


Handler = Callable[[Delivery[M]], Awaitable[Unit | None]]


class EventConsumer(Generic[M]):
    def __init__(
        self,
        *,
        db: Database,
        bus: EventBus,
        name: str,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        max_deliver: int = 5,
        ack_wait_seconds: float = 30.0,
        batch: int = 64,
    ) -> None:
        self.db = db
        self.bus = bus
        self.name = name
        self.subject = subject
        self.stream = stream_for(subject)
        if len(name) > MAX_CONSUMER_NAME:
            raise ValueError(f"consumer name {name!r} is longer than {MAX_CONSUMER_NAME} characters")
        self.message_type = message_type
        self.handler = handler
        self.max_deliver = max_deliver
        self.ack_wait_seconds = ack_wait_seconds
        self.batch = batch

    async def run(self, stop: asyncio.Event) -> None:
        await wait_or_stop(self.bus.ready.wait(), stop)
        subscription = None
        while not stop.is_set():
            try:
                if subscription is None:
                    subscription = await self._subscribe(stop)
                    if subscription is None:
                        return
                try:
                    messages = await subscription.fetch(self.batch, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):  # nats.py raises either when nothing came
                    continue
                for msg in messages:
                    await self._process(msg)
            except Exception as error:
                log.warning("consumer loop error, retrying", extra={"consumer": self.name, "error": repr(error)})
                await sleep_or_stop(stop, 1.0)
        if subscription is not None:
            # Unsubscribe rather than drain: draining a live pull subscription hangs (platform note).
            try:
                await subscription.unsubscribe()
            except Exception as error:
                log.debug("unsubscribe failed", extra={"error": repr(error)})

    async def _subscribe(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """Wait for the producer's stream (it creates it), then bind the durable consumer."""
        assert self.bus.js is not None
        waiting_logged = False
        while not stop.is_set():
            if await self.bus.stream_exists(self.stream):
                config = ConsumerConfig(
                    durable_name=self.name,
                    filter_subject=self.subject,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    # Unlimited on the server: this consumer parks an event at its own max_deliver,
                    # and an event whose parking failed (database away) must come back, not vanish.
                    max_deliver=-1,
                    ack_wait=self.ack_wait_seconds,
                )
                # Create or update: a consumer made by an older version gets this config too.
                await self.bus.js.add_consumer(self.stream, config)
                return await self.bus.js.pull_subscribe_bind(durable=self.name, stream=self.stream)
            if not waiting_logged:  # its producer may not be deployed yet: say so once, then wait quietly
                log.info("waiting for stream", extra={"stream": self.stream, "consumer": self.name})
                waiting_logged = True
            await sleep_or_stop(stop, 2.0)
        return None

    async def _process(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        headers = msg.headers or {}
        event_id = headers.get(MSG_ID_HEADER, "")
        try:
            expected = self.message_type.DESCRIPTOR.full_name
            if headers.get(EVENT_TYPE_HEADER, expected) != expected:
                raise PermanentEventError(
                    f"{EVENT_TYPE_HEADER} is {headers.get(EVENT_TYPE_HEADER)}, expected {expected}"
                )
            try:
                event = self.message_type.FromString(msg.data)
            except DecodeError as error:
                raise PermanentEventError(f"payload is not a valid {expected}: {error}") from error
            event_id = getattr(event, "event_id", "") or event_id
            if not event_id:
                raise PermanentEventError("event has no event_id and no Nats-Msg-Id header")
            if len(event_id) > MAX_EVENT_ID:
                raise PermanentEventError(f"event_id is longer than {MAX_EVENT_ID} characters: {event_id!r}")
            unit = await self.handler(Delivery(event, event_id, msg.subject, deliveries))
            applied = await self.db.run(lambda s: self._apply_once(s, event_id, msg.subject, unit))
        except (PermanentEventError, InvalidArgument) as error:
            # A bad value in the event (validated like a request) never becomes good: park it.
            await self._park(msg, event_id, deliveries, str(error))
            return
        except Exception as error:
            if deliveries >= self.max_deliver:
                await self._park(msg, event_id, deliveries, f"failed {deliveries} times, last: {error!r}")
            else:
                log.warning(
                    "event failed, will be redelivered",
                    extra={
                        "consumer": self.name,
                        "event_id": event_id,
                        "deliveries": deliveries,
                        "error": repr(error),
                    },
                )
                await msg.nak(delay=_backoff(deliveries))
            return
        CONSUMED.labels(self.name, "applied" if applied else "duplicate").inc()
        try:
            await msg.ack()
        except Exception as error:
            # Applied and committed: a redelivery finds the inbox row and is acknowledged then.
            log.warning("ack failed", extra={"consumer": self.name, "event_id": event_id, "error": repr(error)})

    def _apply_once(self, session: Session, event_id: str, subject: str, unit: Unit | None) -> bool:
        if session.get(InboxEntry, (self.name, event_id)) is not None:
            return False
        session.add(InboxEntry(consumer=self.name, event_id=event_id, subject=subject))
        session.flush()  # claim the event before the work: a racing replica fails here and retries
        if unit is not None:
            unit(session)
        return True

    async def _park(self, msg: Msg, event_id: str, deliveries: int, reason: str) -> None:
        fields = {
            "consumer": self.name,
            "subject": msg.subject,
            "event_id": event_id,
            "deliveries": deliveries,
            "reason": reason,
        }

        def park(session: Session) -> None:
            session.add(
                ParkedEvent(
                    consumer=self.name,
                    subject=msg.subject,
                    event_id=event_id[:MAX_EVENT_ID],  # the whole id is in the error when it is too long
                    payload=msg.data,
                    headers=dict(msg.headers or {}),
                    error=reason,
                    deliveries=deliveries,
                )
            )

        try:
            await self.db.run(park)
        except Exception as error:
            # Not parked, so not settled either: it comes back (the server's max_deliver is
            # unlimited) and parking is tried again, rather than the event being lost.
            log.error("parking an event failed; it will be delivered again", extra={**fields, "error": repr(error)})
            await msg.nak(delay=_backoff(deliveries))
            return
        log.error("event parked", extra=fields)
        await msg.term()
        CONSUMED.labels(self.name, "parked").inc()


def _backoff(deliveries: int) -> float:
    return min(2.0**deliveries, 30.0)
