"""Validated commands: what the gRPC layer and the event consumers hand to the ledger.

Validation lives here, once, so a bad request is refused with the field and the problem before
anything is written, whichever door it came in by.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from services.foundation import validation
from services.foundation.errors import InvalidArgument
from services.foundation.idempotency import command_hash
from services.foundation.validation import required_text
from services.points.campaigns.evaluation import EarnEvent

MAX_POINTS = 10**12
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
RESERVED_ATTRIBUTES = frozenset({"event", "amount"})  # the event_type and amount fields


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


def attributes(values: Mapping[str, str]) -> dict[str, str]:
    return validation.attributes(values, reserved=RESERVED_ATTRIBUTES)


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
