"""Assembles the points service: campaigns from rule files, the gRPC API, event loops."""

from __future__ import annotations

from pathlib import Path

from alliance.v1 import (
    benefits_pb2,
    benefits_pb2_grpc,
    customer_events_pb2,
    points_pb2,
    points_pb2_grpc,
    referral_events_pb2,
)
from services.foundation.host import Runtime, ServiceHost, ServiceParts
from services.foundation.inbox import EventConsumer
from services.foundation.outbox import OutboxRelay
from services.foundation.rules.directory import RuleDirectory
from services.points import customer_events, referral_events
from services.points.benefits.quote import BenefitBook
from services.points.benefits_api import BenefitsServicer
from services.points.benefits_view import BenefitsView
from services.points.campaigns.book import CampaignBook
from services.points.campaigns.loader import load_campaign
from services.points.expiry import ExpirySweeper
from services.points.grpc_api import PointsServicer
from services.points.settings import PointsSettings
from services.points.spend_multipliers import SpendMultipliers

NAME = "points"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAMES = [
    points_pb2.DESCRIPTOR.services_by_name["Points"].full_name,
    benefits_pb2.DESCRIPTOR.services_by_name["Benefits"].full_name,
]


async def build(rt: Runtime) -> ServiceParts:
    settings = rt.settings
    assert isinstance(settings, PointsSettings)
    book = CampaignBook()
    benefits = BenefitBook()

    def campaigns_changed(in_force):  # type: ignore[no-untyped-def]
        book.replace(in_force)
        benefits.replace(in_force)

    campaigns = RuleDirectory(
        Path(settings.rules_dir) / "campaigns", parse=load_campaign, on_change=campaigns_changed, name="campaigns"
    )
    campaigns.poll()
    relay = OutboxRelay(rt.db, rt.bus)
    view = BenefitsView(rt.db, ttl_seconds=settings.quote_cache_seconds, max_customers=settings.quote_cache_customers)
    servicer = PointsServicer(rt.db, book, relay.notify, SpendMultipliers(benefits, view))
    benefits_servicer = BenefitsServicer(rt.db, benefits, view, relay.notify)
    aum_reports = EventConsumer(
        db=rt.db,
        bus=rt.bus,
        name="points-customer-aum",
        subject=customer_events.SUBJECT,
        message_type=customer_events_pb2.CustomerAumChanged,
        handler=customer_events.handler(view),
    )
    referrals = EventConsumer(
        db=rt.db,
        bus=rt.bus,
        name="points-referral-converted",
        subject=referral_events.SUBJECT,
        message_type=referral_events_pb2.ReferralConverted,
        handler=referral_events.handler(book),
        on_applied=relay.notify,
    )
    sweeper = ExpirySweeper(rt.db, settings.expiry_sweep_seconds, relay.notify)

    async def watch_rules(stop):  # type: ignore[no-untyped-def]
        await campaigns.watch(settings.rules_poll_seconds, stop)

    async def create_streams() -> None:
        await rt.bus.ensure_stream(NAME)
        await rt.bus.ensure_stream("benefits")

    return ServiceParts(
        register=[
            lambda server: points_pb2_grpc.add_PointsServicer_to_server(servicer, server),
            lambda server: benefits_pb2_grpc.add_BenefitsServicer_to_server(benefits_servicer, server),
        ],
        service_names=SERVICE_NAMES,
        background=[relay.run, referrals.run, aum_reports.run, sweeper.run, watch_rules, view.run],
        on_bus_ready=[create_streams],
    )


def host(settings: PointsSettings) -> ServiceHost:
    return ServiceHost(NAME, settings, build, migrations_dir=MIGRATIONS)
