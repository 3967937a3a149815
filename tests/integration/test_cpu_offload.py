"""CpuPool: CPU-heavy work in worker processes keeps a real grpc.aio server's health checks answering.

The jobs below are module-level on purpose: spawned workers import them by name. Workers start on a
pool's first call (a fresh interpreter that imports this module); tests that time anything warm
the pool first, so a worker's start-up is not what they measure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from services.foundation.cpu import CpuPool, CpuPoolClosed
from tests.support import eventually


def burn(seconds: float) -> int:
    """Pure-Python work that holds the GIL for about `seconds` (time-bound, so a slow machine does not
    stretch it)."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        for _ in range(10_000):
            count += 1
    return count


def burn_and_report(path: str, seconds: float) -> int:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, path)  # whole, or not there at all
    return burn(seconds)


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)  # what the OOM killer or a crash in native code looks like to the pool


@pytest.fixture
async def pool() -> AsyncIterator[CpuPool]:
    cpu = CpuPool(max_workers=1)
    try:
        yield cpu
    finally:
        cpu.close()


async def test_health_checks_answer_while_a_cpu_call_runs(pool: CpuPool) -> None:
    solving = asyncio.Event()

    async def solve(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        solving.set()
        return str(await pool.run(burn, float(request.decode()))).encode()

    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {"Solve": grpc.unary_unary_rpc_method_handler(solve)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.Solver", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            solve_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/t.Solver/Solve")
            health_stub = health_pb2_grpc.HealthStub(channel)
            await solve_call(b"0", timeout=60)  # start the worker process outside the measurement

            solving.clear()
            call = asyncio.ensure_future(solve_call(b"2.0", timeout=30))
            await asyncio.wait_for(solving.wait(), 5)
            check_seconds = []
            for _ in range(5):
                started = time.monotonic()
                reply = await health_stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                check_seconds.append(time.monotonic() - started)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                await asyncio.sleep(0.05)  # spread the checks over the solve
            assert not call.done(), "the CPU call ended before the health checks: they proved nothing"
            assert max(check_seconds) < 0.5, check_seconds

            assert int(await asyncio.wait_for(call, 30)) > 0
    finally:
        await server.stop(None)


async def test_inline_cpu_work_blocks_the_loop_and_the_pool_does_not(pool: CpuPool) -> None:
    """The contrast, by order of events rather than timing: a timer due 10 ms from now cannot fire
    while the same function runs inline, yet fires long before a pool job of the same kind ends.
    A health check fares like the timer, since the server shares the loop: measured on this machine
    with the client in another thread, a Check sent 0.3 s into a 2 s Solve answered after 1.7 s when
    Solve ran burn() inline, and after 1 ms when it ran it through the pool."""
    loop = asyncio.get_running_loop()
    fired: list[float] = []

    loop.call_later(0.01, lambda: fired.append(time.monotonic()))
    burn(0.3)
    inline_done = time.monotonic()
    await eventually(lambda: _true(bool(fired)), timeout=5)
    assert fired[0] >= inline_done

    await pool.run(burn, 0)  # warm: the worker's start-up is not the point here
    fired.clear()
    loop.call_later(0.01, lambda: fired.append(time.monotonic()))
    await pool.run(burn, 1.0)
    pool_done = time.monotonic()
    assert fired and fired[0] < pool_done


async def test_an_exception_in_the_worker_reaches_the_caller(pool: CpuPool) -> None:
    with pytest.raises(ValueError, match="no feasible assignment"):
        await asyncio.wait_for(pool.run(fail, "no feasible assignment"), 60)
    assert await asyncio.wait_for(pool.run(burn, 0), 10) == 0  # the pool still works


async def test_a_dead_worker_fails_its_call_and_the_next_call_gets_a_fresh_worker(pool: CpuPool) -> None:
    with pytest.raises(BrokenProcessPool):
        await asyncio.wait_for(pool.run(die), 60)
    assert await asyncio.wait_for(pool.run(burn, 0), 60) == 0


async def test_functions_workers_cannot_import_are_refused_at_once(pool: CpuPool) -> None:
    with pytest.raises(TypeError, match="module-level"):
        await pool.run(lambda: 1)


async def test_threads_run_any_callable_and_raise_its_errors() -> None:
    threads = CpuPool(max_workers=2, threads=True)
    try:
        assert await asyncio.wait_for(threads.run(lambda x: x * 2, 21), 10) == 42
        with pytest.raises(ValueError, match="bad input"):
            await asyncio.wait_for(threads.run(fail, "bad input"), 10)
    finally:
        threads.close()
    with pytest.raises(CpuPoolClosed):
        await threads.run(burn, 0)


async def test_close_with_a_running_job_returns_promptly(pool: CpuPool, tmp_path: Path) -> None:
    started_file = tmp_path / "started"
    running = asyncio.create_task(pool.run(burn_and_report, str(started_file), 30.0))
    queued = [asyncio.create_task(pool.run(burn, 30.0)) for _ in range(2)]
    await eventually(lambda: _true(started_file.exists()), timeout=60)
    worker = int(started_file.read_text())

    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 1

    for job in (running, *queued):
        with pytest.raises(CpuPoolClosed):
            await asyncio.wait_for(job, 5)
    await eventually(lambda: _true(not _alive(worker)), timeout=5)
    with pytest.raises(CpuPoolClosed):
        await pool.run(burn, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped computing
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


async def _true(value: bool) -> bool:
    return value
