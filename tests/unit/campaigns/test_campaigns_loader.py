"""Campaign files: what a good file becomes, and located errors for bad ones."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from services.foundation.rules.errors import RuleFileError
from services.points.campaign_file.loader import find_duplicate_ids, load_campaign, schema_path
from services.points.campaign_file.model import FixedAward, ProportionalAward

FILE = "rules/campaigns/x.yaml"

GOOD = """\
# a comment
campaign: referral-autumn-2026
title: Autumn referral push
active:
  from: 2026-09-01
  until: 2027-03-01
priority: 10
exclusive: true
points:
  stacking: highest
  budget: 5000000
  caps:
    per_user_per_day: 500
    per_user_per_week: 2000
  expiry:
    days: 365
  rules:
    - id: credit-card
      description: Referred customer opened a credit card
      priority: 3
      when:
        event: referral.converted
        product: credit_card
      award: 50
    - id: alliance-spend
      when:
        event: merchant.spend
        merchant_category: {in: [cinema, supermarket]}
        level: 1
        amount: {gte: 10}
      award:
        per_amount: 10
        points: 1
        max: 200
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RuleFileError) as caught:
        load_campaign(FILE, text.encode())
    return [(p.line, p.path, p.reason) for p in caught.value.problems]


def test_a_good_file_becomes_a_campaign() -> None:
    c = load_campaign(FILE, GOOD.encode())
    assert (c.id, c.title, c.file, c.priority, c.exclusive) == (
        "referral-autumn-2026",
        "Autumn referral push",
        FILE,
        10,
        True,
    )
    assert len(c.version) == 12
    assert c.id_line == 2
    assert c.active_from == datetime(2026, 8, 31, 16, 0, tzinfo=UTC)
    assert c.active_until == datetime(2027, 2, 28, 16, 0, tzinfo=UTC)
    assert c.points is not None
    assert (c.points.stacking, c.points.budget) == ("highest", 5000000)
    assert (c.points.caps.per_user_per_day, c.points.caps.per_user_per_week) == (500, 2000)
    assert c.points.caps.per_user_per_campaign is None
    assert c.points.expiry is not None and c.points.expiry.days == 365
    card, spend = c.points.rules
    assert (card.id, card.priority, card.award) == ("credit-card", 3, FixedAward(50))
    assert spend.award == ProportionalAward(Decimal("10"), 1, 200)
    assert spend.description == ""
    # Attribute values are text, as events carry them; a written number becomes its text.
    assert spend.when["level"] == "1"
    assert spend.when["amount"] == {"gte": 10}


def test_defaults() -> None:
    c = load_campaign(FILE, b"campaign: c\ntitle: t\nactive: {from: 2026-01-01}\n")
    assert (c.priority, c.exclusive, c.points, str(c.timezone)) == (0, False, None, "Asia/Shanghai")
    c = load_campaign(
        FILE,
        b"campaign: c\ntitle: t\nactive: {from: 2026-01-01}\npoints:\n  rules: [{id: a, when: {event: x}, award: 1}]\n",
    )
    assert c.points is not None
    assert (c.points.stacking, c.points.budget, c.points.expiry) == ("all", None, None)


def test_unknown_field_is_located() -> None:
    assert problems(GOOD.replace("  budget: 5000000", "  bugdet: 5000000")) == [
        (11, "points.bugdet", "unknown field 'bugdet' (did you mean 'budget'?)")
    ]


def test_bad_enum_is_located() -> None:
    assert problems(GOOD.replace("stacking: highest", "stacking: max")) == [
        (10, "points.stacking", "must be one of all, highest (got 'max')")
    ]


def test_wrong_type_deep_in_the_fourth_rule() -> None:
    extra = "".join(f"    - id: r{i}\n      when: {{event: x}}\n      award: 1\n" for i in (2,))
    extra += "    - id: r3\n      when: {event: x}\n      award:\n        per_amount: 0\n        points: 1\n"
    text = GOOD + extra
    line = text.splitlines().index("        per_amount: 0") + 1
    assert problems(text) == [(line, "points.rules[3].award.per_amount", "must be greater than 0")]


def test_numeric_comparison_on_an_attribute_is_refused() -> None:
    text = GOOD.replace("        product: credit_card", "        product: {gte: 5}")
    assert problems(text) == [
        (
            23,
            "points.rules[0].when.product.gte",
            "gte compares numbers and only applies to amount; attribute values are text",
        )
    ]


def test_semantic_problems_are_all_reported() -> None:
    text = (
        GOOD.replace("  until: 2027-03-01", "  until: 2026-08-01")
        .replace("timezone", "x")
        .replace("- id: alliance-spend", "- id: credit-card")
        .replace("priority: 10\n", "priority: 10\ntimezone: Asia/Shangai\n")
    )
    assert problems(text) == [
        (6, "active.until", "must be after active.from (2026-09-01)"),
        (8, "timezone", "unknown time zone 'Asia/Shangai' (use an IANA name like Asia/Shanghai)"),
        (26, "points.rules[1].id", "duplicate rule id 'credit-card' (also points.rules[0])"),
    ]


def test_bad_dates() -> None:
    assert problems(GOOD.replace("from: 2026-09-01", "from: 2026-02-30")) == [
        (5, "active.from", "'2026-02-30' is not a valid date or time")
    ]
    assert problems(GOOD.replace("from: 2026-09-01", "from: 1st September")) == [
        (
            5,
            "active.from",
            "must be a date like 2026-09-01 or a date-time with an offset like 2026-09-01T08:00:00+08:00",
        )
    ]


def test_expiry_needs_exactly_one_of_days_or_on() -> None:
    assert problems(GOOD.replace("    days: 365", "    days: 365\n    on: 2027-12-31")) == [
        (15, "points.expiry", "give only one of days or on")
    ]
    assert problems(GOOD.replace("    days: 365", "    on: 2026-01-01")) == [
        (16, "points.expiry.on", "is before the campaign starts (2026-09-01)")
    ]
    c = load_campaign(FILE, GOOD.replace("    days: 365", "    on: 2027-12-31").encode())
    assert c.points is not None and c.points.expiry is not None
    assert c.points.expiry.on == date(2027, 12, 31)


def test_condition_problems_are_located_inside_when() -> None:
    text = GOOD.replace("{in: [cinema, supermarket]}", "{in: [cinema, 2.5]}")
    assert problems(text)[0][1] == "points.rules[1].when.merchant_category.in[1]"
    text = GOOD.replace("{in: [cinema, supermarket]}", "{inn: [cinema]}")
    assert problems(text) == [
        (28, "points.rules[1].when.merchant_category.inn", "unknown field 'inn' (did you mean 'in'?)")
    ]


def test_attribute_names_are_checked() -> None:
    assert problems(GOOD.replace("        product: credit_card", "        Product: credit_card")) == [
        (
            23,
            "points.rules[0].when.Product",
            "field name 'Product' must be lowercase letters, digits and '_', starting with a letter",
        )
    ]


def test_campaigns_are_hashable_values() -> None:
    one, two = load_campaign(FILE, GOOD.encode()), load_campaign(FILE, GOOD.encode())
    assert one == two
    assert len({one, two}) == 1


def test_duplicate_campaign_ids_refuse_the_later_file_at_its_campaign_line() -> None:
    a = load_campaign("rules/campaigns/a.yaml", GOOD.encode())
    b = load_campaign("rules/campaigns/b.yaml", ("# b\n" + GOOD).encode())
    c = load_campaign("rules/campaigns/c.yaml", GOOD.replace("referral-autumn-2026", "other").encode())
    errors = find_duplicate_ids({"rules/campaigns/b.yaml": b, "rules/campaigns/a.yaml": a, "rules/campaigns/c.yaml": c})
    assert list(errors) == ["rules/campaigns/b.yaml"]
    assert str(errors["rules/campaigns/b.yaml"]).startswith(
        "rules/campaigns/b.yaml:3: campaign: "
        "campaign id 'referral-autumn-2026' is already used by rules/campaigns/a.yaml"
    )


def test_schema_is_found_in_the_repository_or_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = schema_path()
    assert found.parts[-3:] == ("rules", "schema", "campaign.schema.json")
    assert found.is_file()
    shutil.copy(found, tmp_path / "campaign.schema.json")
    monkeypatch.setenv("ALLIANCE_SCHEMA_DIR", str(tmp_path))
    assert schema_path() == tmp_path / "campaign.schema.json"
    assert load_campaign(FILE, GOOD.encode()).id == "referral-autumn-2026"
