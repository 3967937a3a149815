"""The events of the referral service: those it publishes, and the contracts of those it
consumes, as it expects them."""

from __future__ import annotations

from alliance.v1 import (
    business_events_pb2,
    customer_events_pb2,
    dispatch_events_pb2,
    points_events_pb2,
    referral_events_pb2,
)
from services.foundation.events import Event, EventCatalog

CONVERTED = Event("referral.v1.converted", referral_events_pb2.ReferralConverted)
CONVERSION_REVOKED = Event("referral.v1.conversion_revoked", referral_events_pb2.ConversionRevoked)
REFERRAL = EventCatalog("referral", [CONVERTED, CONVERSION_REVOKED])

# Consumed: registrations from the mini-program (links, as Register), core banking's completed
# businesses (conversions), and the points service's awards and reversals (referral points).
CUSTOMER_REGISTERED = Event("customer.v1.registered", customer_events_pb2.CustomerRegistered)
BUSINESS_COMPLETED = Event("business.v1.completed", business_events_pb2.BusinessCompleted)
# Appointments the dispatch service's managers closed with a business: conversions too.
ORDER_COMPLETED = Event("dispatch.v1.order_completed", dispatch_events_pb2.OrderCompleted)
POINTS_AWARDED = Event("points.v1.awarded", points_events_pb2.PointsAwarded)
POINTS_REVERSED = Event("points.v1.reversed", points_events_pb2.PointsReversed)
