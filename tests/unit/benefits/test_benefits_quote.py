"""Quotes, pure: the best exclusive discount, stacking, floor price, budgets, free-item quotas,
the public discount to beat, unknown merchants, entitlements, and the example campaigns."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from services.points.benefits.quote import BenefitBook, QuoteInput, UnknownMerchant, Usage
from services.points.campaign_file.loader import load_campaign

ROOT = Path(__file__).resolve().parents[3]

HEAD = """\
campaign: {id}
title: Test
active:
  from: 2026-01-01
  until: 2028-01-01
priority: {priority}
benefits:
  tiers:
    - {{id: basic, min_aum: 0}}
    - {{id: silver, min_aum: 50000}}
    - {{id: gold, min_aum: 100000}}
    - {{id: platinum, min_aum: 200000}}
  calendar:
    peak:
      weekly:
        - {{from: "fri 12:00", until: "sun 24:00"}}
  merchants:
    m-cinema-01: {{category: cinema, public_discount: 0.10, name: Wanda}}
    m-cinema-02: {{category: cinema, public_discount: 0.60}}
    m-cinema-03: {{category: cinema}}
{extra}  offers:
"""

OFFERS = """\
    - id: gold-offpeak
      when: {category: cinema, tier: {in: [gold, platinum]}, period: off_peak}
      discount: {rate: 0.50}
      priority: 10
      budget: 1000
      on_exhausted: next
    - id: offpeak-all
      when: {category: cinema, period: off_peak}
      discount: {rate: 0.20}
    - id: peak-any
      when: {category: cinema, period: peak}
      discount: {amount_off: 5}
    - id: member-stack
      when: {category: cinema, tier: {ne: basic}}
      discount: {rate: 0.10}
      stacking: stack
    - id: free-ticket
      when: {category: cinema}
      free_item: {item: cinema-ticket, per_year: {silver: 4, gold: 5, platinum: 8}}
    - id: double-points
      when: {category: cinema, period: off_peak}
      points_multiplier: 2
    - id: popcorn
      when: {category: cinema, tier: platinum}
      gift: {item: popcorn}
    - id: lottery
      when: {category: supermarket, period: peak}
      lottery_entries: 1
"""

TUESDAY = datetime.fromisoformat("2026-11-24T19:00:00+08:00")
SATURDAY = datetime.fromisoformat("2026-11-28T19:00:00+08:00")
GOLD = Decimal(120000)


def campaign_text(offers: str = OFFERS, *, id: str = "cinema-test", priority: int = 0, extra: str = "") -> str:
    return HEAD.format(id=id, priority=priority, extra=extra) + offers


@pytest.fixture
def make_book() -> Iterator[object]:
    books: list[BenefitBook] = []

    def make(*texts: str) -> BenefitBook:
        book = BenefitBook()
        book.replace({f"rules/campaigns/{i}.yaml": load_campaign(f"{i}.yaml", t.encode()) for i, t in enumerate(texts)})
        books.append(book)
        return book

    yield make
    for book in books:
        book.replace({})


def q(
    book: BenefitBook,
    amount: str = "80",
    at: datetime = TUESDAY,
    aum: Decimal | None = GOLD,
    merchant: str = "m-cinema-01",
    category: str | None = None,
    usage: Usage | None = None,
):  # type: ignore[no-untyped-def]
    return book.quote(QuoteInput("c-1", merchant, category, Decimal(amount), at, aum), usage or Usage())


def test_best_exclusive_then_stacking_on_the_remaining_amount(make_book) -> None:  # type: ignore[no-untyped-def]
    quote = q(make_book(campaign_text()))
    assert (quote.tier, quote.period, quote.category) == ("gold", "off_peak", "cinema")
    assert [(a.offer_id, a.discount_amount) for a in quote.applied] == [
        ("gold-offpeak", Decimal("40.00")),  # 50% of 80
        ("member-stack", Decimal("4.00")),  # 10% of the 40 left
    ]
    assert (quote.discount_amount, quote.final_amount) == (Decimal("44.00"), Decimal("36.00"))
    assert ("offpeak-all", "exclusive; gold-offpeak gives more") in quote.skipped
    assert quote.explanation.startswith("gold tier, off-peak Tuesday, cinema: 50% off (gold-offpeak); 10% off")
    assert quote.blocked_by is None
    assert quote.years == {"cinema-test": 2026}


def test_tier_boundaries_pick_the_offer(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    assert q(book, aum=Decimal("100000")).applied[0].offer_id == "gold-offpeak"
    silver = q(book, aum=Decimal("99999.99"))
    assert silver.tier == "silver" and silver.applied[0].offer_id == "offpeak-all"
    unknown = q(book, aum=None)
    assert unknown.tier == "basic"
    assert [a.offer_id for a in unknown.applied] == ["offpeak-all"]  # no member-stack for basic


def test_peak_gets_the_peak_offer_and_extras_follow_the_period(make_book) -> None:  # type: ignore[no-untyped-def]
    quote = q(make_book(campaign_text()), at=SATURDAY)
    assert quote.period == "peak"
    assert [a.offer_id for a in quote.applied] == ["peak-any", "member-stack"]
    assert quote.discount_amount == Decimal("12.50")  # 5 off, then 10% of 75
    assert [e.offer_id for e in quote.extras] == []  # double points are off-peak only
    assert "peak Saturday" in quote.explanation
    tuesday = q(make_book(campaign_text()), aum=Decimal(300000))
    assert [(e.offer_id, e.kind) for e in tuesday.extras] == [
        ("double-points", "points_multiplier"),
        ("popcorn", "gift"),
    ]


def test_ties_go_to_priority_then_ids(make_book) -> None:  # type: ignore[no-untyped-def]
    offers = """\
    - id: b-offer
      when: {category: cinema}
      discount: {amount_off: 10}
    - id: a-offer
      when: {category: cinema}
      discount: {amount_off: 10}
    - id: c-offer
      when: {category: cinema}
      discount: {rate: 0.125}
      priority: 5
"""
    quote = q(make_book(campaign_text(offers)))
    assert [a.offer_id for a in quote.applied] == ["c-offer"]  # 10.00 too, higher priority
    offers_no_priority = offers.replace("      priority: 5\n", "")
    assert [a.offer_id for a in q(make_book(campaign_text(offers_no_priority))).applied] == ["a-offer"]


def test_floor_price_clamps_the_final_amount(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text(extra="  floor_price: 30.00\n"))
    quote = q(book)  # would be 36.00: not clamped
    assert quote.final_amount == Decimal("36.00") and not any("floor" in why for _, why in quote.skipped)
    clamped = q(book, amount="50")  # 25 off, then 2.50 off -> 22.50, clamped to 30.00
    assert clamped.final_amount == Decimal("30.00")
    assert clamped.discount_amount == Decimal("20.00")
    assert [(a.offer_id, a.discount_amount) for a in clamped.applied] == [("gold-offpeak", Decimal("20.00"))]
    assert ("member-stack", "floor price 30.00 CNY: discount reduced from 2.50 to 0.00") in clamped.skipped
    assert ("gold-offpeak", "floor price 30.00 CNY: discount reduced from 25.00 to 20.00") in clamped.skipped
    assert "floor price 30.00 CNY" in clamped.explanation
    below = q(book, amount="20")  # below the floor already: nothing off, nothing added
    assert below.final_amount == Decimal("20.00") and below.discount_amount == Decimal("0.00")


def test_budget_spent_falls_back_with_next(make_book) -> None:  # type: ignore[no-untyped-def]
    usage = Usage(budget_spent={("cinema-test", "gold-offpeak"): Decimal("970.00")})
    quote = q(make_book(campaign_text()), usage=usage)  # 970 + 40 > 1000
    assert [a.offer_id for a in quote.applied] == ["offpeak-all", "member-stack"]
    assert quote.skipped[0][0] == "gold-offpeak" and quote.skipped[0][1].startswith("budget spent (970.00 of 1000.00")
    assert quote.blocked_by is None
    exact = Usage(budget_spent={("cinema-test", "gold-offpeak"): Decimal("960.00")})  # 960 + 40 = 1000 fits
    assert q(make_book(campaign_text()), usage=exact).applied[0].offer_id == "gold-offpeak"


def test_budget_spent_blocks_with_fail(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text(OFFERS.replace("on_exhausted: next", "on_exhausted: fail")))
    usage = Usage(budget_spent={("cinema-test", "gold-offpeak"): Decimal("999.99")})
    quote = q(book, usage=usage)
    assert quote.blocked_by is not None and quote.blocked_by.startswith("gold-offpeak: budget spent")
    assert quote.skipped[0][0] == "gold-offpeak"
    assert quote.applied == () and quote.final_amount == Decimal("80.00")
    assert "blocked: gold-offpeak" in quote.explanation
    # An exhausted fail offer that would not have been the best blocks nothing.
    silver = q(book, aum=Decimal(60000), usage=usage)
    assert silver.blocked_by is None and silver.applied[0].offer_id == "offpeak-all"
    assert book.offer_budget("cinema-test", "gold-offpeak") == Decimal(1000)
    assert book.offer_budget("cinema-test", "offpeak-all") is None


def test_free_item_quota_left_and_used(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    fresh = q(book)
    assert fresh.free_item is not None and fresh.free_item.offer_id == "free-ticket"
    assert fresh.free_items_left == 5
    assert fresh.free_item.kind == "free_item" and fresh.free_item.discount_amount == Decimal("0.00")
    some = q(book, usage=Usage(free_items_used={("cinema-test", "free-ticket", "2026"): 3}))
    assert some.free_items_left == 2 and "2 of 5 left in 2026" in some.free_item.detail  # type: ignore[union-attr]
    used = Usage(free_items_used={("cinema-test", "free-ticket", "2026"): 5})
    spent = q(book, usage=used)
    assert spent.free_item is None and spent.free_items_left == 0
    assert ("free-ticket", "free cinema-ticket quota used (5 of 5 in 2026)") in spent.skipped
    # Last year's use does not count; the year is the local (Shanghai) year of `at`.
    last_year = Usage(free_items_used={("cinema-test", "free-ticket", "2025"): 5})
    assert q(book, usage=last_year).free_items_left == 5
    new_year = datetime.fromisoformat("2026-12-31T16:30:00+00:00")  # 2027-01-01 00:30 local
    assert q(book, at=new_year, usage=used).free_items_left == 5
    assert q(book, at=new_year).years == {"cinema-test": 2027}
    basic = q(book, aum=None)
    assert basic.free_item is None and ("free-ticket", "tier basic gets no free cinema-ticket") in basic.skipped


def test_beats_public_discount(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    assert q(book).public_discount == Decimal("0.10") and q(book).beats_public is True  # 55% > 10%
    high = q(book, merchant="m-cinema-02")  # the public gets 60%
    assert high.public_discount == Decimal("0.60") and high.beats_public is False
    assert "does NOT beat the public discount of 60%" in high.explanation
    basic = q(book, merchant="m-cinema-02", aum=None, amount="100")  # 20% off vs the public's 60%
    assert basic.discount_amount == Decimal("20.00") and basic.beats_public is False
    unknown = q(book, merchant="m-elsewhere", category="cinema")
    assert unknown.public_discount is None and unknown.beats_public is True
    nothing = q(book, merchant="m-cinema-03")  # public 0, alliance > 0
    assert nothing.public_discount == Decimal("0") and nothing.beats_public is True


def test_equal_to_public_does_not_beat_it(make_book) -> None:  # type: ignore[no-untyped-def]
    text = campaign_text("    - id: ten\n      when: {category: cinema}\n      discount: {rate: 0.10}\n")
    quote = q(make_book(text))
    assert quote.discount_amount == Decimal("8.00") and quote.beats_public is False


def test_unknown_merchant(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    with pytest.raises(UnknownMerchant):
        q(book, merchant="m-nowhere")
    assert issubclass(UnknownMerchant, ValueError)
    quote = q(book, merchant="m-nowhere", category="cinema")
    assert quote.category == "cinema" and quote.applied
    # The request's category wins over the merchant data.
    market = q(book, merchant="m-cinema-01", category="supermarket", at=SATURDAY)
    assert market.category == "supermarket" and market.applied == ()
    assert [e.offer_id for e in market.extras] == ["lottery"]


def test_only_active_campaigns_count(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    before = datetime.fromisoformat("2025-12-31T23:59:59+08:00")
    with pytest.raises(UnknownMerchant):
        q(book, at=before)
    quote = q(book, at=before, category="cinema")
    assert quote.applied == () and quote.discount_amount == Decimal("0.00") and quote.tier == ""


def test_best_exclusive_across_campaigns_and_budget_skip_reason(make_book) -> None:  # type: ignore[no-untyped-def]
    other = campaign_text(
        "    - id: big\n      when: {category: cinema}\n      discount: {rate: 0.60}\n", id="other-campaign"
    )
    quote = q(make_book(campaign_text(), other))
    assert [(a.campaign_id, a.offer_id) for a in quote.applied] == [
        ("other-campaign", "big"),
        ("cinema-test", "member-stack"),
    ]
    assert quote.discount_amount == Decimal("51.20")  # 48 + 10% of 32
    assert all(a.campaign_version for a in quote.applied)


def test_naive_time_is_refused(make_book) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="time zone"):
        q(make_book(campaign_text()), at=datetime(2026, 11, 24, 19))


def test_entitlements(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    usage = Usage(free_items_used={("cinema-test", "free-ticket", "2026"): 2})
    (entitlement,) = book.entitlements("c-1", GOLD, TUESDAY, usage)
    assert (entitlement.campaign.id, entitlement.tier, entitlement.period) == ("cinema-test", "gold", "off_peak")
    (free,) = entitlement.free_items
    assert (free.item, free.per_year, free.used, free.left, free.year) == ("cinema-ticket", 5, 2, 3, 2026)
    assert [a.offer_id for a in entitlement.available_now] == [
        "gold-offpeak",
        "offpeak-all",
        "member-stack",
        "free-ticket",
        "double-points",
    ]
    (basic,) = book.entitlements("c-1", None, SATURDAY, Usage())
    assert basic.free_items[0].per_year == 0
    assert [a.offer_id for a in basic.available_now] == ["peak-any", "lottery"]


def test_reload_swaps_the_campaigns(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    campaign = book.campaigns()[0]
    book.replace({"a.yaml": campaign})  # same version: the compiled offers are kept
    assert q(book).applied
    book.replace({})
    assert book.campaigns() == []
    with pytest.raises(UnknownMerchant):
        q(book)


# -- the example campaigns ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> Iterator[BenefitBook]:
    files = sorted((ROOT / "rules" / "campaigns").glob("*.yaml"))
    book = BenefitBook()
    book.replace({str(f): load_campaign(str(f), f.read_bytes()) for f in files})
    yield book
    book.replace({})


def test_example_cinema_off_peak_is_deeper_than_peak(examples: BenefitBook) -> None:
    off_peak = q(examples)
    peak = q(examples, at=SATURDAY)
    assert (off_peak.tier, off_peak.period, peak.period) == ("gold", "off_peak", "peak")
    assert off_peak.discount_amount > peak.discount_amount
    assert off_peak.beats_public and peak.beats_public  # both beat the public 10%
    assert off_peak.free_items_left == 5
    assert any(e.offer_id == "double-points-offpeak" for e in off_peak.extras)
    summer = q(examples, at=datetime.fromisoformat("2027-07-14T19:00:00+08:00"))  # a Wednesday in the holidays
    assert summer.period == "peak"
    top = q(examples, aum=Decimal(600000))
    assert top.tier == "diamond" and any(e.offer_id == "popcorn-gift" for e in top.extras)


def test_example_supermarket(examples: BenefitBook) -> None:
    flagged = q(examples, merchant="m-market-02", amount="260", at=SATURDAY, aum=None)
    assert flagged.discount_amount == Decimal("20.00") and flagged.beats_public is False
    assert [e.offer_id for e in flagged.extras] == ["weekend-lottery"]
    small = q(examples, merchant="m-market-01", amount="150", at=SATURDAY, aum=None)
    assert small.applied == ()  # under the 200 CNY threshold
    gold = q(examples, merchant="m-market-02", amount="260", at=TUESDAY)
    assert [a.offer_id for a in gold.applied] == ["basket-20-off", "basket-gold-extra"]
    assert gold.final_amount == Decimal("228.00") and gold.beats_public is True and gold.extras == ()


def test_an_offer_without_a_category_applies_at_any_merchant(make_book) -> None:  # type: ignore[no-untyped-def]
    # Quotes skip campaigns none of whose offers name the purchase's category; an offer that names
    # no category keeps its campaign in play for every category.
    everywhere = "    - id: gold-gift\n      when: {tier: gold}\n      gift: {item: umbrella}\n"
    book = make_book(campaign_text(OFFERS + everywhere))
    hotel = q(book, merchant="m-hotel", category="hotel")
    assert [e.offer_id for e in hotel.extras] == ["gold-gift"] and hotel.tier == "gold"
    only_cinema = make_book(campaign_text(OFFERS, id="cinema-only"))
    nothing = q(only_cinema, merchant="m-hotel", category="hotel")
    assert not nothing.applied and not nothing.extras and nothing.tier == "gold"
    assert "hotel" in nothing.explanation


def multiplier(book: BenefitBook, *, at: datetime = TUESDAY, aum: Decimal | None = GOLD, merchant: str = "m-cinema-01"):  # type: ignore[no-untyped-def]
    return book.points_multiplier(QuoteInput("c-1", merchant, None, Decimal("80"), at, aum))


def test_points_multiplier_follows_the_offer_conditions(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    found = multiplier(book)
    assert found is not None and (found.offer_id, found.factor, found.period) == ("double-points", 2, "off_peak")
    assert multiplier(book, at=SATURDAY) is None  # the offer is off-peak only
    assert multiplier(book, merchant="m-unknown") is None  # no category to go on: no multiplier, no error


def test_the_highest_multiplier_wins_and_multipliers_do_not_compound(make_book) -> None:  # type: ignore[no-untyped-def]
    triple = "    - id: triple-gold\n      when: {category: cinema, tier: gold}\n      points_multiplier: 3\n"
    book = make_book(campaign_text(OFFERS + triple), campaign_text(id="other", priority=5))
    found = multiplier(book)
    assert found is not None and (found.offer_id, found.factor) == ("triple-gold", 3)
    assert multiplier(book, aum=Decimal(60000)).factor == 2  # silver: only the doubles hold


def test_earn_looks_up_the_customer_only_where_a_multiplier_could_apply(make_book) -> None:  # type: ignore[no-untyped-def]
    book = make_book(campaign_text())
    assert book.multiplier_possible("m-cinema-01", None, SATURDAY)  # a cinema: double-points exists
    assert not book.multiplier_possible("m-market", "supermarket", TUESDAY)
    assert not book.multiplier_possible("m-unknown", None, TUESDAY)
    anywhere = "    - id: triple-all\n      when: {tier: gold}\n      points_multiplier: 3\n"
    assert make_book(campaign_text(OFFERS + anywhere, id="any")).multiplier_possible("m-x", "hotel", TUESDAY)
