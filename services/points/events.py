"""The events of the points service: those it publishes (its two domains, points and benefits),
and the contracts of those it consumes, as it expects them."""

from __future__ import annotations

from alliance.v1 import benefits_events_pb2, customer_events_pb2, points_events_pb2, referral_events_pb2
from services.foundation.events import Event, EventCatalog

AWARDED = Event("points.v1.awarded", points_events_pb2.PointsAwarded)
REDEEMED = Event("points.v1.redeemed", points_events_pb2.PointsRedeemed)
REVERSED = Event("points.v1.reversed", points_events_pb2.PointsReversed)
EXPIRED = Event("points.v1.expired", points_events_pb2.PointsExpired)
POINTS = EventCatalog("points", [AWARDED, REDEEMED, REVERSED, EXPIRED])

CLAIMED = Event("benefits.v1.claimed", benefits_events_pb2.BenefitClaimed)
BENEFITS = EventCatalog("benefits", [CLAIMED])

# Consumed: core banking's daily AUM reports, and the referral service's conversions and their
# revocations (a link rejected on review).
AUM_CHANGED = Event("customer.v1.aum_changed", customer_events_pb2.CustomerAumChanged)
REFERRAL_CONVERTED = Event("referral.v1.converted", referral_events_pb2.ReferralConverted)
REFERRAL_CONVERSION_REVOKED = Event("referral.v1.conversion_revoked", referral_events_pb2.ConversionRevoked)
