"""The `benefits:` section of a campaign file -> BenefitTerms, with the checks a schema cannot
express (tier names, ascending tiers, weekly range syntax, reversed date ranges, ...), every
problem located at its line. Called by the campaign loader on schema-valid data."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from services.foundation.rules.conditions import NUMERIC_OPERATORS, ConditionError, compile_condition
from services.foundation.rules.errors import Path as DataPath
from services.points.campaign_file.benefits_model import (
    MINUTES_PER_DAY,
    WEEKDAYS,
    BenefitTerms,
    Calendar,
    DateRange,
    Discount,
    FreeItem,
    Merchant,
    Offer,
    OfferKind,
    Tier,
    WeeklyRange,
)

PERIODS = ("peak", "off_peak")
KIND_KEYS: dict[str, OfferKind] = {
    "discount": "discount",
    "free_item": "free_item",
    "points_multiplier": "points_multiplier",
    "gift": "gift",
    "lottery_entries": "lottery",
}
_WEEK_TIME = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun) ([0-9]{1,2}):([0-9]{2})$")

Fail = Callable[[DataPath, str], None]


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def build_benefits(raw: Mapping[str, Any], fail: Fail) -> BenefitTerms:
    """Schema-valid `benefits` mapping -> BenefitTerms; problems go to `fail(path, reason)`."""
    tiers = _tiers(raw["tiers"], fail)
    tier_ids = tuple(t.id for t in tiers)
    floor = dec(raw["floor_price"]) if "floor_price" in raw else None
    return BenefitTerms(
        tiers=tiers,
        calendar=_calendar(raw.get("calendar", {}), fail),
        merchants=_merchants(raw.get("merchants", {})),
        floor_price=floor,
        offers=_offers(raw["offers"], tier_ids, fail),
    )


def _tiers(raws: list[Mapping[str, Any]], fail: Fail) -> tuple[Tier, ...]:
    tiers: list[Tier] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raws):
        path: DataPath = ("benefits", "tiers", i)
        tier = Tier(raw["id"], dec(raw["min_aum"]))
        if tier.id in seen:
            fail((*path, "id"), f"duplicate tier id '{tier.id}' (also benefits.tiers[{seen[tier.id]}])")
        seen.setdefault(tier.id, i)
        if tiers and tier.min_aum <= tiers[-1].min_aum:
            fail(
                (*path, "min_aum"),
                f"tiers must be in ascending min_aum: {tier.min_aum} is not above "
                f"{tiers[-1].min_aum} of tier '{tiers[-1].id}'",
            )
        tiers.append(tier)
    return tuple(tiers)


def _calendar(raw: Mapping[str, Any], fail: Fail) -> Calendar:
    peak = raw.get("peak", {})
    base: DataPath = ("calendar", "peak")
    weekly: list[WeeklyRange] = []
    for i, item in enumerate(peak.get("weekly", [])):
        path: DataPath = ("benefits", *base, "weekly", i)
        start = _week_minute((*path, "from"), item["from"], fail)
        end = _week_minute((*path, "until"), item["until"], fail)
        if start is None or end is None:
            continue
        if start % (7 * MINUTES_PER_DAY) == end % (7 * MINUTES_PER_DAY):
            fail((*path, "until"), "is the same moment as from: the range would be empty (or the whole week)")
            continue
        weekly.append(WeeklyRange(start % (7 * MINUTES_PER_DAY), end, f"{item['from']} - {item['until']}"))
    dates: list[DateRange] = []
    for i, item in enumerate(peak.get("dates", [])):
        path = ("benefits", *base, "dates", i)
        start_day = _date((*path, "from"), item["from"], fail)
        end_day = _date((*path, "until"), item["until"], fail)
        if start_day is None or end_day is None:
            continue
        if end_day < start_day:
            fail((*path, "until"), f"is before from ({start_day}); both ends are inclusive")
            continue
        dates.append(DateRange(start_day, end_day, item.get("note", "")))
    holidays: set[date] = set()
    for i, text in enumerate(peak.get("holidays", [])):
        day = _date(("benefits", *base, "holidays", i), text, fail)
        if day is not None:
            holidays.add(day)
    return Calendar(tuple(weekly), tuple(dates), frozenset(holidays))


def _week_minute(path: DataPath, text: str, fail: Fail) -> int | None:
    match = _WEEK_TIME.match(text.strip().lower())
    if match is None:
        fail(path, f"'{text}' is not a weekday and time like 'fri 12:00' (days: {', '.join(WEEKDAYS)})")
        return None
    day, hour, minute = WEEKDAYS.index(match.group(1)), int(match.group(2)), int(match.group(3))
    if hour > 24 or minute > 59 or (hour == 24 and minute != 0):
        fail(path, f"'{text}' is not a time of day (00:00 to 24:00)")
        return None
    return day * MINUTES_PER_DAY + hour * 60 + minute


def _date(path: DataPath, text: str, fail: Fail) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(path, f"'{text}' is not a valid date")
        return None


def _merchants(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Merchant]:
    return {
        merchant_id: Merchant(
            id=merchant_id,
            category=item["category"],
            public_discount=dec(item.get("public_discount", 0)),
            name=item.get("name", ""),
        )
        for merchant_id, item in raw.items()
    }


def _offers(raws: list[Mapping[str, Any]], tier_ids: tuple[str, ...], fail: Fail) -> tuple[Offer, ...]:
    offers: list[Offer] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raws):
        path: DataPath = ("benefits", "offers", i)
        offer_id = raw["id"]
        if offer_id in seen:
            fail((*path, "id"), f"duplicate offer id '{offer_id}' (also benefits.offers[{seen[offer_id]}])")
        seen.setdefault(offer_id, i)
        kinds = [key for key in KIND_KEYS if key in raw]
        if len(kinds) != 1:
            found = f"has {', '.join(kinds)}" if kinds else "has none"
            fail(path, f"needs exactly one of {', '.join(KIND_KEYS)}; {found}")
        kind: OfferKind = KIND_KEYS[kinds[0]] if kinds else "discount"
        if "budget" in raw and kind != "discount":
            fail((*path, "budget"), "a budget only applies to discount offers")
        discount = _discount((*path, "discount"), raw["discount"], fail) if "discount" in raw else None
        free_item = _free_item((*path, "free_item"), raw["free_item"], tier_ids, fail) if "free_item" in raw else None
        gift = raw.get("gift")
        offers.append(
            Offer(
                id=offer_id,
                description=raw.get("description", ""),
                when=_when((*path, "when"), raw["when"], tier_ids, fail),
                priority=raw.get("priority", 0),
                stacking=raw.get("stacking", "exclusive"),
                budget=dec(raw["budget"]) if "budget" in raw else None,
                on_exhausted=raw.get("on_exhausted", "fail"),
                kind=kind,
                discount=discount,
                free_item=free_item,
                multiplier=dec(raw["points_multiplier"]) if "points_multiplier" in raw else None,
                gift=gift["item"] if gift else None,
                gift_note=gift.get("note", "") if gift else "",
                lottery_entries=raw.get("lottery_entries"),
            )
        )
    return tuple(offers)


def _discount(path: DataPath, raw: Mapping[str, Any], fail: Fail) -> Discount:
    if "rate" in raw:
        rate = dec(raw["rate"])
        if not Decimal(0) < rate < Decimal(1):
            fail((*path, "rate"), f"must be a fraction between 0 and 1 (0.5 = 50% off); got {raw['rate']}")
        return Discount(rate=rate)
    if "amount_off" in raw:
        return Discount(amount_off=dec(raw["amount_off"]))
    return Discount(price=dec(raw["price"]))


def _free_item(path: DataPath, raw: Mapping[str, Any], tier_ids: tuple[str, ...], fail: Fail) -> FreeItem:
    for tier in raw["per_year"]:
        if tier not in tier_ids:
            fail((*path, "per_year", tier), _unknown_tier(tier, tier_ids))
    return FreeItem(raw["item"], dict(raw["per_year"]))


def _unknown_tier(tier: Any, tier_ids: tuple[str, ...]) -> str:
    return f"unknown tier '{tier}' (tiers: {', '.join(tier_ids)})"


_KNOWN_VALUES: dict[str, tuple[str, ...]] = {"period": PERIODS, "weekday": WEEKDAYS}


def _when(path: DataPath, raw: Mapping[str, Any], tier_ids: tuple[str, ...], fail: Fail) -> dict[str, Any]:
    when: dict[str, Any] = {}
    for field, spec in raw.items():
        if field == "amount":
            when[field] = spec
            continue
        known = tier_ids if field == "tier" else _KNOWN_VALUES.get(field)
        if isinstance(spec, Mapping):
            for op, arg in spec.items():
                if op in NUMERIC_OPERATORS:
                    fail((*path, field, op), f"{op} compares numbers and only applies to amount")
                elif known is not None and op in ("in", "not_in"):
                    for j, value in enumerate(arg if isinstance(arg, list) else []):
                        if str(value) not in known:
                            fail((*path, field, op, j), _unknown_value(field, value, known))
                elif known is not None and op == "ne" and str(arg) not in known:
                    fail((*path, field, op), _unknown_value(field, arg, known))
            when[field] = {op: arg if op in NUMERIC_OPERATORS else _as_text(arg) for op, arg in spec.items()}
        else:
            if known is not None and str(spec) not in known:
                fail((*path, field), _unknown_value(field, spec, known))
            when[field] = _as_text(spec)
    try:
        compile_condition(when)
    except ConditionError as error:
        fail(path + error.path, error.reason)
    return when


def _unknown_value(field: str, value: Any, known: tuple[str, ...]) -> str:
    return (
        f"unknown {field} '{value}' ({field}s: {', '.join(known)})" if field != "tier" else _unknown_tier(value, known)
    )


def _as_text(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value
