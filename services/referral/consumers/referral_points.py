"""points.v1.awarded and points.v1.reversed → the referral points of the tree statistics.

Only awards of our own referral.v1.converted events count (the points service keys those earns
`referral.v1.converted:<event id>`); every other award or reversal is acknowledged and ignored.
"""

from __future__ import annotations

from sqlmodel import Session

from alliance.v1 import points_events_pb2
from services.foundation.inbox import Delivery, Handler, Unit
from services.referral import conversions
from services.referral.events import CONVERTED

_SOURCE_PREFIX = f"{CONVERTED.subject}:"


def on_points_awarded() -> Handler[points_events_pb2.PointsAwarded]:
    async def handle(delivery: Delivery[points_events_pb2.PointsAwarded]) -> Unit | None:
        event = delivery.event
        if not event.source_event.startswith(_SOURCE_PREFIX) or event.points == 0:
            return None
        event_id = event.source_event.removeprefix(_SOURCE_PREFIX)

        def unit(session: Session) -> object:
            return conversions.add_points(
                session, event_id=event_id, transaction_id=event.transaction_id, points=event.points
            )

        return unit

    return handle


def on_points_reversed() -> Handler[points_events_pb2.PointsReversed]:
    async def handle(delivery: Delivery[points_events_pb2.PointsReversed]) -> Unit | None:
        event = delivery.event
        if event.points == 0 or not event.reversed_source_event.startswith(_SOURCE_PREFIX):
            return None
        event_id = event.reversed_source_event.removeprefix(_SOURCE_PREFIX)

        def unit(session: Session) -> object:
            return conversions.take_points(session, event_id=event_id, points=abs(event.points))

        return unit

    return handle
