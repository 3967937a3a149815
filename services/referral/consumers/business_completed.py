"""business.v1.completed (core banking) → a conversion, exactly as RecordConversion records it.

The business reference is the idempotency key, so a business reported both by event and by a
RecordConversion call is one conversion; the same reference with a different business is parked
(core banking sent two businesses under one reference: a person must look).
"""

from __future__ import annotations

from sqlmodel import Session

from alliance.v1 import business_events_pb2
from services.foundation import validation
from services.foundation.db import utcnow
from services.foundation.errors import AlreadyExists
from services.foundation.inbox import Delivery, Handler, PermanentEventError, Unit
from services.referral import conversions
from services.referral.conversions import ConversionCommand
from services.referral.events import BUSINESS_COMPLETED
from services.referral.policy import PolicyBook


def on_business_completed(book: PolicyBook) -> Handler[business_events_pb2.BusinessCompleted]:
    async def handle(delivery: Delivery[business_events_pb2.BusinessCompleted]) -> Unit:
        event = delivery.event
        now = utcnow()
        cmd = ConversionCommand(
            business_ref=validation.required_text(event.business_ref, "business_ref", validation.MAX_KEY),
            user_id=validation.required_text(event.user_id, "user_id"),
            product=validation.required_text(event.product, "product"),
            occurred_at=validation.timestamp(
                event.occurred_at, "occurred_at", present=event.HasField("occurred_at"), now=now, future=False
            ),
            attributes=validation.attributes(event.attributes, reserved=conversions.RESERVED_ATTRIBUTES),
        )
        policy = book.policy

        def unit(session: Session) -> object:
            try:
                return conversions.record(session, cmd, policy, source=BUSINESS_COMPLETED.subject)
            except AlreadyExists as clash:
                raise PermanentEventError(clash.message) from clash

        return unit

    return handle
