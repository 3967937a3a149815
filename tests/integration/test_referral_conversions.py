"""Conversions over real gRPC and NATS on SQLite and PostgreSQL: rewarded, held under review,
released on approval, revoked on rejection; business.v1.completed consumed once however often
it is delivered; leaderboards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import nats.js
import pytest
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from sqlmodel import select

from alliance.v1 import business_events_pb2, referral_events_pb2
from alliance.v1 import referral_pb2 as api
from services.foundation.db import Database
from services.foundation.inbox import ParkedEvent
from tests.integration.conftest import ReferralUnderTest
from tests.support import eventually


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stamp(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


async def events_about(js: nats.js.JetStreamContext, subject: str, message_type, referred: str) -> list:  # type: ignore[no-untyped-def]
    found = []
    sub = await js.subscribe(subject, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            try:
                event = message_type.FromString(msg.data)
            except DecodeError:  # other tests publish bad payloads on these subjects on purpose
                continue
            if event.referred_id == referred:
                found.append(event)
    finally:
        await sub.unsubscribe()
    return found


async def convert(
    referral: ReferralUnderTest, user: str, product: str = "loan", ref: str | None = None
) -> api.Conversion:
    reply = await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=ref or uid("biz"), user_id=user, product=product)
    )
    return reply.conversion


async def test_a_conversion_rewards_the_referrer_once(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    alice, bob = uid("alice"), uid("bob")
    await referral.refer(alice, bob)
    ref = uid("loan")
    first = await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=ref, user_id=bob, product="loan", attributes={"branch": "b1"})
    )
    assert first.conversion.state == api.CONVERSION_STATE_REWARDED and not first.replayed
    assert [(r.referrer_id, r.level) for r in first.conversion.rewards] == [(alice, 1)]
    again = await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=ref, user_id=bob, product="loan", attributes={"branch": "b1"})
    )
    assert again.replayed and again.conversion.conversion_id == first.conversion.conversion_id
    with pytest.raises(grpc.aio.AioRpcError) as clash:
        await referral.stub.RecordConversion(
            api.RecordConversionRequest(business_ref=ref, user_id=bob, product="credit_card")
        )
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS and "business_ref" in clash.value.details()

    converted = await eventually(
        lambda: events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, bob)
    )
    assert len(converted) == 1
    event = converted[0]
    assert (event.referrer_id, event.product, event.level, event.conversion_id) == (
        alice,
        "loan",
        1,
        first.conversion.conversion_id,
    )
    assert event.event_id == first.conversion.rewards[0].event_id and event.attributes["branch"] == "b1"

    stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=alice))
    assert (stats.size, stats.depth, [(c.product, c.conversions) for c in stats.conversions]) == (1, 1, [("loan", 1)])


async def test_conversion_of_a_user_without_referrer_is_unattributed(referral: ReferralUnderTest) -> None:
    root = uid("root")
    await referral.code(root)
    assert (await convert(referral, root)).state == api.CONVERSION_STATE_UNATTRIBUTED
    assert (await convert(referral, uid("stranger"))).state == api.CONVERSION_STATE_UNATTRIBUTED


async def test_held_until_approved_then_rewarded(referral: ReferralUnderTest, js: nats.js.JetStreamContext) -> None:
    boss = uid("boss")
    code = await referral.code(boss)
    users = [uid() for _ in range(6)]
    links = [(await referral.register(u, code)).link for u in users]
    flagged = links[5].user_id
    assert links[5].state == api.LINK_STATE_UNDER_REVIEW
    held = await convert(referral, flagged, "credit_card")
    assert held.state == api.CONVERSION_STATE_HELD and not held.rewards
    assert await events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, flagged) == []

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await referral.stub.ReviewLink(api.ReviewLinkRequest(user_id=flagged, decision=api.REVIEW_DECISION_APPROVE))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and missing.value.details().startswith("reviewer")
    approved = await referral.stub.ReviewLink(
        api.ReviewLinkRequest(
            user_id=flagged, decision=api.REVIEW_DECISION_APPROVE, reviewer="ops-li", note="known family"
        )
    )
    assert approved.conversions_released == 1 and approved.link.state == api.LINK_STATE_ACTIVE
    assert approved.link.reviewed_by == "ops-li"
    again = await referral.stub.ReviewLink(
        api.ReviewLinkRequest(user_id=flagged, decision=api.REVIEW_DECISION_APPROVE, reviewer="ops-li")
    )
    assert again.replayed and again.conversions_released == 0
    converted = await eventually(
        lambda: events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, flagged)
    )
    assert [(e.referrer_id, e.product) for e in converted] == [(boss, "credit_card")]
    queue = await referral.stub.ListReviews(api.ListReviewsRequest())
    assert flagged not in {link.user_id for link in queue.links}


async def test_rejecting_a_link_revokes_exactly_its_rewards(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    alice, bob, carol = uid("alice"), uid("bob"), uid("carol")
    await referral.refer(alice, bob)
    await referral.refer(bob, carol)
    loan, card = await convert(referral, bob, "loan"), await convert(referral, bob, "credit_card")
    kept = await convert(referral, carol, "loan")  # rewards bob, not through alice <- bob
    rejected = await referral.stub.ReviewLink(
        api.ReviewLinkRequest(
            user_id=bob, decision=api.REVIEW_DECISION_REJECT, reviewer="ops-wang", note="fake account"
        )
    )
    assert rejected.conversions_revoked == 2 and rejected.link.state == api.LINK_STATE_REJECTED
    revoked = await eventually(
        lambda: events_about(js, "referral.v1.conversion_revoked", referral_events_pb2.ConversionRevoked, bob)
    )
    assert {e.conversion_id for e in revoked} == {loan.conversion_id, card.conversion_id}
    assert {r.converted_event_id for e in revoked for r in e.rewards} == {
        loan.rewards[0].event_id,
        card.rewards[0].event_id,
    }
    assert await events_about(js, "referral.v1.conversion_revoked", referral_events_pb2.ConversionRevoked, carol) == []
    assert kept.rewards[0].referrer_id == bob

    # bob and carol left alice's tree; bob cannot be linked again.
    stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=alice))
    assert (stats.size, stats.depth, list(stats.conversions)) == (0, 0, [])
    path = await referral.stub.GetPathToRoot(api.GetPathToRootRequest(user_id=carol))
    assert [s.user_id for s in path.ancestors] == [bob]
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await referral.refer(uid("other"), bob)
    assert again.value.details().startswith("ALREADY_REFERRED") and "rejected" in again.value.details()
    assert (await convert(referral, bob)).state == api.CONVERSION_STATE_UNATTRIBUTED


async def test_business_completed_redelivered_converts_once(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    await js.add_stream(name="BUSINESS", subjects=["business.v1.>"])
    alice, bob = uid("alice"), uid("bob")
    await referral.refer(alice, bob)
    event = business_events_pb2.BusinessCompleted(
        event_id=uid("evt"),
        user_id=bob,
        product="loan",
        business_ref=uid("core"),
        occurred_at=stamp(datetime.now(UTC) - timedelta(minutes=1)),
    )
    for copy in range(3):  # the same event three times, as a publisher retrying without dedupe would
        await js.publish(
            "business.v1.completed", event.SerializeToString(), headers={"Nats-Msg-Id": f"{event.event_id}-{copy}"}
        )
    # The same business also reported by RecordConversion: still one conversion.
    converted = await eventually(
        lambda: events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, bob)
    )
    assert len(converted) == 1 and converted[0].referrer_id == alice
    direct = await referral.stub.RecordConversion(
        api.RecordConversionRequest(
            business_ref=event.business_ref, user_id=bob, product="loan", occurred_at=event.occurred_at
        )
    )
    assert direct.replayed and direct.conversion.conversion_id == converted[0].conversion_id

    async def consumed() -> bool:
        assert js is not None
        info = await js.consumer_info("BUSINESS", "referral-business-v1-completed")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(consumed)
    assert len(await events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, bob)) == 1


async def test_leaderboards_rank_customers_and_employees_apart(referral: ReferralUnderTest) -> None:
    stars = {uid("c1"): 3, uid("c2"): 1, uid("c3"): 3}
    staff = uid("e1")
    for partner, count in stars.items():
        for _ in range(count):
            user = uid()
            await referral.refer(partner, user)
            await convert(referral, user)
    await referral.code(staff, api.USER_KIND_EMPLOYEE)
    staff_user = uid()
    await referral.register(staff_user, await referral.code(staff))
    await convert(referral, staff_user)

    board = await referral.stub.GetLeaderboard(api.GetLeaderboardRequest(period=api.PERIOD_ALL, top=100))
    mine = [(e.rank, e.user_id, e.conversions) for e in board.entries if e.user_id in stars]
    first, second = sorted(u for u, c in stars.items() if c == 3)
    ranks = {u: r for r, u, _ in mine}
    assert ranks[first] == ranks[second] and ranks[first] < ranks[next(u for u, c in stars.items() if c == 1)]
    assert staff not in {e.user_id for e in board.entries}
    employees = await referral.stub.GetLeaderboard(
        api.GetLeaderboardRequest(period=api.PERIOD_MONTH, kind=api.USER_KIND_EMPLOYEE, campaign="spring-push", top=100)
    )
    assert staff in {e.user_id for e in employees.entries}
    assert employees.period_key == datetime.now(UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Shanghai")
    ).strftime("%Y-%m")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await referral.stub.GetLeaderboard(api.GetLeaderboardRequest(campaign="no-such"))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and unknown.value.details().startswith("campaign")


async def test_concurrent_reports_of_one_business_make_one_conversion(referral: ReferralUnderTest) -> None:
    alice, bob = uid("alice"), uid("bob")
    await referral.refer(alice, bob)
    request = api.RecordConversionRequest(business_ref=uid("same"), user_id=bob, product="loan")
    replies = await asyncio.gather(*(referral.stub.RecordConversion(request) for _ in range(20)))
    assert len({r.conversion.conversion_id for r in replies}) == 1
    assert sorted(r.replayed for r in replies) == [False] + [True] * 19
    stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=alice))
    assert [(c.product, c.conversions) for c in stats.conversions] == [("loan", 1)]


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ({"amount": "5000"}, "attributes[amount]: is reserved"),
        ({"level": "2"}, "attributes[level]: is reserved"),
        ({"Branch-ID": "b1"}, "attributes[Branch-ID]: name must be lower_snake_case"),
        ({"branch": "x" * 257}, "attributes[branch]: is longer than 256"),
    ],
)
async def test_conversion_attributes_follow_the_rules_points_applies(
    referral: ReferralUnderTest, attributes: dict[str, str], problem: str
) -> None:
    """What referral passes on in referral.v1.converted, points must accept: refused here first."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await referral.stub.RecordConversion(
            api.RecordConversionRequest(business_ref=uid("b"), user_id=uid(), product="loan", attributes=attributes)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith(problem)


async def test_one_business_by_call_then_event_is_one_conversion(
    referral: ReferralUnderTest, js: nats.js.JetStreamContext
) -> None:
    """The call without a time (the README's example), core banking's event with one and more
    attributes: the same business, not a conflict to park."""
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.add_stream(name="BUSINESS", subjects=["business.v1.>"])
    alice, bob = uid("alice"), uid("bob")
    await referral.refer(alice, bob)
    ref = uid("core")
    first = await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=ref, user_id=bob, product="loan")
    )
    event = business_events_pb2.BusinessCompleted(
        event_id=uid("evt"),
        user_id=bob,
        product="loan",
        business_ref=ref,
        attributes={"branch": "b7"},
        occurred_at=stamp(datetime.now(UTC) - timedelta(minutes=3)),
    )
    await js.publish("business.v1.completed", event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id})

    async def consumed() -> bool:
        info = await js.consumer_info("BUSINESS", "referral-business-v1-completed")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(consumed)
    db = Database(referral.settings.database_url)
    try:
        parked = await db.read(
            lambda s: s.exec(select(ParkedEvent).where(ParkedEvent.event_id == event.event_id)).all()
        )
    finally:
        db.close()
    assert parked == []
    converted = await events_about(js, "referral.v1.converted", referral_events_pb2.ReferralConverted, bob)
    assert [e.conversion_id for e in converted] == [first.conversion.conversion_id]
