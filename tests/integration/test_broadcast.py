"""Broadcast subscriptions over a real nats-server and a real grpc.aio server.

Each "replica" is its own EventBus connection with its own Broadcast. Events are
google.protobuf.StringValue, so these tests depend on no service's messages.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from services.foundation.broadcast import SHUTTING_DOWN, Broadcast, Listener, ListenerDropped
from services.foundation.bus import EventBus
from services.foundation.nats_server import EmbeddedNats
from tests.support import connected_bus, eventually

EVENT_TYPE = StringValue.DESCRIPTOR.full_name


@pytest.fixture
def subject() -> str:
    """A subject in a domain of the test's own, so its stream holds only this test's events."""
    return f"bc{uuid.uuid4().hex[:10]}.v1.changed"


def domain_of(subject: str) -> str:
    return subject.split(".", 1)[0]


@asynccontextmanager
async def replica(url: str, subject: str, **options: Any) -> AsyncIterator[Broadcast[StringValue]]:
    """One replica's broadcast: its own connection, subscribed before the block starts."""
    async with connected_bus(url, "broadcast-test") as bus:
        broadcast = Broadcast(bus, subject, StringValue, **options)
        stop = asyncio.Event()
        task = asyncio.create_task(broadcast.run(stop))
        try:
            await asyncio.wait_for(broadcast.subscribed.wait(), 10)
            yield broadcast
        finally:
            broadcast.close()
            stop.set()
            await asyncio.wait_for(task, 5)


async def publish(bus: EventBus, subject: str, *values: str) -> None:
    for value in values:
        await bus.publish(
            subject, StringValue(value=value).SerializeToString(), event_id=uuid.uuid4().hex, event_type=EVENT_TYPE
        )


async def take(listener: Listener[StringValue], count: int, *, timeout: float = 10.0) -> list[str]:
    async def read() -> list[str]:
        values: list[str] = []
        async for event in listener:
            values.append(event.value)
            if len(values) == count:
                break
        return values

    return await asyncio.wait_for(read(), timeout)


async def test_every_replica_sees_every_event(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with (
            replica(nats_server.url, subject) as first,
            replica(nats_server.url, subject) as second,
            first.listen() as on_first,
            second.listen() as on_second,
        ):
            await publish(producer, subject, "a", "b", "c", "d", "e")

            assert await take(on_first, 5) == ["a", "b", "c", "d", "e"]
            assert await take(on_second, 5) == ["a", "b", "c", "d", "e"]


async def test_listeners_get_only_events_published_after_they_joined(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        await publish(producer, subject, "history-1", "history-2")  # in the stream before anyone listens
        async with replica(nats_server.url, subject) as broadcast, broadcast.listen() as early:
            await publish(producer, subject, "one")
            assert await take(early, 1) == ["one"]  # fanned out: "one" is past

            async with broadcast.listen() as late:
                await publish(producer, subject, "two")
                assert await take(late, 1) == ["two"]
            assert await take(early, 1) == ["two"]


async def test_undecodable_and_foreign_events_are_skipped(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with replica(nats_server.url, subject) as broadcast, broadcast.listen() as listener:
            await producer.publish(subject, b"\xff\xff\xff", event_id=uuid.uuid4().hex, event_type=EVENT_TYPE)
            await producer.publish(subject, b"", event_id=uuid.uuid4().hex, event_type="alliance.v1.Other")
            await publish(producer, subject, "good")

            assert await take(listener, 1) == ["good"]
            assert listener.pending == 0


async def test_close_ends_listeners_promptly(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with replica(nats_server.url, subject) as broadcast, broadcast.listen() as listener:
            reading = asyncio.create_task(take(listener, 100))
            await eventually(lambda: _true(broadcast.listener_count == 1))

            started = time.monotonic()
            broadcast.close()
            assert await asyncio.wait_for(reading, 2) == []  # iteration ended, no error
            assert time.monotonic() - started < 1
            assert listener.end_reason == SHUTTING_DOWN and not listener.dropped

            async with broadcast.listen() as after_close:  # a listener joining at shutdown ends at once
                assert await take(after_close, 1, timeout=1) == []


async def test_a_full_listener_is_dropped_not_the_others(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with (
            replica(nats_server.url, subject, max_pending=3) as broadcast,
            broadcast.listen() as stuck,
            broadcast.listen() as keeping_up,
        ):
            reading = asyncio.create_task(take(keeping_up, 8))
            await publish(producer, subject, *[f"e{i}" for i in range(8)])

            assert await asyncio.wait_for(reading, 10) == [f"e{i}" for i in range(8)]
            assert stuck.dropped and "fell behind" in (stuck.end_reason or "")
            assert broadcast.listener_count == 1
            with pytest.raises(ListenerDropped, match="re-read the current state"):
                await take(stuck, 1, timeout=1)


async def test_stream_helper_aborts_a_client_that_fell_behind(nats_server: EmbeddedNats, subject: str) -> None:
    """The gRPC helper's drop path, with a stand-in context: over a real channel, small events sit
    in HTTP/2 buffers long before a listener's queue fills."""

    class Aborted(Exception):
        pass

    class Context:
        code: grpc.StatusCode | None = None

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.code = code
            raise Aborted(details)

    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with replica(nats_server.url, subject, max_pending=2) as broadcast:
            context = Context()
            events = broadcast.stream(cast(Any, context))
            first: asyncio.Future[StringValue] = asyncio.ensure_future(anext(events))
            await eventually(lambda: _true(broadcast.listener_count == 1))
            await publish(producer, subject, "a", "b", "c", "d")  # "a" is read; b, c fill; d overflows

            assert (await asyncio.wait_for(first, 10)).value == "a"
            await eventually(lambda: _true(broadcast.listener_count == 0))
            with pytest.raises(Aborted, match="fell behind"):
                await asyncio.wait_for(anext(events), 2)
            assert context.code == grpc.StatusCode.ABORTED
            await events.aclose()


async def test_shutdown_ends_an_open_server_stream_with_unavailable(nats_server: EmbeddedNats, subject: str) -> None:
    async with connected_bus(nats_server.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        async with replica(nats_server.url, subject) as broadcast:

            async def watch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
                async for event in broadcast.stream(context):
                    yield event.SerializeToString()

            server = grpc.aio.server()
            handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
                "Watch": grpc.unary_stream_rpc_method_handler(watch)
            }
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Watcher", handlers)])
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    watch_method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
                        "/t.Watcher/Watch"
                    )
                    call = watch_method(b"")
                    await eventually(lambda: _true(broadcast.listener_count == 1))
                    await publish(producer, subject, "new-order-1", "new-order-2")
                    received = [await asyncio.wait_for(_read(call), 10) for _ in range(2)]
                    assert received == ["new-order-1", "new-order-2"]

                    # What the host does on SIGTERM: close broadcasts, then stop with the grace.
                    started = time.monotonic()
                    broadcast.close()
                    await asyncio.wait_for(server.stop(grace=10), 5)
                    assert time.monotonic() - started < 2

                    assert await asyncio.wait_for(call.code(), 2) == grpc.StatusCode.UNAVAILABLE
                    assert await call.details() == SHUTTING_DOWN
            finally:
                await server.stop(None)


async def test_reconnect_resumes_without_gaps_or_history(scratch_nats: EmbeddedNats, subject: str) -> None:
    """NATS restarts while a replica listens; events published before the replica has reconnected
    still reach it, once each, and the stream's history never does.

    A core NATS subscription would lose "during-1/2"; nats.py's ordered consumer alone would, in
    this very scenario (reset before its first message), replay "history-*" from sequence 1."""
    await asyncio.to_thread(scratch_nats.start)
    async with connected_bus(scratch_nats.url, "broadcast-test") as producer:
        await producer.ensure_stream(domain_of(subject))
        await publish(producer, subject, "history-1", "history-2", "history-3")
    async with (
        replica(scratch_nats.url, subject, idle_heartbeat_seconds=0.5) as broadcast,
        broadcast.listen() as listener,
    ):
        await asyncio.to_thread(scratch_nats.stop)
        await asyncio.to_thread(scratch_nats.start)
        async with connected_bus(scratch_nats.url, "broadcast-test") as producer:
            for value in ("during-1", "during-2"):
                # JetStream may still be loading the stream right after a restart: retry the same
                # event id (the stream keeps it once).
                event_id = uuid.uuid4().hex
                payload = StringValue(value=value).SerializeToString()
                await eventually(functools.partial(_published, producer, subject, payload, event_id), timeout=10)

            assert await take(listener, 2, timeout=20) == ["during-1", "during-2"]
            await publish(producer, subject, "after")
            assert await take(listener, 1) == ["after"]


async def _read(call: grpc.aio.UnaryStreamCall[bytes, bytes]) -> str:
    message = await call.read()
    assert isinstance(message, bytes), "the stream ended"
    return StringValue.FromString(message).value


async def _published(bus: EventBus, subject: str, payload: bytes, event_id: str) -> bool:
    try:
        await bus.publish(subject, payload, event_id=event_id, event_type=EVENT_TYPE)
        return True
    except Exception:
        return False


async def _true(value: bool) -> bool:
    return value
