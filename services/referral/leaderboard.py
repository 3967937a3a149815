"""Leaderboards: direct conversions per partner, counted per day, week, month, year and all time
in the bank's time zone, for all conversions and per referral campaign; customers and employees
apart (the "community stars"). Kept as counters when a conversion is rewarded or revoked, so a
board is one index range read however many conversions it counts."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session

from services.foundation.schema import table_of
from services.foundation.upsert import insert_or_add
from services.referral.models import LeaderboardCount

BOARD = table_of(LeaderboardCount)
PERIODS = ("day", "week", "month", "year", "all")


def period_key(period: str, when: datetime, tz: ZoneInfo) -> str:
    local = when.astimezone(tz)
    if period == "day":
        return local.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return local.strftime("%Y-%m")
    if period == "year":
        return local.strftime("%Y")
    if period == "all":
        return "all"
    raise ValueError(period)


def boards(when: datetime, tz: ZoneInfo, campaigns: Iterable[str]) -> list[tuple[str, str]]:
    """The (period key, campaign) boards a conversion at `when` counts on; "" is all conversions."""
    return [(period_key(period, when, tz), campaign) for period in PERIODS for campaign in ["", *campaigns]]


def count(session: Session, *, user_id: str, kind: str, on: Iterable[tuple[str, str]], delta: int) -> None:
    """Add `delta` conversions to a partner on these boards. A revocation takes back from exactly
    the boards its conversion was counted on (stored with the reward), whatever the rules say now."""
    connection = session.connection()
    rows = [
        {"period_key": key, "campaign": campaign, "kind": kind, "user_id": user_id, "conversions": delta}
        for key, campaign in on
    ]
    connection.execute(
        insert_or_add(connection, BOARD, ["period_key", "campaign", "kind", "user_id"], ["conversions"]), rows
    )


def top(session: Session, *, key: str, campaign: str, kind: str, n: int) -> list[tuple[int, str, int]]:
    """(rank, user_id, conversions), best first; equal conversions share a rank."""
    rows = session.execute(
        select(BOARD.c.user_id, BOARD.c.conversions)
        .where(BOARD.c.period_key == key, BOARD.c.campaign == campaign, BOARD.c.kind == kind, BOARD.c.conversions > 0)
        .order_by(BOARD.c.conversions.desc(), BOARD.c.user_id)
        .limit(n)
    ).all()
    ranked: list[tuple[int, str, int]] = []
    for position, (user_id, conversions) in enumerate(rows, start=1):
        rank = ranked[-1][0] if ranked and ranked[-1][2] == conversions else position
        ranked.append((rank, user_id, conversions))
    return ranked
