"""Request validation: every bad field is named with its problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from alliance.v1 import points_pb2 as api
from services.foundation import validation
from services.foundation.errors import InvalidArgument
from services.points import commands
from services.points.points_api import earn_command

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def good_earn(**changes: object) -> api.EarnRequest:
    request = api.EarnRequest(idempotency_key="k", user_id="u1", event_type="merchant.spend", amount="12.50")
    request.occurred_at.FromDatetime(datetime.now(UTC))
    for key, value in changes.items():
        setattr(request, key, value)
    return request


def test_a_good_earn_passes() -> None:
    cmd = earn_command(good_earn())
    assert cmd.amount is not None and str(cmd.amount) == "12.50" and cmd.event_type == "merchant.spend"


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"idempotency_key": ""}, "idempotency_key", "is required"),
        ({"idempotency_key": "x" * 129}, "idempotency_key", "longer than 128"),
        ({"user_id": "  "}, "user_id", "is required"),
        ({"event_type": "Merchant Spend"}, "event_type", "must look like"),
        ({"amount": "-1"}, "amount", "must not be negative"),
        ({"amount": "abc"}, "amount", "not a decimal"),
        ({"amount": "NaN"}, "amount", "finite"),
        ({"amount": "1.234"}, "amount", "2 decimal places"),
        ({"amount": "\uff11\uff12\uff13"}, "amount", "ASCII digits"),
        ({"amount": "1_000"}, "amount", "not a decimal"),
    ],
)
def test_bad_earn_fields_are_named(changes: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        earn_command(good_earn(**changes))
    assert caught.value.field == field and problem in caught.value.problem


def test_missing_and_future_times_are_refused() -> None:
    request = good_earn()
    request.ClearField("occurred_at")
    with pytest.raises(InvalidArgument, match="occurred_at: is required"):
        earn_command(request)
    future = good_earn()
    future.occurred_at.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="occurred_at: is in the future"):
        earn_command(future)


def test_reserved_and_malformed_attributes() -> None:
    with pytest.raises(InvalidArgument, match=r"attributes\[amount\]: is reserved"):
        commands.attributes({"amount": "5"})
    with pytest.raises(InvalidArgument, match=r"attributes\[Bad-Key\]"):
        commands.attributes({"Bad-Key": "x"})


def test_an_earn_is_hashed_by_its_validated_values() -> None:
    plain = good_earn(amount="50")
    spelled = good_earn(amount=" 50.00 ", user_id=" u1 ", idempotency_key="k ")
    spelled.occurred_at.CopyFrom(plain.occurred_at)
    assert earn_command(plain).request_hash == earn_command(spelled).request_hash
    spelled.amount = "50.01"
    assert earn_command(plain).request_hash != earn_command(spelled).request_hash


@pytest.mark.parametrize("text", ["0", "12", "12.5", "12.50", " 12.50 ", "1000000000000"])
def test_amounts_in_ascii_digits_pass(text: str) -> None:
    assert validation.amount(text) == Decimal(text.strip())


@pytest.mark.parametrize(
    "text",
    # Full-width, Arabic-Indic, Devanagari and mixed digits, then what Decimal() reads but a till never writes.
    [
        "\uff11\uff12\uff13",
        "\u0661\u0662\u0663",
        "\u0967\u0968\u0969",
        "12\uff13",
        "1_000",
        "1e3",
        "1E3",
        "+5",
        ".5",
        "5.",
        "0x10",
        "12 50",
        "Infinity",
        "\u22121",
    ],
)
def test_amounts_other_than_ascii_digits_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.amount(text, "aum")
    assert caught.value.field == "aum"


def test_amounts_are_at_most_max_points() -> None:
    with pytest.raises(InvalidArgument, match="amount: must be at most"):
        validation.amount(str(commands.MAX_POINTS + 1))


def test_ids_are_stored_in_one_spelling_nfc() -> None:
    nfd = "jose\u0301"  # "e" + combining acute accent
    assert validation.required_text(f" {nfd} ", "user_id") == "jos\u00e9"
    assert validation.required_text("jos\u00e9", "user_id") == "jos\u00e9"
    # The limit is on the stored (NFC) spelling: 64 NFD characters that are 32 once composed fit.
    assert validation.required_text("e\u0301" * 32, "user_id") == "\u00e9" * 32
    with pytest.raises(InvalidArgument, match="user_id: is longer than 64"):
        validation.required_text("\u00e9" * 65, "user_id")
