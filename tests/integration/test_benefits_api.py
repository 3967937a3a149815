"""Benefits over real gRPC and NATS, on SQLite and PostgreSQL: tiers, peak/off-peak, quotas,
budgets, idempotent claims, hot reload and bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlmodel import col, select

from alliance.v1 import benefits_pb2 as api
from alliance.v1 import customer_events_pb2
from services.foundation.bus import MSG_ID_HEADER
from services.foundation.inbox import InboxEntry
from tests.support import (
    BEIJING,
    CINEMA,
    TUESDAY_EVENING,
    PointsUnderTest,
    claim_request,
    eventually,
    quote_request,
    set_aum,
    stamp,
    write_campaign,
)


async def test_tier_boundary_is_inclusive_at_exactly_100000(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "100000.00")
    gold = await benefits.QuoteDiscount(quote_request(user))
    assert (gold.tier, gold.period, gold.final_amount) == ("gold", "off_peak", "40.00")
    assert [a.offer_id for a in gold.applied] == ["gold-offpeak"] and gold.applied[0].rule_version
    assert "gold" in gold.explanation and gold.beats_public_discount

    await set_aum(benefits, user, "99999.99")
    silver = await benefits.QuoteDiscount(quote_request(user))
    assert (silver.tier, silver.final_amount) == ("silver", "56.00")

    unknown = await benefits.QuoteDiscount(quote_request(user + "-never-reported"))
    assert unknown.tier == "basic" and unknown.final_amount == "80.00" and not unknown.applied


@pytest.mark.parametrize(
    ("at", "period", "final"),
    [
        (datetime(2026, 11, 27, 11, 59, 59, tzinfo=BEIJING), "off_peak", "40.00"),  # Friday before noon
        (datetime(2026, 11, 27, 12, 0, 0, tzinfo=BEIJING), "peak", "64.00"),  # Friday noon
        (datetime(2026, 11, 29, 23, 59, 59, tzinfo=BEIJING), "peak", "64.00"),  # Sunday, last second
        (datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC), "off_peak", "40.00"),  # = Monday 00:00 Beijing
        (datetime(2026, 12, 2, 10, 0, 0, tzinfo=BEIJING), "peak", "64.00"),  # a Wednesday on the holiday list
    ],
)
async def test_peak_and_off_peak_boundaries(benefits, user: str, at: datetime, period: str, final: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "150000")
    reply = await benefits.QuoteDiscount(quote_request(user, at=at))
    assert (reply.period, reply.final_amount) == (period, final)


async def test_alliance_discount_that_does_not_beat_the_public_one_is_flagged(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import REGISTRY

    def counted() -> float:
        sample = "alliance_quotes_not_beating_public_total"
        return REGISTRY.get_sample_value(sample, {"merchant_id": "m-cheap"}) or 0.0

    await set_aum(benefits, user, "150000")
    before = counted()
    reply = await benefits.QuoteDiscount(quote_request(user, merchant="m-cheap"))
    assert reply.final_amount == "40.00" and not reply.beats_public_discount
    assert "does NOT beat the public discount" in reply.explanation
    assert counted() == before + 1
    assert (await benefits.QuoteDiscount(quote_request(user))).beats_public_discount
    assert counted() == before + 1


async def test_exactly_one_of_50_concurrent_claims_gets_the_last_free_ticket(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "60000")  # silver: one free ticket a year
    quote = await benefits.QuoteDiscount(quote_request(user))
    assert quote.free_item_available and quote.free_items_left == 1

    async def claim() -> object:
        try:
            return await benefits.ClaimBenefit(claim_request(user, free=True))
        except grpc.aio.AioRpcError as error:
            return error

    results = await asyncio.gather(*(claim() for _ in range(50)))
    won = [r for r in results if isinstance(r, api.ClaimBenefitResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 49
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in lost)
    after = await benefits.QuoteDiscount(quote_request(user))
    assert not after.free_item_available and after.free_items_left == 0


async def test_budget_exhaustion_refuses_with_the_reason(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "60000")  # silver: 30% off, offer budget 50 CNY
    first = await benefits.ClaimBenefit(claim_request(user))
    second = await benefits.ClaimBenefit(claim_request(user))
    assert first.quote.discount_amount == second.quote.discount_amount == "24.00"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await benefits.ClaimBenefit(claim_request(user))  # 48 + 24 > 50
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "budget" in caught.value.details()


async def test_claims_are_idempotent(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "150000")
    request = claim_request(user, key="claim-1")
    first = await benefits.ClaimBenefit(request)
    again = await benefits.ClaimBenefit(request)
    assert again.replayed and again.claim_id == first.claim_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await benefits.ClaimBenefit(claim_request(user, key="claim-1", amount="90.00"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_rule_file_edit_changes_quotes_without_a_restart(benefits, points: PointsUnderTest, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "150000")
    assert (await benefits.QuoteDiscount(quote_request(user))).final_amount == "40.00"
    write_campaign(points.rules_dir, "test-cinema", CINEMA.replace("rate: 0.50", "rate: 0.25"))
    await points.reload_rules()
    assert (await benefits.QuoteDiscount(quote_request(user))).final_amount == "60.00"


async def test_entitlements_show_tier_and_quota(benefits, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(benefits, user, "150000")
    await benefits.ClaimBenefit(claim_request(user, free=True))
    reply = await benefits.GetEntitlements(api.GetEntitlementsRequest(customer_id=user, at=stamp(TUESDAY_EVENING)))
    assert reply.tier == "gold" and reply.aum == "150000.00"
    [ticket] = [f for f in reply.free_items if f.offer_id == "free-ticket"]
    assert (ticket.per_year, ticket.used, ticket.left) == (2, 1, 1)


async def test_aum_arrives_by_event_and_older_reports_are_ignored(benefits, points, js, user: str) -> None:  # type: ignore[no-untyped-def]
    await js.add_stream(name="CUSTOMER", subjects=["customer.v1.>"])
    now = datetime.now(UTC)
    event_ids = []
    for aum, when in (("250000", now), ("1000", now - timedelta(days=1))):  # the stale one comes last
        event = customer_events_pb2.CustomerAumChanged(
            event_id=uuid.uuid4().hex, customer_id=user, aum=aum, as_of=stamp(when)
        )
        await js.publish("customer.v1.aum_changed", event.SerializeToString(), headers={MSG_ID_HEADER: event.event_id})
        event_ids.append(event.event_id)

    async def both_applied() -> bool:
        # The inbox row commits with the report's unit of work: once both are there, the stale report
        # has been applied (not parked, not still on its way), so the tier below is the final answer.
        query = select(InboxEntry.event_id).where(col(InboxEntry.event_id).in_(event_ids))
        return len(await points.host.db.run(lambda s: list(s.exec(query)))) == 2

    await eventually(both_applied)
    reply = await benefits.GetEntitlements(api.GetEntitlementsRequest(customer_id=user))
    assert reply.tier == "gold" and reply.aum == "250000.00"


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (
            api.QuoteDiscountRequest(customer_id="c", merchant_id="m-cinema", amount="-5"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount",
        ),
        (api.QuoteDiscountRequest(customer_id="c", merchant_id="m-cinema"), grpc.StatusCode.INVALID_ARGUMENT, "amount"),
        (
            api.QuoteDiscountRequest(customer_id="c", merchant_id="m-nowhere", amount="5"),
            grpc.StatusCode.NOT_FOUND,
            "merchant_id",
        ),
        (
            api.QuoteDiscountRequest(customer_id="", merchant_id="m-cinema", amount="5"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "customer_id",
        ),
    ],
)
async def test_bad_quote_input(benefits, request_, code: grpc.StatusCode, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await benefits.QuoteDiscount(request_)
    assert caught.value.code() == code and field in caught.value.details()


async def test_malformed_time_is_invalid_argument(benefits) -> None:  # type: ignore[no-untyped-def]
    request = api.QuoteDiscountRequest(customer_id="c", merchant_id="m-cinema", amount="5")
    request.at.seconds = 10**12  # year ~33000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await benefits.QuoteDiscount(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at" in caught.value.details()


async def test_ops_cli_shows_a_customers_entitlements(benefits, points: PointsUnderTest, user: str, capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from services.cli.benefits_commands import add_benefits_parser

    await set_aum(benefits, user, "150000")
    await benefits.ClaimBenefit(claim_request(user, free=True))
    parser = argparse.ArgumentParser()
    add_benefits_parser(parser.add_subparsers())
    at = TUESDAY_EVENING.isoformat()
    args = parser.parse_args(
        ["benefits", "entitlements", user, "--address", f"127.0.0.1:{points.host.port}", "--at", at]
    )
    assert await asyncio.to_thread(args.func, args) == 0  # a blocking client: off the server's loop
    out = capsys.readouterr().out
    assert f"Customer {user}: tier gold, AUM 150000.00 CNY" in out
    assert "free cinema-ticket (test-cinema/free-ticket): 1 used, 1 left of 2 this year" in out

    args = parser.parse_args(["benefits", "entitlements", "", "--address", f"127.0.0.1:{points.host.port}"])
    assert await asyncio.to_thread(args.func, args) == 1
    assert "INVALID_ARGUMENT: customer_id" in capsys.readouterr().err
