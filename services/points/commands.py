"""Validated commands: what the gRPC layer and the event consumers hand to the ledger.

Validation lives here, once, so a bad request is refused with the field and the problem before
anything is written, whichever door it came in by.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.foundation.errors import InvalidArgument
from services.foundation.idempotency import command_hash
from services.points.campaigns.evaluation import EarnEvent

MAX_KEY = 128
MAX_ID = 64
MAX_POINTS = 10**12
# Events stamped this far ahead of the server clock are refused: a future time could reach a
# campaign that has not started yet.
CLOCK_SKEW = timedelta(minutes=5)
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED_ATTRIBUTES = {"event", "amount"}
# [0-9], not \d: \d also matches full-width and other scripts' digits.
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


@dataclass(frozen=True)
class EarnCommand:
    idempotency_key: str
    user_id: str
    event_type: str
    occurred_at: datetime
    amount: Decimal | None
    attributes: Mapping[str, str]

    @cached_property
    def request_hash(self) -> str:
        """What a retry under the same idempotency key must match: a hash of the validated values
        (foundation.idempotency.command_hash), so "50" and "50.00" or an id the server trims agree."""
        return _hash_of("earn", self)

    @property
    def event(self) -> EarnEvent:
        """What the campaign rules see of this Earn."""
        return EarnEvent(self.event_type, self.occurred_at, self.amount, self.attributes)


@dataclass(frozen=True)
class RedeemCommand:
    idempotency_key: str
    user_id: str
    points: int
    order_id: str
    description: str

    @cached_property
    def request_hash(self) -> str:
        return _hash_of("redeem", self)


@dataclass(frozen=True)
class ReverseCommand:
    idempotency_key: str
    transaction_id: str
    points: int
    reason: str
    allow_partial: bool

    @cached_property
    def request_hash(self) -> str:
        return _hash_of("reverse", self)


@dataclass(frozen=True)
class LedgerPage:
    user_id: str
    page_size: int
    before_id: int | None = field(default=None)


def _hash_of(operation: str, command: Any) -> str:
    """command_hash of every field of a command but its idempotency key, which the hash is stored under."""
    fields = {f.name: getattr(command, f.name) for f in dataclasses.fields(command) if f.name != "idempotency_key"}
    return command_hash(operation, fields)


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


def timestamp(value: Timestamp, name: str, *, present: bool, now: datetime) -> datetime:
    if not present:
        raise InvalidArgument(name, "is required")
    if value.nanos < 0 or value.nanos > 999_999_999:
        raise InvalidArgument(name, "has nanos out of range")
    try:
        when = value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(name, f"is not a valid time ({error})") from error
    if when.year < 2000:
        raise InvalidArgument(name, "is before the year 2000")
    if when > now + CLOCK_SKEW:
        raise InvalidArgument(name, f"is in the future ({when.isoformat()} > server time {now.isoformat()})")
    return when


def amount(value: str, name: str = "amount") -> Decimal | None:
    """An amount written as ASCII digits with an optional point and up to 2 decimals ("12.50");
    None when blank. Decimal() alone also reads full-width digits (U+FF10-U+FF19), "1_000",
    "1e3", "+5": a wrong keyboard or a typo, which must not become money."""
    text = value.strip()
    if not text:
        return None
    if not _AMOUNT.fullmatch(text):
        raise InvalidArgument(name, _amount_problem(text))
    parsed = Decimal(text)
    if parsed > MAX_POINTS:
        raise InvalidArgument(name, f"must be at most {MAX_POINTS}")
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


def attributes(values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > 32:
        raise InvalidArgument("attributes", "has more than 32 entries")
    checked = {}
    for key, value in values.items():
        if not _ATTRIBUTE.match(key) or len(key) > MAX_ID:
            raise InvalidArgument(f"attributes[{key}]", "name must be lower_snake_case, at most 64 characters")
        if key in RESERVED_ATTRIBUTES:
            raise InvalidArgument(f"attributes[{key}]", "is reserved; use the event_type and amount fields")
        if len(value) > 256:
            raise InvalidArgument(f"attributes[{key}]", "is longer than 256 characters")
        checked[key] = value
    return checked


def event_type(value: str) -> str:
    value = required_text(value, "event_type")
    if not _EVENT_TYPE.match(value):
        raise InvalidArgument("event_type", f"{value!r} must look like 'merchant.spend' (lowercase, dots)")
    return value


def positive_points(value: int, name: str = "points") -> int:
    if value <= 0:
        raise InvalidArgument(name, "must be greater than 0")
    if value > MAX_POINTS:
        raise InvalidArgument(name, f"must be at most {MAX_POINTS}")
    return value
