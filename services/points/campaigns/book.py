"""The campaigns in force and their compiled rules; evaluates earn events against them.

Reloads swap one immutable snapshot (a single attribute assignment), so an evaluation running
during a reload sees the old campaigns or the new ones, never a mix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from services.foundation.rules.book import RuleBook, Snapshot
from services.foundation.rules.conditions import compile_condition, values_pinned
from services.foundation.rules.engine import CompiledRuleset, Matcher
from services.foundation.rules.errors import RuleFileError
from services.points.campaign_file.model import Campaign
from services.points.campaigns.evaluation import (
    Candidate,
    EarnEvent,
    Evaluation,
    MatchedRule,
    decide,
    event_fact,
)

__all__ = ["CampaignBook", "Candidate", "EarnEvent", "Evaluation", "MatchedRule"]

logger = logging.getLogger("alliance.rules")


@dataclass(frozen=True)
class _Entry:
    campaign: Campaign
    compiled: CompiledRuleset | None  # None: the campaign has no points section
    # The event types its rules can match; None when some rule does not pin the type. Lets an
    # evaluation skip the engine for campaigns that cannot fire (most campaigns, most events).
    event_types: frozenset[str] | None = None

    @property
    def document(self) -> Campaign:
        return self.campaign


def event_types_of(campaign: Campaign) -> frozenset[str] | None:
    if campaign.points is None:
        return frozenset()
    return values_pinned((rule.when for rule in campaign.points.rules), "event")


def _entry(campaign: Campaign, compiled: CompiledRuleset | None) -> _Entry:
    return _Entry(campaign, compiled, event_types_of(campaign))


def compile_campaign(matcher: Matcher, campaign: Campaign) -> CompiledRuleset | None:
    """Register the campaign's points rules; RuleFileError if the engine cannot hold them."""
    if campaign.points is None:
        return None
    rules = [(rule.id, compile_condition(rule.when)) for rule in campaign.points.rules]
    try:
        return matcher.add(f"{campaign.id}@{campaign.version}", rules)
    except ValueError as error:
        raise RuleFileError(campaign.file, None, "points.rules", str(error)) from error


class CampaignBook:
    def __init__(self, matcher: Matcher | None = None, name: str = "campaigns") -> None:
        self._book: RuleBook[Campaign, _Entry] = RuleBook(name, compile_campaign, _entry, matcher=matcher)

    def replace(self, campaigns: Mapping[str, Campaign]) -> None:
        """Put exactly these campaigns ({file: campaign}) in force (rules: foundation/rules/book.py)."""
        self._book.replace(campaigns)

    @property
    def rejected(self) -> Mapping[str, RuleFileError]:
        """Files refused by the book itself (duplicate ids, engine limits)."""
        return self._book.rejected

    @property
    def _snapshot(self) -> Snapshot[_Entry]:
        return self._book.snapshot

    def get(self, campaign_id: str) -> Campaign | None:
        for entry in self._snapshot.ordered:
            if entry.campaign.id == campaign_id:
                return entry.campaign
        return None

    def campaigns(self) -> list[Campaign]:
        """Every campaign in force, by priority (highest first) then id."""
        return [entry.campaign for entry in self._snapshot.ordered]

    def active(self, at: datetime) -> list[Campaign]:
        return [entry.campaign for entry in self._snapshot.ordered if entry.campaign.is_active(at)]

    def candidates(self, event: EarnEvent) -> list[Candidate]:
        """What the event would award (before caps and budgets)."""
        return list(self.evaluate(event).candidates)

    def evaluate(self, event: EarnEvent) -> Evaluation:
        """Candidates for the event (before caps and budgets) and every matched rule, explained."""
        return self._book.on_current(lambda snapshot: self._evaluate(snapshot, event))

    def _evaluate(self, snapshot: Snapshot[_Entry], event: EarnEvent) -> Evaluation:
        fact = event_fact(event)
        matches = []
        for entry in snapshot.ordered:
            campaign = entry.campaign
            if entry.compiled is None or campaign.points is None or not campaign.is_active(event.occurred_at):
                continue
            if entry.event_types is not None and event.event_type not in entry.event_types:
                continue
            rule_ids = self._book.matcher.match(entry.compiled, fact)
            if rule_ids:
                matches.append((campaign, [campaign.points.rule(rule_id) for rule_id in rule_ids]))
        return decide(event, matches)
