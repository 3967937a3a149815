"""Caps and budgets: how much of a rule's award a user may still get. Pure; the ledger feeds it.

Cap windows are days and weeks (Monday start) in the campaign's time zone, and the whole
campaign. Caps count points awarded: a clawback does not give cap room back, so earning,
reversing and earning again cannot exceed a cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.points.campaign_file.model import Campaign

CAMPAIGN_WINDOW = "campaign"


@dataclass(frozen=True)
class Window:
    key: str  # e.g. "day:2026-11-23"
    cap: int
    label: str  # for messages: "daily cap of 500"


def cap_windows(campaign: Campaign, occurred_at: datetime) -> list[Window]:
    terms = campaign.points
    if terms is None:
        return []
    local_day = occurred_at.astimezone(campaign.timezone).date()
    windows = []
    caps = terms.caps
    if caps.per_user_per_day is not None:
        windows.append(
            Window(f"day:{local_day.isoformat()}", caps.per_user_per_day, f"daily cap of {caps.per_user_per_day}")
        )
    if caps.per_user_per_week is not None:
        monday = local_day - timedelta(days=local_day.weekday())
        windows.append(
            Window(f"week:{monday.isoformat()}", caps.per_user_per_week, f"weekly cap of {caps.per_user_per_week}")
        )
    if caps.per_user_per_campaign is not None:
        cap = caps.per_user_per_campaign
        windows.append(Window(CAMPAIGN_WINDOW, cap, f"campaign cap of {cap}"))
    return windows


@dataclass(frozen=True)
class Limited:
    points: int
    limited_by: str  # "" when the full amount is allowed


def limit(requested: int, used: dict[str, int], windows: list[Window], budget_left: int | None) -> Limited:
    """The most of `requested` that fits every cap window and the budget, and what limited it."""
    allowed, reason = requested, ""
    for window in windows:
        room = max(0, window.cap - used.get(window.key, 0))
        if room < allowed:
            allowed, reason = room, f"{window.label} reached"
    if budget_left is not None and max(0, budget_left) < allowed:
        allowed, reason = max(0, budget_left), "campaign budget exhausted"
    return Limited(allowed, reason)
