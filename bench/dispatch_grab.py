"""Grab-order under contention (services/dispatch over gRPC, SQLite): 10,000 orders, 200
concurrent clients, every order offered to two of them at once, so half the grabs win and half
are refused "too late". Figures: grabs per second next to the empty gRPC call at the same
concurrency in the same run, and the owners counted in the database afterwards (zero orders with
two owners, every order owned once)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from alliance.v1 import dispatch_pb2 as api
from alliance.v1 import dispatch_pb2_grpc
from bench.load import LoadResult, run_load
from services.foundation.child_service import ServiceProcess
from services.foundation.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parent.parent
ORDERS = 10_000
CLIENTS = 200
MANAGERS = 200
OFFERS = 2  # clients racing for each order

Row = tuple[str, str, str, str, str, bool | None]


def start(work: Path, nats: EmbeddedNats) -> tuple[ServiceProcess, Path]:
    rules = work / "rules-dispatch"
    (rules / "dispatch").mkdir(parents=True)
    (rules / "dispatch" / "default.yaml").write_bytes((REPO / "rules" / "dispatch" / "default.yaml").read_bytes())
    db = work / "dispatch-bench.db"
    process = ServiceProcess(
        "dispatch",
        {
            "DATABASE_URL": f"sqlite:///{db}",
            "NATS_URL": nats.url,
            "RULES_DIR": str(rules),
            "LOG_LEVEL": "WARNING",
            "CUTOFF_SCHEDULE": "false",
        },
        work / "dispatch.log",
    )
    process.start()
    return process, db


async def setup(stub: dispatch_pb2_grpc.DispatchServiceStub, run: str) -> tuple[list[str], list[str]]:
    await stub.UpsertBranch(
        api.UpsertBranchRequest(branch_id="bench", name="Bench", location=api.LatLng(latitude=30.25, longitude=120.15))
    )
    managers = [f"m-{run}-{i}" for i in range(MANAGERS)]
    for manager in managers:
        await stub.UpsertManager(
            api.UpsertManagerRequest(
                manager_id=manager,
                branch_id="bench",
                name=manager,
                products=["card"],
                daily_capacity=ORDERS,
                on_duty=True,
            )
        )
    rng = random.Random(5)
    orders: list[str] = []

    async def create(start: int) -> None:
        for i in range(start, ORDERS, 50):
            reply = await stub.CreateOrder(
                api.CreateOrderRequest(
                    idempotency_key=f"{run}-{i}",
                    customer_id=f"c{i}",
                    product="card",
                    address="浙江省杭州市西湖区",
                    location=api.LatLng(
                        latitude=30.25 + rng.uniform(-0.2, 0.2), longitude=120.15 + rng.uniform(-0.2, 0.2)
                    ),
                )
            )
            orders.append(reply.order.order_id)

    await asyncio.gather(*(create(s) for s in range(50)))
    return orders, managers


async def grab_all(
    stub: dispatch_pb2_grpc.DispatchServiceStub, orders: list[str], managers: list[str]
) -> tuple[LoadResult, Counter[str], Counter[str]]:
    """Each order is offered to OFFERS clients in a row of the queue, so they race for it."""
    queue = [order for order in orders for _ in range(OFFERS)]
    cursor = iter(range(len(queue)))
    wins: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    latencies: list[float] = []

    async def client(c: int) -> None:
        manager = managers[c % len(managers)]
        for i in cursor:
            began = time.perf_counter()
            try:
                await stub.GrabOrder(api.GrabOrderRequest(order_id=queue[i], manager_id=manager))
                wins[queue[i]] += 1
            except grpc.aio.AioRpcError as error:
                refusals[
                    error.details().split(":")[0]
                    if error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    else str(error.code())
                ] += 1
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    return LoadResult(len(latencies), 0, time.perf_counter() - began, latencies), wins, refusals


def owners_in_database(db: Path) -> tuple[int, int]:
    """(orders owned, orders grabbed more than once) as the database has them."""
    with sqlite3.connect(db) as conn:
        owned = conn.execute("SELECT count(*) FROM dispatch_order WHERE state = 'owned'").fetchone()[0]
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT order_id FROM order_change WHERE change = 'grabbed' "
            "GROUP BY order_id HAVING count(*) > 1)"
        ).fetchone()[0]
    return int(owned), int(doubled)


async def measure(work: Path, empty_call: Callable[[int], Awaitable[object]]) -> list[Row]:
    nats = EmbeddedNats(work / "nats-dispatch")
    nats.start()
    process, db = start(work, nats)
    try:
        await process.wait_serving()
        channel = grpc.aio.insecure_channel(process.address)
        stub = dispatch_pb2_grpc.DispatchServiceStub(channel)
        run = uuid.uuid4().hex[:6]
        print(f"dispatch: booking {ORDERS:,} orders for {MANAGERS} managers", flush=True)
        orders, managers = await setup(stub, run)
        before = await run_load(empty_call, concurrency=CLIENTS, seconds=3)
        print(f"dispatch: {CLIENTS} clients grabbing them, each order offered to {OFFERS}", flush=True)
        grabs, wins, refusals = await grab_all(stub, orders, managers)
        after = await run_load(empty_call, concurrency=CLIENTS, seconds=3)
        await channel.close()
    finally:
        process.terminate()
        nats.stop()
    empty = LoadResult.combine([before, after])
    owned, doubled = owners_in_database(db)
    double_wins = sum(1 for n in wins.values() if n > 1)
    ok = owned == ORDERS and doubled == 0 and double_wins == 0 and len(wins) == ORDERS
    return [
        (
            f"grab-order, {ORDERS:,} orders, {CLIENTS} concurrent clients, {OFFERS} racing per order (SQLite)",
            f"{grabs.throughput:,.0f} grabs/s (p50 {grabs.p50:.1f} ms, p99 {grabs.percentile(99):.1f} ms),"
            f" {sum(wins.values()):,} won, refused: {dict(refusals)}",
            f"empty gRPC call {empty.throughput:,.0f} calls/s at {CLIENTS} concurrent",
            f"{grabs.throughput / empty.throughput:.3f}",
            "none named",
            None,
        ),
        (
            "grab-order owners, the same run",
            f"{owned:,} orders owned, {doubled} grabbed twice, {double_wins} with two winning replies",
            f"{ORDERS:,} orders, each owned once",
            f"{owned / ORDERS:.3f}",
            "zero double owners",
            ok,
        ),
    ]
