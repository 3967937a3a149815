"""A points service served in-process over real gRPC, on SQLite and PostgreSQL, with real NATS."""

from __future__ import annotations

import asyncio
import shutil
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest

from alliance.v1 import points_pb2_grpc
from services.foundation.host import ServiceHost
from services.foundation.nats_server import EmbeddedNats
from services.points.service import SERVICE as POINTS
from services.points.settings import PointsSettings

# Terms chosen for the tests: easy sums, a daily cap and a budget small enough to hit.
TEST_CAMPAIGN = """\
campaign: test-referral
title: Referral terms for tests
active:
  from: 2020-01-01
timezone: Asia/Shanghai
priority: 10
points:
  stacking: all
  caps:
    per_user_per_day: 1000
  expiry:
    days: 365
  rules:
    - id: card
      when: {event: referral.converted, product: credit_card}
      award: 50
    - id: loan
      when: {event: referral.converted, product: loan}
      award: 100
    - id: spend
      when: {event: merchant.spend}
      award: {per_amount: 10, points: 1, max: 200}
"""


def write_campaign(rules_dir: Path, name: str, text: str) -> Path:
    path = rules_dir / "campaigns" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(textwrap.dedent(text))
    tmp.replace(path)  # atomic, like an editor's save or a ConfigMap swap
    return path


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    write_campaign(rules, "test-referral", TEST_CAMPAIGN)
    return rules


@dataclass
class PointsUnderTest:
    host: ServiceHost
    stub: points_pb2_grpc.PointsStub
    channel: grpc.aio.Channel
    rules_dir: Path
    settings: PointsSettings
    nats_url: str

    async def reload_rules(self) -> None:
        """Wait past one poll interval so an edited rule file is in force."""
        await asyncio.sleep(self.settings.rules_poll_seconds * 3)


def points_settings(database_url: str, nats_url: str, rules_dir: Path, **overrides: object) -> PointsSettings:
    values: dict[str, object] = dict(
        grpc_port=0,
        metrics_port=0,
        database_url=database_url,
        nats_url=nats_url,
        rules_dir=rules_dir,
        rules_poll_seconds=0.1,
        shutdown_grace_seconds=2,
        expiry_sweep_seconds=3600,
        log_level="WARNING",
    )
    values.update(overrides)
    return PointsSettings(**values)  # type: ignore[arg-type]


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
