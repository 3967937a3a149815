"""Campaign files of the points service: model, loader, and the book that evaluates events."""

from services.points.campaigns.book import CampaignBook
from services.points.campaigns.evaluation import Candidate, EarnEvent, Evaluation, MatchedRule
from services.points.campaigns.loader import find_duplicate_ids, load_campaign, schema_path
from services.points.campaigns.model import (
    Campaign,
    Caps,
    Expiry,
    FixedAward,
    PointsRule,
    PointsTerms,
    ProportionalAward,
)

__all__ = [
    "Campaign",
    "CampaignBook",
    "Candidate",
    "Caps",
    "EarnEvent",
    "Evaluation",
    "Expiry",
    "FixedAward",
    "MatchedRule",
    "PointsRule",
    "PointsTerms",
    "ProportionalAward",
    "find_duplicate_ids",
    "load_campaign",
    "schema_path",
]
