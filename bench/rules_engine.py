"""The rules engine alone: one 50-rule campaign, events evaluated back to back on one thread."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

from services.foundation.rules.engine import Matcher
from services.points.campaign_file.loader import load_campaign
from services.points.campaigns.book import CampaignBook, EarnEvent

CATEGORIES = ["cinema", "supermarket", "restaurant", "hotel", "travel", "car_service", "bookstore", "gym", "ktv", "spa"]


def campaign_yaml(rules: int) -> str:
    lines = [
        "campaign: bench-fifty",
        "title: Fifty rules",
        "active: {from: 2020-01-01}",
        "points:",
        "  stacking: all",
        "  rules:",
    ]
    for n in range(rules):
        category = CATEGORIES[n % len(CATEGORIES)]
        floor = (n // len(CATEGORIES)) * 50
        lines += [
            f"    - id: r{n}",
            "      when:",
            "        event: merchant.spend",
            f"        merchant_category: {category}",
            f"        amount: {{gte: {floor}}}",
            f"      award: {{per_amount: 10, points: 1, max: {100 + n}}}",
        ]
    return "\n".join(lines) + "\n"


def engine_evaluations_per_second(rules: int = 50, seconds: float = 5.0, *, memo: bool = False) -> float:
    """Evaluations per second on one thread. memo=False asks the engine every time (the engine's
    own speed); memo=True is the Matcher as services run it, remembering answers per fact key."""
    book = CampaignBook(Matcher() if memo else Matcher(memo_size=0))
    book.replace({"bench.yaml": load_campaign("bench.yaml", campaign_yaml(rules).encode())})
    now = datetime.now(UTC)
    events = [
        EarnEvent("merchant.spend", now, Decimal(10 + (i * 37) % 400), {"merchant_category": CATEGORIES[i % 10]})
        for i in range(1000)
    ]
    assert book.evaluate(events[0]).candidates, "the bench campaign must match its events"
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for event in events:
            book.evaluate(event)
        done += len(events)
    return done / elapsed
