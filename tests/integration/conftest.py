"""A points service served in-process over real gRPC, on SQLite and PostgreSQL, with real NATS."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest

from alliance.v1 import benefits_pb2_grpc, points_pb2_grpc
from services.foundation.host import ServiceHost
from services.foundation.nats_server import EmbeddedNats
from services.points.service import SERVICE as POINTS
from tests.support import CINEMA, TEST_CAMPAIGN, PointsUnderTest, points_settings, write_campaign


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    write_campaign(rules, "test-referral", TEST_CAMPAIGN)
    return rules


@pytest.fixture
async def points(database_url: str, nats_server: EmbeddedNats, rules_dir: Path) -> AsyncIterator[PointsUnderTest]:
    settings = points_settings(database_url, nats_server.url, rules_dir)
    host = ServiceHost(POINTS, settings)
    port = await host.start()
    await asyncio.wait_for(host.bus.ready.wait(), 10)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield PointsUnderTest(host, points_pb2_grpc.PointsStub(channel), channel, rules_dir, settings, nats_server.url)
    finally:
        await channel.close()
        await host.stop()


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[nats.js.JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
def scratch_nats(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A NATS server of the test's own, for tests that stop and restart it."""
    server = EmbeddedNats(tmp_path / "own-nats")
    yield server
    server.stop()
    shutil.rmtree(tmp_path / "own-nats", ignore_errors=True)


@pytest.fixture
async def benefits(points: PointsUnderTest) -> benefits_pb2_grpc.BenefitsStub:
    write_campaign(points.rules_dir, "test-cinema", CINEMA)
    await points.reload_rules()
    return benefits_pb2_grpc.BenefitsStub(points.channel)
