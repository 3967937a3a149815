"""Benefit terms as values: tiers by AUM, the peak/off-peak calendar, discounts."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.points.campaign_file.benefits_model import (
    BenefitTerms,
    Calendar,
    DateRange,
    Discount,
    Tier,
    WeeklyRange,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = 24 * 60


def terms() -> BenefitTerms:
    tiers = (
        Tier("basic", Decimal(0)),
        Tier("silver", Decimal(50000)),
        Tier("gold", Decimal(100000)),
        Tier("platinum", Decimal(200000)),
    )
    return BenefitTerms(tiers=tiers, calendar=Calendar(), merchants={}, floor_price=None, offers=())


@pytest.mark.parametrize(
    ("aum", "tier"),
    [
        (None, "basic"),
        (Decimal("0"), "basic"),
        (Decimal("49999.99"), "basic"),
        (Decimal("50000"), "silver"),
        (Decimal("99999.99"), "silver"),
        (Decimal("100000"), "gold"),
        (Decimal("100000.00"), "gold"),
        (Decimal("199999.99"), "gold"),
        (Decimal("200000"), "platinum"),
        (Decimal("99000000"), "platinum"),
        (Decimal("-5"), "basic"),
    ],
)
def test_tier_is_the_highest_whose_min_aum_is_reached(aum: Decimal | None, tier: str) -> None:
    assert terms().tier_for(aum).id == tier


# Friday 12:00 until the end of Sunday, summer holidays, two holidays.
CALENDAR = Calendar(
    weekly=(WeeklyRange(4 * DAY + 12 * 60, 7 * DAY),),
    dates=(DateRange(date(2027, 7, 1), date(2027, 8, 31), "summer"),),
    holidays=frozenset({date(2027, 1, 1), date(2027, 2, 17)}),
)


@pytest.mark.parametrize(
    ("moment", "period"),
    [
        ("2027-01-08T11:59:59+08:00", "off_peak"),  # Friday before noon
        ("2027-01-08T12:00:00+08:00", "peak"),  # Friday noon
        ("2027-01-09T03:00:00+08:00", "peak"),  # Saturday night, across midnight
        ("2027-01-10T23:59:59+08:00", "peak"),  # Sunday, last second
        ("2027-01-11T00:00:00+08:00", "off_peak"),  # Monday, first moment
        ("2027-01-13T19:00:00+08:00", "off_peak"),  # Wednesday evening
        # UTC inputs are converted to Shanghai time: 16:00Z Thursday is Friday 00:00 local.
        ("2027-01-07T16:00:00+00:00", "off_peak"),
        ("2027-01-08T04:00:00+00:00", "peak"),  # Friday 12:00 local
        ("2027-01-08T03:59:59+00:00", "off_peak"),  # Friday 11:59:59 local
        ("2027-01-10T15:59:59+00:00", "peak"),  # Sunday 23:59:59 local
        ("2027-01-10T16:00:00+00:00", "off_peak"),  # Monday 00:00 local
        # date ranges, both ends inclusive, whole local days
        ("2027-06-30T23:59:59+08:00", "off_peak"),  # Wednesday
        ("2027-07-01T00:00:00+08:00", "peak"),  # Thursday, summer
        ("2027-08-31T23:59:59+08:00", "peak"),  # Tuesday, summer
        ("2027-09-01T00:00:00+08:00", "off_peak"),  # Wednesday
        ("2027-06-30T16:00:00+00:00", "peak"),  # 2027-07-01 00:00 local
        # holidays
        ("2027-01-01T09:00:00+08:00", "peak"),  # New Year, a Friday morning
        ("2027-02-17T23:59:59+08:00", "peak"),  # Wednesday holiday
        ("2027-02-18T00:00:00+08:00", "off_peak"),
        ("2027-02-16T16:00:00+00:00", "peak"),  # 2027-02-17 00:00 local
    ],
)
def test_peak_and_off_peak(moment: str, period: str) -> None:
    assert CALENDAR.period_at(datetime.fromisoformat(moment), SHANGHAI) == period


def test_weekly_range_may_wrap_past_the_end_of_the_week() -> None:
    # Sunday 20:00 until Monday 02:00
    calendar = Calendar(weekly=(WeeklyRange(6 * DAY + 20 * 60, 2 * 60),))
    assert calendar.period_at(datetime.fromisoformat("2027-01-10T19:59:00+08:00"), SHANGHAI) == "off_peak"
    assert calendar.period_at(datetime.fromisoformat("2027-01-10T20:00:00+08:00"), SHANGHAI) == "peak"
    assert calendar.period_at(datetime.fromisoformat("2027-01-11T01:59:00+08:00"), SHANGHAI) == "peak"
    assert calendar.period_at(datetime.fromisoformat("2027-01-11T02:00:00+08:00"), SHANGHAI) == "off_peak"


def test_empty_calendar_is_always_off_peak_and_naive_times_are_refused() -> None:
    assert Calendar().period_at(datetime.fromisoformat("2027-01-09T12:00:00+08:00"), SHANGHAI) == "off_peak"
    with pytest.raises(ValueError, match="time zone"):
        CALENDAR.period_at(datetime(2027, 1, 9, 12), SHANGHAI)


@pytest.mark.parametrize(
    ("discount", "amount", "final", "off"),
    [
        (Discount(rate=Decimal("0.5")), "80", "40.00", "40.00"),
        (Discount(rate=Decimal("0.15")), "33.33", "28.33", "5.00"),  # 28.3305 -> 28.33
        (Discount(rate=Decimal("0.5")), "0.05", "0.03", "0.02"),  # 0.025 half up -> 0.03
        (Discount(amount_off=Decimal("20")), "260", "240.00", "20.00"),
        (Discount(amount_off=Decimal("20")), "15", "0.00", "15.00"),  # never below 0
        (Discount(price=Decimal("19.90")), "45", "19.90", "25.10"),
        (Discount(price=Decimal("19.90")), "12", "12.00", "0.00"),  # a price above the amount gives nothing
    ],
)
def test_discount_apply_rounds_half_up_and_never_goes_below_zero(
    discount: Discount, amount: str, final: str, off: str
) -> None:
    assert discount.apply(Decimal(amount)) == Decimal(final)
    assert discount.off(Decimal(amount)) == Decimal(off)


def test_descriptions() -> None:
    assert Discount(rate=Decimal("0.5")).describe() == "50% off"
    assert Discount(rate=Decimal("0.125")).describe() == "12.5% off"
    assert Discount(amount_off=Decimal("20")).describe() == "20.00 CNY off"
    assert Discount(price=Decimal("19.9")).describe() == "price 19.90 CNY"
