"""The campaign book: stacking, exclusivity, reloads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from services.foundation.rules.engine import Matcher
from services.points.campaign_file.loader import load_campaign
from services.points.campaign_file.model import Campaign
from services.points.campaigns.book import CampaignBook, EarnEvent
from services.points.campaigns.evaluation import event_fact

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai


def campaign(
    campaign_id: str,
    rules: str,
    *,
    priority: int = 0,
    exclusive: bool = False,
    stacking: str = "all",
    active: str = "{from: 2026-01-01, until: 2028-01-01}",
    extra: str = "",
    file: str | None = None,
) -> Campaign:
    text = (
        f"campaign: {campaign_id}\ntitle: {campaign_id}\nactive: {active}\npriority: {priority}\n"
        f"exclusive: {str(exclusive).lower()}\npoints:\n  stacking: {stacking}\n{extra}  rules:\n{rules}"
    )
    return load_campaign(file or f"rules/campaigns/{campaign_id}.yaml", text.encode())


def rule(rule_id: str, when: str, award: str | int, priority: int = 0) -> str:
    return f"    - id: {rule_id}\n      priority: {priority}\n      when: {when}\n      award: {award}\n"


SPEND = "{event: merchant.spend, amount: {gte: 10}}"
PER_10 = "{per_amount: 10, points: 1, max: 200}"


def spend(amount: str | None = "238.50", at: datetime = NOW, **attributes: str) -> EarnEvent:
    return EarnEvent("merchant.spend", at, None if amount is None else Decimal(amount), attributes)


@pytest.fixture
def book() -> Iterator[CampaignBook]:
    matcher = Matcher()
    yield CampaignBook(matcher, name="book-tests")
    matcher.close()


def load(book: CampaignBook, *campaigns: Campaign) -> None:
    book.replace({c.file: c for c in campaigns})


def awarded(book: CampaignBook, event: EarnEvent) -> list[tuple[str, str, int]]:
    return [(c.campaign_id, c.rule_id, c.points) for c in book.evaluate(event).candidates]


def test_fact_shape() -> None:
    event = EarnEvent("merchant.spend", NOW, Decimal("12.30"), {"merchant_id": "m-1", "event": "x", "amount": "9"})
    assert event_fact(event) == {"merchant_id": "m-1", "event": "merchant.spend", "amount": 12.3}
    assert event_fact(EarnEvent("referral.converted", NOW, None, {"amount": "9"})) == {"event": "referral.converted"}


def test_stacking_all_awards_every_matching_rule(book: CampaignBook) -> None:
    rules = rule("base", SPEND, PER_10) + rule("cinema", "{event: merchant.spend, merchant_category: cinema}", 30)
    load(book, campaign("spend", rules))
    assert awarded(book, spend(merchant_category="cinema")) == [("spend", "base", 23), ("spend", "cinema", 30)]
    assert awarded(book, spend(merchant_category="hotel")) == [("spend", "base", 23)]


def test_stacking_highest_awards_the_highest_priority_rule_first_written_on_ties(book: CampaignBook) -> None:
    rules = (
        rule("base", SPEND, PER_10)
        + rule("cinema", "{event: merchant.spend, merchant_category: cinema}", 30, priority=5)
        + rule("cinema-too", "{event: merchant.spend, merchant_category: cinema}", 40, priority=5)
    )
    load(book, campaign("spend", rules, stacking="highest"))
    evaluation = book.evaluate(spend(merchant_category="cinema"))
    assert [(c.rule_id, c.points) for c in evaluation.candidates] == [("cinema", 30)]
    reasons = {m.rule_id: (m.awarded, m.reason) for m in evaluation.matched_rules}
    assert reasons["cinema"] == (True, "")
    assert reasons["base"] == (False, "stacking is highest and rule 'cinema' (priority 5) awards")
    assert reasons["cinema-too"][0] is False


def test_stacking_highest_passes_over_a_rule_that_gives_nothing(book: CampaignBook) -> None:
    rules = rule("base", "{event: merchant.spend}", 5) + rule("big", "{event: merchant.spend}", PER_10, priority=9)
    load(book, campaign("spend", rules, stacking="highest"))
    assert awarded(book, spend("3")) == [("spend", "base", 5)]
    assert awarded(book, spend("300")) == [("spend", "big", 30)]


def test_zero_point_matches_are_dropped_and_explained(book: CampaignBook) -> None:
    load(book, campaign("spend", rule("base", "{event: merchant.spend}", PER_10)))
    for amount, reason in [(None, "the event has no amount"), ("9.99", "amount 9.99 is below per_amount 10")]:
        evaluation = book.evaluate(spend(amount))
        assert evaluation.candidates == []
        (matched,) = evaluation.matched_rules
        assert (matched.rule_id, matched.points, matched.awarded) == ("base", 0, False)
        assert reason in matched.reason


def test_exclusive_campaign_suppresses_lower_priorities_only(book: CampaignBook) -> None:
    any_spend = "{event: merchant.spend}"
    load(
        book,
        campaign("promo", rule("double", any_spend, 100), priority=10, exclusive=True),
        campaign("peer", rule("peer", any_spend, 7), priority=10),
        campaign("base", rule("base", SPEND, PER_10), priority=0),
        campaign("top", rule("top", any_spend, 1), priority=20),
    )
    evaluation = book.evaluate(spend())
    assert [(c.campaign_id, c.points) for c in evaluation.candidates] == [("top", 1), ("peer", 7), ("promo", 100)]
    suppressed = [m for m in evaluation.matched_rules if not m.awarded]
    assert [(m.campaign_id, m.rule_id, m.points) for m in suppressed] == [("base", "base", 23)]
    assert suppressed[0].reason == "exclusive campaign 'promo' (priority 10) awards for this event"


def test_exclusive_campaign_that_awards_nothing_suppresses_nothing(book: CampaignBook) -> None:
    load(
        book,
        campaign(
            "promo", rule("big-only", "{event: merchant.spend, amount: {gte: 1000}}", 100), priority=10, exclusive=True
        ),
        campaign("base", rule("base", SPEND, PER_10)),
    )
    assert awarded(book, spend("238.50")) == [("base", "base", 23)]
    assert awarded(book, spend("1000")) == [("promo", "big-only", 100)]


def test_only_active_campaigns_award_and_candidates_carry_expiry(book: CampaignBook) -> None:
    load(
        book,
        campaign("later", rule("r", "{event: merchant.spend}", 5), active="{from: 2027-01-01}"),
        campaign("now", rule("r", "{event: merchant.spend}", 5), extra="  expiry: {days: 10}\n"),
    )
    (candidate,) = book.evaluate(spend()).candidates
    assert candidate.campaign_id == "now"
    assert candidate.campaign_version == candidate.campaign.version
    assert candidate.expires_at == datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
    assert [c.id for c in book.active(NOW)] == ["now"]
    assert [c.id for c in book.campaigns()] == ["later", "now"]
    assert [c.campaign_id for c in book.evaluate(spend(at=datetime(2027, 1, 1, tzinfo=UTC))).candidates] == [
        "later",
        "now",
    ]


def test_ordering_and_lookup(book: CampaignBook) -> None:
    load(
        book,
        campaign("b", rule("r", SPEND, 1)),
        campaign("a", rule("r", SPEND, 1)),
        campaign("z", rule("r", SPEND, 1), priority=3),
    )
    assert [c.id for c in book.campaigns()] == ["z", "a", "b"]
    assert book.get("a") is not None and book.get("a").id == "a"  # type: ignore[union-attr]
    assert book.get("nope") is None


def test_replace_reuses_unchanged_campaigns_and_removes_stale_rules() -> None:
    matcher = Matcher()
    removed: list[str] = []
    original_remove = matcher.remove

    def remove(compiled):  # type: ignore[no-untyped-def]
        removed.append(compiled.name)
        original_remove(compiled)

    matcher.remove = remove  # type: ignore[method-assign]
    book = CampaignBook(matcher)
    keep = campaign("keep", rule("r", SPEND, 1))
    change_v1 = campaign("change", rule("r", SPEND, 2))
    load(book, keep, change_v1)
    change_v2 = campaign("change", rule("r", SPEND, 3))
    load(book, keep, change_v2)
    assert removed == [f"change@{change_v1.version}"]
    assert awarded(book, spend()) == [("change", "r", 3), ("keep", "r", 1)]
    book.replace({})
    assert sorted(removed) == sorted(
        [f"change@{change_v1.version}", f"change@{change_v2.version}", f"keep@{keep.version}"]
    )
    assert book.evaluate(spend()).candidates == []
    matcher.close()


def test_duplicate_id_refuses_the_later_file_and_keeps_its_previous_campaign(book: CampaignBook) -> None:
    labels = {"ruleset": "book-tests", "file": "rules/campaigns/b.yaml"}

    def rejections() -> float:
        return REGISTRY.get_sample_value("alliance_rule_file_rejections_total", labels) or 0.0

    before = rejections()
    first = campaign("promo", rule("r", SPEND, 1), file="rules/campaigns/a.yaml")
    second_v1 = campaign("other", rule("r", SPEND, 2), file="rules/campaigns/b.yaml")
    load(book, first, second_v1)
    second_v2 = campaign("promo", rule("r", SPEND, 3), file="rules/campaigns/b.yaml")
    load(book, first, second_v2)
    assert rejections() == before + 1
    error = book.rejected["rules/campaigns/b.yaml"]
    assert (error.line, error.path) == (1, "campaign")
    assert "already used by rules/campaigns/a.yaml" in error.reason
    assert awarded(book, spend()) == [("other", "r", 2), ("promo", "r", 1)]
    load(book, first, second_v2)  # still refused, not reported again
    assert rejections() == before + 1


def test_evaluation_racing_a_reload_uses_the_new_rules(book: CampaignBook) -> None:
    load(book, campaign("c", rule("r", SPEND, 1)))
    old_snapshot = book._snapshot
    load(book, campaign("c", rule("r", SPEND, 2)))  # removes the rules old_snapshot refers to
    assert book._evaluate(book._snapshot, spend()).points == 2
    # An evaluation that started on the old snapshot retries on the new one.
    book._book.snapshot, new_snapshot = old_snapshot, book._book.snapshot
    calls = []
    original = book._evaluate

    def evaluate_then_swap(snapshot, event):  # type: ignore[no-untyped-def]
        calls.append(snapshot)
        book._book.snapshot = new_snapshot
        return original(snapshot, event)

    book._evaluate = evaluate_then_swap  # type: ignore[method-assign]
    assert book.evaluate(spend()).points == 2
    assert calls == [old_snapshot, new_snapshot]


def test_campaigns_are_skipped_for_event_types_their_rules_cannot_match() -> None:
    from services.points.campaign_file.loader import load_campaign
    from services.points.campaigns.book import event_types_of

    def campaign(when: str) -> object:
        text = f"""
campaign: c
title: t
active: {{from: 2020-01-01}}
points:
  rules:
    - id: a
      when: {when}
      award: 1
"""
        return load_campaign("c.yaml", text.encode())

    assert event_types_of(campaign("{event: merchant.spend}")) == {"merchant.spend"}  # type: ignore[arg-type]
    assert event_types_of(campaign("{event: {in: [a.b, c.d]}}")) == {"a.b", "c.d"}  # type: ignore[arg-type]
    assert event_types_of(campaign("{event: {ne: a.b}}")) is None  # type: ignore[arg-type]
