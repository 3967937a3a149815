"""The `benefits:` section of campaign files: what a good one becomes, located errors for bad ones,
and the example campaigns."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from services.foundation.rules.engine import Matcher
from services.foundation.rules.errors import RuleFileError
from services.points.benefits.quote import compile_benefits
from services.points.campaign_file.loader import load_campaign
from services.points.campaigns.book import CampaignBook

FILE = "rules/campaigns/b.yaml"
ROOT = Path(__file__).resolve().parents[3]

GOOD = """\
campaign: cinema-test
title: Cinema test
active:
  from: 2026-01-01
  until: 2028-01-01
benefits:
  tiers:
    - {id: basic, min_aum: 0}
    - {id: silver, min_aum: 50000}
    - {id: gold, min_aum: 100000}
  calendar:
    peak:
      weekly:
        - {from: "fri 12:00", until: "sun 24:00"}
      dates:
        - {from: 2027-07-01, until: 2027-08-31, note: summer holidays}
      holidays: [2027-01-01, 2027-02-17]
  merchants:
    m-cinema-01: {category: cinema, public_discount: 0.10, name: Wanda}
  floor_price: 1.00
  offers:
    - id: gold-offpeak
      description: Gold, off-peak
      when: {category: cinema, tier: {in: [gold]}, period: off_peak}
      discount: {rate: 0.50}
      priority: 10
      budget: 100000
      on_exhausted: next
    - id: free-ticket
      when: {category: cinema}
      free_item: {item: cinema-ticket, per_year: {silver: 4, gold: 5}}
    - id: double-points
      when: {category: cinema, period: off_peak}
      points_multiplier: 2
    - id: popcorn
      when: {category: cinema, tier: gold}
      gift: {item: popcorn, note: small popcorn}
    - id: lottery
      when: {category: supermarket, period: peak, amount: {gte: 100}}
      lottery_entries: 1
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RuleFileError) as caught:
        load_campaign(FILE, text.encode())
    return [(p.line, p.path, p.reason) for p in caught.value.problems]


def test_good_file_becomes_benefit_terms() -> None:
    campaign = load_campaign(FILE, GOOD.encode())
    assert campaign.points is None
    terms = campaign.benefits
    assert terms is not None
    assert [(t.id, t.min_aum) for t in terms.tiers] == [
        ("basic", Decimal(0)),
        ("silver", Decimal(50000)),
        ("gold", Decimal(100000)),
    ]
    assert terms.floor_price == Decimal("1.00")
    assert terms.merchants["m-cinema-01"].public_discount == Decimal("0.10")
    assert terms.calendar.holidays == frozenset({date(2027, 1, 1), date(2027, 2, 17)})
    assert terms.calendar.dates[0].note == "summer holidays"
    kinds = {offer.id: offer.kind for offer in terms.offers}
    assert kinds == {
        "gold-offpeak": "discount",
        "free-ticket": "free_item",
        "double-points": "points_multiplier",
        "popcorn": "gift",
        "lottery": "lottery",
    }
    gold = terms.offer("gold-offpeak")
    assert (gold.priority, gold.stacking, gold.budget, gold.on_exhausted) == (10, "exclusive", Decimal(100000), "next")
    assert gold.discount is not None and gold.discount.rate == Decimal("0.50")
    free = terms.offer("free-ticket")
    assert (
        free.free_item is not None and free.free_item.allowance("gold") == 5 and free.free_item.allowance("basic") == 0
    )
    assert terms.offer("free-ticket").on_exhausted == "fail"  # the default
    assert terms.offer("double-points").multiplier == Decimal(2)
    assert (terms.offer("popcorn").gift, terms.offer("popcorn").gift_note) == ("popcorn", "small popcorn")
    assert terms.offer("lottery").lottery_entries == 1
    matcher = Matcher()
    try:
        assert compile_benefits(matcher, campaign) is not None
    finally:
        matcher.close()


def test_a_file_may_have_both_sections_and_points_keep_working() -> None:
    text = GOOD.replace(
        "benefits:\n",
        "points:\n  rules:\n    - id: spend\n      when: {event: merchant.spend}\n      award: 5\nbenefits:\n",
    )
    campaign = load_campaign(FILE, text.encode())
    assert campaign.points is not None and campaign.points.rules[0].id == "spend"
    assert campaign.benefits is not None


def test_unknown_tier_in_when_and_per_year() -> None:
    text = GOOD.replace("tier: {in: [gold]}", "tier: {in: [gold, platnum]}").replace("gold: 5}", "golden: 5}")
    found = problems(text)
    assert (24, "benefits.offers[0].when.tier.in[1]", "unknown tier 'platnum' (tiers: basic, silver, gold)") in found
    assert (
        31,
        "benefits.offers[1].free_item.per_year.golden",
        "unknown tier 'golden' (tiers: basic, silver, gold)",
    ) in found


def test_tiers_must_ascend_and_be_unique() -> None:
    text = GOOD.replace("{id: silver, min_aum: 50000}", "{id: basic, min_aum: 0}")
    found = problems(text)
    assert (9, "benefits.tiers[1].id", "duplicate tier id 'basic' (also benefits.tiers[0])") in found
    assert any(p[:2] == (9, "benefits.tiers[1].min_aum") and "ascending" in p[2] for p in found)


def test_rate_out_of_range() -> None:
    assert problems(GOOD.replace("rate: 0.50", "rate: 1.5")) == [
        (25, "benefits.offers[0].discount.rate", "must be a fraction between 0 and 1 (0.5 = 50% off); got 1.5")
    ]


def test_bad_weekly_range() -> None:
    found = problems(GOOD.replace('"fri 12:00"', '"friday noon"').replace('"sun 24:00"', '"sun 25:00"'))
    assert [(line, path) for line, path, _ in found] == [
        (14, "benefits.calendar.peak.weekly[0].from"),
        (14, "benefits.calendar.peak.weekly[0].until"),
    ]
    assert "like 'fri 12:00'" in found[0][2]
    assert found[1][2] == "'sun 25:00' is not a time of day (00:00 to 24:00)"


def test_reversed_date_range_and_bad_dates() -> None:
    text = GOOD.replace("until: 2027-08-31", "until: 2027-06-30").replace("2027-02-17]", "2027-02-30]")
    assert problems(text) == [
        (16, "benefits.calendar.peak.dates[0].until", "is before from (2027-07-01); both ends are inclusive"),
        (17, "benefits.calendar.peak.holidays[1]", "'2027-02-30' is not a valid date"),
    ]


def test_duplicate_offer_ids() -> None:
    found = problems(GOOD.replace("- id: popcorn", "- id: lottery"))
    assert found == [(38, "benefits.offers[4].id", "duplicate offer id 'lottery' (also benefits.offers[3])")]


def test_merchant_category_missing() -> None:
    found = problems(GOOD.replace("{category: cinema, public_discount: 0.10, name: Wanda}", "{name: Wanda}"))
    assert [(line, path) for line, path, _ in found] == [(19, "benefits.merchants.m-cinema-01.category")]
    assert found[0][2] == "is required"


def test_exactly_one_kind_per_offer() -> None:
    found = problems(
        GOOD.replace("      points_multiplier: 2\n", "      points_multiplier: 2\n      lottery_entries: 3\n")
    )
    assert found == [
        (
            32,
            "benefits.offers[2]",
            "needs exactly one of discount, free_item, points_multiplier, gift, "
            "lottery_entries; has points_multiplier, lottery_entries",
        )
    ]
    nothing = GOOD.replace("      gift: {item: popcorn, note: small popcorn}\n", "")
    assert problems(nothing)[0][2].endswith("has none")


def test_unknown_period_weekday_and_fields() -> None:
    text = GOOD.replace("period: off_peak}", "period: offpeak}", 1).replace("tier: gold}", "weekday: friday}")
    assert problems(text) == [
        (24, "benefits.offers[0].when.period", "unknown period 'offpeak' (periods: peak, off_peak)"),
        (
            36,
            "benefits.offers[3].when.weekday",
            "unknown weekday 'friday' (weekdays: mon, tue, wed, thu, fri, sat, sun)",
        ),
    ]
    found = problems(GOOD.replace("{category: supermarket,", "{categry: x,"))
    assert found == [(39, "benefits.offers[4].when.categry", "unknown field 'categry' (did you mean 'category'?)")]


def test_numeric_operators_only_on_amount_and_budget_only_on_discounts() -> None:
    text = GOOD.replace("{category: cinema}\n      free_item", "{category: {gte: 3}}\n      free_item").replace(
        "      points_multiplier: 2\n", "      points_multiplier: 2\n      budget: 5\n"
    )
    found = problems(text)
    assert (30, "benefits.offers[1].when.category.gte", "gte compares numbers and only applies to amount") in found
    assert (35, "benefits.offers[2].budget", "a budget only applies to discount offers") in found


def test_discount_needs_exactly_one_form() -> None:
    found = problems(GOOD.replace("discount: {rate: 0.50}", "discount: {rate: 0.5, price: 10}"))
    assert found == [(25, "benefits.offers[0].discount", "give only one of rate, amount_off or price")]


EXAMPLES = sorted((ROOT / "rules" / "campaigns").glob("*-benefits-*.yaml"))


def test_there_are_benefit_examples() -> None:
    assert [p.name for p in EXAMPLES] == ["cinema-benefits-2026.yaml", "supermarket-benefits-2026.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_and_compile(path: Path) -> None:
    campaign = load_campaign(str(path), path.read_bytes())
    assert campaign.benefits is not None and campaign.benefits.offers
    assert campaign.active_until is not None and campaign.active_until.astimezone(campaign.timezone).date() == date(
        2028, 1, 1
    )  # through 2027
    matcher = Matcher()
    try:
        assert compile_benefits(matcher, campaign) is not None
    finally:
        matcher.close()


def test_all_campaign_files_load_together() -> None:
    campaigns = {str(p): load_campaign(str(p), p.read_bytes()) for p in (ROOT / "rules" / "campaigns").glob("*.yaml")}
    book = CampaignBook()
    book.replace(campaigns)
    assert not book.rejected
