"""customer.v1.aum_changed (from core banking) → the customer's stored AUM, which decides the tier."""

from __future__ import annotations

from alliance.v1 import customer_events_pb2
from services.foundation.errors import InvalidArgument
from services.foundation.inbox import Delivery, PermanentEventError, Unit
from services.points import benefits_store, commands
from services.points.benefits_api import moment

SUBJECT = "customer.v1.aum_changed"


async def on_aum_changed(delivery: Delivery[customer_events_pb2.CustomerAumChanged]) -> Unit:
    event = delivery.event
    try:
        customer_id = commands.required_text(event.customer_id, "customer_id")
        aum = commands.amount(event.aum, "aum")
        if aum is None:
            raise InvalidArgument("aum", "is required")
        if not event.HasField("as_of"):
            raise InvalidArgument("as_of", "is required")
        as_of = moment(event.as_of, True, "as_of")
    except InvalidArgument as error:
        raise PermanentEventError(str(error)) from error
    return lambda session: benefits_store.set_aum(session, customer_id, aum, as_of)
