"""The quote data kept in memory (QuoteCache) and the database paths under it, on real SQLite and
PostgreSQL: own writes show at once, another replica's writes within the TTL, stale entries are
reloaded in the background many per query, and a load that raced a write is not kept."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from sqlmodel import Session

from alliance.v1 import benefits_pb2_grpc
from services.foundation.db import Database, after_commit
from services.foundation.host import ServiceHost
from services.foundation.migrations import upgrade
from services.foundation.nats_server import EmbeddedNats
from services.points import benefits_store
from services.points.models import SCHEMA as POINTS_SCHEMA
from services.points.models import CustomerAum
from services.points.quote_cache import RELOAD_BATCH, QuoteCache
from services.points.service import SERVICE as POINTS
from tests.support import CINEMA, claim_request, eventually, points_settings, quote_request, set_aum, write_campaign

T = TypeVar("T")


# -- two replicas on one database -----------------------------------------------------------------


@pytest.fixture
async def replicas(
    database_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> AsyncIterator[tuple[benefits_pb2_grpc.BenefitsStub, benefits_pb2_grpc.BenefitsStub]]:
    rules = tmp_path / "rules"
    write_campaign(rules, "test-cinema", CINEMA)
    hosts, channels = [], []
    try:
        for _ in range(2):
            host = ServiceHost(POINTS, points_settings(database_url, nats_server.url, rules, quote_cache_seconds=0.3))
            port = await host.start()
            hosts.append(host)
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        yield benefits_pb2_grpc.BenefitsStub(channels[0]), benefits_pb2_grpc.BenefitsStub(channels[1])
    finally:
        for channel in channels:
            await channel.close()
        for host in hosts:
            await host.stop()


async def test_another_replicas_claim_shows_in_quotes_within_the_ttl(replicas, user: str) -> None:  # type: ignore[no-untyped-def]
    here, there = replicas
    await set_aum(here, user, "60000")  # silver: one free ticket a year
    assert (await here.QuoteDiscount(quote_request(user))).free_items_left == 1  # now in this replica's memory

    await there.ClaimBenefit(claim_request(user, free=True))

    async def gone() -> bool:
        return (await here.QuoteDiscount(quote_request(user))).free_items_left == 0

    await eventually(gone, timeout=5)
    # The claim itself never trusts memory: the other replica refuses a second ticket at once.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await here.ClaimBenefit(claim_request(user, free=True))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_another_replicas_aum_report_changes_the_tier_within_the_ttl(replicas, user: str) -> None:  # type: ignore[no-untyped-def]
    here, there = replicas
    await set_aum(here, user, "60000")
    assert (await here.QuoteDiscount(quote_request(user))).tier == "silver"
    await set_aum(there, user, "150000")

    async def gold() -> bool:
        return (await here.QuoteDiscount(quote_request(user))).tier == "gold"

    await eventually(gold, timeout=5)


# -- the view on its own, with a clock the test turns ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedDatabase(Database):
    """A real database whose reads, once they have read, wait for the test to let them finish."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate: asyncio.Event | None = None
        self.pass_reads = 0  # reads that go through a closed gate before it holds one
        self.read_done = asyncio.Event()

    async def read(self, unit: Callable[[Session], T]) -> T:
        result = await super().read(unit)
        if self.gate is not None:
            if self.pass_reads > 0:
                self.pass_reads -= 1
                return result
            self.read_done.set()
            await self.gate.wait()
        return result


@pytest.fixture
def db(database_url: str) -> Iterator[GatedDatabase]:
    database = GatedDatabase(database_url)
    upgrade(database, POINTS_SCHEMA)
    yield database
    database.close()


def store_aum(db: Database, customer: str, aum: str) -> None:
    db.run_sync(lambda s: benefits_store.set_aum(s, customer, Decimal(aum), datetime.now(UTC)))


async def test_a_load_that_raced_a_write_is_used_once_but_not_kept(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=100, clock=Clock())
    store_aum(db, "c-race", "1000")
    db.gate = asyncio.Event()
    loading = asyncio.create_task(view.state("c-race"))
    await db.read_done.wait()  # the load has read 1000 and not yet returned

    await db.run(lambda s: benefits_store.set_aum(s, "c-race", Decimal("90000"), datetime.now(UTC)))
    view.forget_customer("c-race")  # what the servicer does once the write has committed
    db.gate.set()

    assert (await loading).aum == Decimal("1000.00")  # the quote that was waiting gets what was read
    db.gate = None
    assert (await view.state("c-race")).aum == Decimal("90000.00")  # but it was not kept


async def test_a_quote_that_goes_away_does_not_fail_others_waiting_for_the_same_load(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    store_aum(db, "c-shared", "150000")
    db.gate = asyncio.Event()
    first = asyncio.create_task(view.state("c-shared"))
    await db.read_done.wait()
    second = asyncio.create_task(view.state("c-shared"))
    await asyncio.sleep(0)
    first.cancel()  # its client hung up
    db.gate.set()
    assert (await second).aum == Decimal("150000.00")
    with pytest.raises(asyncio.CancelledError):
        await first
    db.gate = None
    assert view.state_now("c-shared") is not None  # and the load was kept


async def test_other_replicas_writes_come_through_the_change_feed(db: GatedDatabase) -> None:
    wall = [datetime.now(UTC) + timedelta(days=1)]  # this replica's clock, turned by the test
    view = QuoteCache(db, ttl_seconds=5, max_customers=1000, clock=Clock(), wall_clock=lambda: wall[0])
    customers = [f"c-{i}" for i in range(RELOAD_BATCH + 50)]
    for customer in customers:
        store_aum(db, customer, "1000")
    for customer in customers:
        await view.state(customer)
    assert await view.catch_up() == 0  # nothing written since (a day ago by this clock)
    loads = view.loads

    changed = customers[:120]
    await db.run(lambda s: another_replica_reports(s, changed, wall[0]))
    assert all([(await view.state(c)).aum == Decimal("1000.00") for c in changed])  # memory, for now

    wall[0] += timedelta(seconds=5)
    assert await view.catch_up() == len(changed)  # only those, however many are held
    assert view.loads == loads + 3  # the feed with the budgets, and two reads for 120 customers
    assert all([(await view.state(c)).aum == Decimal("500000.00") for c in changed])
    assert (await view.state(customers[-1])).aum == Decimal("1000.00")


def another_replica_reports(session: Session, customers: list[str], at: datetime) -> None:
    for customer in customers:
        row = session.get(CustomerAum, customer)
        assert row is not None
        row.aum_cents, row.updated_at = 50_000_000, at
        session.add(row)


async def test_an_entry_past_the_safety_age_is_reloaded_before_the_quote(db: GatedDatabase) -> None:
    clock = Clock()
    view = QuoteCache(db, ttl_seconds=5, max_customers=10, clock=clock)
    store_aum(db, "c-old", "1000")
    await view.state("c-old")
    store_aum(db, "c-old", "2000")
    clock.now += view.safety_age  # the change feed fell behind (or is not running)
    assert (await view.state("c-old")).aum == Decimal("2000.00")


# -- every customer on file held -------------------------------------------------------------------


async def test_when_every_customer_fits_a_first_quote_reads_nothing(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    store_aum(db, "c-gold", "150000")
    assert await view.sync() and view.whole
    await view.state("c-gold")  # the budgets
    loads = view.loads
    assert (await view.state("c-gold")).aum == Decimal("150000.00")
    nobody = await view.state("c-nobody")  # nothing on file: the lowest tier, without a read
    assert nobody.aum is None and nobody.as_of is None and not nobody.usage.free_items_used
    assert view.state_now("c-nobody-either") is not None
    assert view.loads == loads


async def test_a_write_here_while_all_are_held_is_read_before_the_next_quote(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    assert await view.sync()
    assert (await view.state("c-new")).aum is None
    await db.run(lambda s: benefits_store.set_aum(s, "c-new", Decimal("90000"), datetime.now(UTC)))
    view.forget_customer("c-new")  # what the servicer does once the write has committed
    assert view.state_now("c-new") is None  # it has something on file now: read it first
    assert (await view.state("c-new")).aum == Decimal("90000.00")
    assert view.whole


async def test_a_write_here_during_the_sync_is_not_lost(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    store_aum(db, "c-listed", "1000")
    db.gate, db.pass_reads = asyncio.Event(), 1  # the list goes through
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()  # the sync has read c-listed at 1000 and not yet kept it
    for customer, aum in (("c-listed", "2000"), ("c-during", "90000")):
        await db.run(lambda s, c=customer, a=aum: benefits_store.set_aum(s, c, Decimal(a), datetime.now(UTC)))  # type: ignore[misc]
        view.forget_customer(customer)
    db.gate.set()
    assert await syncing and view.whole
    db.gate = None
    assert (await view.state("c-listed")).aum == Decimal("2000.00")  # not what the sync read before the write
    assert (await view.state("c-during")).aum == Decimal("90000.00")  # not on the list the sync read


async def test_a_write_here_while_a_later_batch_is_read_is_not_lost(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=1000, clock=Clock())
    customers = [f"c-{i:03}" for i in range(RELOAD_BATCH + 1)]  # two batches
    for customer in customers:
        store_aum(db, customer, "1000")
    db.gate, db.pass_reads = asyncio.Event(), 2  # the list and the first batch go through
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()  # both batches are read, the second waits to come back

    def report_all(session: Session) -> None:
        for customer in customers:
            benefits_store.set_aum(session, customer, Decimal("90000"), datetime.now(UTC))

    await db.run(report_all)
    for customer in customers:
        view.forget_customer(customer)
    db.gate.set()
    assert await syncing
    db.gate = None
    assert {(await view.state(c)).aum for c in customers} == {Decimal("90000.00")}


async def test_nobody_is_dropped_for_room_while_a_sync_runs(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=2, clock=Clock())
    db.gate = asyncio.Event()
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()  # nobody on file yet
    store_aum(db, "c-here", "150000")
    view.forget_customer("c-here")  # written here: held as stale
    store_aum(db, "c-x", "1000")  # and two by another replica, which the feed brings in
    store_aum(db, "c-y", "1000")
    db.pass_reads = 2
    assert await view.catch_up() == 3
    db.gate.set()
    assert not await syncing  # three to hold in room for two: not all held
    db.gate = None
    assert (await view.state("c-here")).aum == Decimal("150000.00")


async def test_a_failed_sync_leaves_no_more_held_than_the_room(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=3, clock=Clock())
    db.gate, db.pass_reads = asyncio.Event(), 0
    store_aum(db, "c-0", "1000")
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()
    db.gate = None  # quotes' reads go through; the sync's list read still waits
    for i in range(10):
        await view.state(f"c-first-{i}")
    syncing.cancel()  # as a failed read would end it
    with pytest.raises(asyncio.CancelledError):
        await syncing
    assert len(view._customers) <= 3 and not view.whole


async def test_too_many_to_hold_after_a_sync_ends_holding_them_all(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=2, clock=Clock())
    store_aum(db, "c-0", "1000")
    store_aum(db, "c-1", "1000")
    db.gate = asyncio.Event()
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()  # two on file: they fit
    store_aum(db, "c-2", "150000")
    view.forget_customer("c-2")  # a third, written here while the sync reads
    db.gate.set()
    assert not await syncing and not view.whole
    db.gate = None
    assert len(view._customers) <= 2
    aums = [(await view.state(c)).aum for c in ("c-0", "c-1", "c-2")]
    assert aums == [Decimal("1000.00"), Decimal("1000.00"), Decimal("150000.00")]


async def test_customers_with_nothing_on_file_do_not_keep_the_others_from_being_held(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=3, clock=Clock())
    store_aum(db, "c-0", "1000")
    store_aum(db, "c-1", "1000")
    for customer in ("c-nobody-1", "c-nobody-2"):  # first quotes before the sync: read, and nothing found
        assert (await view.state(customer)).aum is None
    assert await view.sync() and view.whole
    assert (await view.state("c-0")).aum == Decimal("1000.00")


async def test_a_sync_keeps_what_the_feed_read_after_it(db: GatedDatabase) -> None:
    clock = Clock()
    view = QuoteCache(db, ttl_seconds=5, max_customers=10, clock=clock)
    store_aum(db, "c-moving", "1000")
    await view.catch_up()
    db.gate, db.pass_reads = asyncio.Event(), 1
    syncing = asyncio.create_task(view.sync())
    await db.read_done.wait()  # the sync has read 1000
    clock.now += 1
    await db.run(lambda s: benefits_store.set_aum(s, "c-moving", Decimal("600000"), datetime.now(UTC)))
    db.pass_reads = 2  # another replica's write: the feed reads it (two reads) while the sync waits
    assert await view.catch_up() == 1
    db.gate.set()
    assert await syncing
    db.gate = None
    assert view.state_now("c-moving") is not None
    assert (await view.state("c-moving")).aum == Decimal("600000.00")


async def test_while_the_feed_is_silent_first_quotes_read_again(db: GatedDatabase) -> None:
    clock = Clock()
    view = QuoteCache(db, ttl_seconds=5, max_customers=10, clock=clock)
    assert await view.sync()
    store_aum(db, "c-elsewhere", "600000")  # another replica; this one's feed has stopped
    clock.now += 2 * view.ttl
    assert (await view.state("c-elsewhere")).aum == Decimal("600000.00")


async def test_run_holds_every_customer_and_follows_the_feed(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=0.05, max_customers=10)
    store_aum(db, "c-0", "1000")
    stop = asyncio.Event()
    running = asyncio.create_task(view.run(stop))

    async def whole() -> bool:
        return view.whole

    async def aum_of_new() -> Decimal | None:
        state = view.state_now("c-new")
        return state.aum if state is not None else None

    try:
        await eventually(whole)
        store_aum(db, "c-new", "600000")  # as another replica would
        assert await eventually(aum_of_new) == Decimal("600000.00")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def test_another_replicas_new_customer_comes_through_the_feed(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=5, max_customers=10, clock=Clock())
    assert await view.sync()
    await view.catch_up()
    await db.run(lambda s: benefits_store.set_aum(s, "c-elsewhere", Decimal("600000"), datetime.now(UTC)))
    assert (await view.state("c-elsewhere")).aum is None  # not known here until the feed says so
    assert await view.catch_up() == 1
    loads = view.loads
    assert (await view.state("c-elsewhere")).aum == Decimal("600000.00")
    assert view.loads == loads


async def test_more_customers_on_file_than_fit_are_read_when_first_quoted(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=2, clock=Clock())
    for i in range(3):
        store_aum(db, f"c-{i}", "1000")
    assert not await view.sync() and not view.whole
    assert (await view.state("c-2")).aum == Decimal("1000.00")


async def test_one_customer_too_many_ends_holding_them_all(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=2, clock=Clock())
    store_aum(db, "c-0", "1000")
    store_aum(db, "c-1", "1000")
    assert await view.sync()
    store_aum(db, "c-2", "150000")
    view.forget_customer("c-2")  # a third customer to hold: the first one makes room
    assert not view.whole
    assert (await view.state("c-0")).aum == Decimal("1000.00")  # read again, not taken for nobody


async def test_memory_holds_at_most_max_customers(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    for i in range(25):
        await view.state(f"c-{i}")
    assert len(view._customers) == 10 and "c-24" in view._customers and "c-0" not in view._customers


async def test_concurrent_quotes_for_one_customer_share_one_load(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    store_aum(db, "c-busy", "1000")
    states = await asyncio.gather(*(view.state("c-busy") for _ in range(20)))
    assert {s.aum for s in states} == {Decimal("1000.00")}
    assert view.loads == 2  # the customer once, the budgets once


# -- Database: after-commit callbacks and SQLite reads beside the writer ---------------------------


async def test_after_commit_runs_on_the_loop_only_when_the_unit_commits(db: GatedDatabase) -> None:
    ran: list[tuple[str, int]] = []

    def unit(session: Session, fail: bool) -> None:
        after_commit(session, lambda: ran.append(("committed", threading.get_ident())))
        if fail:
            raise ValueError("refused")

    with pytest.raises(ValueError):
        await db.run(lambda s: unit(s, True))
    assert ran == []
    await db.run(lambda s: unit(s, False))
    assert ran == [("committed", threading.get_ident())]


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'rw.db'}")
    upgrade(database, POINTS_SCHEMA)
    store_aum(database, "c-1", "1000")
    writer = sqlite3.connect(tmp_path / "rw.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writer.execute("UPDATE customer_aum SET aum_cents = 1 WHERE customer_id = 'c-1'")

        async def read() -> object:
            return await asyncio.wait_for(
                database.read(lambda s: benefits_store.customer_state(s, "c-1").aum), timeout=2
            )

        assert asyncio.run(read()) == Decimal("1000.00")  # the last committed value, at once
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        database.close()


def test_reads_cannot_write(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'ro.db'}")
    upgrade(database, POINTS_SCHEMA)
    try:
        with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
            asyncio.run(database.read(lambda s: store_aum_in(s)))
    finally:
        database.close()


def store_aum_in(session: Session) -> None:
    benefits_store.set_aum(session, "c-ro", Decimal(1), datetime.now(UTC))
    session.flush()


async def test_customers_first_seen_together_are_read_together(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=1000, clock=Clock())
    customers = [f"c-new-{i}" for i in range(200)]
    for customer in customers[:100]:
        store_aum(db, customer, "150000")
    states = await asyncio.gather(*(view.state(c) for c in customers))
    assert [s.aum for s in states] == [Decimal("150000.00")] * 100 + [None] * 100
    assert view.loads <= 4  # a few batched reads and the budgets, not 200 round trips


async def test_a_quote_after_a_write_does_not_take_a_load_that_read_before_it(db: GatedDatabase) -> None:
    view = QuoteCache(db, ttl_seconds=60, max_customers=10, clock=Clock())
    store_aum(db, "c-after", "1000")
    gate = db.gate = asyncio.Event()  # stays set once set: later reads pass straight through
    before = asyncio.create_task(view.state("c-after"))
    await db.read_done.wait()  # this load has read 1000 and waits at the gate
    await db.run(lambda s: benefits_store.set_aum(s, "c-after", Decimal("90000"), datetime.now(UTC)))
    view.forget_customer("c-after")
    after = asyncio.create_task(view.state("c-after"))  # asks after the write has committed
    await asyncio.sleep(0)
    gate.set()
    assert (await before).aum == Decimal("1000.00")  # the quote that asked before the write
    assert (await after).aum == Decimal("90000.00")  # a load of its own, not the one that read before


async def test_after_commit_runs_even_when_the_caller_was_cancelled(db: GatedDatabase) -> None:
    ran: list[str] = []
    started = threading.Event()

    def slow_unit(session: Session) -> None:
        started.set()
        time.sleep(0.3)  # the client hangs up meanwhile
        benefits_store.set_aum(session, "c-gone", Decimal(5), datetime.now(UTC))
        after_commit(session, lambda: ran.append("forgotten"))

    call = asyncio.create_task(db.run(slow_unit))
    await asyncio.to_thread(started.wait, 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: _ran(ran), timeout=5)


async def _ran(ran: list[str]) -> bool:
    return ran == ["forgotten"]
