"""Dispatch over real gRPC, NATS and both databases: branches and managers, booking, grabbing
(one winner, also across two replicas), refusals, the preferred manager's window, completion,
the SLA, the audit trail, and the pool's stream on two replicas."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from alliance.v1 import dispatch_pb2 as api
from tests.integration.conftest import DISPATCH_POLICY, DispatchUnderTest
from tests.support import eventually

pytestmark = pytest.mark.timeout(90)

SHANGHAI = (31.2304, 121.4737)
SUZHOU = (31.2990, 120.5853)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def staffed(dispatch: DispatchUnderTest, managers: int = 1, **fields: object) -> tuple[str, list[str]]:
    branch = uid("b")
    await dispatch.branch(branch, *SHANGHAI)
    ids = [uid("m") for _ in range(managers)]
    for manager in ids:
        await dispatch.manager(manager, branch, **fields)  # type: ignore[arg-type]
    return branch, ids


async def refusal(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# -- branches, managers, bad input -------------------------------------------------------------------


async def test_branches_and_managers_upsert_and_list_by_page(dispatch: DispatchUnderTest) -> None:
    branch = uid("b")
    first = await dispatch.stub.UpsertBranch(
        api.UpsertBranchRequest(branch_id=branch, name="Lujiazui", location=api.LatLng(latitude=31.24, longitude=121.5))
    )
    again = await dispatch.stub.UpsertBranch(
        api.UpsertBranchRequest(
            branch_id=branch, name="Lujiazui 2", location=api.LatLng(latitude=31.24, longitude=121.5)
        )
    )
    assert first.created and not again.created and again.branch.name == "Lujiazui 2"
    for i in range(3):
        await dispatch.manager(f"{branch}-m{i}", branch, products=("loan", "card", "loan"))
    page = await dispatch.stub.ListManagers(api.ListManagersRequest(branch_id=branch, page_size=2))
    rest = await dispatch.stub.ListManagers(
        api.ListManagersRequest(branch_id=branch, page_size=2, page_token=page.next_page_token)
    )
    assert [m.manager_id for m in [*page.managers, *rest.managers]] == [f"{branch}-m{i}" for i in range(3)]
    assert list(page.managers[0].products) == ["card", "loan"] and not rest.next_page_token


async def test_bad_input_names_the_field_and_writes_nothing(dispatch: DispatchUnderTest) -> None:
    bad = await refusal(
        dispatch.stub.UpsertBranch(
            api.UpsertBranchRequest(branch_id="x", name="x", location=api.LatLng(latitude=91, longitude=0))
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.details().startswith("location.latitude")
    unknown = await refusal(dispatch.manager(uid("m"), "no-such-branch"))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND and "branch_id" in unknown.details()
    negative = await refusal(dispatch.manager(uid("m"), "x", capacity=-1))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and negative.details().startswith("daily_capacity")
    no_key = await refusal(dispatch.order(idempotency_key=" "))
    assert no_key.code() == grpc.StatusCode.INVALID_ARGUMENT and no_key.details().startswith("idempotency_key")
    listed = await dispatch.stub.ListBranches(api.ListBranchesRequest())
    assert [b.branch_id for b in listed.branches if b.branch_id == "x"] == []


# -- booking -----------------------------------------------------------------------------------------


async def test_create_order_is_idempotent_by_key(dispatch: DispatchUnderTest) -> None:
    key = uid("key")
    first = await dispatch.stub.CreateOrder(
        api.CreateOrderRequest(
            idempotency_key=key,
            customer_id="c1",
            product="card",
            address="上海市黄浦区",
            location=api.LatLng(latitude=31.2, longitude=121.4),
        )
    )
    again = await dispatch.stub.CreateOrder(
        api.CreateOrderRequest(
            idempotency_key=key,
            customer_id=" c1 ",
            product="card",
            address="上海市黄浦区",
            location=api.LatLng(latitude=31.2, longitude=121.4),
        )
    )
    assert again.replayed and again.order.order_id == first.order.order_id
    clash = await refusal(
        dispatch.stub.CreateOrder(
            api.CreateOrderRequest(
                idempotency_key=key,
                customer_id="c2",
                product="card",
                address="上海市黄浦区",
                location=api.LatLng(latitude=31.2, longitude=121.4),
            )
        )
    )
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS and first.order.order_id in clash.details()


async def test_an_address_is_placed_by_its_district_or_at_the_fallback_branch_flagged(
    dispatch: DispatchUnderTest,
) -> None:
    def request(address: str) -> api.CreateOrderRequest:
        return api.CreateOrderRequest(idempotency_key=uid("k"), customer_id="c", product="card", address=address)

    placed = (await dispatch.stub.CreateOrder(request("浙江省杭州市西湖区文三路90号"))).order
    assert placed.location_source == api.LOCATION_SOURCE_DISTRICT and placed.district_code == "330106"
    assert abs(placed.location.latitude - 30.26) < 0.2 and not placed.address_flagged
    missing = await refusal(dispatch.stub.CreateOrder(request("朝阳区")))  # HQ not registered yet
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION and missing.details().startswith("address")
    await dispatch.branch("HQ", 39.9, 116.4)
    unplaced = (await dispatch.stub.CreateOrder(request("朝阳区"))).order
    assert unplaced.location_source == api.LOCATION_SOURCE_FALLBACK_BRANCH and unplaced.address_flagged
    assert (unplaced.location.latitude, unplaced.location.longitude) == (39.9, 116.4)


# -- grabbing ----------------------------------------------------------------------------------------


async def test_a_hundred_concurrent_grabs_have_exactly_one_winner(dispatch: DispatchUnderTest) -> None:
    _, managers = await staffed(dispatch, managers=100)
    order = await dispatch.order()
    results = await asyncio.gather(*(dispatch.grab(order.order_id, m) for m in managers), return_exceptions=True)
    winners = [r for r in results if isinstance(r, api.Order)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 99
    assert {e.code() for e in losers} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert all(e.details().startswith("too late") for e in losers)
    stored = (await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))).order
    assert stored.manager_id == winners[0].manager_id and stored.state == api.ORDER_STATE_OWNED
    # The winner asking again gets the same answer; a loser still gets "too late".
    assert (await dispatch.grab(order.order_id, stored.manager_id)).manager_id == stored.manager_id


async def test_concurrent_grabs_on_two_replicas_have_one_winner(
    dispatch: DispatchUnderTest, dispatch_replica: DispatchUnderTest
) -> None:
    _, managers = await staffed(dispatch, managers=20)
    for _ in range(5):
        order = await dispatch.order()
        calls = [(dispatch if i % 2 else dispatch_replica).grab(order.order_id, m) for i, m in enumerate(managers)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(isinstance(r, api.Order) for r in results) == 1, results


async def test_refusals_say_which_rule(dispatch: DispatchUnderTest) -> None:
    branch, [full] = await staffed(dispatch, capacity=1)
    off, cards_only = uid("off"), uid("cards")
    await dispatch.manager(off, branch, on_duty=False)
    await dispatch.manager(cards_only, branch, products=("card",))
    first, second, loan = await dispatch.order(), await dispatch.order(), await dispatch.order("loan")
    await dispatch.grab(first.order_id, full)
    capacity = await refusal(dispatch.grab(second.order_id, full))
    assert capacity.details().startswith("over capacity") and "1 of 1" in capacity.details()
    duty = await refusal(dispatch.grab(second.order_id, off))
    assert duty.details().startswith("off duty")
    qualified = await refusal(dispatch.grab(loan.order_id, cards_only))
    assert qualified.details().startswith("not qualified") and "loan" in qualified.details()
    assert {capacity.code(), duty.code(), qualified.code()} == {grpc.StatusCode.FAILED_PRECONDITION}
    late = await refusal(dispatch.grab(first.order_id, cards_only))
    assert late.details().startswith("too late") and full in late.details()


async def test_the_preferred_manager_holds_an_order_alone_for_the_window(dispatch: DispatchUnderTest) -> None:
    _, [named, other] = await staffed(dispatch, managers=2)
    order = await dispatch.order(preferred_manager_id=named)
    assert order.state == api.ORDER_STATE_RESERVED
    held = await refusal(dispatch.grab(order.order_id, other))
    assert held.details().startswith("reserved")
    other_pool = await dispatch.stub.ListPool(api.ListPoolRequest(manager_id=other))
    named_pool = await dispatch.stub.ListPool(api.ListPoolRequest(manager_id=named))
    assert order.order_id not in [p.order.order_id for p in other_pool.orders]
    assert order.order_id in [p.order.order_id for p in named_pool.orders]
    assert (await dispatch.grab(order.order_id, named)).manager_id == named


async def test_after_the_window_the_order_joins_everyones_pool(dispatch: DispatchUnderTest) -> None:
    (dispatch.rules_dir / "dispatch" / "policy.yaml").write_text(
        DISPATCH_POLICY.replace("preferred_window: 30m", "preferred_window: 1s")
    )
    await dispatch.reload_rules()
    _, [named, other] = await staffed(dispatch, managers=2)
    order = await dispatch.order(preferred_manager_id=named)

    async def opened() -> bool:
        found = await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))
        return found.order.state == api.ORDER_STATE_OPEN

    await eventually(opened)
    assert (await dispatch.grab(order.order_id, other)).manager_id == other
    changes = (await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))).changes
    assert [c.change for c in changes] == ["created", "reserved", "opened", "grabbed"]


async def test_the_pool_lists_nearest_first(dispatch: DispatchUnderTest) -> None:
    _, [manager] = await staffed(dispatch)
    far = await dispatch.order(lat=SUZHOU[0], lon=SUZHOU[1])
    near = await dispatch.order(lat=SHANGHAI[0] + 0.01, lon=SHANGHAI[1])
    listed = await dispatch.stub.ListPool(api.ListPoolRequest(manager_id=manager))
    ours = [p for p in listed.orders if p.order.order_id in (far.order_id, near.order_id)]
    assert [p.order.order_id for p in ours] == [near.order_id, far.order_id]
    assert 1_000 < ours[0].distance_m < 1_200 and 75_000 < ours[1].distance_m < 90_000


# -- after the grab ----------------------------------------------------------------------------------


async def test_complete_keeps_an_audit_trail_and_is_idempotent(dispatch: DispatchUnderTest) -> None:
    _, [manager, other] = await staffed(dispatch, managers=2)
    order = await dispatch.order()
    await dispatch.grab(order.order_id, manager)
    not_owner = await refusal(
        dispatch.stub.MarkContacted(api.MarkContactedRequest(order_id=order.order_id, manager_id=other))
    )
    assert not_owner.code() == grpc.StatusCode.FAILED_PRECONDITION and not_owner.details().startswith("manager_id")
    await dispatch.stub.MarkContacted(api.MarkContactedRequest(order_id=order.order_id, manager_id=manager))
    no_outcome = await refusal(
        dispatch.stub.CompleteOrder(api.CompleteOrderRequest(order_id=order.order_id, manager_id=manager))
    )
    assert no_outcome.code() == grpc.StatusCode.INVALID_ARGUMENT and no_outcome.details().startswith("outcome")
    done = api.CompleteOrderRequest(order_id=order.order_id, manager_id=manager, business_ref="LOAN-1")
    first, again = await dispatch.stub.CompleteOrder(done), await dispatch.stub.CompleteOrder(done)
    assert first.order.state == api.ORDER_STATE_SUCCEEDED and again.replayed and not first.replayed
    changed = await refusal(
        dispatch.stub.CompleteOrder(
            api.CompleteOrderRequest(order_id=order.order_id, manager_id=manager, failure_reason="no")
        )
    )
    assert changed.code() == grpc.StatusCode.FAILED_PRECONDITION
    trail = (await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))).changes
    assert [(c.change, c.actor) for c in trail] == [
        ("created", "customer"),
        ("grabbed", manager),
        ("contacted", manager),
        ("succeeded", manager),
    ]
    assert trail[-1].detail == "LOAN-1"


async def test_an_order_not_contacted_in_time_is_escalated_and_returned_to_the_pool(
    dispatch: DispatchUnderTest,
) -> None:
    (dispatch.rules_dir / "dispatch" / "policy.yaml").write_text(
        DISPATCH_POLICY.replace("contact_within: 2h", "contact_within: 1s")
    )
    await dispatch.reload_rules()
    _, [slow, other] = await staffed(dispatch, managers=2)
    order = await dispatch.order()
    await dispatch.grab(order.order_id, slow)

    async def returned() -> api.GetOrderResponse | None:
        found = await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))
        return found if found.order.state == api.ORDER_STATE_OPEN else None

    found = await eventually(returned)
    assert [c.change for c in found.changes][-2:] == ["escalated", "opened"]
    assert not found.order.manager_id
    assert (await dispatch.grab(order.order_id, other)).manager_id == other


# -- the pool's stream -------------------------------------------------------------------------------


async def test_watch_pool_on_two_replicas_sees_a_new_order_and_its_grab(
    dispatch: DispatchUnderTest, dispatch_replica: DispatchUnderTest
) -> None:
    _, [watcher, grabber] = await staffed(dispatch, managers=2)
    streams = [
        service.stub.WatchPool(api.WatchPoolRequest(manager_id=watcher)) for service in (dispatch, dispatch_replica)
    ]
    try:
        for stream in streams:
            first = await asyncio.wait_for(stream.read(), 10)
            assert first.WhichOneof("update") == "snapshot"
        order = await dispatch_replica.order()
        for stream in streams:
            added = await asyncio.wait_for(stream.read(), 10)
            assert added.WhichOneof("update") == "added" and added.added.order.order_id == order.order_id
            shown = added.added.order  # what the app shows, from the event alone
            assert (shown.customer_id, shown.address, shown.state) == (
                order.customer_id,
                order.address,
                api.ORDER_STATE_OPEN,
            )
            assert 0 < added.added.distance_m < 5_000
        await dispatch.grab(order.order_id, grabber)
        for stream in streams:
            taken = await asyncio.wait_for(stream.read(), 10)
            assert taken.WhichOneof("update") == "taken"
            assert (taken.taken.order_id, taken.taken.manager_id) == (order.order_id, grabber)
        # A reconnecting manager gets the pool as it is now: the taken order is not in it.
        again = dispatch.stub.WatchPool(api.WatchPoolRequest(manager_id=watcher))
        snapshot = await asyncio.wait_for(again.read(), 10)
        assert order.order_id not in [p.order.order_id for p in snapshot.snapshot.orders]
        again.cancel()
    finally:
        for stream in streams:
            stream.cancel()
