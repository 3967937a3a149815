"""The campaigns in force and their compiled rules; evaluates earn events against them.

Reloads swap one immutable snapshot (a single attribute assignment), so an evaluation running
during a reload sees the old campaigns or the new ones, never a mix.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from services.foundation.rules.conditions import compile_condition, values_pinned
from services.foundation.rules.directory import report_rejection
from services.foundation.rules.engine import CompiledRuleset, Matcher, RulesetRemovedError
from services.foundation.rules.errors import RuleFileError
from services.points.campaigns.evaluation import (
    Candidate,
    EarnEvent,
    Evaluation,
    MatchedRule,
    decide,
    event_fact,
)
from services.points.campaigns.loader import find_duplicate_ids
from services.points.campaigns.model import Campaign

__all__ = ["CampaignBook", "Candidate", "EarnEvent", "Evaluation", "MatchedRule"]

logger = logging.getLogger("alliance.rules")


@dataclass(frozen=True)
class _Entry:
    campaign: Campaign
    compiled: CompiledRuleset | None  # None: the campaign has no points section
    # The event types its rules can match; None when some rule does not pin the type. Lets an
    # evaluation skip the engine for campaigns that cannot fire (most campaigns, most events).
    event_types: frozenset[str] | None = None


def event_types_of(campaign: Campaign) -> frozenset[str] | None:
    if campaign.points is None:
        return frozenset()
    return values_pinned((rule.when for rule in campaign.points.rules), "event")


@dataclass(frozen=True)
class _Snapshot:
    by_file: Mapping[str, _Entry] = field(default_factory=dict)
    ordered: tuple[_Entry, ...] = ()  # priority desc, then id

    @classmethod
    def of(cls, entries: Mapping[str, _Entry]) -> _Snapshot:
        ordered = sorted(entries.values(), key=lambda e: (-e.campaign.priority, e.campaign.id))
        return cls(MappingProxyType(dict(entries)), tuple(ordered))


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
        self._matcher = matcher or Matcher()
        self._name = name  # the ruleset label of metrics and logs
        self._snapshot = _Snapshot()
        self._rejected: dict[str, RuleFileError] = {}
        self._replacing = threading.Lock()

    # -- reload --------------------------------------------------------------------------------

    def replace(self, campaigns: Mapping[str, Campaign]) -> None:
        """Put exactly these campaigns ({file: campaign}) in force. A campaign whose id an
        earlier file (by name) uses is refused; its file's previous campaign, if any, stays."""
        with self._replacing:
            old = self._snapshot
            duplicates = find_duplicate_ids(campaigns)
            entries: dict[str, _Entry] = {}
            created: list[CompiledRuleset] = []
            rejected: dict[str, RuleFileError] = dict(duplicates)
            try:
                for file in sorted(campaigns):
                    if file in duplicates:
                        continue
                    entry = self._entry(campaigns[file], old.by_file.get(file), created, rejected)
                    if entry is not None:
                        entries[file] = entry
            except BaseException:
                for compiled in created:
                    self._matcher.remove(compiled)
                raise
            self._keep_previous(rejected, old, entries)
            self._snapshot = _Snapshot.of(entries)
            kept = {id(e.compiled) for e in entries.values()}
            for entry in old.ordered:
                if entry.compiled is not None and id(entry.compiled) not in kept:
                    self._matcher.remove(entry.compiled)
            for file, error in rejected.items():
                if str(self._rejected.get(file)) != str(error):  # report each new refusal once
                    report_rejection(self._name, error)
            self._rejected = rejected

    def _entry(
        self,
        campaign: Campaign,
        previous: _Entry | None,
        created: list[CompiledRuleset],
        rejected: dict[str, RuleFileError],
    ) -> _Entry | None:
        if previous is not None and previous.campaign.version == campaign.version:
            return _Entry(campaign, previous.compiled, previous.event_types)
        try:
            compiled = compile_campaign(self._matcher, campaign)
        except RuleFileError as error:
            rejected[campaign.file] = error
            return None
        if compiled is not None:
            created.append(compiled)
        return _Entry(campaign, compiled, event_types_of(campaign))

    @staticmethod
    def _keep_previous(rejected: Mapping[str, RuleFileError], old: _Snapshot, entries: dict[str, _Entry]) -> None:
        # A refused file keeps its last good campaign in force, unless that one's id is now taken.
        ids = {entry.campaign.id for entry in entries.values()}
        for file in sorted(rejected):
            previous = old.by_file.get(file)
            if previous is not None and previous.campaign.id not in ids:
                entries[file] = previous
                ids.add(previous.campaign.id)

    # -- reading -------------------------------------------------------------------------------

    @property
    def rejected(self) -> Mapping[str, RuleFileError]:
        """Files refused by the book itself (duplicate ids, engine limits)."""
        return MappingProxyType(dict(self._rejected))

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
        while True:
            snapshot = self._snapshot
            try:
                return self._evaluate(snapshot, event)
            except RulesetRemovedError:
                if self._snapshot is snapshot:
                    raise
                # A reload removed rules this evaluation was using: start again on the new set.

    def _evaluate(self, snapshot: _Snapshot, event: EarnEvent) -> Evaluation:
        fact = event_fact(event)
        matches = []
        for entry in snapshot.ordered:
            campaign = entry.campaign
            if entry.compiled is None or campaign.points is None or not campaign.is_active(event.occurred_at):
                continue
            if entry.event_types is not None and event.event_type not in entry.event_types:
                continue
            rule_ids = self._matcher.match(entry.compiled, fact)
            if rule_ids:
                matches.append((campaign, [campaign.points.rule(rule_id) for rule_id in rule_ids]))
        return decide(event, matches)
