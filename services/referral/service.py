"""The referral service: personal codes, the referral forest, conversions rewarded through the
points service, the review queue, and rule files in `rules/referral/`."""

from __future__ import annotations

from alliance.v1 import referral_pb2_grpc
from services.foundation.service import Kit, Service
from services.referral import events
from services.referral.consumers.business_completed import on_business_completed
from services.referral.consumers.dispatch_completed import on_order_completed
from services.referral.consumers.referral_points import on_points_awarded, on_points_reversed
from services.referral.consumers.registrations import on_customer_registered
from services.referral.models import SCHEMA
from services.referral.policy import PolicyBook, load_policy
from services.referral.referral_api import ReferralServicer
from services.referral.settings import ReferralSettings


async def build(kit: Kit) -> None:
    settings = kit.settings
    assert isinstance(settings, ReferralSettings)
    book = PolicyBook()
    kit.rules("referral", parse=load_policy, on_change=book.replace)
    kit.serve(referral_pb2_grpc.add_ReferralServiceServicer_to_server, ReferralServicer(kit.db, book, settings))
    kit.consume(events.CUSTOMER_REGISTERED, on_customer_registered(book))
    kit.consume(events.BUSINESS_COMPLETED, on_business_completed(book))
    kit.consume(events.ORDER_COMPLETED, on_order_completed(book))
    kit.consume(events.POINTS_AWARDED, on_points_awarded())
    # A reversal may come before its award (separate consumers): retried for about two hours.
    kit.consume(events.POINTS_REVERSED, on_points_reversed(), max_deliver=240)


SERVICE = Service(
    name="referral",
    settings=ReferralSettings,
    schema=SCHEMA,
    publishes=[events.REFERRAL],
    build=build,
)
