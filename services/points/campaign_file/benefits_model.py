"""The `benefits:` section of a campaign as immutable values: customer tiers by assets at the bank,
the peak/off-peak calendar, merchant data and the offers (discounts, free items, gifts, ...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property, lru_cache
from typing import Any, Literal

from services.foundation.rules.conditions import values_pinned

Period = Literal["peak", "off_peak"]
OfferKind = Literal["discount", "free_item", "points_multiplier", "gift", "lottery"]
OfferStacking = Literal["exclusive", "stack"]
OnExhausted = Literal["fail", "next"]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY
CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    """Round to 0.01 CNY, half up."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Tier:
    id: str
    min_aum: Decimal  # CNY, inclusive


@dataclass(frozen=True)
class WeeklyRange:
    """Minutes from Monday 00:00 local: start inclusive, end exclusive (end 10080 = Sunday 24:00).
    end <= start wraps past the end of the week."""

    start: int
    end: int
    text: str = ""

    def contains(self, minute_of_week: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_week < self.end
        return minute_of_week >= self.start or minute_of_week < self.end


@dataclass(frozen=True)
class DateRange:
    start: date  # inclusive
    end: date  # inclusive
    note: str = ""

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end


@dataclass(frozen=True)
class Calendar:
    """Peak times in the campaign's local time; every other moment is off-peak."""

    weekly: tuple[WeeklyRange, ...] = ()
    dates: tuple[DateRange, ...] = ()
    holidays: frozenset[date] = frozenset()

    def period_at(self, moment: datetime, tz: tzinfo) -> Period:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"moment must carry a time zone, got {moment.isoformat()}")
        return self.period_at_local(moment.astimezone(tz))

    def period_at_local(self, local: datetime) -> Period:
        """The period of a moment already in the campaign's time zone."""
        day = local.date()
        if day in self.holidays or any(r.contains(day) for r in self.dates):
            return "peak"
        minute = local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute
        return "peak" if any(r.contains(minute) for r in self.weekly) else "off_peak"


@dataclass(frozen=True)
class Merchant:
    id: str
    category: str
    public_discount: Decimal  # fraction the general public gets anyway (0.10 = 10%)
    name: str = ""


@dataclass(frozen=True)
class Discount:
    """Exactly one of rate (fraction off), amount_off (CNY) or price (CNY to pay)."""

    rate: Decimal | None = None
    amount_off: Decimal | None = None
    price: Decimal | None = None

    def apply(self, amount: Decimal) -> Decimal:
        """The amount to pay after this discount: rounded to 0.01 half up, never below 0, never
        above the amount itself (a fixed price above the amount leaves the amount)."""
        amount = Decimal(amount)
        if self.rate is not None:
            result = amount * (1 - self.rate)
        elif self.amount_off is not None:
            result = amount - self.amount_off
        elif self.price is not None:
            result = min(amount, self.price)
        else:
            result = amount
        return max(Decimal("0.00"), cents(result))

    def off(self, amount: Decimal) -> Decimal:
        """The discount in CNY on `amount` (0.00 when it does not lower the price)."""
        return max(Decimal("0.00"), cents(amount) - self.apply(amount))

    def describe(self) -> str:
        return self.text

    @cached_property
    def text(self) -> str:
        """describe(), worked out once: quotes repeat it on every call."""
        if self.rate is not None:
            return f"{_percent(self.rate)} off"
        if self.amount_off is not None:
            return f"{cents(self.amount_off)} CNY off"
        if self.price is not None:
            return f"price {cents(self.price)} CNY"
        return "no discount"


def _percent(fraction: Decimal) -> str:
    value = (Decimal(fraction) * 100).normalize()
    return f"{value:f}%"


@lru_cache(maxsize=1024)
def percent(fraction: Decimal) -> str:
    """0.15 -> '15%' (cached: explanations print the same few rates on every quote)."""
    return _percent(fraction)


@dataclass(frozen=True)
class FreeItem:
    item: str
    per_year: Mapping[str, int] = field(hash=False)  # tier id -> free items per calendar year; absent: none

    def allowance(self, tier: str) -> int:
        return int(self.per_year.get(tier, 0))


@dataclass(frozen=True)
class Offer:
    id: str
    description: str
    # The condition as written; left out of the hash so offers stay hashable.
    when: Mapping[str, Any] = field(hash=False)
    priority: int
    stacking: OfferStacking
    budget: Decimal | None
    on_exhausted: OnExhausted
    kind: OfferKind
    discount: Discount | None = None
    free_item: FreeItem | None = None
    multiplier: Decimal | None = None
    gift: str | None = None
    gift_note: str = ""
    lottery_entries: int | None = None

    def describe(self) -> str:
        """What the offer gives, for people: '50% off', 'free cinema-ticket', 'popcorn gift', ..."""
        return self.text

    @cached_property
    def text(self) -> str:
        """describe(), worked out once: quotes repeat it on every call."""
        if self.kind == "discount" and self.discount is not None:
            return self.discount.describe()
        if self.kind == "free_item" and self.free_item is not None:
            return f"free {self.free_item.item}"
        if self.kind == "points_multiplier":
            return f"{Decimal(self.multiplier or 1).normalize():f}x points"
        if self.kind == "gift":
            return f"gift: {self.gift}" + (f" ({self.gift_note})" if self.gift_note else "")
        if self.kind == "lottery":
            entries = self.lottery_entries or 0
            return f"{entries} lottery entr{'y' if entries == 1 else 'ies'}"
        return self.kind


@dataclass(frozen=True)
class BenefitTerms:
    tiers: tuple[Tier, ...]  # ascending min_aum
    calendar: Calendar
    merchants: Mapping[str, Merchant] = field(hash=False)
    floor_price: Decimal | None
    offers: tuple[Offer, ...]

    def tier_for(self, aum: Decimal | None) -> Tier:
        """The highest tier whose min_aum <= aum; unknown (None) or lower AUM: the lowest tier."""
        chosen = self.tiers[0]
        if aum is None:
            return chosen
        for tier in self.tiers:
            if tier.min_aum <= aum:
                chosen = tier
        return chosen

    def __post_init__(self) -> None:
        by_id = {offer.id: offer for offer in self.offers}
        object.__setattr__(self, "_offers_by_id", by_id)
        object.__setattr__(self, "categories", categories_of(self.offers))

    def offer(self, offer_id: str) -> Offer:
        return self._offers_by_id[offer_id]  # type: ignore[attr-defined,no-any-return]

    def tier_ids(self) -> tuple[str, ...]:
        return tuple(tier.id for tier in self.tiers)

    # Set in __post_init__: the merchant categories some offer can match, or None when an offer
    # does not name its categories (it may match any). Quotes skip campaigns that cannot apply.
    categories: frozenset[str] | None = field(init=False, hash=False, compare=False, repr=False)


def categories_of(offers: Sequence[Offer]) -> frozenset[str] | None:
    """The merchant categories these offers name; None when one of them names none."""
    return values_pinned((offer.when for offer in offers), "category")
