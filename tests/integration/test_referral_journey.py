"""The whole referral path between the two real services, over NATS only, on SQLite and
PostgreSQL (each service its own database): register → business.v1.completed → referral.v1.converted
→ the referrer's points; the points awarded come back into the tree's statistics; a rejected link
→ referral.v1.conversion_revoked → exactly those points reversed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.js
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from alliance.v1 import business_events_pb2, points_pb2
from alliance.v1 import referral_pb2 as api
from services.foundation.nats_server import EmbeddedNats
from tests.integration.conftest import ReferralUnderTest, start_referral
from tests.support import PointsUnderTest, eventually


@pytest.fixture
async def referral_beside_points(
    other_database_url: str, nats_server: EmbeddedNats, referral_rules: Path, points: PointsUnderTest
) -> AsyncIterator[ReferralUnderTest]:
    service = await start_referral(other_database_url, nats_server.url, referral_rules)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.host.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def completed(js: nats.js.JetStreamContext, user: str, product: str) -> None:
    at = Timestamp()
    at.FromDatetime(datetime.now(UTC) - timedelta(seconds=5))
    event = business_events_pb2.BusinessCompleted(
        event_id=uid("core"), user_id=user, product=product, business_ref=uid("ref"), occurred_at=at
    )
    await js.publish("business.v1.completed", event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})


async def balance(points: PointsUnderTest, user: str) -> int:
    return (await points.stub.GetBalance(points_pb2.GetBalanceRequest(user_id=user))).balance


async def test_register_convert_award_then_reject_and_claw_back(
    referral_beside_points: ReferralUnderTest, points: PointsUnderTest, js: nats.js.JetStreamContext
) -> None:
    referral = referral_beside_points
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(name="BUSINESS", subjects=["business.v1.>"])
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    await referral.refer(alice, bob)
    await referral.refer(alice, carol)

    await completed(js, bob, "loan")  # 100 points under the test campaign
    await completed(js, carol, "credit_card")  # 50
    await eventually(lambda: _equals(balance(points, alice), 150), timeout=20)

    # The awards come back as points.v1.awarded: the tree's statistics count them.
    async def stats_points() -> int:
        stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=alice))
        return stats.referral_points

    await eventually(lambda: _equals(stats_points(), 150), timeout=20)

    rejected = await referral.stub.ReviewLink(
        api.ReviewLinkRequest(user_id=bob, decision=api.REVIEW_DECISION_REJECT, reviewer="ops-zhao")
    )
    assert rejected.conversions_revoked == 1
    await eventually(lambda: _equals(balance(points, alice), 50), timeout=20)  # exactly bob's loan
    ledger = await points.stub.ListLedger(points_pb2.ListLedgerRequest(user_id=alice))
    kinds = sorted(points_pb2.EntryKind.Name(e.kind) for e in ledger.entries)
    assert kinds == ["ENTRY_KIND_EARN", "ENTRY_KIND_EARN", "ENTRY_KIND_REVERSE_EARN"]
    await eventually(lambda: _equals(stats_points(), 50), timeout=20)


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc]
