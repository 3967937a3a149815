"""dispatch.v1.order_completed → a conversion, when the appointment ended in a business.

A manager closing an appointment with success names core banking's business reference; that is
the conversion's key, exactly as for business.v1.completed, so a business reported both by core
banking and by the manager's appointment is one conversion. Failed appointments are nothing to
referral.
"""

from __future__ import annotations

from sqlmodel import Session

from alliance.v1 import dispatch_events_pb2
from services.foundation import validation
from services.foundation.db import utcnow
from services.foundation.errors import AlreadyExists
from services.foundation.inbox import Delivery, Handler, PermanentEventError, Unit
from services.referral import conversions
from services.referral.conversions import ConversionCommand
from services.referral.events import ORDER_COMPLETED
from services.referral.policy import PolicyBook


def on_order_completed(book: PolicyBook) -> Handler[dispatch_events_pb2.OrderCompleted]:
    async def handle(delivery: Delivery[dispatch_events_pb2.OrderCompleted]) -> Unit:
        event = delivery.event
        if not event.success:
            return lambda session: None
        now = utcnow()
        cmd = ConversionCommand(
            business_ref=validation.required_text(event.business_ref, "business_ref", validation.MAX_KEY),
            user_id=validation.required_text(event.customer_id, "customer_id"),
            product=validation.required_text(event.product, "product"),
            occurred_at=validation.timestamp(
                event.occurred_at, "occurred_at", present=event.HasField("occurred_at"), now=now, future=False
            ),
            attributes={
                **validation.attributes(event.attributes, reserved=conversions.RESERVED_ATTRIBUTES),
                "dispatch_order_id": event.order_id,
            },
        )
        policy = book.policy

        def unit(session: Session) -> object:
            try:
                return conversions.record(session, cmd, policy, source=ORDER_COMPLETED.subject)
            except AlreadyExists as clash:
                raise PermanentEventError(clash.message) from clash

        return unit

    return handle
