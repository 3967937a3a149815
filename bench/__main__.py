"""`make bench`: the speed targets, each next to the figure it is measured against in this run.

Layout: nats-server, the service under test and the empty-call baseline server each run in their
own process; this process is the client (grpc.aio, one channel, N concurrent callers). On a
2-core machine client and server share the CPU, for the baseline and the service alike.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.empty_pb2 import Empty

from alliance.v1 import benefits_pb2, benefits_pb2_grpc, points_pb2, points_pb2_grpc
from bench.load import LoadResult, run_load
from bench.rules_engine import engine_evaluations_per_second
from services.foundation.child_service import ServiceProcess
from services.foundation.nats_server import EmbeddedNats, free_port

REPO = Path(__file__).resolve().parent.parent


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """Separate connections, as separate client systems would have."""
    return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


async def measure_empty(concurrency: int, seconds: float, channels: int) -> LoadResult:
    port = free_port()
    servers = [subprocess.Popen([sys.executable, "-m", "bench.empty_server", str(port)], cwd=REPO)]  # noqa: ASYNC220
    chans = open_channels(f"127.0.0.1:{port}", channels)
    try:
        for channel in chans:
            await asyncio.wait_for(channel.channel_ready(), 15)
        calls = [
            channel.unary_unary(
                "/bench.Empty/Call", request_serializer=Empty.SerializeToString, response_deserializer=Empty.FromString
            )
            for channel in chans
        ]
        empty = Empty()
        return await run_load(lambda i: calls[i % channels](empty), concurrency=concurrency, seconds=seconds)
    finally:
        for channel in chans:
            await channel.close()
        for server in servers:
            server.terminate()
            server.wait(10)


def _earn(i: int, run: str) -> points_pb2.EarnRequest:
    request = points_pb2.EarnRequest(
        idempotency_key=f"bench-{run}-{i}",
        user_id=f"bench-user-{i % 5000}",
    )
    request.occurred_at.FromDatetime(datetime.now(UTC))
    if i % 2:
        request.event_type = "merchant.spend"
        request.amount = f"{(i % 500) + 10}.00"
        request.attributes["merchant_category"] = "supermarket"
    else:
        request.event_type = "referral.converted"
        request.attributes["product"] = ("loan", "credit_card", "mobile_banking")[i % 3]
    return request


def _quote(i: int) -> benefits_pb2.QuoteDiscountRequest:
    request = benefits_pb2.QuoteDiscountRequest(
        customer_id=f"bench-user-{i % 500}",
        merchant_id=("m-cinema-01", "m-market-01")[i % 2],
        amount=f"{(i % 300) + 20}.00",
    )
    return request


async def measure_service(work: Path, concurrency: int, seconds: float, channels: int) -> tuple[LoadResult, LoadResult]:
    """Earn, then QuoteDiscount, against one points process (SQLite) fed by the shipped rule files."""
    nats = EmbeddedNats(work / "nats")
    nats.start()
    service = ServiceProcess(
        "points",
        {
            "DATABASE_URL": f"sqlite:///{work / 'points.db'}",
            "NATS_URL": nats.url,
            "RULES_DIR": str(REPO / "rules"),
            "LOG_LEVEL": "WARNING",
        },
        work / "points.log",
    )
    service.start()
    try:
        await service.wait_serving()
        run = str(int(time.time()))
        chans = open_channels(service.address, channels)
        try:
            stubs = [points_pb2_grpc.PointsStub(channel) for channel in chans]
            earn = await run_load(
                lambda i: stubs[i % channels].Earn(_earn(i, run)), concurrency=concurrency, seconds=seconds
            )
            benefits = [benefits_pb2_grpc.BenefitsStub(channel) for channel in chans]
            for i in range(500):  # customers spread over the tiers
                aum = benefits_pb2.SetCustomerAumRequest(customer_id=f"bench-user-{i}", aum=str(i * 2000))
                aum.as_of.GetCurrentTime()
                await benefits[0].SetCustomerAum(aum)
            quote = await run_load(
                lambda i: benefits[i % channels].QuoteDiscount(_quote(i)), concurrency=concurrency, seconds=seconds
            )
            return earn, quote
        finally:
            for channel in chans:
                await channel.close()
    finally:
        service.terminate()
        nats.stop()


def table(rows: list[tuple[str, str, str, str, str, bool]]) -> str:
    lines = ["| measure | result | measured against (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} | {'yes' if ok else 'NO'} |" for a, b, c, d, e, ok in rows]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="alliance-bench-") as tmp:
        work = Path(tmp)
        c = args.concurrency
        empty = await measure_empty(c, args.seconds, args.channels)
        earn, quote = await measure_service(work, c, args.seconds, args.channels)
    engine = engine_evaluations_per_second(rules=50, seconds=min(args.seconds, 5.0))
    ratio = earn.throughput / empty.throughput
    rows = [
        (
            f"Earn over gRPC, SQLite, concurrency {c}",
            f"{earn.throughput:,.0f} calls/s",
            f"empty gRPC call {empty.throughput:,.0f} calls/s",
            f"{ratio:.2f}",
            ">= 0.40",
            ratio >= 0.40,
        ),
        (
            f"Earn p99 latency, concurrency {c}",
            f"{earn.percentile(99):.1f} ms (p50 {earn.p50:.1f})",
            f"empty call p99 {empty.percentile(99):.1f} ms",
            f"{earn.percentile(99) / empty.percentile(99):.1f}x",
            "<= 50 ms",
            earn.percentile(99) <= 50,
        ),
        (
            f"QuoteDiscount over gRPC, concurrency {c}",
            f"{quote.throughput:,.0f} calls/s",
            f"empty gRPC call {empty.throughput:,.0f} calls/s",
            f"{quote.throughput / empty.throughput:.2f}",
            ">= 0.60",
            quote.throughput / empty.throughput >= 0.60,
        ),
        (
            f"QuoteDiscount p99 latency, concurrency {c}",
            f"{quote.percentile(99):.1f} ms (p50 {quote.p50:.1f})",
            f"empty call p99 {empty.percentile(99):.1f} ms",
            f"{quote.percentile(99) / empty.percentile(99):.1f}x",
            "<= 30 ms",
            quote.percentile(99) <= 30,
        ),
        (
            "rules engine alone, 50-rule campaign",
            f"{engine:,.0f} evaluations/s",
            "target 10,000/s",
            f"{engine / 10_000:.2f}",
            ">= 10,000/s",
            engine >= 10_000,
        ),
    ]
    errors = f"errors: Earn {earn.errors}, QuoteDiscount {quote.errors}, empty {empty.errors}"
    text = table(rows)
    print(text)
    print(errors)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(f"{datetime.now(UTC).isoformat(timespec='seconds')}\n\n{text}\n\n{errors}\n")
    return 0 if all(r[-1] for r in rows) and not (earn.errors or quote.errors) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--channels", type=int, default=1, help="client connections, calls spread over them")
    sys.exit(asyncio.run(main(parser.parse_args())))
