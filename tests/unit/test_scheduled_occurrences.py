"""When a scheduled job's occurrences fall: wall-clock times in zones with and without DST."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from services.foundation.scheduled import (
    ScheduledJob,
    catch_up_window,
    next_occurrence,
    occurrence_key,
    occurrences,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


async def nothing(_ctx: object) -> None:
    pass


def test_shanghai_1700_is_0900_utc_every_day() -> None:
    found = occurrences(time(17, 0), "Asia/Shanghai", utc(2026, 11, 1), utc(2026, 11, 8))
    assert found == [utc(2026, 11, day, 9) for day in range(1, 8)]


def test_next_occurrence_is_strictly_after() -> None:
    assert next_occurrence(time(17, 0), "Asia/Shanghai", utc(2026, 11, 23, 8, 59, 59)) == utc(2026, 11, 23, 9)
    assert next_occurrence(time(17, 0), "Asia/Shanghai", utc(2026, 11, 23, 9)) == utc(2026, 11, 24, 9)
    # 17:00 local on the 24th is still the 24th's occurrence when asked late on the 23rd, UTC.
    assert next_occurrence(time(17, 0), "Asia/Shanghai", utc(2026, 11, 23, 23)) == utc(2026, 11, 24, 9)


def test_berlin_across_both_dst_switches() -> None:
    # Summer time starts 2026-03-29 and ends 2026-10-25: 17:00 is 16:00 UTC, then 15:00, then 16:00.
    spring = occurrences(time(17, 0), "Europe/Berlin", utc(2026, 3, 27), utc(2026, 3, 31))
    assert spring == [utc(2026, 3, 27, 16), utc(2026, 3, 28, 16), utc(2026, 3, 29, 15), utc(2026, 3, 30, 15)]
    autumn = occurrences(time(17, 0), "Europe/Berlin", utc(2026, 10, 24), utc(2026, 10, 27))
    assert autumn == [utc(2026, 10, 24, 15), utc(2026, 10, 25, 16), utc(2026, 10, 26, 16)]


def test_a_local_time_the_clocks_skip_runs_once_just_after_the_jump() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00): it runs at 03:30 CEST, 01:30 UTC.
    found = occurrences(time(2, 30), "Europe/Berlin", utc(2026, 3, 28), utc(2026, 3, 31))
    assert found == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]


def test_a_local_time_that_happens_twice_runs_once() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25: the first (CEST, 00:30 UTC), or the second if asked.
    first = occurrences(time(2, 30), "Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert first == [utc(2026, 10, 25, 0, 30)]
    second = occurrences(time(2, 30, fold=1), "Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert second == [utc(2026, 10, 25, 1, 30)]


def test_the_window_is_after_exclusive_until_inclusive() -> None:
    at, zone = time(17, 0), "Asia/Shanghai"
    assert occurrences(at, zone, utc(2026, 11, 23, 9), utc(2026, 11, 24, 9)) == [utc(2026, 11, 24, 9)]
    assert occurrences(at, zone, utc(2026, 11, 23, 9), utc(2026, 11, 24, 8)) == []


def test_missed_occurrences_within_catch_up_run_on_start_older_ones_are_skipped() -> None:
    at, zone = time(17, 0), "Asia/Shanghai"
    # Every replica was down from before 17:00 until 17:40.
    due, too_old = catch_up_window(at, zone, utc(2026, 11, 23, 9, 40), timedelta(hours=1))
    assert due == [utc(2026, 11, 23, 9)]
    assert too_old == utc(2026, 11, 22, 9)
    # Down until 18:30: the occurrence is an hour and a half late, past a one-hour window.
    due, too_old = catch_up_window(at, zone, utc(2026, 11, 23, 10, 30), timedelta(hours=1))
    assert due == []
    assert too_old == utc(2026, 11, 23, 9)
    # A three-day window catches up on each day, oldest first.
    due, _ = catch_up_window(at, zone, utc(2026, 11, 23, 10), timedelta(days=3))
    assert due == [utc(2026, 11, 21, 9), utc(2026, 11, 22, 9), utc(2026, 11, 23, 9)]


def test_occurrence_keys_are_iso_utc() -> None:
    assert occurrence_key(utc(2026, 11, 23, 9)) == "2026-11-23T09:00:00Z"
    shanghai = datetime.fromisoformat("2026-11-23T17:00:00+08:00")
    assert occurrence_key(shanghai) == "2026-11-23T09:00:00Z"
    assert occurrence_key(utc(2026, 11, 23, 9, 0, 0, 250000)) == "2026-11-23T09:00:00.250000Z"


def test_naive_times_and_unknown_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        occurrences(time(17, 0), "Asia/Shanghai", datetime(2026, 11, 1), utc(2026, 11, 2))
    with pytest.raises(ValueError, match="zone"):
        next_occurrence(time(17, 0, tzinfo=UTC), "Asia/Shanghai", utc(2026, 11, 1))
    with pytest.raises(KeyError):  # zoneinfo.ZoneInfoNotFoundError, at declaration rather than at 17:00
        ScheduledJob("cutoff", time(17, 0), "Asia/Shanghia", nothing)
