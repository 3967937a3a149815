"""The Points API over real gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from alliance.v1 import points_pb2 as api
from services.points import ledger
from services.points.expiry import sweep_expired
from tests.support import (
    SHORT_LIVED,
    PointsUnderTest,
    earn_request,
    eventually,
    redeem_request,
    reverse_request,
    write_campaign,
)


async def ledger_sum(points: PointsUnderTest, user: str) -> int:
    return await points.host.db.run(lambda s: ledger.ledger_sum(s, user))


async def test_earn_awards_by_rule_and_lists_the_entry(points: PointsUnderTest, user: str) -> None:
    reply = await points.stub.Earn(earn_request(user, product="loan"))
    assert reply.points == 100 and reply.balance == 100 and not reply.replayed
    [award] = reply.awards
    assert (award.campaign_id, award.rule_id, award.points) == ("test-referral", "loan", 100)
    assert len(award.rule_version) == 12 and award.HasField("expires_at")

    spend = await points.stub.Earn(earn_request(user, event_type="merchant.spend", product="", amount="238.50"))
    assert spend.points == 23 and spend.balance == 123  # 1 point per 10 CNY, rounded down

    page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=user))
    assert [e.points for e in page.entries] == [23, 100]  # newest first
    assert page.entries[1].campaign_id == "test-referral" and page.entries[1].rule_id == "loan"
    assert page.entries[1].transaction_id == reply.transaction_id
    balance = await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))
    assert balance.balance == 123 == await ledger_sum(points, user)


async def test_event_that_matches_no_rule_awards_nothing(points: PointsUnderTest, user: str) -> None:
    reply = await points.stub.Earn(earn_request(user, product="umbrella"))
    assert reply.points == 0 and not reply.awards and reply.transaction_id


async def test_same_key_replays_and_different_payload_is_already_exists(points: PointsUnderTest, user: str) -> None:
    request = earn_request(user, key="k-1")
    first = await points.stub.Earn(request)
    again = await points.stub.Earn(request)
    assert again.replayed and again.transaction_id == first.transaction_id and again.balance == 50
    changed = earn_request(user, key="k-1", product="loan")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await points.stub.Earn(changed)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency_key" in caught.value.details()
    assert (await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))).balance == 50


async def test_concurrent_duplicate_earns_award_once(points: PointsUnderTest, user: str) -> None:
    request = earn_request(user, key="dup-1", product="loan")
    replies = await asyncio.gather(*(points.stub.Earn(request) for _ in range(20)))
    assert len({r.transaction_id for r in replies}) == 1
    assert sum(not r.replayed for r in replies) == 1
    assert (await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))).balance == 100
    assert await ledger_sum(points, user) == 100


async def test_200_concurrent_earns_and_redeems_keep_balance_equal_to_ledger(
    points: PointsUnderTest, user: str
) -> None:
    earned: list[int] = []
    redeemed: list[int] = []
    balances: list[int] = []

    async def earn() -> None:
        reply = await points.stub.Earn(earn_request(user, product="credit_card"))
        earned.append(reply.points)
        balances.append(reply.balance)

    async def redeem() -> None:
        try:
            reply = await points.stub.Redeem(redeem_request(user, 70))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            return
        redeemed.append(reply.points)
        balances.append(reply.balance)

    for _ in range(3):  # a starting balance, so redemptions can win however the calls interleave
        await points.stub.Earn(earn_request(user, product="loan"))
    await asyncio.gather(*(earn() if i % 2 == 0 else redeem() for i in range(200)))
    final = (await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))).balance
    assert min(balances) >= 0
    assert final == 300 + sum(earned) - sum(redeemed) == await ledger_sum(points, user)
    assert 300 + sum(earned) == 1000  # the daily cap of the test campaign, reached exactly
    assert redeemed and final >= 0


async def test_redeem_without_enough_points_writes_nothing(points: PointsUnderTest, user: str) -> None:
    await points.stub.Earn(earn_request(user))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await points.stub.Redeem(redeem_request(user, 51))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "balance" in caught.value.details()
    page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=user))
    assert len(page.entries) == 1
    ok = await points.stub.Redeem(redeem_request(user, 50, key="r-1"))
    assert ok.balance == 0 and (await points.stub.Redeem(redeem_request(user, 50, key="r-1"))).replayed


async def test_redeem_spends_soonest_expiring_points_first(points: PointsUnderTest, user: str) -> None:
    write_campaign(points.rules_dir, "short-lived", SHORT_LIVED)
    await points.reload_rules()
    await points.stub.Earn(earn_request(user, product="loan"))  # 100, expires in a year
    await points.stub.Earn(earn_request(user, event_type="social.liked", product=""))  # 5, expires tomorrow
    await points.stub.Redeem(redeem_request(user, 5))
    balance = await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))
    assert balance.balance == 100 and balance.expiring_soon == 0  # the short-lived lot was spent


async def test_expired_points_are_not_spendable_and_are_written_off(points: PointsUnderTest, user: str) -> None:
    write_campaign(points.rules_dir, "short-lived", SHORT_LIVED)
    await points.reload_rules()
    # Points that expire three seconds after they are earned (points already expired when earned are
    # not awarded at all: test_points_defects.py).
    soon = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=3)
    assert (await points.stub.Earn(earn_request(user, event_type="social.liked", product="", when=soon))).points == 5

    async def expired() -> bool:
        return (await points.stub.GetBalance(api.GetBalanceRequest(user_id=user))).balance == 0

    await eventually(expired)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await points.stub.Redeem(redeem_request(user, 5))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await sweep_expired(points.host.db) >= 1
    page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=user))
    assert [e.kind for e in page.entries] == [api.ENTRY_KIND_EXPIRE, api.ENTRY_KIND_EARN]
    assert page.entries[0].points == -5
    assert await ledger_sum(points, user) == 0


async def test_clawback_refund_and_partial_policy(points: PointsUnderTest, user: str) -> None:
    loan = await points.stub.Earn(earn_request(user, product="loan"))  # +100
    card = await points.stub.Earn(earn_request(user, product="credit_card"))  # +50
    part = await points.stub.Reverse(reverse_request(card.transaction_id, points=20))
    assert (part.points, part.balance) == (-20, 130)
    rest = await points.stub.Reverse(reverse_request(card.transaction_id))
    assert (rest.points, rest.balance) == (-30, 100)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await points.stub.Reverse(reverse_request(card.transaction_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "fully reversed" in caught.value.details()

    order = await points.stub.Redeem(redeem_request(user, 80))  # balance 20
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await points.stub.Reverse(reverse_request(loan.transaction_id))  # 100 > balance 20
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "allow_partial" in caught.value.details()
    partial = await points.stub.Reverse(reverse_request(loan.transaction_id, allow_partial=True))
    assert (partial.points, partial.shortfall, partial.balance) == (-20, 80, 0)

    refund = await points.stub.Reverse(reverse_request(order.transaction_id, points=30))
    assert (refund.points, refund.balance) == (30, 30)
    # The rest of the loan's clawback can be collected later, once the balance allows.
    later = await points.stub.Reverse(reverse_request(loan.transaction_id, points=30))
    assert (later.points, later.balance) == (-30, 0)
    assert await ledger_sum(points, user) == 0


async def test_reverse_of_a_reversal_or_unknown_transaction(points: PointsUnderTest, user: str) -> None:
    card = await points.stub.Earn(earn_request(user))
    reversal = await points.stub.Reverse(reverse_request(card.transaction_id))
    for target, code in (
        (reversal.transaction_id, grpc.StatusCode.FAILED_PRECONDITION),
        ("0" * 32, grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await points.stub.Reverse(reverse_request(target))
        assert caught.value.code() == code and "transaction_id" in caught.value.details()


async def test_caps_and_budget_limit_awards_and_say_so(points: PointsUnderTest, user: str) -> None:
    write_campaign(
        points.rules_dir,
        "capped",
        """\
        campaign: capped
        title: Small cap and budget
        active: {from: 2020-01-01}
        points:
          budget: 100
          caps: {per_user_per_day: 60}
          rules:
            - id: share
              when: {event: social.shared}
              award: 25
        """,
    )
    await points.reload_rules()
    got = [
        (await points.stub.Earn(earn_request(user, event_type="social.shared", product=""))).points for _ in range(4)
    ]
    assert got == [25, 25, 10, 0]
    other = user + "-b"
    replies = [await points.stub.Earn(earn_request(other, event_type="social.shared", product="")) for _ in range(3)]
    assert [r.points for r in replies] == [25, 15, 0]  # budget 100 = 60 (first user) + 40
    assert replies[1].awards[0].limited_by == "campaign budget exhausted"
    assert any("budget exhausted" in n for n in replies[2].notices)


async def test_pages_of_the_ledger(points: PointsUnderTest, user: str) -> None:
    for _ in range(7):
        await points.stub.Earn(earn_request(user))
    seen, token = [], ""
    while True:
        page = await points.stub.ListLedger(api.ListLedgerRequest(user_id=user, page_size=3, page_token=token))
        seen += [int(e.entry_id) for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 7 and seen == sorted(seen, reverse=True)


async def test_a_broken_rule_file_leaves_the_last_good_version_in_force(points: PointsUnderTest, user: str) -> None:
    from services.foundation.rules.directory import REJECTIONS
    from tests.support import TEST_CAMPAIGN

    rejected_before = REJECTIONS.labels("campaigns", str(points.rules_dir / "campaigns" / "test-referral.yaml"))
    before = rejected_before._value.get()
    write_campaign(points.rules_dir, "test-referral", TEST_CAMPAIGN.replace("award: 100", "award: -5"))
    await points.reload_rules()
    assert (await points.stub.Earn(earn_request(user, product="loan"))).points == 100  # the old terms
    assert rejected_before._value.get() == before + 1

    write_campaign(points.rules_dir, "test-referral", TEST_CAMPAIGN.replace("award: 100", "award: 120"))
    await points.reload_rules()
    assert (await points.stub.Earn(earn_request(user, product="loan"))).points == 120  # the fixed file
