"""Points multipliers from benefits offers, applied through Earn over real gRPC, on SQLite and
PostgreSQL: double points off-peak for members, not at peak, not for unknown tiers, caps still hold."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from alliance.v1 import benefits_pb2_grpc
from tests.support import PointsUnderTest, earn_request, set_aum, write_campaign

BEIJING = timezone(timedelta(hours=8))


def last(weekday: int) -> datetime:
    """19:00 Beijing time on the latest past `weekday` (0 = Monday): Earn refuses future times."""
    day = datetime.now(BEIJING).replace(hour=19, minute=0, second=0, microsecond=0) - timedelta(days=7)
    return day + timedelta(days=(weekday - day.weekday()) % 7)


TUESDAY, SATURDAY = last(1), last(5)

DOUBLE_POINTS = """\
campaign: test-double-points
title: Double points at the cinema off-peak
active: {from: 2020-01-01}
timezone: Asia/Shanghai
benefits:
  tiers:
    - {id: basic, min_aum: 0}
    - {id: gold, min_aum: 100000}
  calendar:
    peak:
      weekly:
        - {from: "fri 12:00", until: "sun 24:00"}
  merchants:
    m-cinema: {category: cinema, public_discount: 0, name: Test Cinema}
  offers:
    - id: double-offpeak
      when: {category: cinema, tier: gold, period: off_peak}
      points_multiplier: 2
"""


@pytest.fixture
async def cinema(points: PointsUnderTest) -> benefits_pb2_grpc.BenefitsStub:
    write_campaign(points.rules_dir, "test-double-points", DOUBLE_POINTS)
    await points.reload_rules()
    return benefits_pb2_grpc.BenefitsStub(points.channel)


def spend(user: str, when: datetime, amount: str = "800.00", **attributes: str):  # type: ignore[no-untyped-def]
    attrs = {"merchant_id": "m-cinema", **attributes}
    return earn_request(user, event_type="merchant.spend", product="", amount=amount, when=when, **attrs)


async def test_gold_customers_get_double_points_off_peak(points: PointsUnderTest, cinema, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(cinema, user, "150000")
    reply = await points.stub.Earn(spend(user, TUESDAY))  # the test campaign: 1 point per 10 CNY
    assert reply.points == 160
    [award] = reply.awards
    assert (award.multiplier, award.multiplier_offer) == ("2", "test-double-points/double-offpeak")

    weekend = await points.stub.Earn(spend(user, SATURDAY))
    assert weekend.points == 80 and weekend.awards[0].multiplier == ""


async def test_no_multiplier_below_the_tier_or_without_a_merchant(points: PointsUnderTest, cinema, user: str) -> None:  # type: ignore[no-untyped-def]
    assert (await points.stub.Earn(spend(user, TUESDAY))).points == 80  # AUM never reported: basic
    await set_aum(cinema, user, "150000")
    other = earn_request(user, event_type="merchant.spend", product="", amount="800.00", when=TUESDAY)
    assert (await points.stub.Earn(other)).points == 80  # no merchant, no category: nothing to decide on
    by_category = spend(user, TUESDAY, merchant_id="m-elsewhere", merchant_category="cinema")
    assert (await points.stub.Earn(by_category)).points == 160  # an unlisted cinema, by its category


async def test_caps_hold_for_multiplied_points(points: PointsUnderTest, cinema, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(cinema, user, "150000")
    # The rule awards at most 200 per purchase, doubled to 400; the daily cap is 1000.
    results = [await points.stub.Earn(spend(user, TUESDAY, amount="5000.00")) for _ in range(3)]
    assert [r.points for r in results] == [400, 400, 200]
    assert results[2].awards[0].limited_by


async def test_a_replayed_earn_keeps_its_multiplier(points: PointsUnderTest, cinema, user: str) -> None:  # type: ignore[no-untyped-def]
    await set_aum(cinema, user, "150000")
    request = spend(user, TUESDAY)
    first = await points.stub.Earn(request)
    await set_aum(cinema, user, "1000")  # the customer drops out of gold afterwards
    again = await points.stub.Earn(request)
    assert again.replayed and again.points == first.points == 160
