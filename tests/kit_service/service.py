"""Notes: the smallest service on the kit (issue 8), run by tests/integration/test_kit_service.py.
An RPC that writes and publishes, a consumer, a broadcast server stream, a daily singleton job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import StringValue
from pydantic import Field as Setting
from sqlalchemy import update
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel, col

from services.foundation.events import Event, EventCatalog
from services.foundation.inbox import Delivery, Unit
from services.foundation.outbox import add_event
from services.foundation.scheduled import JobContext
from services.foundation.schema import ServiceSchema
from services.foundation.service import Kit, Service
from services.foundation.settings import ServiceSettings


class NotesTable(SQLModel, registry=registry()):
    """Its own table registry: its own MetaData."""


SCHEMA = ServiceSchema("notes", NotesTable, migrations=Path(__file__).parent / "migrations")
ADDED = Event("notes.v1.added", StringValue)  # the note's text
NOTES = EventCatalog("notes", [ADDED])


class Note(NotesTable, table=True):
    text: str = Field(primary_key=True, max_length=200)
    event_id: str = Field(max_length=64)
    seen: int = 0  # times the consumer applied its event


class TidyStep(NotesTable, table=True):  # the daily job's progress, keyed by occurrence
    __tablename__ = "tidy_step"
    occurrence: str = Field(primary_key=True, max_length=32)
    step: int = Field(primary_key=True)
    attempt: int


class NotesSettings(ServiceSettings):
    tidy_at: time = Setting(time(17), description="local time of the daily tidy job")
    tidy_tz: str = Setting("Asia/Shanghai", description="time zone of TIDY_AT")
    tidy_lease_seconds: float = Setting(30.0, gt=0, description="lease of a tidy run")
    tidy_steps: int = Setting(4, ge=1, description="steps of a tidy run")
    tidy_step_seconds: float = Setting(0.5, ge=0, description="pause after each step")


def add_NotesServicer_to_server(servicer: NotesServicer, server: grpc.aio.Server) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Add": grpc.unary_unary_rpc_method_handler(servicer.Add, StringValue.FromString, StringValue.SerializeToString),
        "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch, Empty.FromString, StringValue.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kit.test.Notes", handlers),))
    server.add_registered_method_handlers("kit.test.Notes", handlers)


class NotesServicer:
    def __init__(self, kit: Kit) -> None:
        self.db, self.added = kit.db, kit.broadcast(ADDED)

    async def Add(self, request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> StringValue:
        def add(session: Session) -> str:
            note = session.get(Note, request.value)  # the same note again: the first answer, no new event
            if note is None:
                session.add(note := Note(text=request.value, event_id=add_event(session, ADDED, request)))
            return note.event_id

        return StringValue(value=await self.db.run(add))

    async def Watch(self, request: Empty, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[StringValue]:
        async for note in self.added.stream(context):
            yield note


async def build(kit: Kit) -> None:
    settings = kit.settings
    assert isinstance(settings, NotesSettings)
    kit.serve(add_NotesServicer_to_server, NotesServicer(kit))

    async def seen(delivery: Delivery[StringValue]) -> Unit:
        text = delivery.event.value
        return lambda s: s.execute(update(Note).where(col(Note.text) == text).values(seen=Note.seen + 1))

    kit.consume(ADDED, seen)

    async def tidy(ctx: JobContext) -> None:
        for step in range(settings.tidy_steps):

            def record(session: Session, step: int = step) -> None:
                ctx.guard(session)  # commits only while this attempt holds the occurrence
                if session.get(TidyStep, (ctx.key, step)) is None:  # an earlier attempt's step stays
                    session.add(TidyStep(occurrence=ctx.key, step=step, attempt=ctx.attempt))

            await kit.db.run(record)
            await asyncio.sleep(settings.tidy_step_seconds)

    kit.daily("tidy", settings.tidy_at, settings.tidy_tz, tidy, lease_seconds=settings.tidy_lease_seconds)


SERVICE = Service(name="notes", settings=NotesSettings, schema=SCHEMA, publishes=[NOTES], build=build)
