"""The referral service's targets, each next to its baseline in the same run: a 1,000,000-user
tree built through ImportLinks (time, database size), then for a partner with about 100,000
descendants its subtree statistics and path to the root (and the deepest partner's path), on SQLite
and on PostgreSQL; Register over gRPC against the empty call; a chain of 10,000 levels."""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psycopg

from alliance.v1 import referral_pb2 as api
from alliance.v1 import referral_pb2_grpc
from bench.load import LoadResult
from services.foundation.child_service import ServiceProcess
from services.foundation.nats_server import EmbeddedNats

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2025, 1, 1, tzinfo=UTC)
BATCH = 50_000
CHUNK = 5_000


@dataclass
class Tree:
    """A referral push of `n` users: each joins under an earlier one, half the time a recent one
    (chains grow deep), half the time anyone (early partners grow wide)."""

    n: int
    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)

    @classmethod
    def grow(cls, n: int, seed: int = 7) -> Tree:
        rng = random.Random(seed)
        parent = [-1] + [
            rng.randrange(max(0, i - 200), i) if rng.random() < 0.5 else rng.randrange(i) for i in range(1, n)
        ]
        size = [0] * n
        for i in range(n - 1, 0, -1):
            size[parent[i]] += size[i] + 1
        depth = [0] * n
        for i in range(1, n):
            depth[i] = depth[parent[i]] + 1
        return cls(n, parent, size, depth)

    def near(self, descendants: int) -> int:
        """The partner with the fewest descendants at or above `descendants` (the root in a small tree)."""
        big_enough = [i for i in range(self.n) if self.size[i] >= min(descendants, self.n - 1)]
        return min(big_enough, key=lambda i: self.size[i])


def user(i: int) -> str:
    return f"t-{i}"


def at(seconds: float) -> object:
    when = T0 + timedelta(seconds=seconds)
    return {"seconds": int(when.timestamp()), "nanos": 0}


async def import_links(
    stub: referral_pb2_grpc.ReferralServiceStub, links: list[api.ImportedLink], batch_id: str
) -> api.ImportLinksResponse:
    async def parts() -> AsyncIterator[api.ImportLinksRequest]:
        yield api.ImportLinksRequest(header=api.ImportHeader(batch_id=batch_id, source="bench"))
        for start in range(0, len(links), CHUNK):
            yield api.ImportLinksRequest(links=api.ImportChunk(links=links[start : start + CHUNK]))

    return await stub.ImportLinks(parts(), timeout=1800)


async def build(stub: referral_pb2_grpc.ReferralServiceStub, tree: Tree, run: str, progress: bool = True) -> float:
    began = time.perf_counter()
    for start in range(1, tree.n, BATCH):
        links = [
            api.ImportedLink(user_id=user(i), referrer_id=user(tree.parent[i]), linked_at=at(i * 30))  # type: ignore[arg-type]
            for i in range(start, min(tree.n, start + BATCH))
        ]
        report = await import_links(stub, links, f"{run}-tree-{start}")
        assert report.linked + report.under_review == len(links), report.refusals[:3]
        if progress:
            print(
                f"  built {min(tree.n, start + BATCH):,} of {tree.n:,} users ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    return time.perf_counter() - began


async def timed(make, times: int) -> LoadResult:  # type: ignore[no-untyped-def]
    """`times` calls one after another (concurrency 1), latency of each."""
    latencies = []
    began = time.perf_counter()
    for i in range(times):
        start = time.perf_counter()
        await make(i)
        latencies.append((time.perf_counter() - start) * 1000)
    return LoadResult(times, 0, time.perf_counter() - began, latencies)


@dataclass
class TreeFigures:
    database: str
    users: int
    build_seconds: float
    size_bytes: int
    big_node_descendants: int
    stats: LoadResult
    deepest: int
    path: LoadResult
    empty: LoadResult
    big_node_depth: int
    big_path: LoadResult


@dataclass
class ChainFigures:
    levels: int
    import_seconds: float
    size_bytes: int
    path: LoadResult
    stats: LoadResult
    register_bottom_ms: float


def settle(url: str) -> None:
    """After a bulk build, what autovacuum would do in the next minutes (and do on the machine's
    two cores while the queries are measured): vacuum and analyze now, so the queries meet the
    steady state they are about."""
    if url.startswith("postgresql"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")  # the build's dirty buffers, written now rather than meanwhile
        return
    # The WAL the import's large transactions left, copied back now (the service's checkpointer
    # would do it while the queries run); busy while that checkpointer is at it.
    deadline = time.monotonic() + 120
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("PRAGMA busy_timeout=10000")
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.5)


def database_size(url: str) -> int:
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        assert row is not None
        return int(row[0])


def start_service(work: Path, nats: EmbeddedNats, url: str, name: str) -> ServiceProcess:
    rules = work / f"rules-{name}"
    (rules / "referral").mkdir(parents=True)
    (rules / "referral" / "default.yaml").write_bytes((REPO / "rules" / "referral" / "default.yaml").read_bytes())
    process = ServiceProcess(
        "referral",
        {"DATABASE_URL": url, "NATS_URL": nats.url, "RULES_DIR": str(rules), "LOG_LEVEL": "WARNING"},
        work / f"referral-{name}.log",
    )
    process.start()
    return process


async def measure_tree(
    url: str, label: str, tree: Tree, work: Path, nats: EmbeddedNats, empty_call
) -> tuple[TreeFigures, ServiceProcess]:  # type: ignore[no-untyped-def]
    service = start_service(work, nats, url, label)
    try:
        await service.wait_serving(timeout=60)
        channel = grpc.aio.insecure_channel(service.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = referral_pb2_grpc.ReferralServiceStub(channel)
        run = uuid.uuid4().hex[:6]
        print(f"{label}: building a {tree.n:,}-user tree through ImportLinks", flush=True)
        seconds = await build(stub, tree, run)
        settle(url)
        big = tree.near(100_000)
        deepest = max(range(tree.n), key=lambda i: tree.depth[i])
        check = await stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=user(big)))
        assert check.size == tree.size[big], (check.size, tree.size[big])
        stats = await timed(lambda i: stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=user(big))), 300)
        deep_path = api.GetPathToRootRequest(user_id=user(deepest), max_levels=10_000)
        path_check = await stub.GetPathToRoot(deep_path)
        assert len(path_check.ancestors) == tree.depth[deepest]
        path = await timed(lambda i: stub.GetPathToRoot(deep_path), 300)
        big_path_request = api.GetPathToRootRequest(user_id=user(big), max_levels=10_000)
        big_path = await timed(lambda i: stub.GetPathToRoot(big_path_request), 300)
        empty = await timed(empty_call, 300)
        await channel.close()
    except BaseException:
        service.terminate()
        raise
    figures = TreeFigures(
        label,
        tree.n,
        seconds,
        database_size(url),
        tree.size[big],
        stats,
        tree.depth[deepest],
        path,
        empty,
        tree.depth[big],
        big_path,
    )
    return figures, service


async def measure_register(
    service: ServiceProcess, empty_call, args: argparse.Namespace, interleaved
) -> tuple[LoadResult, LoadResult]:  # type: ignore[no-untyped-def]
    channel = grpc.aio.insecure_channel(service.address)
    stub = referral_pb2_grpc.ReferralServiceStub(channel)
    referrers = [f"t-{i * 97}" for i in range(2_000)]  # partners of the tree
    codes = [(await stub.IssueCode(api.IssueCodeRequest(user_id=r))).code for r in referrers]
    run = uuid.uuid4().hex[:6]
    serial = itertools.count()
    requests_made = [0]

    def register(i: int) -> Awaitable[object]:
        n = next(serial)
        requests_made[0] += 1
        return stub.Register(api.RegisterRequest(user_id=f"r-{run}-{n}", code=codes[n % len(codes)]))

    gc.collect()
    result = await interleaved(
        register, empty_call, concurrency=args.concurrency, seconds=args.seconds, rounds=args.rounds
    )
    await channel.close()
    return result


async def measure_chain(service: ServiceProcess, url: str, levels: int) -> ChainFigures:
    channel = grpc.aio.insecure_channel(service.address)
    stub = referral_pb2_grpc.ReferralServiceStub(channel)
    run = uuid.uuid4().hex[:6]
    name = [f"chain-{run}-{i}" for i in range(levels + 1)]
    settle(url)
    before = database_size(url)
    links = [
        api.ImportedLink(user_id=name[i + 1], referrer_id=name[i], linked_at=at(i * 400))  # type: ignore[arg-type]
        for i in range(levels)
    ]
    began = time.perf_counter()
    report = await import_links(stub, links, f"{run}-chain")
    seconds = time.perf_counter() - began
    assert report.linked + report.under_review == levels, report.refusals[:3]
    settle(url)
    size = database_size(url) - before
    bottom, top = name[-1], name[0]
    path = await timed(lambda i: stub.GetPathToRoot(api.GetPathToRootRequest(user_id=bottom, max_levels=10_000)), 20)
    reply = await stub.GetPathToRoot(api.GetPathToRootRequest(user_id=bottom, max_levels=10_000))
    assert len(reply.ancestors) == levels and reply.ancestors[-1].user_id == top
    stats = await timed(lambda i: stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=top)), 50)
    top_stats = await stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=top))
    assert (top_stats.size, top_stats.depth) == (levels, levels)
    code = (await stub.IssueCode(api.IssueCodeRequest(user_id=bottom))).code
    began = time.perf_counter()
    await stub.Register(api.RegisterRequest(user_id=f"chain-{run}-below", code=code))
    register_ms = (time.perf_counter() - began) * 1000
    await channel.close()
    return ChainFigures(levels, seconds, size, path, stats, register_ms)


def fresh_postgres() -> tuple[str, str]:
    name = f"alliance_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def drop_postgres(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


async def measure(
    work: Path, args: argparse.Namespace, empty_call, interleaved
) -> list[tuple[str, str, str, str, str, bool | None]]:  # type: ignore[no-untyped-def]
    """Every referral row of the bench table."""
    nats = EmbeddedNats(work / "nats-referral")
    nats.start()
    tree = Tree.grow(args.tree_users)
    rows: list[tuple[str, str, str, str, str, bool | None]] = []
    figures: list[tuple[TreeFigures, ChainFigures]] = []
    try:
        sqlite_url = f"sqlite:///{work / 'referral.db'}"
        sq, service = await measure_tree(sqlite_url, "SQLite", tree, work, nats, empty_call)
        try:
            register, register_empty = await measure_register(service, empty_call, args, interleaved)
            figures.append((sq, await measure_chain(service, sqlite_url, args.chain)))
        finally:
            service.terminate()
        if not args.skip_postgres:
            name, pg_url = fresh_postgres()
            try:
                pg, service = await measure_tree(pg_url, "PostgreSQL", tree, work, nats, empty_call)
                try:
                    figures.append((pg, await measure_chain(service, pg_url, args.chain)))
                finally:
                    service.terminate()
            finally:
                drop_postgres(name)
    finally:
        nats.stop()
    c = args.concurrency
    ratio = register.throughput / register_empty.throughput
    rows.append(
        (
            f"Register over gRPC, SQLite, {tree.n:,}-user tree, concurrency {c}",
            f"{register.throughput:,.0f} calls/s, p99 {register.percentile(99):.1f} ms",
            f"empty gRPC call {register_empty.throughput:,.0f} calls/s",
            f"{ratio:.2f}",
            ">= 0.30",
            ratio >= 0.30,
        )
    )
    for t, chain in figures:
        rows.append(
            (
                f"build a {t.users:,}-user tree through ImportLinks ({BATCH:,} per batch), {t.database}",
                f"{t.build_seconds:,.0f} s ({t.users / t.build_seconds:,.0f} links/s), database {mb(t.size_bytes)}",
                f"{t.size_bytes / t.users:,.0f} bytes per user",
                "-",
                "none: reported",
                None,
            )
        )
        rows.append(
            (
                f"GetSubtreeStats, partner with {t.big_node_descendants:,} descendants, {t.database}",
                f"p50 {t.stats.p50:.2f} ms, p99 {t.stats.percentile(99):.2f} ms",
                f"empty call p50 {t.empty.p50:.2f} ms, p99 {t.empty.percentile(99):.2f} ms",
                f"{t.stats.percentile(99) / t.empty.percentile(99):.1f}x",
                "<= 50 ms",
                t.stats.percentile(99) <= 50,
            )
        )
        rows.append(
            (
                f"GetPathToRoot, that partner ({t.big_node_depth} levels up), {t.database}",
                f"p50 {t.big_path.p50:.2f} ms, p99 {t.big_path.percentile(99):.2f} ms",
                f"empty call p50 {t.empty.p50:.2f} ms, p99 {t.empty.percentile(99):.2f} ms",
                f"{t.big_path.percentile(99) / t.empty.percentile(99):.1f}x",
                "<= 5 ms",
                t.big_path.percentile(99) <= 5,
            )
        )
        rows.append(
            (
                f"GetPathToRoot, the deepest partner ({t.deepest} levels), {t.database}",
                f"p50 {t.path.p50:.2f} ms, p99 {t.path.percentile(99):.2f} ms",
                f"empty call p50 {t.empty.p50:.2f} ms, p99 {t.empty.percentile(99):.2f} ms",
                f"{t.path.percentile(99) / t.empty.percentile(99):.1f}x",
                "none: the worst case of this tree",
                None,
            )
        )
        rows.append(
            (
                f"chain of {chain.levels:,} levels, {t.database}: import; path to root from the bottom; "
                "subtree of the top; Register at the bottom",
                f"{chain.import_seconds:.1f} s, {mb(chain.size_bytes)}; path p50 {chain.path.p50:.0f} ms; "
                f"stats p50 {chain.stats.p50:.2f} ms; Register {chain.register_bottom_ms:.0f} ms",
                f"empty call p50 {t.empty.p50:.2f} ms",
                "-",
                "none: correct answers, cost reported",
                None,
            )
        )
    return rows
