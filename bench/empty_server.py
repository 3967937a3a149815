"""The baseline: a grpc.aio server with one empty unary method, in its own process.

Every RPC of the suite is measured against this in the same run, so results compare across
machines: a ratio of 0.4 means the service does its work at 40% of what gRPC alone allows here.
"""

from __future__ import annotations

import asyncio
import sys

import grpc


async def _empty(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])  # several workers share the port
    handler = grpc.unary_unary_rpc_method_handler(_empty)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Empty", {"Call": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
