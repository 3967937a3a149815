"""The baseline: a grpc.aio server with one empty unary method, in its own process.

Every RPC of the suite is measured against this in the same run, so results compare across
machines: a ratio of 0.4 means the service does its work at 40% of what gRPC alone allows here.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop
from google.protobuf.empty_pb2 import Empty


async def _empty(request: Empty, context: grpc.aio.ServicerContext) -> Empty:
    return Empty()


async def serve(port: int) -> None:
    server = grpc.aio.server()
    # A normal protobuf method (google.protobuf.Empty in and out), as any service method has.
    handler = grpc.unary_unary_rpc_method_handler(
        _empty, request_deserializer=Empty.FromString, response_serializer=Empty.SerializeToString
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Empty", {"Call": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    # The same event loop as the services (`alliance serve`), so the comparison is like for like.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(int(sys.argv[1])))
