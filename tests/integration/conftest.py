"""A points service served in-process over real gRPC, on SQLite and PostgreSQL, with real NATS."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from alliance.v1 import (
    benefits_pb2_grpc,
    dispatch_pb2,
    dispatch_pb2_grpc,
    points_pb2_grpc,
    referral_pb2,
    referral_pb2_grpc,
)
from services.dispatch.service import SERVICE as DISPATCH
from services.dispatch.settings import DispatchSettings
from services.foundation.host import ServiceHost
from services.foundation.nats_server import EmbeddedNats
from services.points.service import SERVICE as POINTS
from services.referral.service import SERVICE as REFERRAL
from services.referral.settings import ReferralSettings
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.support import CINEMA, TEST_CAMPAIGN, PointsUnderTest, points_settings, rules_read, write_campaign


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


# -- the referral service -------------------------------------------------------------------------

REFERRAL_POLICY = """\
policy: test-referral
title: Referral policy for tests
velocity:
  - {rule: referrer-burst, per: referrer, max: 5, within: 1h}
  - {rule: shared-device, per: device, max: 2, within: 30d}
  - {rule: shared-phone, per: phone, max: 1, within: 365d, action: refuse}
campaigns:
  - {id: spring-push, from: 2020-01-01}
"""


@dataclass
class ReferralUnderTest:
    host: ServiceHost
    stub: referral_pb2_grpc.ReferralServiceStub
    channel: grpc.aio.Channel
    rules_dir: Path
    settings: ReferralSettings

    async def code(self, user_id: str, kind: int = referral_pb2.USER_KIND_UNSPECIFIED) -> str:
        reply = await self.stub.IssueCode(referral_pb2.IssueCodeRequest(user_id=user_id, kind=kind))
        return reply.code

    async def register(self, user_id: str, code: str, **fields: Any) -> referral_pb2.RegisterResponse:
        return await self.stub.Register(referral_pb2.RegisterRequest(user_id=user_id, code=code, **fields))

    async def refer(self, referrer: str, user_id: str) -> referral_pb2.RegisterResponse:
        return await self.register(user_id, await self.code(referrer))

    async def reload_rules(self) -> None:
        await rules_read(self.host)


@pytest.fixture
def referral_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "referral-rules"
    (rules / "referral").mkdir(parents=True)
    (rules / "referral" / "policy.yaml").write_text(REFERRAL_POLICY)
    return rules


async def start_referral(database_url: str, nats_url: str, rules: Path, **overrides: Any) -> ReferralUnderTest:
    values: dict[str, Any] = dict(
        grpc_port=0,
        metrics_port=0,
        database_url=database_url,
        nats_url=nats_url,
        rules_dir=rules,
        rules_poll_seconds=0.1,
        shutdown_grace_seconds=2,
        log_level="WARNING",
    )
    settings = ReferralSettings(**(values | overrides))
    host = ServiceHost(REFERRAL, settings)
    port = await host.start()
    await asyncio.wait_for(host.bus.ready.wait(), 10)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return ReferralUnderTest(host, referral_pb2_grpc.ReferralServiceStub(channel), channel, rules, settings)


@pytest.fixture
async def referral(
    database_url: str, nats_server: EmbeddedNats, referral_rules: Path
) -> AsyncIterator[ReferralUnderTest]:
    service = await start_referral(database_url, nats_server.url, referral_rules)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.host.stop()


@pytest.fixture
def other_database_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A second database of the same kind: two services never share one."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    name, url = fresh_postgres_database(admin)
    yield url
    drop_postgres_database(admin, name)


# -- dispatch ----------------------------------------------------------------------------------------

DISPATCH_POLICY = """\
policy: test-dispatch
title: Dispatch policy for tests
timezone: Asia/Shanghai
cutoff: "17:00"
products:
  - {product: loan, cutoff: "16:00"}
preferred_window: 30m
sla: {contact_within: 2h, return_to_pool: true}
fallback_branch: HQ
"""


@dataclass
class DispatchUnderTest:
    host: ServiceHost
    stub: dispatch_pb2_grpc.DispatchServiceStub
    channel: grpc.aio.Channel
    rules_dir: Path
    settings: DispatchSettings

    async def branch(self, branch_id: str, lat: float, lon: float) -> dispatch_pb2.Branch:
        location = dispatch_pb2.LatLng(latitude=lat, longitude=lon)
        request = dispatch_pb2.UpsertBranchRequest(branch_id=branch_id, name=f"Branch {branch_id}", location=location)
        return (await self.stub.UpsertBranch(request)).branch

    async def manager(
        self,
        manager_id: str,
        branch_id: str,
        products: tuple[str, ...] = ("loan", "card"),
        capacity: int = 10,
        on_duty: bool = True,
    ) -> dispatch_pb2.Manager:
        request = dispatch_pb2.UpsertManagerRequest(
            manager_id=manager_id,
            branch_id=branch_id,
            name=manager_id,
            products=products,
            daily_capacity=capacity,
            on_duty=on_duty,
        )
        return (await self.stub.UpsertManager(request)).manager

    async def order(
        self, product: str = "card", lat: float = 31.23, lon: float = 121.47, **fields: Any
    ) -> dispatch_pb2.Order:
        request = dispatch_pb2.CreateOrderRequest(
            idempotency_key=fields.pop("idempotency_key", uuid.uuid4().hex),
            customer_id=fields.pop("customer_id", f"c-{uuid.uuid4().hex[:8]}"),
            product=product,
            address=fields.pop("address", "上海市黄浦区南京东路1号"),
            location=dispatch_pb2.LatLng(latitude=lat, longitude=lon),
            **fields,
        )
        return (await self.stub.CreateOrder(request)).order

    async def grab(self, order_id: str, manager_id: str) -> dispatch_pb2.Order:
        return (
            await self.stub.GrabOrder(dispatch_pb2.GrabOrderRequest(order_id=order_id, manager_id=manager_id))
        ).order

    async def reload_rules(self) -> None:
        await rules_read(self.host)


@pytest.fixture
def dispatch_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "dispatch-rules"
    (rules / "dispatch").mkdir(parents=True)
    (rules / "dispatch" / "policy.yaml").write_text(DISPATCH_POLICY)
    return rules


async def start_dispatch(database_url: str, nats_url: str, rules: Path, **overrides: Any) -> DispatchUnderTest:
    values: dict[str, Any] = dict(
        grpc_port=0,
        metrics_port=0,
        database_url=database_url,
        nats_url=nats_url,
        rules_dir=rules,
        rules_poll_seconds=0.1,
        shutdown_grace_seconds=2,
        log_level="WARNING",
        cutoff_schedule=False,
        sweep_seconds=0.2,
    )
    settings = DispatchSettings(**(values | overrides))
    host = ServiceHost(DISPATCH, settings)
    port = await host.start()
    await asyncio.wait_for(host.bus.ready.wait(), 10)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return DispatchUnderTest(host, dispatch_pb2_grpc.DispatchServiceStub(channel), channel, rules, settings)


@pytest.fixture
async def dispatch(
    database_url: str, nats_server: EmbeddedNats, dispatch_rules: Path
) -> AsyncIterator[DispatchUnderTest]:
    service = await start_dispatch(database_url, nats_server.url, dispatch_rules)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.host.stop()


@pytest.fixture
async def dispatch_replica(
    dispatch: DispatchUnderTest, database_url: str, nats_server: EmbeddedNats, dispatch_rules: Path
) -> AsyncIterator[DispatchUnderTest]:
    """A second replica of the same service: same database, same NATS."""
    service = await start_dispatch(database_url, nats_server.url, dispatch_rules)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.host.stop()
