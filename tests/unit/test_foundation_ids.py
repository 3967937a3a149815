"""Protobuf timestamps from datetimes: the fast path gives what Timestamp.FromDatetime gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from services.foundation.ids import ts, ts_fields


def test_ts_matches_from_datetime() -> None:
    rng = random.Random(7)
    moments = [
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 24, 19, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 11, 24, 19, 0),  # naive: UTC, as FromDatetime reads it
    ]
    moments += [
        datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(0, 100 * 365 * 86_400 * 10**6))
        for _ in range(500)
    ]
    for moment in moments:
        expected = Timestamp()
        expected.FromDatetime(moment)
        assert ts(moment) == expected, moment
        assert Timestamp(**ts_fields(moment)) == expected, moment  # type: ignore[arg-type]
    assert ts(None) is None and ts_fields(None) is None
