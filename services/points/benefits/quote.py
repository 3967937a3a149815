"""Quotes: what a customer pays at a merchant now, with which offers, and what else they get.

Pure: no database. What the database knows (free items used this year, offer budgets spent) is
passed in as `Usage`; the caller locks and records it when a quote is claimed.

Reloads swap one immutable snapshot, like CampaignBook: a quote sees the old campaigns or the new
ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

from services.foundation.rules.book import RuleBook, Snapshot
from services.foundation.rules.conditions import compile_condition
from services.foundation.rules.engine import CompiledRuleset, Matcher
from services.foundation.rules.errors import RuleFileError
from services.points.campaign_file.benefits_model import (
    WEEKDAYS,
    BenefitTerms,
    Merchant,
    Offer,
    Period,
    categories_of,
    cents,
    percent,
)
from services.points.campaign_file.model import Campaign

ZERO = Decimal("0.00")
R = TypeVar("R")
_PERIOD_NAMES = {"peak": "peak", "off_peak": "off-peak"}
_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class UnknownMerchant(ValueError):
    """The merchant is in no active campaign's merchant data and the request gave no category."""


class QuoteInput(NamedTuple):
    customer_id: str
    merchant_id: str
    category: str | None  # wins over the merchant data when given
    amount: Decimal  # CNY
    at: datetime  # aware
    aum: Decimal | None  # CNY; None: unknown (the lowest tier)


class Usage(NamedTuple):
    """What the database says is used up."""

    # (campaign_id, offer_id, year "2026") -> free items this customer used that calendar year
    free_items_used: Mapping[tuple[str, str, str], int] = MappingProxyType({})
    # (campaign_id, offer_id) -> CNY of discount the offer has given so far, all customers
    budget_spent: Mapping[tuple[str, str], Decimal] = MappingProxyType({})


NO_USAGE = Usage()


# Named tuples, not dataclasses: a quote builds several per call, and is the hottest path.
class AppliedOffer(NamedTuple):
    campaign_id: str
    campaign_version: str
    offer_id: str
    kind: str  # discount | free_item | points_multiplier | gift | lottery
    discount_amount: Decimal  # CNY; 0.00 for all but discounts
    detail: str


class Quote(NamedTuple):
    tier: str
    period: str
    category: str
    final_amount: Decimal
    discount_amount: Decimal
    applied: tuple[AppliedOffer, ...]  # discounts applied, in order: the exclusive best first, then stacking ones
    free_item: AppliedOffer | None  # best free-item offer with quota left this year
    free_items_left: int  # left of that offer this year, before using one
    extras: tuple[AppliedOffer, ...]  # gifts, points multipliers, lottery entries
    skipped: tuple[tuple[str, str], ...]  # (offer_id, reason)
    public_discount: Decimal | None
    beats_public: bool
    explanation: str
    blocked_by: str | None = None  # the best offer's budget is spent and it says on_exhausted: fail
    years: Mapping[str, int] = MappingProxyType({})  # campaign id -> quota year of `at` (campaign tz)
    campaign_id: str | None = None  # the campaign whose tier/period the quote reports


class PointsMultiplier(NamedTuple):
    """A points_multiplier offer that holds for a purchase."""

    campaign_id: str
    campaign_version: str
    offer_id: str
    factor: Decimal
    tier: str
    period: str


@dataclass(frozen=True)
class FreeItemEntitlement:
    campaign_id: str
    offer_id: str
    item: str
    per_year: int
    used: int
    left: int
    year: int


@dataclass(frozen=True)
class Entitlement:
    """One active campaign with benefits, for one customer at one moment."""

    campaign: Campaign
    tier: str
    period: str
    free_items: tuple[FreeItemEntitlement, ...]
    available_now: tuple[AppliedOffer, ...]  # offers the customer's tier and the moment allow, any merchant


@dataclass(frozen=True)
class _Entry:
    campaign: Campaign
    compiled: CompiledRuleset

    @property
    def document(self) -> Campaign:
        return self.campaign


_Snapshot = Snapshot[_Entry]


def compile_benefits(matcher: Matcher, campaign: Campaign) -> CompiledRuleset | None:
    """Register the campaign's offers; RuleFileError if the engine cannot hold them."""
    if campaign.benefits is None:
        return None
    rules = [(offer.id, compile_condition(offer.when)) for offer in campaign.benefits.offers]
    try:
        return matcher.add(f"benefits:{campaign.id}@{campaign.version}", rules)
    except ValueError as error:
        raise RuleFileError(campaign.file, None, "benefits.offers", str(error)) from error


@dataclass
class _Discounted:
    campaign: Campaign
    offer: Offer
    amount: Decimal


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Active:
    """The campaigns of a snapshot in force from `since` until `until` (exclusive; None: for ever)."""

    snapshot: _Snapshot
    since: datetime
    until: datetime | None
    entries: tuple[_Entry, ...]
    merchants: Mapping[str, Merchant]  # merchant id -> its data from the first campaign listing it
    # Categories some points_multiplier offer names; None: an offer names none (any category).
    multiplier_categories: frozenset[str] | None = frozenset()

    def category_of(self, merchant_id: str, category: str | None) -> str | None:
        """The purchase's category: as given, else the merchant's; None when neither is known."""
        if category:
            return category
        merchant = self.merchants.get(merchant_id)
        return merchant.category if merchant is not None else None

    @classmethod
    def at(cls, snapshot: _Snapshot, at: datetime) -> _Active:
        entries = tuple(e for e in snapshot.ordered if e.campaign.is_active(at))
        changes = [t for e in snapshot.ordered for t in (e.campaign.active_from, e.campaign.active_until) if t]
        since = max((t for t in changes if t <= at), default=_EPOCH)
        until = min((t for t in changes if t > at), default=None)
        merchants: dict[str, Merchant] = {}
        for entry in entries:
            assert entry.campaign.benefits is not None
            for merchant_id, merchant in entry.campaign.benefits.merchants.items():
                merchants.setdefault(merchant_id, merchant)
        offers = [o for e in entries if e.campaign.benefits for o in e.campaign.benefits.offers]
        categories = categories_of([o for o in offers if o.kind == "points_multiplier"])
        return cls(snapshot, since, until, entries, MappingProxyType(merchants), categories)


def _entry(campaign: Campaign, compiled: CompiledRuleset | None) -> _Entry:
    assert compiled is not None  # every campaign in this book has offers
    return _Entry(campaign, compiled)


def _has_benefits(campaign: Campaign) -> bool:
    return campaign.benefits is not None


class BenefitBook:
    def __init__(self, matcher: Matcher | None = None, name: str = "benefits") -> None:
        # Duplicate ids are the campaign book's to report: the same files feed both books.
        self._book: RuleBook[Campaign, _Entry] = RuleBook(
            name, compile_benefits, _entry, matcher=matcher, include=_has_benefits, report_duplicates=False
        )
        self._active = _Active(self._snapshot, _EPOCH, _EPOCH, (), MappingProxyType({}))

    @property
    def _snapshot(self) -> _Snapshot:
        return self._book.snapshot

    @property
    def _matcher(self) -> Matcher:
        return self._book.matcher

    def replace(self, campaigns: Mapping[str, Campaign]) -> None:
        """Put the benefits of exactly these campaigns ({file: campaign}) in force; campaigns
        without a benefits section are left out (rules: foundation/rules/book.py)."""
        self._book.replace(campaigns)

    # -- reading -------------------------------------------------------------------------------

    @property
    def rejected(self) -> Mapping[str, RuleFileError]:
        return self._book.rejected

    def campaigns(self) -> list[Campaign]:
        """Campaigns with benefits in force, by priority (highest first) then id."""
        return [entry.campaign for entry in self._snapshot.ordered]

    def get(self, campaign_id: str) -> Campaign | None:
        for entry in self._snapshot.ordered:
            if entry.campaign.id == campaign_id:
                return entry.campaign
        return None

    def offer_budget(self, campaign_id: str, offer_id: str) -> Decimal | None:
        """The offer's budget in CNY; None when it has none or is unknown."""
        campaign = self.get(campaign_id)
        if campaign is None or campaign.benefits is None:
            return None
        try:
            return campaign.benefits.offer(offer_id).budget
        except KeyError:
            return None

    def merchant(self, merchant_id: str, at: datetime) -> Merchant | None:
        """The merchant's data from the first active campaign (by priority) that lists it."""
        return self._active_at(self._snapshot, at).merchants.get(merchant_id)

    def _on_current_snapshot(self, at: datetime, work: Callable[[_Snapshot], R]) -> R:
        """`work` on the campaigns in force; again on the new ones if a reload removed its rules."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"at must carry a time zone, got {at.isoformat()}")
        return self._book.on_current(work)

    # -- quote ---------------------------------------------------------------------------------

    def quote(self, inp: QuoteInput, usage: Usage = NO_USAGE) -> Quote:
        """What the customer pays and gets. Raises UnknownMerchant (a ValueError) when the merchant
        is unknown and the input has no category."""
        return self._on_current_snapshot(inp.at, lambda snapshot: self._quote(snapshot, inp, usage))

    def _active_at(self, snapshot: _Snapshot, at: datetime) -> _Active:
        """The campaigns in force at `at`, worked out once per stretch of time in which they stay
        the same (quotes mostly ask about now)."""
        known = self._active
        if known.snapshot is snapshot and known.since <= at and (known.until is None or at < known.until):
            return known
        found = _Active.at(snapshot, at)
        self._active = found
        return found

    def _quote(self, snapshot: _Snapshot, inp: QuoteInput, usage: Usage) -> Quote:
        in_force = self._active_at(snapshot, inp.at)
        active = in_force.entries
        merchant = in_force.merchants.get(inp.merchant_id)
        if merchant is None and not inp.category:
            raise UnknownMerchant(
                f"merchant '{inp.merchant_id}' is in no active campaign's merchant list; give its category"
            )
        category = in_force.category_of(inp.merchant_id, inp.category) or ""
        amount = cents(inp.amount)
        public = merchant.public_discount if merchant is not None else None

        exclusive: list[_Discounted] = []
        stacking: list[_Discounted] = []
        free_candidates: list[tuple[int, int, Campaign, Offer, int, int]] = []
        extras: list[AppliedOffer] = []
        skipped: list[tuple[str, str]] = []
        years: dict[str, int] = {}
        contexts: dict[str, tuple[str, Period, int]] = {}  # campaign id -> tier, period, local weekday
        for entry in active:
            found = self._match(entry, inp, category, amount)
            if found is None:
                continue
            campaign = entry.campaign
            terms, local, tier, period, offer_ids = found
            years[campaign.id] = local.year
            contexts[campaign.id] = (tier, period, local.weekday())
            for offer_id in offer_ids:
                offer = terms.offer(offer_id)
                if offer.kind == "discount":
                    (stacking if offer.stacking == "stack" else exclusive).append(_Discounted(campaign, offer, ZERO))
                elif offer.kind == "free_item" and offer.free_item is not None:
                    allowance = offer.free_item.allowance(tier)
                    used = int(usage.free_items_used.get((campaign.id, offer.id, str(local.year)), 0))
                    if allowance <= 0:
                        skipped.append((offer.id, f"tier {tier} gets no free {offer.free_item.item}"))
                    elif used >= allowance:
                        skipped.append(
                            (
                                offer.id,
                                f"free {offer.free_item.item} quota used ({used} of {allowance} in {local.year})",
                            )
                        )
                    else:
                        free_candidates.append(
                            (-offer.priority, -(allowance - used), campaign, offer, allowance - used, allowance)
                        )
                else:
                    extras.append(_applied(campaign, offer, ZERO, offer.text))

        applied, blocked_by = self._discounts(amount, exclusive, stacking, usage, skipped)
        discount_total = sum((a.discount_amount for a in applied), ZERO)
        final = amount - discount_total
        floor_note = ""
        by_id = {e.campaign.id: e.campaign.benefits for e in active}
        floors = [
            terms.floor_price
            for terms in (by_id[campaign_id] for campaign_id in {a.campaign_id for a in applied})
            if terms is not None and terms.floor_price is not None
        ]
        if floors:
            floor = cents(max(floors))
            limit = min(amount, floor)
            if final < limit:
                applied, floor_skips = _clamp(applied, limit - final, floor)
                skipped.extend(floor_skips)
                discount_total = sum((a.discount_amount for a in applied), ZERO)
                final = amount - discount_total
                floor_note = f"; floor price {floor} CNY limits the discount"

        free_item: AppliedOffer | None = None
        free_left = 0
        if free_candidates:
            free_candidates.sort(key=lambda c: (c[0], c[1], c[2].id, c[3].id))
            _, _, campaign, offer, free_left, allowance = free_candidates[0]
            assert offer.free_item is not None
            year = years[campaign.id]
            detail = f"free {offer.free_item.item}: {free_left} of {allowance} left in {year}"
            free_item = _applied(campaign, offer, ZERO, detail)

        primary = _primary(applied, free_item, extras, [*contexts, *(e.campaign.id for e in active)])
        tier, period, weekday = "", "off_peak", 0
        if primary is not None:
            tier, period, weekday = contexts.get(primary) or _context_of(active, primary, inp)
        # The effective rate must exceed what the public gets anyway.
        beats = public is None or (amount > 0 and discount_total / amount > public)
        explanation = _explain(
            tier, period, weekday, primary, category, applied, free_item, extras, public, beats, blocked_by
        )
        return Quote(
            tier=tier,
            period=period,
            category=category,
            final_amount=final,
            discount_amount=discount_total,
            applied=tuple(applied),
            free_item=free_item,
            free_items_left=free_left,
            extras=tuple(extras),
            skipped=tuple(skipped),
            public_discount=public,
            beats_public=beats,
            explanation=explanation + floor_note,
            blocked_by=blocked_by,
            years=MappingProxyType(years),
            campaign_id=primary,
        )

    def _match(
        self, entry: _Entry, inp: QuoteInput, category: str, amount: Decimal
    ) -> tuple[BenefitTerms, datetime, str, Period, list[str]] | None:
        """The campaign's offers that hold for this purchase, with the local time, tier and period
        they were decided on; None when no offer of the campaign is for this category."""
        terms = entry.campaign.benefits
        assert terms is not None
        if terms.categories is not None and category not in terms.categories:
            return None
        local = inp.at.astimezone(entry.campaign.timezone)
        tier, period = _context(terms, inp.aum, local)
        fact: dict[str, Any] = {
            "category": category,
            "merchant_id": inp.merchant_id,
            "tier": tier,
            "period": period,
            "amount": float(amount),
            "weekday": WEEKDAYS[local.weekday()],
        }
        return terms, local, tier, period, self._matcher.match(entry.compiled, fact)

    # -- points multipliers --------------------------------------------------------------------

    def multiplier_possible(self, merchant_id: str, category: str | None, at: datetime) -> bool:
        """Whether any points_multiplier offer in force could apply at this merchant or category,
        whatever the customer's tier: when not, Earn need not look up the customer."""
        in_force = self._active_at(self._snapshot, at)
        if in_force.multiplier_categories is None:
            return True
        found = in_force.category_of(merchant_id, category)
        return found is not None and found in in_force.multiplier_categories

    def points_multiplier(self, inp: QuoteInput) -> PointsMultiplier | None:
        """The multiplier offer for points earned on this purchase: of those that hold, the highest
        factor (then priority, then campaign and offer id). Multipliers never compound. None when
        none holds or the merchant is unknown and no category is given."""
        return self._on_current_snapshot(inp.at, lambda snapshot: self._points_multiplier(snapshot, inp))

    def _points_multiplier(self, snapshot: _Snapshot, inp: QuoteInput) -> PointsMultiplier | None:
        in_force = self._active_at(snapshot, inp.at)
        active = in_force.entries
        category = in_force.category_of(inp.merchant_id, inp.category)
        if category is None:
            return None
        best: tuple[tuple[Decimal, int, str, str], PointsMultiplier] | None = None
        for entry in active:
            found = self._match(entry, inp, category, cents(inp.amount))
            if found is None:
                continue
            terms, _, tier, period, offer_ids = found
            for offer_id in offer_ids:
                offer = terms.offer(offer_id)
                if offer.kind != "points_multiplier" or offer.multiplier is None:
                    continue
                campaign = entry.campaign
                rank = (-offer.multiplier, -offer.priority, campaign.id, offer.id)
                if best is None or rank < best[0]:
                    best = (
                        rank,
                        PointsMultiplier(campaign.id, campaign.version, offer.id, offer.multiplier, tier, period),
                    )
        return best[1] if best is not None else None

    @staticmethod
    def _discounts(
        amount: Decimal,
        exclusive: list[_Discounted],
        stacking: list[_Discounted],
        usage: Usage,
        skipped: list[tuple[str, str]],
    ) -> tuple[list[AppliedOffer], str | None]:
        applied: list[AppliedOffer] = []
        for candidate in exclusive:
            assert candidate.offer.discount is not None
            candidate.amount = candidate.offer.discount.off(amount)
        exclusive.sort(key=lambda c: (-c.amount, -c.offer.priority, c.campaign.id, c.offer.id))
        remaining = amount

        def take(candidate, no_discount: str) -> str | None:  # type: ignore[no-untyped-def]
            """Apply one offer if it gives something within its budget; the reason if it blocks the quote."""
            nonlocal remaining
            if candidate.amount <= 0:
                skipped.append((candidate.offer.id, no_discount))
                return None
            spent = _over_budget(candidate, usage)
            if spent is not None:
                skipped.append((candidate.offer.id, spent))
                return f"{candidate.offer.id}: {spent}" if candidate.offer.on_exhausted == "fail" else None
            applied.append(_applied(candidate.campaign, candidate.offer, candidate.amount, _detail(candidate)))
            remaining -= candidate.amount
            return None

        for candidate in exclusive:
            if applied:
                skipped.append((candidate.offer.id, f"exclusive; {applied[0].offer_id} gives more"))
                continue
            blocked = take(candidate, "gives no discount on this amount")
            if blocked:
                return [], blocked
        stacking.sort(key=lambda c: (-c.offer.priority, c.campaign.id, c.offer.id))
        for candidate in stacking:
            assert candidate.offer.discount is not None
            candidate.amount = candidate.offer.discount.off(remaining)
            blocked = take(candidate, "gives no discount on the remaining amount")
            if blocked:
                return [], blocked
        return applied, None

    # -- entitlements --------------------------------------------------------------------------

    def entitlements(
        self, customer_id: str, aum: Decimal | None, at: datetime, usage: Usage = NO_USAGE
    ) -> list[Entitlement]:
        """For each active campaign with benefits: the customer's tier, free items with used/left
        this year, and the offers their tier and the moment allow at any merchant (conditions on
        category, merchant, amount are not checked)."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"at must carry a time zone, got {at.isoformat()}")
        result: list[Entitlement] = []
        for entry in self._snapshot.ordered:
            campaign = entry.campaign
            terms = campaign.benefits
            if terms is None or not campaign.is_active(at):
                continue
            local = at.astimezone(campaign.timezone)
            tier = terms.tier_for(aum).id
            period = terms.calendar.period_at(at, campaign.timezone)
            fact = {"tier": tier, "period": period, "weekday": WEEKDAYS[local.weekday()]}
            free_items: list[FreeItemEntitlement] = []
            available: list[AppliedOffer] = []
            for offer in terms.offers:
                if offer.free_item is not None:
                    allowance = offer.free_item.allowance(tier)
                    used = int(usage.free_items_used.get((campaign.id, offer.id, str(local.year)), 0))
                    free_items.append(
                        FreeItemEntitlement(
                            campaign.id,
                            offer.id,
                            offer.free_item.item,
                            allowance,
                            used,
                            max(0, allowance - used),
                            local.year,
                        )
                    )
                if _holds_partly(offer.when, fact):
                    if offer.free_item is not None and offer.free_item.allowance(tier) <= 0:
                        continue
                    available.append(_applied(campaign, offer, ZERO, offer.text))
            result.append(Entitlement(campaign, tier, period, tuple(free_items), tuple(available)))
        return result


# -- helpers ---------------------------------------------------------------------------------------


def _context(terms: BenefitTerms, aum: Decimal | None, local: datetime) -> tuple[str, Period]:
    """The customer's tier and the period, at `local` (the campaign's time zone)."""
    return terms.tier_for(aum).id, terms.calendar.period_at_local(local)


def _context_of(active: Sequence[_Entry], campaign_id: str, inp: QuoteInput) -> tuple[str, Period, int]:
    campaign = next(e.campaign for e in active if e.campaign.id == campaign_id)
    assert campaign.benefits is not None
    local = inp.at.astimezone(campaign.timezone)
    return (*_context(campaign.benefits, inp.aum, local), local.weekday())


def _applied(campaign: Campaign, offer: Offer, amount: Decimal, detail: str) -> AppliedOffer:
    return AppliedOffer(campaign.id, campaign.version, offer.id, offer.kind, amount, detail)


def _detail(candidate: _Discounted) -> str:
    assert candidate.offer.discount is not None
    text = candidate.offer.discount.text
    if candidate.offer.discount.price is not None:
        text += f" ({candidate.amount} CNY off)"
    return text


def _over_budget(candidate: _Discounted, usage: Usage) -> str | None:
    budget = candidate.offer.budget
    if budget is None:
        return None
    spent = Decimal(usage.budget_spent.get((candidate.campaign.id, candidate.offer.id), ZERO))
    if spent + candidate.amount > budget:
        return f"budget spent ({cents(spent)} of {cents(budget)} CNY given; this discount is {candidate.amount})"
    return None


def _clamp(
    applied: list[AppliedOffer], excess: Decimal, floor: Decimal
) -> tuple[list[AppliedOffer], list[tuple[str, str]]]:
    """Take `excess` back from the discounts, last applied first."""
    result = list(applied)
    notes: list[tuple[str, str]] = []
    for i in range(len(result) - 1, -1, -1):
        if excess <= 0:
            break
        offer = result[i]
        take = min(excess, offer.discount_amount)
        excess -= take
        reduced = offer.discount_amount - take
        notes.append(
            (offer.offer_id, f"floor price {floor} CNY: discount reduced from {offer.discount_amount} to {reduced}")
        )
        if reduced <= 0:
            del result[i]
        else:
            result[i] = AppliedOffer(
                offer.campaign_id,
                offer.campaign_version,
                offer.offer_id,
                offer.kind,
                reduced,
                f"{offer.detail}, limited by the floor price {floor} CNY",
            )
    return result, notes


def _primary(
    applied: list[AppliedOffer], free_item: AppliedOffer | None, extras: list[AppliedOffer], candidates: list[str]
) -> str | None:
    """The campaign the quote reports: the one that gave something, else the first that could
    have (`candidates`: campaigns for this category first, then the other active ones)."""
    for offer in [*applied, *([free_item] if free_item else []), *extras]:
        return offer.campaign_id
    return candidates[0] if candidates else None


def _explain(
    tier: str,
    period: str,
    weekday: int,  # in the primary campaign's time zone
    primary: str | None,
    category: str,
    applied: list[AppliedOffer],
    free_item: AppliedOffer | None,
    extras: list[AppliedOffer],
    public: Decimal | None,
    beats: bool,
    blocked_by: str | None,
) -> str:
    if primary is None:
        return f"{category}: no campaign with benefits is active"
    head = f"{tier} tier, {_PERIOD_NAMES.get(period, period)} {_DAY_NAMES[weekday]}, {category}: "
    if blocked_by:
        parts = [f"blocked: {blocked_by}"]
    else:
        parts = [f"{a.detail} ({a.offer_id})" for a in applied] or ["no discount"]
    if free_item is not None:
        parts.append(f"{free_item.detail} ({free_item.offer_id})")
    parts.extend(f"{e.detail} ({e.offer_id})" for e in extras)
    text = head + "; ".join(parts)
    if public is not None and not beats:
        text += f"; does NOT beat the public discount of {percent(public)}"
    return text


def _holds_partly(when: Mapping[str, Any], fact: Mapping[str, str]) -> bool:
    """The conditions of `when` on the fields of `fact` hold; conditions on other fields are ignored."""
    for name, spec in when.items():
        if name not in fact:
            continue
        value = fact[name]
        if not isinstance(spec, Mapping):
            if value != spec:
                return False
            continue
        for op, arg in spec.items():
            if op == "in" and value not in arg:
                return False
            if op == "not_in" and value in arg:
                return False
            if op == "ne" and value == arg:
                return False
            if op == "exists" and not arg:
                return False
    return True
