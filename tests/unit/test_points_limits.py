"""Caps and budgets (pure)."""

from __future__ import annotations

from services.points.limits import Window, limit

DAY = Window("day:2026-11-23", 100, "daily cap of 100")
WEEK = Window("week:2026-11-23", 150, "weekly cap of 150")


def test_full_award_when_nothing_limits() -> None:
    assert limit(50, {}, [DAY, WEEK], None).points == 50
    assert limit(50, {}, [DAY], 1000).limited_by == ""


def test_the_tightest_window_decides_and_is_named() -> None:
    result = limit(50, {DAY.key: 80, WEEK.key: 140}, [DAY, WEEK], None)
    assert (result.points, result.limited_by) == (10, "weekly cap of 150 reached")


def test_budget_below_caps_wins() -> None:
    result = limit(50, {DAY.key: 0}, [DAY], 7)
    assert (result.points, result.limited_by) == (7, "campaign budget exhausted")


def test_overdrawn_windows_and_budget_give_zero_not_negative() -> None:
    assert limit(50, {DAY.key: 130}, [DAY], None).points == 0
    assert limit(50, {}, [], -5).points == 0
