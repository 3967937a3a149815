"""The gRPC face of dispatch (alliance.v1.DispatchService): validate, run a unit of work, answer."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from sqlmodel import Session

from alliance.v1 import dispatch_events_pb2 as ev
from alliance.v1 import dispatch_pb2 as api
from alliance.v1 import dispatch_pb2_grpc
from services.dispatch import directory, orders, pool
from services.dispatch.cutoff import CutoffResult, Cutoffs
from services.dispatch.geocoding import Geocoder
from services.dispatch.models import Branch, DispatchOrder, Manager, OrderChange
from services.dispatch.orders import OrderCommand, Placement
from services.dispatch.policy import PolicyBook
from services.foundation import validation
from services.foundation.batching import MicroBatcher
from services.foundation.broadcast import SHUTTING_DOWN, Broadcast, ListenerDropped
from services.foundation.db import Database, utcnow
from services.foundation.errors import DomainError, FailedPrecondition, InvalidArgument
from services.foundation.ids import ts_fields

STATE_ENUM = {
    "reserved": api.ORDER_STATE_RESERVED,
    "open": api.ORDER_STATE_OPEN,
    "owned": api.ORDER_STATE_OWNED,
    "contacted": api.ORDER_STATE_CONTACTED,
    "succeeded": api.ORDER_STATE_SUCCEEDED,
    "failed": api.ORDER_STATE_FAILED,
}
SOURCE_ENUM = {
    "coordinates": api.LOCATION_SOURCE_COORDINATES,
    "district": api.LOCATION_SOURCE_DISTRICT,
    "city": api.LOCATION_SOURCE_CITY,
    "fallback_branch": api.LOCATION_SOURCE_FALLBACK_BRANCH,
}
MAX_NAME = 200
MAX_ADDRESS = 500
MAX_PRODUCTS = 50
MAX_CAPACITY = 10_000
SNAPSHOT_SIZE = 500


# -- validation ------------------------------------------------------------------------------------


def location_of(value: api.LatLng, name: str) -> tuple[float, float]:
    lat, lon = value.latitude, value.longitude
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise InvalidArgument(f"{name}.latitude", "must be between -90 and 90")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise InvalidArgument(f"{name}.longitude", "must be between -180 and 180")
    return lat, lon


def text_of(value: str, name: str, max_len: int) -> str:
    return validation.required_text(value, name, max_len)


def products_of(values: Any) -> tuple[str, ...]:
    if len(values) > MAX_PRODUCTS:
        raise InvalidArgument("products", f"has more than {MAX_PRODUCTS} entries")
    found = set()
    for i, value in enumerate(values):
        product = validation.required_text(value, f"products[{i}]")
        if "," in product:
            raise InvalidArgument(f"products[{i}]", "must not contain ','")
        found.add(product)
    return tuple(sorted(found))


# -- messages --------------------------------------------------------------------------------------


def branch_message(branch: Branch) -> api.Branch:
    return api.Branch(
        branch_id=branch.branch_id,
        name=branch.name,
        location=api.LatLng(latitude=branch.latitude, longitude=branch.longitude),
        created_at=ts_fields(branch.created_at),
        updated_at=ts_fields(branch.updated_at),
    )


def manager_message(manager: Manager, owned_today: int) -> api.Manager:
    return api.Manager(
        manager_id=manager.manager_id,
        branch_id=manager.branch_id,
        name=manager.name,
        products=sorted(manager.product_set),
        daily_capacity=manager.daily_capacity,
        on_duty=manager.on_duty,
        owned_today=owned_today,
        created_at=ts_fields(manager.created_at),
        updated_at=ts_fields(manager.updated_at),
    )


def order_message(order: DispatchOrder) -> api.Order:
    return api.Order(
        order_id=order.id,
        customer_id=order.customer_id,
        product=order.product,
        address=order.address,
        location=api.LatLng(latitude=order.latitude, longitude=order.longitude),
        location_source=SOURCE_ENUM.get(order.location_source, api.LOCATION_SOURCE_UNSPECIFIED),
        district_code=order.district_code or "",
        address_flagged=order.address_flagged,
        preferred_manager_id=order.preferred_manager_id or "",
        state=STATE_ENUM.get(order.state, api.ORDER_STATE_UNSPECIFIED),
        manager_id=order.manager_id or "",
        taken_by=order.taken_by or "",
        created_at=ts_fields(order.created_at),
        pool_at=ts_fields(order.pool_at),
        owned_at=ts_fields(order.owned_at),
        contacted_at=ts_fields(order.contacted_at),
        completed_at=ts_fields(order.completed_at),
        escalated_at=ts_fields(order.escalated_at),
        business_ref=order.business_ref or "",
        failure_reason=order.failure_reason or "",
        attributes=json.loads(order.attributes),
    )


def opened_message(event: ev.OrderOpened) -> api.Order:
    """A pool order as the event describes it (WatchPool reads no database per event)."""
    return api.Order(
        order_id=event.order_id,
        customer_id=event.customer_id,
        product=event.product,
        address=event.address,
        location=api.LatLng(latitude=event.latitude, longitude=event.longitude),
        location_source=SOURCE_ENUM.get(event.location_source, api.LOCATION_SOURCE_UNSPECIFIED),
        district_code=event.district_code,
        address_flagged=event.address_flagged,
        preferred_manager_id=event.preferred_manager_id,
        state=api.ORDER_STATE_RESERVED if event.preferred_manager_id else api.ORDER_STATE_OPEN,
        created_at=event.created_at,
        pool_at=event.pool_at,
        attributes=event.attributes,
    )


def change_message(change: OrderChange) -> api.OrderChange:
    return api.OrderChange(at=ts_fields(change.at), change=change.change, actor=change.actor, detail=change.detail)


def pool_message(entries: list[pool.PoolEntry]) -> list[api.PoolOrder]:
    return [api.PoolOrder(order=order_message(e.order), distance_m=e.distance_m) for e in entries]


def cutoff_response(results: list[CutoffResult]) -> api.RunCutoffResponse:
    return api.RunCutoffResponse(
        run_id=",".join(r.run_id for r in results),
        outcome=",".join(sorted({r.outcome for r in results})),
        assignments=[
            api.CutoffAssignment(order_id=p.order_id, manager_id=p.manager_id, distance_m=p.metres)
            for r in results
            for p in r.placed
        ],
        unplaced=[
            api.UnplacedOrder(order_id=u.order_id, product=u.product, reason=u.reason)
            for r in results
            for u in r.unplaced
        ],
        total_distance_m=sum(r.total_metres for r in results),
        skipped=sum(r.skipped for r in results),
    )


class DispatchServicer(dispatch_pb2_grpc.DispatchServiceServicer):
    def __init__(
        self,
        db: Database,
        book: PolicyBook,
        geocoder: Geocoder,
        cutoffs: Cutoffs,
        opened: Broadcast[ev.OrderOpened],
        taken: Broadcast[ev.OrderTaken],
    ) -> None:
        self.db = db
        self.book = book
        self.geocoder = geocoder
        self.cutoffs = cutoffs
        self.opened = opened
        self.taken = taken
        # Concurrent grabs share one transaction: one commit for many, which a single SQLite
        # writer needs to keep up with a morning's rush of managers.
        self.grabs: MicroBatcher[tuple[str, str], DispatchOrder] = MicroBatcher(self._grab_batch, name="grab")

    async def _grab_batch(self, grabs: Sequence[tuple[str, str]]) -> Sequence[DispatchOrder | DomainError]:
        policy = self.book.policy
        return await self.db.run(lambda s: orders.grab_many(s, grabs, policy, utcnow()))

    # -- branches and managers -----------------------------------------------------------------

    async def UpsertBranch(
        self, request: api.UpsertBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.UpsertBranchResponse:
        if not request.HasField("location"):
            raise InvalidArgument("location", "is required")
        lat, lon = location_of(request.location, "location")
        cmd = directory.BranchCommand(
            branch_id=text_of(request.branch_id, "branch_id", validation.MAX_ID),
            name=text_of(request.name, "name", MAX_NAME),
            latitude=lat,
            longitude=lon,
        )

        def upsert(session: Session) -> api.UpsertBranchResponse:
            branch, created = directory.upsert_branch(session, cmd)
            return api.UpsertBranchResponse(branch=branch_message(branch), created=created)

        return await self.db.run(upsert)

    async def ListBranches(
        self, request: api.ListBranchesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListBranchesResponse:
        size = validation.page_size(request.page_size)
        after = validation.page_position(request.page_token)
        found = await self.db.read(lambda s: directory.list_branches(s, after, size))
        more = len(found) > size
        return api.ListBranchesResponse(
            branches=[branch_message(b) for b in found[:size]],
            next_page_token=validation.page_token(found[size - 1].seq if more else None),
        )

    async def UpsertManager(
        self, request: api.UpsertManagerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.UpsertManagerResponse:
        if not 0 <= request.daily_capacity <= MAX_CAPACITY:
            raise InvalidArgument("daily_capacity", f"must be between 0 and {MAX_CAPACITY}")
        cmd = directory.ManagerCommand(
            manager_id=text_of(request.manager_id, "manager_id", validation.MAX_ID),
            branch_id=text_of(request.branch_id, "branch_id", validation.MAX_ID),
            name=text_of(request.name, "name", MAX_NAME),
            products=products_of(request.products),
            daily_capacity=request.daily_capacity,
            on_duty=request.on_duty,
        )
        policy = self.book.policy

        def upsert(session: Session) -> api.UpsertManagerResponse:
            manager, created = directory.upsert_manager(session, cmd)
            today = directory.owned_since(session, [manager.manager_id], policy.day_start(utcnow()))
            return api.UpsertManagerResponse(
                manager=manager_message(manager, today.get(manager.manager_id, 0)), created=created
            )

        return await self.db.run(upsert)

    async def ListManagers(
        self, request: api.ListManagersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListManagersResponse:
        size = validation.page_size(request.page_size)
        after = validation.page_position(request.page_token)
        branch_id = request.branch_id.strip() or None
        policy = self.book.policy

        def page(session: Session) -> api.ListManagersResponse:
            found = directory.list_managers(session, branch_id, after, size)
            shown = found[:size]
            today = directory.owned_since(session, [m.manager_id for m in shown], policy.day_start(utcnow()))
            return api.ListManagersResponse(
                managers=[manager_message(m, today.get(m.manager_id, 0)) for m in shown],
                next_page_token=validation.page_token(found[size - 1].seq if len(found) > size else None),
            )

        return await self.db.read(page)

    # -- orders --------------------------------------------------------------------------------

    async def CreateOrder(
        self, request: api.CreateOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.CreateOrderResponse:
        coordinates = location_of(request.location, "location") if request.HasField("location") else None
        cmd = OrderCommand(
            idempotency_key=text_of(request.idempotency_key, "idempotency_key", validation.MAX_KEY),
            customer_id=text_of(request.customer_id, "customer_id", validation.MAX_ID),
            product=text_of(request.product, "product", validation.MAX_ID),
            address=text_of(request.address, "address", MAX_ADDRESS),
            coordinates=coordinates,
            preferred_manager_id=validation.required_text(request.preferred_manager_id, "preferred_manager_id")
            if request.preferred_manager_id.strip()
            else None,
            attributes=validation.attributes(request.attributes),
        )
        policy = self.book.policy
        if coordinates is not None:
            located: Placement | None = Placement(coordinates[0], coordinates[1], "coordinates")
        else:
            replayed = await self.db.read(lambda s: orders.find_replay(s, cmd))
            if replayed is not None:  # a retry: no need to locate the address again
                return api.CreateOrderResponse(order=order_message(replayed), replayed=True)
            await self.geocoder.ready()
            found = self.geocoder.locate(cmd.address)
            located = Placement(found.latitude, found.longitude, found.source, found.district_code) if found else None

        def create(session: Session) -> api.CreateOrderResponse:
            placement = located
            if placement is None:
                fallback = policy.fallback_branch
                branch = directory.branch_of(session, fallback) if fallback else None
                if branch is None:
                    raise FailedPrecondition(
                        f"address: cannot be placed, and the rule file's fallback branch {fallback or '(none)'} "
                        "is not registered (UpsertBranch it, or send location)"
                    )
                placement = Placement(branch.latitude, branch.longitude, "fallback_branch")
            order, replayed = orders.create(session, cmd, placement, policy, utcnow())
            return api.CreateOrderResponse(order=order_message(order), replayed=replayed)

        return await self.db.run(create)

    async def GrabOrder(
        self, request: api.GrabOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GrabOrderResponse:
        order_id = text_of(request.order_id, "order_id", validation.MAX_ID)
        manager_id = text_of(request.manager_id, "manager_id", validation.MAX_ID)
        order = await self.grabs.submit((order_id, manager_id))
        return api.GrabOrderResponse(order=order_message(order))

    async def ListPool(
        self, request: api.ListPoolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListPoolResponse:
        manager_id = text_of(request.manager_id, "manager_id", validation.MAX_ID)
        size = validation.page_size(request.page_size)

        def read(session: Session) -> api.ListPoolResponse:
            manager = directory.manager_named(session, manager_id)
            found = pool.pool_of(session, manager, utcnow(), size)
            return api.ListPoolResponse(orders=pool_message(found.entries), total=found.total)

        return await self.db.read(read)

    async def WatchPool(
        self, request: api.WatchPoolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[api.WatchPoolResponse]:
        manager_id = text_of(request.manager_id, "manager_id", validation.MAX_ID)
        async with AsyncExitStack() as stack:
            # Listening starts before the snapshot is read, so nothing between the two is missed (a
            # change already in the snapshot may come again: adding or removing twice is harmless).
            opened = await stack.enter_async_context(self.opened.listen())
            taken = await stack.enter_async_context(self.taken.listen())

            def snapshot(session: Session) -> tuple[Manager, tuple[float, float], list[pool.PoolEntry]]:
                manager = directory.manager_named(session, manager_id)
                return (
                    manager,
                    pool.home_of(session, manager),
                    pool.pool_of(session, manager, utcnow(), SNAPSHOT_SIZE).entries,
                )

            manager, home, entries = await self.db.read(snapshot)
            products = manager.product_set
            yield api.WatchPoolResponse(snapshot=api.PoolSnapshot(orders=pool_message(entries)))
            changes: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()

            async def forward(listener: AsyncIterator[Message]) -> None:
                try:
                    async for event in listener:
                        await changes.put(event)
                    await changes.put(None)
                except ListenerDropped as dropped:
                    await changes.put(dropped)

            tasks = [asyncio.create_task(forward(opened)), asyncio.create_task(forward(taken))]
            stack.callback(lambda: [t.cancel() for t in tasks])
            while True:
                change = await changes.get()
                if change is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                if isinstance(change, BaseException):
                    await context.abort(grpc.StatusCode.ABORTED, str(change))
                if isinstance(change, ev.OrderOpened):
                    if change.product not in products:
                        continue
                    if change.preferred_manager_id and change.preferred_manager_id != manager_id:
                        continue
                    distance = pool.distance_from(home, change.latitude, change.longitude)
                    yield api.WatchPoolResponse(added=api.PoolOrder(order=opened_message(change), distance_m=distance))
                elif isinstance(change, ev.OrderTaken) and change.product in products:
                    yield api.WatchPoolResponse(
                        taken=api.PoolOrderTaken(
                            order_id=change.order_id, manager_id=change.manager_id, taken_by=change.taken_by
                        )
                    )

    async def MarkContacted(
        self, request: api.MarkContactedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.MarkContactedResponse:
        order_id = text_of(request.order_id, "order_id", validation.MAX_ID)
        manager_id = text_of(request.manager_id, "manager_id", validation.MAX_ID)
        order = await self.db.run(lambda s: orders.contact(s, order_id, manager_id, utcnow()))
        return api.MarkContactedResponse(order=order_message(order))

    async def CompleteOrder(
        self, request: api.CompleteOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.CompleteOrderResponse:
        order_id = text_of(request.order_id, "order_id", validation.MAX_ID)
        manager_id = text_of(request.manager_id, "manager_id", validation.MAX_ID)
        outcome = request.WhichOneof("outcome")
        if outcome is None:
            raise InvalidArgument("outcome", "is required: business_ref (success) or failure_reason")
        business_ref = (
            text_of(request.business_ref, "business_ref", validation.MAX_KEY) if outcome == "business_ref" else None
        )
        failure = (
            text_of(request.failure_reason, "failure_reason", MAX_ADDRESS) if outcome == "failure_reason" else None
        )
        order, replayed = await self.db.run(
            lambda s: orders.complete(s, order_id, manager_id, business_ref, failure, utcnow())
        )
        return api.CompleteOrderResponse(order=order_message(order), replayed=replayed)

    async def GetOrder(
        self, request: api.GetOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetOrderResponse:
        order_id = text_of(request.order_id, "order_id", validation.MAX_ID)

        def read(session: Session) -> api.GetOrderResponse:
            order = orders.get(session, order_id)
            return api.GetOrderResponse(
                order=order_message(order), changes=[change_message(c) for c in orders.changes_of(session, order_id)]
            )

        return await self.db.read(read)

    async def RunCutoff(
        self, request: api.RunCutoffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.RunCutoffResponse:
        now = utcnow()
        cutoff_at = validation.timestamp(
            request.cutoff_at, "cutoff_at", present=request.HasField("cutoff_at"), now=now, required=False, future=False
        )
        if cutoff_at.microsecond:  # whole seconds, so a run's id reads well; up, so "now" covers what was just booked
            cutoff_at = cutoff_at.replace(microsecond=0) + timedelta(seconds=1)
        products = [validation.required_text(p, f"products[{i}]") for i, p in enumerate(request.products)]
        if request.dry_run:
            return cutoff_response(await self.cutoffs.dry_run(cutoff_at, products))
        return cutoff_response(await self.cutoffs.trigger(cutoff_at, products))
