"""Dates and times as rule files write them, the same in every kind of rule file."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo


def parse_moment(text: str, tz: ZoneInfo) -> datetime:
    """'2026-09-01' (local midnight in tz) or an ISO date-time with offset -> aware UTC datetime."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(0), tzinfo=tz).astimezone(UTC)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text} has no UTC offset")
    return moment.astimezone(UTC)
