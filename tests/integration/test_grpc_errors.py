"""Guarded registration over a real grpc.aio server: domain errors keep their status and message,
anything unexpected is INTERNAL with a reference, never UNKNOWN."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.foundation.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.foundation.grpc_errors import GuardedServer

RAISES = {
    "invalid": InvalidArgument("user_id", "is required"),
    "missing": NotFound("transaction_id: no transaction x"),
    "precondition": FailedPrecondition("points: balance is 3"),
    "exists": AlreadyExists("idempotency_key: already used"),
    "bug": ZeroDivisionError("division by zero"),
}


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RAISES[request.decode()]


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise RAISES[request.decode()]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    }
    guarded = GuardedServer(server)
    # What generated add_*Servicer_to_server functions do: both registrations.
    guarded.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", handlers)])
    guarded.add_registered_method_handlers("t.T", handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


@pytest.mark.parametrize(
    ("name", "code", "text"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "user_id: is required"),
        ("missing", grpc.StatusCode.NOT_FOUND, "transaction_id"),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION, "balance is 3"),
        ("exists", grpc.StatusCode.ALREADY_EXISTS, "idempotency_key"),
        ("bug", grpc.StatusCode.INTERNAL, "reference"),
    ],
)
async def test_status_codes(channel: grpc.aio.Channel, name: str, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/t.T/Unary")(name.encode())
    assert caught.value.code() == code and text in caught.value.details()

    call = channel.unary_stream("/t.T/Stream")(name.encode())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == code and text in caught.value.details()
