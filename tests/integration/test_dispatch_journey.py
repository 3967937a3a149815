"""A booked appointment, closed with a business, rewards the customer's referrer: dispatch →
dispatch.v1.order_completed → referral (a conversion) → referral.v1.converted → points. Three
services, each on its own database, talking only through NATS, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from alliance.v1 import dispatch_pb2, points_pb2
from alliance.v1 import referral_pb2 as api
from services.foundation.nats_server import EmbeddedNats
from tests.conftest import drop_postgres_database, fresh_postgres_database
from tests.integration.conftest import DispatchUnderTest, ReferralUnderTest, start_dispatch, start_referral
from tests.support import PointsUnderTest, eventually

pytestmark = pytest.mark.timeout(120)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def third_database_url(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'dispatch.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    name, url = fresh_postgres_database(admin)
    yield url
    drop_postgres_database(admin, name)


@pytest.fixture
async def three_services(
    other_database_url: str,
    third_database_url: str,
    nats_server: EmbeddedNats,
    referral_rules: Path,
    dispatch_rules: Path,
    points: PointsUnderTest,
) -> AsyncIterator[tuple[DispatchUnderTest, ReferralUnderTest, PointsUnderTest]]:
    referral = await start_referral(other_database_url, nats_server.url, referral_rules)
    dispatch = await start_dispatch(third_database_url, nats_server.url, dispatch_rules)
    try:
        yield dispatch, referral, points
    finally:
        for service in (dispatch, referral):
            await service.channel.close()
            await service.host.stop()


async def test_a_completed_appointment_rewards_the_referrer_through_points(
    three_services: tuple[DispatchUnderTest, ReferralUnderTest, PointsUnderTest],
) -> None:
    dispatch, referral, points = three_services
    alice, bob = uid("alice"), uid("bob")
    await referral.refer(alice, bob)
    branch, manager = uid("b"), uid("m")
    await dispatch.branch(branch, 31.23, 121.47)
    await dispatch.manager(manager, branch, products=("loan",))
    order = await dispatch.order("loan", customer_id=bob)
    await dispatch.grab(order.order_id, manager)
    await dispatch.stub.CompleteOrder(
        dispatch_pb2.CompleteOrderRequest(order_id=order.order_id, manager_id=manager, business_ref=uid("LOAN"))
    )

    async def alice_points() -> int | None:
        balance = await points.stub.GetBalance(points_pb2.GetBalanceRequest(user_id=alice))
        return balance.balance or None

    assert await eventually(alice_points, timeout=30) == 100  # the test campaign's loan referral

    async def loans_below_alice() -> int:
        stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=alice))
        return sum(c.conversions for c in stats.conversions if c.product == "loan")

    # A failed appointment is nothing to referral; the next success counts (events come in order).
    for outcome in ({"failure_reason": "declined"}, {"business_ref": uid("LOAN")}):
        again = await dispatch.order("loan", customer_id=bob)
        await dispatch.grab(again.order_id, manager)
        await dispatch.stub.CompleteOrder(
            dispatch_pb2.CompleteOrderRequest(order_id=again.order_id, manager_id=manager, **outcome)
        )
    await eventually(lambda: _at_least(loans_below_alice(), 2), timeout=30)
    assert await loans_below_alice() == 2


async def _at_least(value: object, expected: int) -> bool:
    return await value >= expected  # type: ignore[misc, no-any-return, operator]
