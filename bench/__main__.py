"""`make bench`: the speed targets, each next to the figure it is measured against in this run.

Layout: nats-server, the service under test and the empty-call baseline server each run in their
own process; this process is the client (grpc.aio, one channel, N concurrent callers). On a
2-core machine client and server share the CPU, for the baseline and the service alike. Each RPC
is measured in windows alternating with windows of the baseline, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.empty_pb2 import Empty

from alliance.v1 import benefits_pb2, benefits_pb2_grpc, points_pb2, points_pb2_grpc
from bench import dispatch, dispatch_grab, referral
from bench.load import LoadResult, run_load
from bench.rules_engine import engine_evaluations_per_second
from services.foundation.child_service import ServiceProcess
from services.foundation.nats_server import EmbeddedNats, free_port

REPO = Path(__file__).resolve().parent.parent


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """Separate connections, as separate client systems would have."""
    return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


Call = Callable[[int], Awaitable[object]]


class EmptyServer:
    """The baseline server in its own process, and a caller of its empty method."""

    def __init__(self, channels: int) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "bench.empty_server", str(self.port)], cwd=REPO)
        self.channels = open_channels(f"127.0.0.1:{self.port}", channels)
        self._calls = [
            channel.unary_unary(
                "/bench.Empty/Call", request_serializer=Empty.SerializeToString, response_deserializer=Empty.FromString
            )
            for channel in self.channels
        ]
        self._empty = Empty()

    async def ready(self) -> None:
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), 15)

    def call(self, i: int) -> Awaitable[object]:
        return self._calls[i % len(self._calls)](self._empty)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.process.terminate()
        self.process.wait(10)


async def interleaved(
    service: Call, baseline: Call, *, concurrency: int, seconds: float, rounds: int
) -> tuple[LoadResult, LoadResult]:
    """The service and the baseline in alternating windows of the same length, so that a machine
    that speeds up or slows down during the run (shared CPUs do) affects both alike."""
    window = seconds / rounds
    # Not measured: the service's first calls load what it keeps in memory (customers, answers of
    # the rules engine), which is start-up cost, not the steady state the targets are about.
    await run_load(service, concurrency=concurrency, seconds=window, warmup=0)
    service_parts: list[LoadResult] = []
    baseline_parts: list[LoadResult] = []
    for _ in range(rounds):
        baseline_parts.append(await run_load(baseline, concurrency=concurrency, seconds=window, warmup=0.3))
        service_parts.append(await run_load(service, concurrency=concurrency, seconds=window, warmup=0.3))
    return LoadResult.combine(service_parts), LoadResult.combine(baseline_parts)


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


def _quote_first_seen(i: int, run: str) -> benefits_pb2.QuoteDiscountRequest:
    """A customer never quoted before, with nothing on file (the lowest tier). While every customer
    on file fits in memory, the service knows that without a database read."""
    return benefits_pb2.QuoteDiscountRequest(
        customer_id=f"bench-new-{run}-{i}",
        merchant_id=("m-cinema-01", "m-market-01")[i % 2],
        amount=f"{(i % 300) + 20}.00",
    )


@dataclass
class Measured:
    quote: LoadResult
    quote_baseline: LoadResult
    first_seen: LoadResult
    first_seen_baseline: LoadResult
    earn: LoadResult
    earn_baseline: LoadResult


async def measure_service(work: Path, args: argparse.Namespace) -> Measured:
    """QuoteDiscount, then Earn, against one points process (SQLite) fed by the shipped rule files,
    each interleaved with the empty call."""
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
    empty = EmptyServer(args.channels)
    load = {"concurrency": args.concurrency, "seconds": args.seconds, "rounds": args.rounds}
    try:
        await service.wait_serving()
        await empty.ready()
        run = str(int(time.time()))
        chans = open_channels(service.address, args.channels)
        try:
            benefits = [benefits_pb2_grpc.BenefitsStub(channel) for channel in chans]
            for i in range(500):  # customers spread over the tiers
                aum = benefits_pb2.SetCustomerAumRequest(customer_id=f"bench-user-{i}", aum=str(i * 2000))
                aum.as_of.GetCurrentTime()
                await benefits[0].SetCustomerAum(aum)
            # Requests built up front, as the baseline's is: building them is the client's work.
            quotes = [_quote(i) for i in range(1000)]
            # The client is measuring equipment: its own full collections (20-40 ms over everything
            # it imported) would land in the p99 of whichever window they fall in.
            gc.collect()
            gc.freeze()
            # QuoteDiscount first: Earn leaves its events in the outbox for the relay to publish,
            # which would otherwise share the CPU with the quotes.
            quote, quote_baseline = await interleaved(
                lambda i: benefits[i % len(benefits)].QuoteDiscount(quotes[i % 1000]), empty.call, **load
            )
            serial = itertools.count()  # call numbers restart each window; customers and keys must not
            first_seen, first_seen_baseline = await interleaved(
                lambda i: benefits[i % len(benefits)].QuoteDiscount(_quote_first_seen(next(serial), run)),
                empty.call,
                **load,
            )
            stubs = [points_pb2_grpc.PointsStub(channel) for channel in chans]

            def earn_call(i: int) -> Awaitable[object]:
                return stubs[i % len(stubs)].Earn(_earn(next(serial), run))

            earn, earn_baseline = await interleaved(earn_call, empty.call, **load)
            return Measured(quote, quote_baseline, first_seen, first_seen_baseline, earn, earn_baseline)
        finally:
            for channel in chans:
                await channel.close()
    finally:
        await empty.close()
        service.terminate()
        nats.stop()


# A row's last field: whether its target is met; None for a row that informs and has no target.
Row = tuple[str, str, str, str, str, bool | None]


def table(rows: list[Row]) -> str:
    lines = ["| measure | result | measured against (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} | {_met(ok)} |" for a, b, c, d, e, ok in rows]
    return "\n".join(lines)


def _met(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"


async def main(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    failed_calls = 0
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="alliance-bench-") as tmp:
        if args.only in (None, "points"):
            m = await measure_service(Path(tmp), args)
            points_rows, errors_note, failed_calls = points_table(m, args)
            rows += points_rows
            notes.append(errors_note)
        if args.only in (None, "referral"):
            empty = EmptyServer(args.channels)
            try:
                await empty.ready()
                rows += await referral.measure(Path(tmp), args, empty.call, interleaved)
            finally:
                await empty.close()
        if args.only in (None, "dispatch"):
            print("dispatch: solving the cutoff's assignment", flush=True)
            rows += dispatch.measure()
            empty = EmptyServer(args.channels)
            try:
                await empty.ready()
                rows += await dispatch_grab.measure(Path(tmp), empty.call)
            finally:
                await empty.close()
    text = table(rows)
    print(text)
    print("\n".join(notes))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(
        f"{datetime.now(UTC).isoformat(timespec='seconds')}\n\n{text}\n\n" + "\n".join(notes) + "\n"
    )
    return 0 if all(r[-1] is not False for r in rows) and not failed_calls else 1


def points_table(m: Measured, args: argparse.Namespace) -> tuple[list[Row], str, int]:
    engine = engine_evaluations_per_second(rules=50, seconds=min(args.seconds, 5.0))
    served = engine_evaluations_per_second(rules=50, seconds=min(args.seconds, 5.0), memo=True)
    c = args.concurrency
    earn, quote = m.earn, m.quote
    earn_ratio = earn.throughput / m.earn_baseline.throughput
    quote_ratio = quote.throughput / m.quote_baseline.throughput
    first_seen = m.first_seen
    rows: list[Row] = [
        (
            f"Earn over gRPC, SQLite, concurrency {c}",
            f"{earn.throughput:,.0f} calls/s",
            f"empty gRPC call {m.earn_baseline.throughput:,.0f} calls/s",
            f"{earn_ratio:.2f}",
            ">= 0.40",
            earn_ratio >= 0.40,
        ),
        (
            f"Earn p99 latency, concurrency {c}",
            f"{earn.percentile(99):.1f} ms (p50 {earn.p50:.1f})",
            f"empty call p99 {m.earn_baseline.percentile(99):.1f} ms",
            f"{earn.percentile(99) / m.earn_baseline.percentile(99):.1f}x",
            "<= 50 ms",
            earn.percentile(99) <= 50,
        ),
        (
            f"QuoteDiscount over gRPC, concurrency {c}",
            f"{quote.throughput:,.0f} calls/s",
            f"empty gRPC call {m.quote_baseline.throughput:,.0f} calls/s",
            f"{quote_ratio:.2f}",
            ">= 0.60",
            quote_ratio >= 0.60,
        ),
        (
            f"QuoteDiscount p99 latency, concurrency {c}",
            f"{quote.percentile(99):.1f} ms (p50 {quote.p50:.1f})",
            f"empty call p99 {m.quote_baseline.percentile(99):.1f} ms",
            f"{quote.percentile(99) / m.quote_baseline.percentile(99):.1f}x",
            "<= 30 ms",
            quote.percentile(99) <= 30,
        ),
        (
            f"QuoteDiscount, a customer never quoted before on every call (nothing on file), concurrency {c}",
            f"{first_seen.throughput:,.0f} calls/s, p99 {first_seen.percentile(99):.1f} ms",
            f"empty gRPC call {m.first_seen_baseline.throughput:,.0f} calls/s",
            f"{first_seen.throughput / m.first_seen_baseline.throughput:.2f}",
            "none: shows the cost of a first quote",
            None,
        ),
        (
            "rules engine alone, 50-rule campaign",
            f"{engine:,.0f} evaluations/s",
            "target 10,000/s",
            f"{engine / 10_000:.2f}",
            ">= 10,000/s",
            engine >= 10_000,
        ),
        (
            "campaign evaluation as served (engine answers remembered per fact key), 50 rules",
            f"{served:,.0f} evaluations/s",
            f"engine alone {engine:,.0f}/s",
            f"{served / engine:.1f}x",
            ">= 10,000/s",
            served >= 10_000,
        ),
    ]
    baseline_errors = m.earn_baseline.errors + m.quote_baseline.errors + m.first_seen_baseline.errors
    quote_errors = quote.errors + first_seen.errors
    errors = f"errors: Earn {earn.errors}, QuoteDiscount {quote_errors}, empty {baseline_errors}"
    return rows, errors, earn.errors + quote_errors


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per RPC and for its baseline")
    parser.add_argument("--rounds", type=int, default=5, help="alternating windows of RPC and baseline")
    parser.add_argument("--channels", type=int, default=1, help="client connections, calls spread over them")
    parser.add_argument("--only", choices=["points", "referral", "dispatch"], help="measure one part only")
    parser.add_argument("--tree-users", type=int, default=1_000_000, help="users of the referral tree")
    parser.add_argument("--chain", type=int, default=10_000, help="levels of the referral chain")
    parser.add_argument("--skip-postgres", action="store_true", help="referral on SQLite only")
    sys.exit(asyncio.run(main(parser.parse_args())))
