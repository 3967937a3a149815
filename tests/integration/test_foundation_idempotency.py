"""`run_once` on both databases: a command runs once under its key, concurrent first requests
included; a different command under the key is ALREADY_EXISTS and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy import func, select
from sqlmodel import Session

from services.foundation.db import Database
from services.foundation.errors import AlreadyExists
from services.foundation.idempotency import IdempotentReply, run_once
from services.foundation.schema import KitTable, table_of


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    KitTable.metadata.create_all(database.engine, tables=[table_of(IdempotentReply)])
    yield database
    database.close()


def _command(computed: list[str], key: str, request_hash: str, value: str):  # type: ignore[no-untyped-def]
    def unit(session: Session) -> StringValue:
        def compute(_: Session) -> tuple[StringValue, str]:
            computed.append(value)
            return StringValue(value=value), f"ref-{value}"

        return run_once(
            session, operation="note", key=key, request_hash=request_hash, reply_type=StringValue, compute=compute
        )

    return unit


async def _stored(db: Database) -> int:
    return await db.read(lambda s: s.execute(select(func.count()).select_from(IdempotentReply)).scalar_one())


async def test_a_repeat_replays_and_computes_nothing(db: Database) -> None:
    computed: list[str] = []
    first = await db.run(_command(computed, "k-1", "h", "a"))
    again = await db.run(_command(computed, "k-1", "h", "a"))
    assert first.value == again.value == "a"
    assert computed == ["a"]
    assert await _stored(db) == 1


async def test_concurrent_first_requests_compute_once(db: Database) -> None:
    computed: list[str] = []
    replies = await asyncio.wait_for(
        asyncio.gather(*(db.run(_command(computed, "k-2", "h", "b")) for _ in range(10))), 30
    )
    assert {r.value for r in replies} == {"b"}
    assert await _stored(db) == 1


async def test_a_different_command_under_the_key_is_refused(db: Database) -> None:
    computed: list[str] = []
    await db.run(_command(computed, "k-3", "h", "c"))
    with pytest.raises(AlreadyExists, match=r"already used for a different note request \(ref-c\)"):
        await db.run(_command(computed, "k-3", "other", "d"))
    assert computed == ["c"]
