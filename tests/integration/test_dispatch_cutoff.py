"""The cutoff over real gRPC, NATS and both databases: once across two replicas, in Asia/Shanghai
while the process runs in UTC, orders it cannot place reported, a dry run that writes nothing,
and the scheduled run from the rule file."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import DeliverPolicy
from sqlalchemy import update
from sqlmodel import Session, col

from alliance.v1 import dispatch_events_pb2
from alliance.v1 import dispatch_pb2 as api
from services.dispatch.models import DispatchOrder
from services.foundation.nats_server import EmbeddedNats
from tests.integration.conftest import DISPATCH_POLICY, DispatchUnderTest, start_dispatch
from tests.support import eventually

pytestmark = pytest.mark.timeout(120)

SHANGHAI_TZ = ZoneInfo("Asia/Shanghai")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


async def booked_at(service: DispatchUnderTest, order_id: str, when: datetime) -> None:
    """Back-date a booking (the API books at the server's clock)."""
    assert service.host.kit is not None

    def move(session: Session) -> None:
        session.execute(update(DispatchOrder).where(col(DispatchOrder.id) == order_id).values(created_at=when))

    await service.host.kit.db.run(move)


async def staff(service: DispatchUnderTest, managers: int, capacity: int) -> list[str]:
    ids = []
    for b in range(2):
        branch = uid("b")
        await service.branch(branch, 31.2 + b * 0.1, 121.4 + b * 0.1)
        for _ in range(managers // 2):
            ids.append(uid("m"))
            await service.manager(ids[-1], branch, products=("card", "loan"), capacity=capacity)
    return ids


async def state_of(service: DispatchUnderTest, order_id: str) -> api.Order:
    return (await service.stub.GetOrder(api.GetOrderRequest(order_id=order_id))).order


async def test_two_replicas_running_the_same_cutoff_assign_each_order_once(
    dispatch: DispatchUnderTest, dispatch_replica: DispatchUnderTest
) -> None:
    await staff(dispatch, managers=4, capacity=5)
    orders = [await dispatch.order(lat=31.2 + i * 0.005, lon=121.45) for i in range(24)]
    at = stamp(datetime.now(UTC))
    request = api.RunCutoffRequest(cutoff_at=at, products=["card"])  # the default group: every product but loan
    results = await asyncio.gather(dispatch.stub.RunCutoff(request), dispatch_replica.stub.RunCutoff(request))
    ran = [r for r in results if "succeeded" in r.outcome]
    assert len(ran) == 1, [r.outcome for r in results]
    assigned = ran[0].assignments
    assert len(assigned) == 20 and len(ran[0].unplaced) == 4  # 4 managers x 5
    assert {u.reason for u in ran[0].unplaced} == {"every qualified manager on duty is at capacity"}
    owners = [await state_of(dispatch, o.order_id) for o in orders]
    assert sum(o.state == api.ORDER_STATE_OWNED for o in owners) == 20
    assert {o.order_id: o.manager_id for o in owners if o.manager_id} == {a.order_id: a.manager_id for a in assigned}
    again = await dispatch_replica.stub.RunCutoff(request)
    assert "done" in again.outcome and len(again.assignments) == 20  # the stored report, not a second run
    assert {o.taken_by for o in owners if o.manager_id} == {"cutoff"}


async def test_the_cutoff_is_17_00_in_shanghai_while_the_process_runs_in_utc(dispatch: DispatchUnderTest) -> None:
    await staff(dispatch, managers=2, capacity=10)
    yesterday = (datetime.now(SHANGHAI_TZ) - timedelta(days=1)).date()
    cutoff = datetime.combine(yesterday, datetime.min.time().replace(hour=17), tzinfo=SHANGHAI_TZ)
    before, after = await dispatch.order(), await dispatch.order()
    await booked_at(dispatch, before.order_id, cutoff - timedelta(seconds=1))  # 16:59:59 local = 08:59:59Z
    await booked_at(dispatch, after.order_id, cutoff + timedelta(seconds=1))  # 17:00:01 local
    result = await dispatch.stub.RunCutoff(
        api.RunCutoffRequest(cutoff_at=stamp(cutoff.astimezone(UTC)), products=["card"])
    )
    assert [a.order_id for a in result.assignments] == [before.order_id]
    assert result.run_id == f"cutoff@{(cutoff.astimezone(UTC)).strftime('%Y-%m-%dT%H:%M:%S')}Z"
    assert (await state_of(dispatch, after.order_id)).state == api.ORDER_STATE_OPEN


async def test_orders_it_cannot_place_are_reported_in_the_response_and_the_event(
    dispatch: DispatchUnderTest, nats_server: EmbeddedNats
) -> None:
    await staff(dispatch, managers=2, capacity=10)
    mortgage = await dispatch.order("mortgage")  # nobody is qualified
    result = await dispatch.stub.RunCutoff(api.RunCutoffRequest(products=["mortgage"]))
    [unplaced] = result.unplaced
    assert (unplaced.order_id, unplaced.reason) == (mortgage.order_id, "no qualified manager on duty")
    trail = (await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=mortgage.order_id))).changes
    assert trail[-1].change == "unplaced" and "no qualified manager" in trail[-1].detail

    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.jetstream().subscribe(
            "dispatch.v1.cutoff_completed", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )

        async def reported() -> dispatch_events_pb2.CutoffCompleted | None:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return None
            event = dispatch_events_pb2.CutoffCompleted.FromString(msg.data)
            return event if event.run_id == result.run_id else None

        event = await eventually(reported)
        assert [(u.order_id, u.reason) for u in event.unplaced] == [(mortgage.order_id, unplaced.reason)]
    finally:
        await nc.close()


async def test_a_dry_run_says_what_it_would_assign_and_writes_nothing(dispatch: DispatchUnderTest) -> None:
    await staff(dispatch, managers=2, capacity=10)
    order = await dispatch.order()
    at = stamp(datetime.now(UTC))
    dry = await dispatch.stub.RunCutoff(api.RunCutoffRequest(cutoff_at=at, dry_run=True))
    assert dry.outcome == "dry_run" and [a.order_id for a in dry.assignments] == [order.order_id]
    assert (await state_of(dispatch, order.order_id)).state == api.ORDER_STATE_OPEN
    real = await dispatch.stub.RunCutoff(api.RunCutoffRequest(cutoff_at=at))
    assert real.outcome == "succeeded" and [(a.order_id, a.manager_id) for a in real.assignments] == [
        (a.order_id, a.manager_id) for a in dry.assignments
    ]


async def test_a_product_with_a_cutoff_of_its_own_runs_apart(dispatch: DispatchUnderTest) -> None:
    await staff(dispatch, managers=2, capacity=10)
    loan, card = await dispatch.order("loan"), await dispatch.order("card")
    result = await dispatch.stub.RunCutoff(api.RunCutoffRequest(products=["loan"]))
    assert result.run_id.startswith("cutoff:loan@") and [a.order_id for a in result.assignments] == [loan.order_id]
    assert (await state_of(dispatch, card.order_id)).state == api.ORDER_STATE_OPEN


async def test_the_rule_files_cutoff_runs_by_itself_once(
    database_url: str, nats_server: EmbeddedNats, dispatch_rules: Path
) -> None:
    """The scheduled path: a cutoff time that has just passed (within the catch-up window) is
    claimed by one of two replicas and run."""
    services = [
        await start_dispatch(database_url, nats_server.url, dispatch_rules, cutoff_schedule=True) for _ in range(2)
    ]
    try:
        first = services[0]
        await staff(first, managers=2, capacity=10)
        order = await first.order()
        now = datetime.now(SHANGHAI_TZ)
        await booked_at(first, order.order_id, now - timedelta(minutes=5))
        cutoff = (now - timedelta(minutes=1)).strftime("%H:%M")
        (dispatch_rules / "dispatch" / "policy.yaml").write_text(
            DISPATCH_POLICY.replace('cutoff: "17:00"', f'cutoff: "{cutoff}"')
        )
        for service in services:
            await service.reload_rules()

        async def assigned() -> api.Order | None:
            found = await state_of(first, order.order_id)
            return found if found.state == api.ORDER_STATE_OWNED else None

        found = await eventually(assigned, timeout=30)
        assert found.taken_by == "cutoff"
        trail = (await first.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))).changes
        assert [c.change for c in trail].count("assigned") == 1
    finally:
        for service in services:
            await service.channel.close()
            await service.host.stop()
