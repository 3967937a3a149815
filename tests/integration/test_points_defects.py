"""Defects of the points service, each checked over real gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlmodel import col, select

from alliance.v1 import benefits_pb2 as benefits_api
from alliance.v1 import benefits_pb2_grpc, points_events_pb2, referral_events_pb2
from alliance.v1 import points_pb2 as api
from services.foundation.bus import MSG_ID_HEADER
from services.foundation.db import utcnow
from services.points import ledger
from services.points.models import CampaignBudget, CampaignUsage, PointLot, PointsAccount, PointsTransaction
from tests.support import (
    CINEMA,
    SHORT_LIVED,
    PointsUnderTest,
    claim_request,
    earn_request,
    ensure_referral_stream,
    eventually,
    published_for,
    redeem_request,
    reverse_request,
    set_aum,
    stamp,
    write_campaign,
)

# -- 1. an award whose points would already have expired is not made ------------------------------

ONE_DAY = """\
campaign: one-day-referral
title: Referral points that last one day, with a budget and a cap
active: {from: 2020-01-01}
points:
  budget: 1000
  caps: {per_user_per_day: 500}
  expiry: {days: 1}
  rules:
    - id: day
      when: {event: referral.converted}
      award: 40
"""


async def get_balance(points: PointsUnderTest, user: str) -> int:
    return (await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))).balance


async def ledger_sum(points: PointsUnderTest, user: str) -> int:
    return await points.host.db.run(lambda s: ledger.ledger_sum(s, user))


async def lots_of(points: PointsUnderTest, user: str) -> list[PointLot]:
    return await points.host.db.run(lambda s: list(s.exec(select(PointLot).where(PointLot.user_id == user))))


async def campaign_use(points: PointsUnderTest, campaign: str, user: str) -> tuple[int, int]:
    """(budget awarded, cap usage of `user`) of a campaign."""

    def read(s):  # type: ignore[no-untyped-def]
        budget = s.get(CampaignBudget, campaign)
        usage = s.exec(
            select(CampaignUsage).where(CampaignUsage.campaign_id == campaign, CampaignUsage.user_id == user)
        )
        return (budget.awarded if budget is not None else 0), sum(u.points for u in usage)

    return await points.host.db.run(read)


def expired_notice(campaign_rule: str, expires_at: datetime) -> str:
    return f"{campaign_rule}: points would have expired at {expires_at.astimezone(UTC).isoformat()}, nothing awarded"


async def test_backdated_earn_awards_nothing_that_would_already_have_expired(
    points: PointsUnderTest,
    js,  # type: ignore[no-untyped-def]
    user: str,
) -> None:
    write_campaign(points.rules_dir, "one-day-referral", ONE_DAY)
    await points.reload_rules()
    three_days_ago = datetime.now(UTC) - timedelta(days=3)

    # A card referral: 50 points for a year (still good) and 40 for a day (gone two days ago).
    reply = await points.stub.Earn(earn_request(user, when=three_days_ago))
    assert [(a.campaign_id, a.points) for a in reply.awards] == [("test-referral", 50)]
    assert reply.points == 50
    assert expired_notice("one-day-referral/day", three_days_ago + timedelta(days=1)) in reply.notices
    # Only the one-day campaign matches this one: nothing at all, but a transaction and a reason.
    nothing = await points.stub.Earn(earn_request(user, product="umbrella", when=three_days_ago))
    assert (nothing.points, list(nothing.awards)) == (0, [])
    assert list(nothing.notices) == [expired_notice("one-day-referral/day", three_days_ago + timedelta(days=1))]

    assert reply.balance == nothing.balance == await get_balance(points, user) == 50 == await ledger_sum(points, user)
    assert await campaign_use(points, "one-day-referral", user) == (0, 0)  # no budget, no cap spent
    assert [(lot.campaign_id, lot.points) for lot in await lots_of(points, user)] == [("test-referral", 50)]
    page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=user))
    assert [(e.kind, e.campaign_id, e.points) for e in page.entries] == [(api.ENTRY_KIND_EARN, "test-referral", 50)]
    # Nothing for the expiry sweep to write off, so no points.v1.expired will follow.
    assert user not in await points.host.db.run(lambda s: ledger.users_with_expired_lots(s, utcnow()))

    async def awarded() -> list:  # type: ignore[type-arg]
        return await published_for(js, "points.v1.awarded", points_events_pb2.PointsAwarded, user)

    [(event, _)] = await eventually(awarded)
    assert (event.transaction_id, event.points, event.balance) == (reply.transaction_id, 50, 50)
    assert [a.campaign_id for a in event.awards] == ["test-referral"]
    assert await published_for(js, "points.v1.expired", points_events_pb2.PointsExpired, user) == []


async def test_backdated_referral_event_awards_nothing_that_would_already_have_expired(
    points: PointsUnderTest,
    js,  # type: ignore[no-untyped-def]
    user: str,
) -> None:
    await ensure_referral_stream(js)
    occurred = datetime.now(UTC) - timedelta(days=400)  # the test campaign's points last 365 days
    event = referral_events_pb2.ReferralConverted(
        event_id=uuid.uuid4().hex, referrer_id=user, referred_id="late", product="loan", occurred_at=stamp(occurred)
    )
    await js.publish("referral.v1.converted", event.SerializeToString(), headers={MSG_ID_HEADER: event.event_id})
    key = f"referral.v1.converted:{event.event_id}"

    async def applied() -> PointsTransaction | None:
        query = select(PointsTransaction).where(PointsTransaction.idempotency_key == key)
        return await points.host.db.run(lambda s: s.exec(query).first())

    txn = await eventually(applied)
    reply = api.EarnResponse.FromString(txn.response)
    assert (txn.points, reply.points, list(reply.awards)) == (0, 0, [])
    assert list(reply.notices) == [expired_notice("test-referral/loan", occurred + timedelta(days=365))]
    assert reply.balance == await get_balance(points, user) == 0 == await ledger_sum(points, user)
    assert await lots_of(points, user) == []
    assert await campaign_use(points, "test-referral", user) == (0, 0)


async def test_earn_reply_balance_leaves_out_points_expired_but_not_yet_swept(
    points: PointsUnderTest,
    js,  # type: ignore[no-untyped-def]
    user: str,
) -> None:
    write_campaign(points.rules_dir, "short-lived", SHORT_LIVED)
    await points.reload_rules()
    # 5 points that expire three seconds from now; the sweep (hourly in tests) will not have run.
    soon = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=3)
    assert (await points.stub.Earn(earn_request(user, event_type="social.liked", product="", when=soon))).points == 5

    async def expired() -> bool:
        return await get_balance(points, user) == 0

    await eventually(expired)
    assert user in await points.host.db.run(lambda s: ledger.users_with_expired_lots(s, utcnow()))  # not swept
    reply = await points.stub.Earn(earn_request(user, product="loan"))
    assert reply.points == 100
    assert reply.balance == await get_balance(points, user) == 100

    async def awarded() -> list:  # type: ignore[type-arg]
        found = await published_for(js, "points.v1.awarded", points_events_pb2.PointsAwarded, user)
        return [event for event, _ in found if event.transaction_id == reply.transaction_id]

    [event] = await eventually(awarded)
    assert event.balance == 100


# -- 2. amounts are ASCII digits, an optional point and up to 2 decimals ----------------------------

# Decimal() reads every one of these; each came from a wrong keyboard or a typo, not from a till.
NOT_ASCII_AMOUNTS = [
    "\uff11\uff12\uff13",  # full-width 123
    "\u0661\u0662\u0663",  # Arabic-Indic 123
    "12\uff13",
    "1_000",
    "1e3",
    "+5",
    ".5",
    "5.",
    "0x10",
    "12 50",
]


async def test_amounts_other_than_ascii_digits_are_refused_naming_the_field(points: PointsUnderTest, user: str) -> None:
    benefits = benefits_pb2_grpc.BenefitsStub(points.channel)
    for text in NOT_ASCII_AMOUNTS:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await points.stub.Earn(earn_request(user, event_type="merchant.spend", product="", amount=text))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text
        assert caught.value.details().startswith("amount: "), caught.value.details()
    full_width_80 = "\uff18\uff10"
    calls = [
        (
            benefits.SetCustomerAum,
            benefits_api.SetCustomerAumRequest(customer_id=user, aum=full_width_80 + "0000", as_of=stamp()),
            "aum",
        ),
        (
            benefits.QuoteDiscount,
            benefits_api.QuoteDiscountRequest(customer_id=user, merchant_id="m", amount=full_width_80),
            "amount",
        ),
        (
            benefits.ClaimBenefit,
            benefits_api.ClaimBenefitRequest(
                idempotency_key="c-1", customer_id=user, merchant_id="m", amount="8\uff10"
            ),
            "amount",
        ),
    ]
    for method, request, field in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert caught.value.details().startswith(f"{field}: "), caught.value.details()
    assert await ledger_sum(points, user) == 0
    assert (await benefits.GetEntitlements(benefits_api.GetEntitlementsRequest(customer_id=user))).aum == ""
    # The same amount in ASCII digits earns.
    ok = await points.stub.Earn(earn_request(user, event_type="merchant.spend", product="", amount="123"))
    assert ok.points == 12


# -- 3. a retry is judged by what it means, not how it is spelled -----------------------------------


async def expect_already_exists(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS, caught.value.details()
    assert "idempotency_key" in caught.value.details()


async def test_a_retry_that_means_the_same_replays_for_every_write(points: PointsUnderTest, user: str) -> None:
    when = datetime.now(UTC) - timedelta(minutes=1)
    spend = earn_request(user, key="e-1", event_type="merchant.spend", product="", amount="50", when=when, shop="a")
    first = await points.stub.Earn(spend)
    assert first.points == 5
    retry = earn_request(f" {user} ", key="e-1 ", event_type="merchant.spend", product="", amount="50.00", when=when)
    retry.attributes["shop"] = "a"
    again = await points.stub.Earn(retry)
    assert again.replayed and again.transaction_id == first.transaction_id
    retry.amount = "50.01"
    await expect_already_exists(points.stub.Earn(retry))

    order = redeem_request(user, 3, key="r-1", order="order-7")
    order.description = "cinema"
    redeemed = await points.stub.Redeem(order)
    order.order_id, order.description, order.user_id = " order-7 ", " cinema ", f"{user} "
    assert (await points.stub.Redeem(order)).transaction_id == redeemed.transaction_id
    order.points = 4
    await expect_already_exists(points.stub.Redeem(order))

    refund = reverse_request(redeemed.transaction_id, points=1, key="v-1")
    reversed_ = await points.stub.Reverse(refund)
    refund.transaction_id, refund.reason = f" {redeemed.transaction_id}", "test reversal  "
    assert (await points.stub.Reverse(refund)).transaction_id == reversed_.transaction_id
    refund.allow_partial = True
    await expect_already_exists(points.stub.Reverse(refund))
    assert await get_balance(points, user) == 5 - 3 + 1 == await ledger_sum(points, user)

    write_campaign(points.rules_dir, "test-cinema", CINEMA)
    await points.reload_rules()
    benefits = benefits_pb2_grpc.BenefitsStub(points.channel)
    await set_aum(benefits, user, "150000")
    claimed = await benefits.ClaimBenefit(claim_request(user, key="c-1", amount="80"))
    spelled = claim_request(f" {user}", key="c-1", amount="80.00")
    spelled.merchant_id += " "
    replayed = await benefits.ClaimBenefit(spelled)
    assert replayed.replayed and replayed.claim_id == claimed.claim_id
    await expect_already_exists(benefits.ClaimBenefit(claim_request(user, key="c-1", amount="90")))
    # Without `at` the claim is at the server's clock, different on each retry: that is not a change.
    now_claim = claim_request(user, key="c-2")
    now_claim.ClearField("at")
    first_claim = await benefits.ClaimBenefit(now_claim)
    retried = await benefits.ClaimBenefit(now_claim)
    assert retried.replayed and retried.claim_id == first_claim.claim_id


# -- 4. one spelling per id: Unicode NFC ------------------------------------------------------------


async def test_nfc_and_nfd_spellings_of_an_id_are_one_account(points: PointsUnderTest, user: str) -> None:
    nfc, nfd = f"{user}-jos\u00e9", f"{user}-jose\u0301"  # "jose" + U+00E9, and "jose" + U+0301
    when = datetime.now(UTC) - timedelta(minutes=1)
    first = await points.stub.Earn(earn_request(nfd, key="caf\u00e9-1", when=when))
    again = await points.stub.Earn(earn_request(nfc, key="cafe\u0301-1", when=when))
    assert again.replayed and again.transaction_id == first.transaction_id
    await points.stub.Earn(earn_request(nfc, product="loan"))
    await points.stub.Redeem(redeem_request(nfd, 30, order="\u00e9t\u00e9-1"))
    assert await get_balance(points, nfc) == await get_balance(points, nfd) == 120
    page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=nfd))
    assert [e.points for e in page.entries] == [-30, 100, 50]

    def accounts(s):  # type: ignore[no-untyped-def]
        return list(s.exec(select(PointsAccount.user_id).where(col(PointsAccount.user_id).startswith(user))))

    assert await points.host.db.run(accounts) == [nfc]
    order = await points.host.db.run(
        lambda s: s.exec(select(PointsTransaction.order_id).where(PointsTransaction.user_id == nfc)).all()
    )
    assert "\u00e9t\u00e9-1" in order

    benefits = benefits_pb2_grpc.BenefitsStub(points.channel)
    await set_aum(benefits, nfd, "120000")
    seen = await benefits.GetEntitlements(benefits_api.GetEntitlementsRequest(customer_id=nfc))
    assert seen.customer_id == nfc and seen.aum == "120000.00"


async def test_refund_into_lots_that_expired_meanwhile_replies_the_balance_get_balance_gives(
    points: PointsUnderTest, user: str
) -> None:
    """A redemption refunded after the points it spent have expired: the points come back
    expired, so the reply's balance (and the event's) must leave them out, as GetBalance does."""
    write_campaign(points.rules_dir, "short-lived", SHORT_LIVED)
    await points.reload_rules()
    soon = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=3)  # expires in 3 s
    assert (await points.stub.Earn(earn_request(user, event_type="social.liked", product="", when=soon))).points == 5
    redeemed = await points.stub.Redeem(redeem_request(user, 5))

    async def lot_expired() -> bool:
        return datetime.now(UTC) > soon + timedelta(days=1)

    await eventually(lot_expired, timeout=10)
    refund = await points.stub.Reverse(reverse_request(redeemed.transaction_id))
    assert refund.points == 5
    assert refund.balance == await get_balance(points, user) == 0
    assert await points.host.db.run(lambda s: ledger.ledger_sum(s, user)) == 0
