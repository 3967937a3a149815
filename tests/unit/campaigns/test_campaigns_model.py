"""Awards, expiry and activity periods of the campaign model."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.points.campaign_file.loader import load_campaign
from services.points.campaign_file.model import Expiry, FixedAward, ProportionalAward

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(
    ("amount", "points"),
    [
        (Decimal("238.50"), 23),  # floor(23.85)
        (Decimal("10"), 1),
        (Decimal("9.99"), 0),
        (Decimal("0"), 0),
        (Decimal("-50"), 0),  # refunds do not earn
        (Decimal("5000"), 200),  # capped by max
        (None, 0),  # a proportional award needs an amount
    ],
)
def test_proportional_award(amount: Decimal | None, points: int) -> None:
    assert ProportionalAward(Decimal("10"), 1, max=200).points_for(amount) == points


def test_proportional_award_with_fractional_unit_and_no_max() -> None:
    award = ProportionalAward(Decimal("2.5"), 3)
    assert award.points_for(Decimal("10")) == 12
    assert award.points_for(Decimal("100000")) == 120000


def test_fixed_award_ignores_the_amount() -> None:
    assert FixedAward(50).points_for(None) == 50
    assert FixedAward(50).points_for(Decimal("1")) == 50


def test_expiry_after_days_keeps_the_local_time() -> None:
    occurred = datetime(2026, 11, 23, 9, 30, tzinfo=SHANGHAI)
    assert Expiry(days=365).expires_at(occurred, SHANGHAI) == datetime(2027, 11, 23, 1, 30, tzinfo=UTC)


def test_expiry_on_a_date_is_the_end_of_that_local_day() -> None:
    expiry = Expiry(on=date(2027, 12, 31))
    occurred = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    # The end of 31 December in Shanghai is 16:00 UTC that day ...
    assert expiry.expires_at(occurred, SHANGHAI) == datetime(2027, 12, 31, 16, 0, tzinfo=UTC)
    # ... and in New York (UTC-5 in winter) it is 05:00 UTC the next day.
    assert expiry.expires_at(occurred, ZoneInfo("America/New_York")) == datetime(2028, 1, 1, 5, 0, tzinfo=UTC)


def test_no_expiry_and_naive_times_refused() -> None:
    assert Expiry().expires_at(datetime(2026, 1, 1, tzinfo=UTC), SHANGHAI) is None
    with pytest.raises(ValueError, match="time zone"):
        Expiry(days=1).expires_at(datetime(2026, 1, 1), SHANGHAI)


def campaign(active: str, timezone: str = "") -> object:
    text = f"campaign: c\ntitle: t\nactive: {active}\n{timezone}"
    return load_campaign("c.yaml", text.encode())


def test_active_period_uses_local_midnight_from_inclusive_until_exclusive() -> None:
    c = campaign("{from: 2026-09-01, until: 2027-03-01}")
    # 2026-09-01 00:00 in Shanghai is 2026-08-31 16:00 UTC.
    assert c.active_from == datetime(2026, 8, 31, 16, 0, tzinfo=UTC)
    assert not c.is_active(datetime(2026, 8, 31, 15, 59, 59, 999999, tzinfo=UTC))
    assert c.is_active(datetime(2026, 8, 31, 16, 0, tzinfo=UTC))
    assert c.is_active(datetime(2026, 9, 1, 0, 0, tzinfo=SHANGHAI))
    assert c.is_active(datetime(2027, 2, 28, 23, 59, 59, tzinfo=SHANGHAI))
    assert not c.is_active(datetime(2027, 3, 1, 0, 0, tzinfo=SHANGHAI))  # until is exclusive
    assert not c.is_active(datetime(2027, 2, 28, 16, 0, tzinfo=UTC))


def test_open_ended_period_and_explicit_offsets() -> None:
    c = campaign("{from: '2026-09-01T08:00:00+08:00'}")
    assert c.active_until is None
    assert c.is_active(datetime(2099, 1, 1, tzinfo=UTC))
    assert not c.is_active(datetime(2026, 8, 31, 23, 59, tzinfo=UTC))
    assert c.is_active(datetime(2026, 9, 1, 0, 0, tzinfo=UTC))


def test_dates_follow_the_campaign_timezone() -> None:
    c = campaign("{from: 2026-09-01}", "timezone: Europe/Berlin\n")
    assert c.active_from == datetime(2026, 8, 31, 22, 0, tzinfo=UTC)  # CEST is UTC+2
    assert c.timezone == ZoneInfo("Europe/Berlin")


def test_is_active_refuses_naive_times() -> None:
    with pytest.raises(ValueError):
        campaign("{from: 2026-09-01}").is_active(datetime(2026, 10, 1))
