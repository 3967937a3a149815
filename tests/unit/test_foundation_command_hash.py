"""The kit's idempotency rules: one hash for commands that mean the same, and replays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from alliance.v1 import points_pb2 as api
from services.foundation.errors import AlreadyExists
from services.foundation.idempotency import command_hash, replay


@dataclass(frozen=True)
class Spend:
    user_id: str
    amount: Decimal
    at: datetime
    attributes: dict[str, str]


def test_commands_that_mean_the_same_hash_alike() -> None:
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    first = Spend("u-1", Decimal("50"), at, {"a": "1", "b": "2"})
    same = Spend("u-1", Decimal("50.00"), at.astimezone(timezone(timedelta(hours=8))), {"b": "2", "a": "1"})
    assert command_hash("spend", first) == command_hash("spend", same)


def test_commands_that_differ_hash_differently() -> None:
    at = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    base = command_hash("spend", Spend("u-1", Decimal("50"), at, {}))
    assert base != command_hash("spend", Spend("u-1", Decimal("50.01"), at, {}))
    assert base != command_hash("spend", Spend("u-2", Decimal("50"), at, {}))
    assert base != command_hash("refund", Spend("u-1", Decimal("50"), at, {}))


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        command_hash("spend", {"at": datetime(2026, 11, 23)})


def test_a_replay_returns_the_stored_reply_marked_replayed() -> None:
    stored = api.EarnResponse(transaction_id="t-1", points=50).SerializeToString()
    reply = replay(
        request_hash="h",
        stored_hash="h",
        stored_reply=stored,
        reply_type=api.EarnResponse,
        what="earn",
        reference="t-1",
    )
    assert (reply.transaction_id, reply.points, reply.replayed) == ("t-1", 50, True)


def test_a_different_command_under_the_same_key_is_already_exists() -> None:
    stored = api.EarnResponse(transaction_id="t-1").SerializeToString()
    with pytest.raises(AlreadyExists, match=r"idempotency_key: already used for a different earn request \(t-1\)"):
        replay(
            request_hash="other",
            stored_hash="h",
            stored_reply=stored,
            reply_type=api.EarnResponse,
            what="earn request",
            reference="t-1",
        )
