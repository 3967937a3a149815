"""referral.v1.conversion_revoked over the real points service and NATS: the earns of exactly the
converted events it names are reversed, once, in whichever order the two subjects arrive; under
the repository's referral campaign only level 1 earns."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from sqlmodel import select

from alliance.v1 import points_events_pb2, points_pb2, referral_events_pb2
from services.foundation.bus import MSG_ID_HEADER
from services.foundation.errors import InvalidArgument
from services.foundation.inbox import CONSUMED, InboxEntry, ParkedEvent
from services.points.consumers.referral_conversions import earn_command
from services.points.consumers.referral_revocations import reversal_key, revocation
from services.points.models import PointsTransaction
from tests.support import (
    PointsUnderTest,
    ensure_referral_stream,
    eventually,
    published_for,
    redeem_request,
    stamp,
    write_campaign,
)

REPO = Path(__file__).resolve().parents[2]
REVOKED_CONSUMER = "points-referral-conversion-revoked"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The repository's referral campaign (level 1 only: loan 100, credit card 50, ...), kept
    active whenever the tests run."""
    text = (REPO / "rules" / "campaigns" / "referral-autumn-2026.yaml").read_text()
    assert "until: 2028-01-01" in text
    rules = tmp_path / "rules"
    write_campaign(rules, "referral-autumn-2026", text.replace("until: 2028-01-01", "until: 2099-01-01"))
    return rules


# -- events ---------------------------------------------------------------------------------------


def converted(user: str, *, product: str = "loan", level: int = 1) -> referral_events_pb2.ReferralConverted:
    return referral_events_pb2.ReferralConverted(
        event_id=uuid.uuid4().hex,
        referrer_id=user,
        referred_id=f"new-{uuid.uuid4().hex[:8]}",
        product=product,
        level=level,
        occurred_at=stamp(),
        conversion_id=uuid.uuid4().hex,
    )


def revoked(*conversions: referral_events_pb2.ReferralConverted) -> referral_events_pb2.ConversionRevoked:
    return referral_events_pb2.ConversionRevoked(
        event_id=uuid.uuid4().hex,
        conversion_id=conversions[0].conversion_id,
        referred_id=conversions[0].referred_id,
        rewards=[
            referral_events_pb2.RevokedReward(converted_event_id=c.event_id, referrer_id=c.referrer_id, level=c.level)
            for c in conversions
        ],
        reason="link rejected on review",
        occurred_at=stamp(),
    )


async def publish(
    js: nats.js.JetStreamContext,
    event: referral_events_pb2.ReferralConverted | referral_events_pb2.ConversionRevoked,
    *,
    msg_id: str | None = None,
) -> int:
    """Publish as the referral service's outbox would; returns the stream sequence."""
    subject = (
        "referral.v1.converted"
        if isinstance(event, referral_events_pb2.ReferralConverted)
        else "referral.v1.conversion_revoked"
    )
    ack = await js.publish(subject, event.SerializeToString(), headers={MSG_ID_HEADER: msg_id or event.event_id})
    return ack.seq


# -- reading the service ---------------------------------------------------------------------------


async def balance(points: PointsUnderTest, user: str) -> int:
    return (await points.stub.GetBalance(points_pb2.GetBalanceRequest(user_id=user))).balance


async def balance_becomes(points: PointsUnderTest, user: str, expected: int, timeout: float = 15.0) -> None:
    async def reached() -> bool:
        return await balance(points, user) == expected

    await eventually(reached, timeout=timeout)


async def entries(points: PointsUnderTest, user: str) -> list[tuple[int, int, str]]:
    """(kind, points, source_event) of the user's ledger, oldest first."""
    page = await points.stub.ListLedger(points_pb2.ListLedgerRequest(user_id=user))
    return [(e.kind, e.points, e.source_event) for e in reversed(page.entries)]


async def earn_of(points: PointsUnderTest, event: referral_events_pb2.ReferralConverted) -> PointsTransaction | None:
    key = f"referral.v1.converted:{event.event_id}"
    query = select(PointsTransaction).where(
        PointsTransaction.operation == "earn", PointsTransaction.idempotency_key == key
    )
    return await points.host.db.run(lambda s: s.exec(query).first())


async def reversals_published(js: nats.js.JetStreamContext, user: str) -> list[points_events_pb2.PointsReversed]:
    found = await published_for(js, "points.v1.reversed", points_events_pb2.PointsReversed, user)
    return [event for event, _ in found]


async def parked(points: PointsUnderTest) -> list[ParkedEvent]:
    return await points.host.db.run(lambda s: list(s.exec(select(ParkedEvent))))


def duplicates_seen() -> float:
    return CONSUMED.labels(REVOKED_CONSUMER, "duplicate")._value.get()


async def applied(points: PointsUnderTest, event_id: str) -> bool:
    """The revocation consumer has applied the event (its inbox row is written with the work)."""
    return await points.host.db.run(lambda s: s.get(InboxEntry, (REVOKED_CONSUMER, event_id)) is not None)


async def awarded(
    points: PointsUnderTest, js: nats.js.JetStreamContext, event: referral_events_pb2.ReferralConverted, balance: int
) -> None:
    """Publish a conversion and wait until the referrer's balance is `balance`."""
    await ensure_referral_stream(js)
    await publish(js, event)
    await balance_becomes(points, event.referrer_id, balance)


# -- the tests --------------------------------------------------------------------------------------


async def test_revocation_reverses_the_award_and_publishes_it(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    loan = converted(user, product="loan")
    await awarded(points, js, loan, 100)
    earn = await earn_of(points, loan)
    assert earn is not None and earn.points == 100

    revocation_event = revoked(loan)
    await publish(js, revocation_event)
    await balance_becomes(points, user, 0)

    [event] = await eventually(lambda: reversals_published(js, user))
    assert (event.reversed_transaction_id, event.reversed_kind) == (earn.id, points_events_pb2.REVERSED_KIND_EARN)
    assert (event.points, event.shortfall, event.balance) == (-100, 0, 0)
    assert event.reason == f"referral conversion {loan.conversion_id} revoked: link rejected on review"
    key = reversal_key(revocation_event.event_id, loan.event_id)
    assert await entries(points, user) == [
        (points_pb2.ENTRY_KIND_EARN, 100, f"referral.v1.converted:{loan.event_id}"),
        (points_pb2.ENTRY_KIND_REVERSE_EARN, -100, key),
    ]
    assert await parked(points) == []


async def test_revocation_reverses_only_the_named_earns(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    card, loan = converted(user, product="credit_card"), converted(user, product="loan")
    await awarded(points, js, card, 50)
    await awarded(points, js, loan, 150)

    await publish(js, revoked(loan))
    await balance_becomes(points, user, 50)
    [event] = await eventually(lambda: reversals_published(js, user))
    earn = await earn_of(points, loan)
    assert earn is not None and event.reversed_transaction_id == earn.id and event.points == -100


async def test_redelivered_revocation_reverses_once(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    loan = converted(user, product="loan")
    await awarded(points, js, loan, 100)

    revocation_event = revoked(loan)
    before = duplicates_seen()
    # Distinct message ids get past JetStream's dedup, as a redelivery or a second relay would.
    await publish(js, revocation_event, msg_id=f"{revocation_event.event_id}-1")
    await publish(js, revocation_event, msg_id=f"{revocation_event.event_id}-2")
    await balance_becomes(points, user, 0)
    await eventually(lambda: _at_least(duplicates_seen, before + 1))

    # The referral service revoking the same reward again, as a new event, takes nothing more.
    again = revoked(loan)
    await publish(js, again)
    await eventually(lambda: applied(points, again.event_id))

    assert await balance(points, user) == 0
    assert len(await reversals_published(js, user)) == 1
    assert [kind for kind, _, _ in await entries(points, user)] == [
        points_pb2.ENTRY_KIND_EARN,
        points_pb2.ENTRY_KIND_REVERSE_EARN,
    ]
    assert await parked(points) == []


async def test_revocation_before_its_conversion_is_applied_once_the_conversion_arrives(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="alliance.inbox")
    await ensure_referral_stream(js)
    loan = converted(user, product="loan")
    revocation_event = revoked(loan)
    await publish(js, revocation_event)

    async def put_back() -> bool:  # tried, found no earn, nak'd to come back later
        return any(
            r.getMessage() == "event failed, will be redelivered"
            and getattr(r, "event_id", None) == revocation_event.event_id
            and "EarnNotYetRecorded" in str(getattr(r, "error", ""))
            for r in caplog.records
        )

    await eventually(put_back, timeout=20)
    assert await balance(points, user) == 0
    assert await parked(points) == []  # waiting, not parked

    await publish(js, loan)
    [event] = await eventually(lambda: reversals_published(js, user), timeout=45)
    earn = await earn_of(points, loan)
    assert earn is not None and earn.points == 100
    assert (event.reversed_transaction_id, event.points, event.balance) == (earn.id, -100, 0)
    assert await balance(points, user) == 0
    assert [(kind, pts) for kind, pts, _ in await entries(points, user)] == [
        (points_pb2.ENTRY_KIND_EARN, 100),
        (points_pb2.ENTRY_KIND_REVERSE_EARN, -100),
    ]
    assert await parked(points) == []


async def test_level_2_conversion_earns_nothing_under_the_default_rules(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    await ensure_referral_stream(js)
    deeper = converted(user, product="loan", level=2)
    await publish(js, deeper)
    earn = await eventually(lambda: earn_of(points, deeper))
    assert earn is not None and earn.points == 0 and await balance(points, user) == 0

    # Its revocation has nothing to take back, and goes through (not retried, not parked).
    nothing_to_take = revoked(deeper)
    await publish(js, nothing_to_take)
    await eventually(lambda: applied(points, nothing_to_take.event_id))
    assert await reversals_published(js, user) == []
    assert await entries(points, user) == []
    assert await parked(points) == []

    direct = converted(user, product="loan", level=1)
    await publish(js, direct)
    await balance_becomes(points, user, 100)


async def test_revocation_of_a_conversion_rewarded_at_two_levels(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    upline = f"{user}-up"
    direct = converted(user, product="credit_card")
    second = converted(upline, product="credit_card", level=2)
    second.conversion_id, second.referred_id = direct.conversion_id, direct.referred_id
    await awarded(points, js, direct, 50)
    await publish(js, second)
    assert await eventually(lambda: earn_of(points, second))

    both = revoked(direct, second)
    await publish(js, both)
    await balance_becomes(points, user, 0)
    await eventually(lambda: applied(points, both.event_id))
    assert [e.points for e in await reversals_published(js, user)] == [-50]
    assert await reversals_published(js, upline) == [] and await balance(points, upline) == 0


async def test_clawback_of_spent_points_takes_what_is_there_and_reports_the_shortfall(
    points: PointsUnderTest,
    js: nats.js.JetStreamContext,
    user: str,
) -> None:
    loan = converted(user, product="loan")
    await awarded(points, js, loan, 100)
    await points.stub.Redeem(redeem_request(user, 80))

    await publish(js, revoked(loan))
    [event] = await eventually(lambda: reversals_published(js, user))
    assert (event.points, event.shortfall, event.balance) == (-20, 80, 0)
    assert await balance(points, user) == 0
    assert await parked(points) == []


async def test_revocation_naming_another_referrer_is_parked(
    points: PointsUnderTest, js: nats.js.JetStreamContext, user: str
) -> None:
    loan = converted(user, product="loan")
    await awarded(points, js, loan, 100)
    wrong = revoked(loan)
    wrong.rewards[0].referrer_id = "someone-else"
    await publish(js, wrong)

    [row] = await eventually(lambda: parked(points))
    assert row.event_id == wrong.event_id and "rewards[0].referrer_id" in row.error
    assert await balance(points, user) == 100


async def _at_least(read: Callable[[], float], value: float) -> bool:
    return read() >= value


# -- without a server --------------------------------------------------------------------------------


def test_converted_event_carries_its_conversion_and_level_into_the_earn() -> None:
    event = converted("u-1", product="loan", level=0)
    attributes = earn_command(event, event.event_id).attributes
    assert attributes["conversion_id"] == event.conversion_id and attributes["level"] == "1"
    event.ClearField("conversion_id")
    assert "conversion_id" not in earn_command(event, event.event_id).attributes


def test_reversal_keys_are_one_per_revocation_and_reward_and_fit_the_ledger() -> None:
    assert reversal_key("r1", "c1") == "referral.v1.conversion_revoked:r1:c1"
    assert len({reversal_key("r1", "c1"), reversal_key("r1", "c2"), reversal_key("r2", "c1")}) == 3
    long_ids = reversal_key("r" * 64, "c" * 64)
    assert len(long_ids) <= 128 and long_ids == reversal_key("r" * 64, "c" * 64)
    assert long_ids != reversal_key("r" * 64, "c" * 63 + "d")


@pytest.mark.parametrize(("converted_event_id", "problem"), [("", "is required"), ("x" * 65, "longer than 64")])
def test_revocation_with_an_impossible_reward_is_refused(converted_event_id: str, problem: str) -> None:
    event = referral_events_pb2.ConversionRevoked(
        event_id="r1", rewards=[referral_events_pb2.RevokedReward(converted_event_id=converted_event_id)]
    )
    with pytest.raises(InvalidArgument, match=problem):
        revocation(event, "r1")
