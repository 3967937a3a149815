"""Request validation shared by every service: each problem is an InvalidArgument naming the
field, so a caller's operator reads "occurred_at: is in the future (...)" in their own logs."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from services.foundation.errors import InvalidArgument

MAX_KEY = 128  # idempotency keys
MAX_ID = 64  # ids of users, customers, merchants, orders
MAX_AMOUNT = 10**12
# [0-9], not \d: \d also matches full-width and other scripts' digits.
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")

# Times outside these years are typing mistakes, not business (protobuf allows years 1-9999).
EARLIEST_YEAR, LATEST_YEAR = 2000, 2100
# A time stamped this far ahead of the server clock is refused where the future is not allowed:
# an event from the future could reach a campaign that has not started yet.
CLOCK_SKEW = timedelta(minutes=5)


def timestamp(
    value: Timestamp,
    name: str,
    *,
    present: bool,
    now: datetime,
    required: bool = True,
    future: bool = True,
) -> datetime:
    """An aware UTC datetime from a Timestamp field. Absent: refused if `required`, else `now`.
    `future=False` refuses times past the server clock (beyond CLOCK_SKEW)."""
    if not present:
        if required:
            raise InvalidArgument(name, "is required")
        return now
    if value.nanos < 0 or value.nanos > 999_999_999:
        raise InvalidArgument(name, "has nanos out of range")
    try:
        when = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(name, f"is not a valid time ({error})") from error
    if not EARLIEST_YEAR <= when.year <= LATEST_YEAR:
        raise InvalidArgument(name, f"must be between the years {EARLIEST_YEAR} and {LATEST_YEAR}")
    if not future and when > now + CLOCK_SKEW:
        raise InvalidArgument(name, f"is in the future ({when.isoformat()} > server time {now.isoformat()})")
    return when


# -- text and amounts ----------------------------------------------------------------------------


def required_text(value: str, name: str, max_len: int = MAX_ID) -> str:
    """Trimmed and in Unicode NFC, so an id has one spelling: an accented letter sent precomposed
    (U+00E9) or decomposed (e + U+0301, NFD, as some systems send it) is one user, not two accounts."""
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise InvalidArgument(name, "is required")
    if len(value) > max_len:
        raise InvalidArgument(name, f"is longer than {max_len} characters")
    if not value.isprintable():
        raise InvalidArgument(name, "contains control characters")
    return value


def amount(value: str, name: str = "amount", *, maximum: int = MAX_AMOUNT) -> Decimal | None:
    """An amount written as ASCII digits with an optional point and up to 2 decimals ("12.50");
    None when blank. Decimal() alone also reads full-width digits (U+FF10-U+FF19), "1_000",
    "1e3", "+5": a wrong keyboard or a typo, which must not become money."""
    text = value.strip()
    if not text:
        return None
    if not _AMOUNT.fullmatch(text):
        raise InvalidArgument(name, _amount_problem(text))
    parsed = Decimal(text)
    if parsed > maximum:
        raise InvalidArgument(name, f"must be at most {maximum}")
    return parsed


def _amount_problem(text: str) -> str:
    if not text.isascii():
        return f"{text!r} must be written with ASCII digits 0-9"
    if re.fullmatch(r"-[0-9]+(\.[0-9]+)?", text):
        return "must not be negative"
    if text.lstrip("+-").lower() in ("nan", "snan", "inf", "infinity"):
        return "must be a finite number"
    if re.fullmatch(r"[0-9]+\.[0-9]{3,}", text):
        return "has more than 2 decimal places"
    return f"{text!r} is not a decimal number (digits 0-9, then optionally '.' and 1 or 2 digits, like 12.50)"


# -- attributes of business events -------------------------------------------------------------

_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE = 256


def attributes(
    values: Mapping[str, str], *, reserved: frozenset[str] = frozenset(), name: str = "attributes"
) -> dict[str, str]:
    """Free-form attributes of a business event (product, branch, channel, ...), the same rules in
    every service: they travel from one to the next in events, and what one accepts the next must
    too. Names are lower_snake_case; `reserved` names are set by the service itself."""
    if len(values) > MAX_ATTRIBUTES:
        raise InvalidArgument(name, f"has more than {MAX_ATTRIBUTES} entries")
    checked = {}
    for key, value in values.items():
        if not _ATTRIBUTE_NAME.fullmatch(key) or len(key) > MAX_ID:
            raise InvalidArgument(f"{name}[{key}]", "name must be lower_snake_case, at most 64 characters")
        if key in reserved:
            raise InvalidArgument(f"{name}[{key}]", f"is reserved (set by the service: {', '.join(sorted(reserved))})")
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise InvalidArgument(f"{name}[{key}]", f"is longer than {MAX_ATTRIBUTE_VALUE} characters")
        checked[key] = value
    return checked


# -- pages ---------------------------------------------------------------------------------------
# Lists are paged by a position (an increasing row id): stable while rows are added, unlike an
# offset. The token is opaque to callers and versioned, so its form can change.

DEFAULT_PAGE = 50
MAX_PAGE = 500


def page_size(value: int, *, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    """A request's page_size: 0 means the default; negative or over the maximum is refused."""
    if value < 0:
        raise InvalidArgument("page_size", "must not be negative")
    if value > maximum:
        raise InvalidArgument("page_size", f"must be at most {maximum}")
    return value or default


def page_token(position: int | None) -> str:
    """The next_page_token for a position; empty when there is no next page."""
    if position is None:
        return ""
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode()


def page_position(token: str) -> int | None:
    """The position a page_token stands for; None for the first page."""
    if not token:
        return None
    try:
        version, value = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if version != "v1":
            raise ValueError(version)
        position = int(value)
        if not 0 <= position < 2**63:  # a database integer
            raise ValueError(value)
        return position
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise InvalidArgument("page_token", "is not a token this service gave out") from error
