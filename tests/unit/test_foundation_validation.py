"""Request validation every service shares: each refusal names the field and the problem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.foundation import validation
from services.foundation.errors import InvalidArgument

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def stamp(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


def test_a_timestamp_is_aware_utc() -> None:
    when = validation.timestamp(stamp(NOW), "at", present=True, now=NOW)
    assert when == NOW and when.tzinfo is not None


def test_an_absent_timestamp_is_required_or_now() -> None:
    with pytest.raises(InvalidArgument, match=r"^at: is required$"):
        validation.timestamp(Timestamp(), "at", present=False, now=NOW)
    assert validation.timestamp(Timestamp(), "at", present=False, now=NOW, required=False) == NOW


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (Timestamp(seconds=0, nanos=-1), "has nanos out of range"),
        (Timestamp(seconds=0), "must be between the years 2000 and 2100"),
        (Timestamp(seconds=5_000_000_000), "must be between the years 2000 and 2100"),
    ],
)
def test_malformed_timestamps_are_refused(value: Timestamp, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^occurred_at: {problem}"):
        validation.timestamp(value, "occurred_at", present=True, now=NOW)


def test_the_future_is_refused_only_where_asked_beyond_the_clock_skew() -> None:
    soon = NOW + validation.CLOCK_SKEW - timedelta(seconds=1)
    later = NOW + validation.CLOCK_SKEW + timedelta(seconds=1)
    assert validation.timestamp(stamp(soon), "occurred_at", present=True, now=NOW, future=False) == soon
    assert validation.timestamp(stamp(later), "at", present=True, now=NOW) == later
    with pytest.raises(InvalidArgument, match=r"^occurred_at: is in the future"):
        validation.timestamp(stamp(later), "occurred_at", present=True, now=NOW, future=False)


def test_page_size_defaults_and_bounds() -> None:
    assert validation.page_size(0) == validation.DEFAULT_PAGE
    assert validation.page_size(7) == 7
    with pytest.raises(InvalidArgument, match=r"^page_size: must not be negative$"):
        validation.page_size(-1)
    with pytest.raises(InvalidArgument, match=f"^page_size: must be at most {validation.MAX_PAGE}$"):
        validation.page_size(validation.MAX_PAGE + 1)


def test_page_tokens_round_trip_and_foreign_tokens_are_refused() -> None:
    assert validation.page_token(None) == ""
    assert validation.page_position("") is None
    assert validation.page_position(validation.page_token(12345)) == 12345
    for foreign in ("nonsense", "djI6MTI=", "!!!"):  # not base64; version v2; not even base64 text
        with pytest.raises(InvalidArgument, match=r"^page_token: is not a token this service gave out$"):
            validation.page_position(foreign)


def test_a_page_token_beyond_a_database_integer_is_refused() -> None:
    import base64

    token = base64.urlsafe_b64encode(b"v1:99999999999999999999999").decode()
    with pytest.raises(InvalidArgument, match="page_token"):
        validation.page_position(token)
