"""referral.v1.converted → an Earn of event type "referral.converted" for the referrer.

The idempotency key is derived from the event id, so the award is the same whether the event is
redelivered or the referral service also calls Earn for it. referral.v1.conversion_revoked finds
the earn again by that key (consumers/referral_revocations.py).
"""

from __future__ import annotations

from datetime import UTC

from alliance.v1 import referral_events_pb2
from services.foundation import validation
from services.foundation.db import utcnow
from services.foundation.inbox import Delivery, Handler, Unit
from services.points import commands, ledger
from services.points.campaigns.book import CampaignBook
from services.points.commands import EarnCommand

SUBJECT = "referral.v1.converted"
EVENT_TYPE = "referral.converted"


def earn_command(event: referral_events_pb2.ReferralConverted, event_id: str) -> EarnCommand:
    extra = commands.attributes(event.attributes)
    if event.conversion_id.strip():  # events from before the field (8) have none
        extra["conversion_id"] = validation.required_text(event.conversion_id, "conversion_id")
    return EarnCommand(
        idempotency_key=f"{SUBJECT}:{event_id}",
        user_id=validation.required_text(event.referrer_id, "referrer_id"),
        event_type=EVENT_TYPE,
        occurred_at=validation.timestamp(
            event.occurred_at, "occurred_at", present=event.HasField("occurred_at"), now=utcnow(), future=False
        ).astimezone(UTC),
        amount=None,
        attributes={
            **extra,
            "product": validation.required_text(event.product, "product"),
            "level": str(event.level or 1),
            "referred_id": event.referred_id,
        },
    )


def on_referral_converted(book: CampaignBook) -> Handler[referral_events_pb2.ReferralConverted]:
    async def handle(delivery: Delivery[referral_events_pb2.ReferralConverted]) -> Unit:
        cmd = earn_command(delivery.event, delivery.event_id)
        candidates = book.candidates(cmd.event)
        return lambda session: ledger.earn(session, cmd, candidates)

    return handle
