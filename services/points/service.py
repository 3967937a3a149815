"""The points service: points (earned by campaign rules, spent in the points mall) and the
benefits of campaigns (tiered discounts, free items, multipliers), from `rules/campaigns/`."""

from __future__ import annotations

from collections.abc import Mapping

from alliance.v1 import benefits_pb2_grpc, points_pb2_grpc
from services.foundation.service import Kit, Service
from services.points import events
from services.points.benefits.quote import BenefitBook
from services.points.benefits_api import BenefitsServicer
from services.points.campaign_file.loader import load_campaign
from services.points.campaign_file.model import Campaign
from services.points.campaigns.book import CampaignBook
from services.points.consumers.aum_reports import on_aum_changed
from services.points.consumers.referral_conversions import on_referral_converted
from services.points.consumers.referral_revocations import on_conversion_revoked
from services.points.expiry import sweep_expired
from services.points.models import SCHEMA
from services.points.points_api import PointsServicer
from services.points.quote_cache import QuoteCache
from services.points.settings import PointsSettings
from services.points.spend_multipliers import SpendMultipliers

REVOCATION_MAX_DELIVER = 240


async def build(kit: Kit) -> None:
    settings = kit.settings
    assert isinstance(settings, PointsSettings)
    book, benefits = CampaignBook(), BenefitBook()

    def campaigns_changed(in_force: Mapping[str, Campaign]) -> None:
        book.replace(in_force)
        benefits.replace(in_force)

    kit.rules("campaigns", parse=load_campaign, on_change=campaigns_changed)
    quote_cache = QuoteCache(
        kit.db, ttl_seconds=settings.quote_cache_seconds, max_customers=settings.quote_cache_customers
    )
    kit.background(quote_cache.run)

    kit.serve(
        points_pb2_grpc.add_PointsServicer_to_server,
        PointsServicer(kit.db, book, SpendMultipliers(benefits, quote_cache)),
    )
    kit.serve(benefits_pb2_grpc.add_BenefitsServicer_to_server, BenefitsServicer(kit.db, benefits, quote_cache))

    # Durable consumer names are kept from before the kit: a new name would apply every stored event again.
    kit.consume(events.AUM_CHANGED, on_aum_changed(quote_cache), name="points-customer-aum")
    kit.consume(events.REFERRAL_CONVERTED, on_referral_converted(book), name="points-referral-converted")
    # A revocation read before its conversion is retried (see referral_revocations.EarnNotYetRecorded),
    # with a backoff of at most 30 s: 240 deliveries wait about two hours for the converted event
    # before the revocation is parked.
    kit.consume(
        events.REFERRAL_CONVERSION_REVOKED,
        on_conversion_revoked(),
        name="points-referral-conversion-revoked",
        max_deliver=REVOCATION_MAX_DELIVER,
    )
    kit.every(settings.expiry_sweep_seconds, lambda: sweep_expired(kit.db), name="expiry-sweep")


SERVICE = Service(
    name="points",
    settings=PointsSettings,
    schema=SCHEMA,
    publishes=[events.POINTS, events.BENEFITS],
    build=build,
)
