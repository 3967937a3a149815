"""Referral settings and codes: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.referral import codes
from services.referral.linking import busiest_window
from services.referral.settings import ReferralSettings

T = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    "template", ["https://m.example/r", "https://m.example/{user}/{code}", "https://m.example/{0}"]
)
def test_a_qr_template_must_hold_the_code_and_nothing_else(template: str) -> None:
    with pytest.raises(ValidationError, match="code"):
        ReferralSettings(qr_url_template=template)


def test_codes_are_typeable_and_forgiving() -> None:
    issued = {codes.new_code() for _ in range(2000)}
    assert len(issued) == 2000 and all(codes.is_well_formed(c) for c in issued)
    assert not set("".join(issued)) & set("01OIL")
    assert codes.normalize(" ab-cd 2345 ") == "ABCD2345"
    assert "codes never contain" in codes.looks_like("ABC0O1IL")


@pytest.mark.parametrize(
    ("others", "expected"),
    [
        ([], 1),
        ([T - timedelta(minutes=1), T + timedelta(minutes=1)], 3),
        ([T - 2 * HOUR, T + 2 * HOUR], 1),
        ([T - timedelta(minutes=50), T + timedelta(minutes=50)], 2),  # no one-hour window holds all three
        ([T - timedelta(minutes=50), T - timedelta(minutes=40), T + timedelta(minutes=50)], 3),
    ],
)
def test_the_busiest_window_counts_registrations_on_both_sides(others: list[datetime], expected: int) -> None:
    assert busiest_window(sorted(others), T, HOUR) == expected
