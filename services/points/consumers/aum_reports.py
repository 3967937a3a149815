"""customer.v1.aum_changed (from core banking) → the customer's stored AUM, which decides the tier."""

from __future__ import annotations

from sqlmodel import Session

from alliance.v1 import customer_events_pb2
from services.foundation import validation
from services.foundation.db import after_commit, utcnow
from services.foundation.errors import InvalidArgument
from services.foundation.inbox import Delivery, Handler, Unit
from services.points import benefits_store
from services.points.quote_cache import QuoteCache


def on_aum_changed(cache: QuoteCache) -> Handler[customer_events_pb2.CustomerAumChanged]:
    async def handle(delivery: Delivery[customer_events_pb2.CustomerAumChanged]) -> Unit:
        return aum_report(delivery.event, cache)

    return handle


def aum_report(event: customer_events_pb2.CustomerAumChanged, cache: QuoteCache) -> Unit:
    """The unit of work storing the report; quotes here see it once it commits. A bad value
    (InvalidArgument) parks the event."""
    customer_id = validation.required_text(event.customer_id, "customer_id")
    aum = validation.amount(event.aum, "aum")
    if aum is None:
        raise InvalidArgument("aum", "is required")
    as_of = validation.timestamp(event.as_of, "as_of", present=event.HasField("as_of"), now=utcnow())

    def unit(session: Session) -> object:
        stored = benefits_store.set_aum(session, customer_id, aum, as_of)
        after_commit(session, lambda: cache.forget_customer(customer_id))
        return stored

    return unit
