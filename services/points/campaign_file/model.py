"""Campaigns as the points service uses them: immutable values built from a validated file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from services.points.campaign_file.benefits_model import BenefitTerms

DEFAULT_TIMEZONE = "Asia/Shanghai"

Stacking = Literal["all", "highest"]


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone, got {moment.isoformat()}")


@dataclass(frozen=True)
class FixedAward:
    points: int

    def points_for(self, amount: Decimal | None) -> int:
        return self.points


@dataclass(frozen=True)
class ProportionalAward:
    """floor(amount / per_amount) * points, at most `max`."""

    per_amount: Decimal
    points: int
    max: int | None = None

    def points_for(self, amount: Decimal | None) -> int:
        if amount is None or amount <= 0:
            return 0
        units = int((Decimal(amount) / self.per_amount).to_integral_value(rounding=ROUND_FLOOR))
        earned = units * self.points
        return earned if self.max is None else min(earned, self.max)


Award = FixedAward | ProportionalAward


@dataclass(frozen=True)
class PointsRule:
    id: str
    description: str
    priority: int
    # The condition as written (attribute values as text). Left out of the hash so that rules
    # and campaigns stay hashable.
    when: Mapping[str, Any] = field(hash=False)
    award: Award

    def points_for(self, amount: Decimal | None) -> int:
        return self.award.points_for(amount)


@dataclass(frozen=True)
class Caps:
    per_user_per_day: int | None = None
    per_user_per_week: int | None = None
    per_user_per_campaign: int | None = None

    def describe(self) -> list[str]:
        parts = [
            ("per user per day", self.per_user_per_day),
            ("per user per week", self.per_user_per_week),
            ("per user over the campaign", self.per_user_per_campaign),
        ]
        return [f"{value} {label}" for label, value in parts if value is not None]


@dataclass(frozen=True)
class Expiry:
    """Exactly one of `days` (after the event) or `on` (end of that local day)."""

    days: int | None = None
    on: date | None = None

    def expires_at(self, occurred_at: datetime, tz: tzinfo) -> datetime | None:
        """The instant (UTC) the points expire: they are valid before it, expired from it on."""
        _require_aware(occurred_at, "occurred_at")
        if self.days is not None:
            # Same local wall-clock time `days` later, which is what "365 days" means to people.
            return (occurred_at.astimezone(tz) + timedelta(days=self.days)).astimezone(UTC)
        if self.on is not None:
            return datetime.combine(self.on + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
        return None


@dataclass(frozen=True)
class PointsTerms:
    stacking: Stacking
    budget: int | None
    caps: Caps
    expiry: Expiry | None
    rules: tuple[PointsRule, ...]

    def rule(self, rule_id: str) -> PointsRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


@dataclass(frozen=True)
class Campaign:
    id: str
    title: str
    version: str  # content hash of the file; ledger entries record which version decided them
    file: str
    active_from: datetime  # UTC, inclusive
    active_until: datetime | None  # UTC, exclusive; None: open-ended
    timezone: ZoneInfo
    priority: int
    exclusive: bool
    points: PointsTerms | None
    id_line: int | None = None  # line of `campaign:` in the file, to locate id conflicts
    benefits: BenefitTerms | None = None  # the `benefits:` section; None when the file has none

    def is_active(self, at: datetime) -> bool:
        _require_aware(at, "at")
        return self.active_from <= at and (self.active_until is None or at < self.active_until)

    def expires_at(self, occurred_at: datetime) -> datetime | None:
        if self.points is None or self.points.expiry is None:
            return None
        return self.points.expiry.expires_at(occurred_at, self.timezone)
