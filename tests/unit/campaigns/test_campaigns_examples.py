"""The shipped schema and campaign files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from services.foundation.rules.engine import Matcher
from services.points.campaign_file.loader import load_campaign, schema_path
from services.points.campaigns.book import CampaignBook, EarnEvent

REPO = Path(__file__).resolve().parents[3]
CAMPAIGNS = sorted((REPO / "rules" / "campaigns").glob("*.yaml"))
TODAY = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def test_schema_is_valid_draft_2020_12_and_documents_every_field() -> None:
    schema = json.loads(schema_path().read_text())
    Draft202012Validator.check_schema(schema)
    undocumented: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if "description" not in sub and "$ref" not in sub:
                    undocumented.append(f"{where}.{name}")
                walk(sub, f"{where}.{name}")
            for key in ("$defs", "items", "oneOf", "additionalProperties"):
                value = node.get(key)
                if isinstance(value, dict):
                    for name, sub in value.items() if key == "$defs" else [("", value)]:
                        walk(sub, f"{where}.{name or key}")
                elif isinstance(value, list):
                    for i, sub in enumerate(value):
                        walk(sub, f"{where}.{key}[{i}]")

    walk(schema, "")
    assert undocumented == []
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        if name == "when":  # attributes are open-ended, but each must be a valid condition
            assert definition["additionalProperties"] == {"$ref": "#/$defs/attributeCondition"}
        elif "properties" in definition:
            assert definition.get("additionalProperties") is False, name


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_shipped_campaign_validates_and_is_live_today(path: Path) -> None:
    campaign = load_campaign(str(path), path.read_bytes())
    assert campaign.is_active(TODAY)
    assert campaign.active_until is not None and campaign.active_until >= datetime(2027, 12, 31, tzinfo=UTC)
    has_points = campaign.points is not None and bool(campaign.points.rules)
    has_benefits = campaign.benefits is not None and bool(campaign.benefits.offers)
    assert has_points or has_benefits


@pytest.fixture(scope="module")
def book() -> CampaignBook:
    book = CampaignBook(Matcher(), name="examples")
    book.replace({str(p): load_campaign(str(p), p.read_bytes()) for p in CAMPAIGNS})
    assert book.rejected == {}
    return book


@pytest.mark.parametrize(
    ("product", "points"),
    [("loan", 100), ("credit_card", 50), ("mobile_banking", 20), ("pos_terminal", 80), ("qr_terminal", 80)],
)
def test_referral_points_per_product(book: CampaignBook, product: str, points: int) -> None:
    evaluation = book.evaluate(EarnEvent("referral.converted", TODAY, None, {"product": product, "level": "1"}))
    (candidate,) = evaluation.candidates
    assert (candidate.campaign_id, candidate.points) == ("referral-autumn-2026", points)
    assert candidate.expires_at == datetime(2027, 11, 23, 4, 0, tzinfo=UTC)  # 365 days
    terms = candidate.campaign.points
    assert terms is not None and terms.budget and terms.caps.per_user_per_day and terms.caps.per_user_per_campaign


def test_referral_points_are_for_the_direct_referrer_only(book: CampaignBook) -> None:
    """Deeper levels earn only where a campaign file says so (the shipped one does not)."""
    for attributes in ({"product": "loan", "level": "2"}, {"product": "loan"}):
        assert not book.evaluate(EarnEvent("referral.converted", TODAY, None, attributes)).candidates


def test_alliance_spending(book: CampaignBook) -> None:
    def spend(amount: str, category: str = "cinema") -> list[tuple[str, int]]:
        event = EarnEvent("merchant.spend", TODAY, Decimal(amount), {"merchant_category": category})
        return [(c.rule_id, c.points) for c in book.evaluate(event).candidates]

    assert spend("238.50") == [("alliance-spend", 23)]
    assert spend("99999") == [("alliance-spend", 200)]  # the per-payment maximum
    assert spend("9.99") == []
    assert spend("500", category="casino") == []


@pytest.mark.parametrize(("event", "points"), [("activity.signup", 10), ("community.post", 5), ("community.like", 1)])
def test_activity_points(book: CampaignBook, event: str, points: int) -> None:
    (candidate,) = book.evaluate(EarnEvent(event, TODAY)).candidates
    assert (candidate.campaign_id, candidate.points) == ("community-activity-2026", points)
    terms = candidate.campaign.points
    assert terms is not None and terms.caps.per_user_per_day is not None and terms.caps.per_user_per_day <= 50


def test_sharing_inside_the_app_earns_nothing(book: CampaignBook) -> None:
    assert book.evaluate(EarnEvent("community.share", TODAY, None, {"channel": "wechat"})).points == 3
    assert book.evaluate(EarnEvent("community.share", TODAY, None, {"channel": "internal"})).points == 0
