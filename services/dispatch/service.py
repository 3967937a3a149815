"""The dispatch service: appointments, grab-order, the pool and its stream, the cutoff's optimal
assignment, the contact SLA, and rule files in `rules/dispatch/`."""

from __future__ import annotations

from datetime import timedelta

from alliance.v1 import dispatch_pb2_grpc
from services.dispatch import events, orders
from services.dispatch.cutoff import Cutoffs
from services.dispatch.dispatch_api import DispatchServicer
from services.dispatch.geocoding import Geocoder
from services.dispatch.models import SCHEMA
from services.dispatch.policy import PolicyBook, load_policy
from services.dispatch.settings import DispatchSettings
from services.foundation.db import utcnow
from services.foundation.service import Kit, Service


async def build(kit: Kit) -> None:
    settings = kit.settings
    assert isinstance(settings, DispatchSettings)
    book = PolicyBook()
    kit.rules("dispatch", parse=load_policy, on_change=book.replace)
    cutoffs = Cutoffs(
        kit.db,
        book,
        kit.cpu,
        lease_seconds=settings.cutoff_lease_seconds,
        catch_up=timedelta(minutes=settings.cutoff_catch_up_minutes),
    )
    servicer = DispatchServicer(
        kit.db, book, Geocoder(), cutoffs, kit.broadcast(events.ORDER_OPENED), kit.broadcast(events.ORDER_TAKEN)
    )
    kit.serve(dispatch_pb2_grpc.add_DispatchServiceServicer_to_server, servicer)

    async def sweep() -> None:
        # Each change is a conditional update: every replica may sweep, each order moves once.
        policy = book.policy
        await kit.db.run(lambda s: orders.open_ended_reservations(s, utcnow()))
        await kit.db.run(lambda s: orders.escalate_overdue(s, policy, utcnow()))

    kit.every(settings.sweep_seconds, sweep, name="dispatch-sweep")
    if settings.cutoff_schedule:
        kit.every(settings.sweep_seconds, cutoffs.tick, name="dispatch-cutoffs")


SERVICE = Service(
    name="dispatch",
    settings=DispatchSettings,
    schema=SCHEMA,
    publishes=[events.DISPATCH],
    build=build,
)
