"""What an event earns before caps and budgets: the stacking and exclusivity policy, pure.

Caps and budgets need the ledger (points already awarded), so they are applied by the caller;
this module only decides which rules award and how many points each would give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from services.points.campaign_file.model import Campaign, PointsRule, ProportionalAward


@dataclass(frozen=True)
class EarnEvent:
    event_type: str
    occurred_at: datetime  # aware; chooses the campaigns in force
    amount: Decimal | None = None  # CNY
    attributes: Mapping[str, str] = field(default_factory=dict)


def event_fact(event: EarnEvent) -> dict[str, Any]:
    """The fact the rules see: the attributes, plus `event` and `amount`, which they cannot override."""
    fact: dict[str, Any] = {key: value for key, value in event.attributes.items() if key != "amount"}
    fact["event"] = event.event_type
    if event.amount is not None:
        fact["amount"] = float(event.amount)
    return fact


@dataclass(frozen=True)
class Candidate:
    """A rule that awards for the event: points before caps and budget."""

    campaign_id: str
    campaign_version: str
    rule_id: str
    points: int
    expires_at: datetime | None  # UTC; None: never
    campaign: Campaign = field(repr=False, compare=False)
    # Set when a benefits offer multiplied `points` (see services/points/spend_multipliers.py).
    multiplier: Decimal | None = None
    multiplier_offer: str = ""


@dataclass(frozen=True)
class MatchedRule:
    """A rule whose conditions the event meets, awarded or not, and why not."""

    campaign_id: str
    rule_id: str
    points: int  # what the rule itself gives for this event
    awarded: bool
    reason: str = ""  # empty when awarded


@dataclass(frozen=True)
class Evaluation:
    candidates: list[Candidate]
    matched_rules: list[MatchedRule]

    @property
    def points(self) -> int:
        return sum(candidate.points for candidate in self.candidates)


def decide(event: EarnEvent, matches: Sequence[tuple[Campaign, Sequence[PointsRule]]]) -> Evaluation:
    """Apply stacking within each campaign and exclusivity across them.

    `matches`: each active campaign with its matching rules in file order, campaigns ordered by
    priority (highest first) then id.
    """
    candidates: list[Candidate] = []
    matched: list[MatchedRule] = []
    blocker: Campaign | None = None  # the first exclusive campaign that awarded
    for campaign, rules in matches:
        scored = [(rule, rule.points_for(event.amount)) for rule in rules]
        if blocker is not None and campaign.priority < blocker.priority:
            reason = f"exclusive campaign '{blocker.id}' (priority {blocker.priority}) awards for this event"
            matched.extend(MatchedRule(campaign.id, rule.id, points, False, reason) for rule, points in scored)
            continue
        winner = _highest(scored) if campaign.points and campaign.points.stacking == "highest" else None
        awarded_any = False
        for rule, points in scored:
            if points <= 0:
                matched.append(MatchedRule(campaign.id, rule.id, 0, False, _zero_reason(rule, event)))
            elif winner is not None and rule is not winner:
                reason = f"stacking is highest and rule '{winner.id}' (priority {winner.priority}) awards"
                matched.append(MatchedRule(campaign.id, rule.id, points, False, reason))
            else:
                awarded_any = True
                matched.append(MatchedRule(campaign.id, rule.id, points, True))
                candidates.append(
                    Candidate(
                        campaign_id=campaign.id,
                        campaign_version=campaign.version,
                        rule_id=rule.id,
                        points=points,
                        expires_at=campaign.expires_at(event.occurred_at),
                        campaign=campaign,
                    )
                )
        if campaign.exclusive and awarded_any and blocker is None:
            blocker = campaign
    return Evaluation(candidates, matched)


def _highest(scored: list[tuple[PointsRule, int]]) -> PointsRule | None:
    # Among rules that give points: highest priority, then the one written first.
    best: PointsRule | None = None
    for rule, points in scored:
        if points > 0 and (best is None or rule.priority > best.priority):
            best = rule
    return best


def _zero_reason(rule: PointsRule, event: EarnEvent) -> str:
    award = rule.award
    if isinstance(award, ProportionalAward):
        if event.amount is None:
            return "earns 0 points: the event has no amount"
        return f"earns 0 points: amount {event.amount} is below per_amount {award.per_amount}"
    return "earns 0 points"
