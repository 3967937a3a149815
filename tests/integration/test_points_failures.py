"""Failure behaviour with real processes: a kill between commit and publish, SIGTERM with calls in
flight, and NATS going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from sqlalchemy import text

from alliance.v1 import points_pb2, points_pb2_grpc
from services.foundation.child_service import ServiceProcess
from services.foundation.db import Database
from services.foundation.host import ServiceHost
from services.foundation.nats_server import EmbeddedNats
from services.points.service import SERVICE as POINTS
from tests.support import earn_request, eventually, points_settings

pytestmark = pytest.mark.slow


async def stream_count(url: str, subject: str) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info("POINTS", subjects_filter=subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop_quietly()


def points_process(tmp_path: Path, rules_dir: Path, nats_url: str, db_file: Path, name: str) -> ServiceProcess:
    return ServiceProcess(
        "points",
        {
            "DATABASE_URL": f"sqlite:///{db_file}",
            "NATS_URL": nats_url,
            "RULES_DIR": str(rules_dir),
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_GRACE_SECONDS": "5",
        },
        tmp_path / f"{name}.log",
    )


async def test_killed_between_commit_and_publish_publishes_exactly_once(
    tmp_path: Path, rules_dir: Path, scratch_nats: EmbeddedNats, processes: list[ServiceProcess], user: str
) -> None:
    db_file = tmp_path / "points.db"
    # NATS is down: the earn commits with its event in the outbox, and nothing can be published.
    first = points_process(tmp_path, rules_dir, scratch_nats.url, db_file, "first")
    processes.append(first)
    first.start()
    await first.wait_serving()
    async with grpc.aio.insecure_channel(first.address) as channel:
        reply = await points_pb2_grpc.PointsStub(channel).Earn(earn_request(user, product="loan"))
    assert reply.points == 100
    first.kill()

    scratch_nats.start()
    second = points_process(tmp_path, rules_dir, scratch_nats.url, db_file, "second")
    processes.append(second)
    second.start()
    await second.wait_serving()
    await eventually(lambda: _count_is(scratch_nats.url, 1))

    # Now the other crash window: published, but killed before the row was marked. Unmark it by
    # hand, restart, and JetStream's duplicate window must keep the stream at one message.
    assert second.terminate() == 0
    db = Database(f"sqlite:///{db_file}")
    db.run_sync(lambda s: s.execute(text("UPDATE outbox_event SET published_at = NULL")))
    third = points_process(tmp_path, rules_dir, scratch_nats.url, db_file, "third")
    processes.append(third)
    third.start()
    await third.wait_serving()

    async def remarked() -> bool:
        rows = await db.run(lambda s: s.execute(text("SELECT count(*) FROM outbox_event WHERE published_at IS NULL")))
        return rows.scalar_one() == 0  # type: ignore[no-any-return]

    await eventually(remarked)
    assert await stream_count(scratch_nats.url, "points.v1.awarded") == 1
    db.close()


async def _count_is(url: str, expected: int) -> bool:
    return await stream_count(url, "points.v1.awarded") == expected


async def test_sigterm_finishes_in_flight_calls_and_flushes_events(
    tmp_path: Path, rules_dir: Path, scratch_nats: EmbeddedNats, processes: list[ServiceProcess], user: str
) -> None:
    scratch_nats.start()
    proc = points_process(tmp_path, rules_dir, scratch_nats.url, tmp_path / "points.db", "svc")
    processes.append(proc)
    proc.start()
    await proc.wait_serving()
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = points_pb2_grpc.PointsStub(channel)
        calls = [asyncio.ensure_future(stub.Earn(earn_request(f"{user}-{i}"), timeout=10)) for i in range(300)]
        # SIGTERM once the server is answering, while the rest are in flight.
        answered, in_flight = await asyncio.wait(calls, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert answered, "no Earn was answered within 10 s"
        assert in_flight, "every call finished before SIGTERM: none was in flight"
        exit_code = await asyncio.to_thread(proc.terminate)
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert exit_code == 0, proc.logs()[-2000:]
    succeeded = [r for r in results if isinstance(r, points_pb2.EarnResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) + len(refused) == len(results)
    # Calls the server had not yet taken up when it began to stop are refused before any work
    # (UNAVAILABLE or CANCELLED; both safe to retry with the same key); taken-up calls finish.
    retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert all(r.code() in retryable for r in refused), [(r.code(), r.details()) for r in refused][:3]
    finished_while_stopping = [
        r for c, r in zip(calls, results, strict=True) if c in in_flight and isinstance(r, points_pb2.EarnResponse)
    ]
    assert finished_while_stopping, "no call in flight when SIGTERM came was finished"
    # Every committed earn is in the ledger and its event left the outbox before the exit.
    assert await stream_count(scratch_nats.url, "points.v1.awarded") == len(succeeded)
    db = Database(f"sqlite:///{tmp_path / 'points.db'}")
    earns = db.run_sync(lambda s: s.execute(text("SELECT count(*) FROM points_transaction")).scalar_one())
    db.close()
    assert earns == len(succeeded)
    assert '"msg": "stopped"' in proc.logs()


async def test_nats_restart_loses_no_event(
    tmp_path: Path, rules_dir: Path, scratch_nats: EmbeddedNats, user: str
) -> None:
    scratch_nats.start()
    host = ServiceHost(POINTS, points_settings(f"sqlite:///{tmp_path / 'p.db'}", scratch_nats.url, rules_dir))
    port = await host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = points_pb2_grpc.PointsStub(channel)
            await eventually(lambda: _ready(host))
            await stub.Earn(earn_request(user))
            await eventually(lambda: _count_is(scratch_nats.url, 1))
            scratch_nats.stop()
            for _ in range(5):  # the service keeps serving; events wait in the outbox
                assert (await stub.Earn(earn_request(user))).points == 50
            scratch_nats.start()
            await eventually(lambda: _count_is(scratch_nats.url, 6), timeout=30)
    finally:
        await host.stop()


async def _ready(host) -> bool:  # type: ignore[no-untyped-def]
    return host.bus.ready.is_set()
