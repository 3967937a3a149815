"""Events in and out of the points service over a real NATS JetStream."""

from __future__ import annotations

import uuid

from sqlmodel import select

from alliance.v1 import points_events_pb2, points_pb2, referral_events_pb2
from services.foundation.bus import EVENT_TYPE_HEADER, MSG_ID_HEADER
from services.foundation.inbox import ParkedEvent
from tests.support import PointsUnderTest, earn_request, ensure_referral_stream, eventually, published_for, stamp


async def balance(points: PointsUnderTest, user: str) -> int:
    return (await points.stub.GetBalance(points_pb2.GetBalanceRequest(user_id=user))).balance


async def test_awarded_event_is_published_with_its_id(points: PointsUnderTest, js, user: str) -> None:  # type: ignore[no-untyped-def]
    reply = await points.stub.Earn(earn_request(user, product="loan"))

    async def seen() -> list:  # type: ignore[type-arg]
        return await published_for(js, "points.v1.awarded", points_events_pb2.PointsAwarded, user)

    [(event, headers)] = await eventually(seen)
    assert event.transaction_id == reply.transaction_id and event.points == 100
    assert headers[MSG_ID_HEADER] == event.event_id
    assert headers[EVENT_TYPE_HEADER] == "alliance.v1.PointsAwarded"


async def test_redelivered_referral_event_awards_once(points: PointsUnderTest, js, user: str) -> None:  # type: ignore[no-untyped-def]
    await ensure_referral_stream(js)
    event = referral_events_pb2.ReferralConverted(
        event_id=uuid.uuid4().hex,
        referrer_id=user,
        referred_id="new-customer",
        product="loan",
        level=1,
        occurred_at=stamp(),
    )
    for attempt in range(3):  # distinct message ids get past JetStream's dedup, as a redelivery would
        await js.publish(
            "referral.v1.converted", event.SerializeToString(), headers={MSG_ID_HEADER: f"{event.event_id}-{attempt}"}
        )

    async def awarded() -> bool:
        return await balance(points, user) == 100

    await eventually(awarded)
    await eventually(lambda: _consumer_caught_up(js))
    assert await balance(points, user) == 100
    page = await points.stub.ListLedger(points_pb2.ListLedgerRequest(user_id=user))
    assert len(page.entries) == 1 and page.entries[0].source_event == f"referral.v1.converted:{event.event_id}"


async def _consumer_caught_up(js) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info("REFERRAL", "points-referral-converted")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_poison_event_is_parked_not_dropped(points: PointsUnderTest, js, user: str) -> None:  # type: ignore[no-untyped-def]
    await ensure_referral_stream(js)
    poison_id = uuid.uuid4().hex
    await js.publish("referral.v1.converted", b"\xff\x00 not protobuf", headers={MSG_ID_HEADER: poison_id})
    no_referrer = referral_events_pb2.ReferralConverted(event_id=uuid.uuid4().hex, product="loan", occurred_at=stamp())
    await js.publish(
        "referral.v1.converted", no_referrer.SerializeToString(), headers={MSG_ID_HEADER: no_referrer.event_id}
    )
    good = referral_events_pb2.ReferralConverted(
        event_id=uuid.uuid4().hex, referrer_id=user, product="credit_card", occurred_at=stamp()
    )
    await js.publish("referral.v1.converted", good.SerializeToString(), headers={MSG_ID_HEADER: good.event_id})

    async def parked() -> list[ParkedEvent]:
        rows = await points.host.db.run(lambda s: list(s.exec(select(ParkedEvent))))
        return rows if len(rows) >= 2 else []

    rows = await eventually(parked)
    reasons = {row.event_id: row.error for row in rows}
    assert "not a valid alliance.v1.ReferralConverted" in reasons[poison_id]
    assert "referrer_id: is required" in reasons[no_referrer.event_id]
    await eventually(lambda: _balance_is(points, user, 50))


async def _balance_is(points: PointsUnderTest, user: str, expected: int) -> bool:
    return await balance(points, user) == expected
