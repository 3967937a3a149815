"""The quote cache: what quotes read, kept in memory (a customer's AUM and free items used, and the
offers' budgets). Its invariants follow; tests/integration/test_quote_cache.py checks each.

QuoteDiscount is the hot read of the alliance (every payment at a partner merchant asks it) and
writes nothing, so it must not queue behind ledger writes for rows that rarely change. This cache
answers from memory:

- when every customer on file fits in `max_customers`, all of them are held (`sync`, at start and
  every SAFETY_AGE): a customer not held then has nothing on file, and no quote waits for a read.
  Many quotes are a customer's first at this replica, so this is what makes them cheap. Absence
  is trusted only while the change feed has looked within twice `ttl_seconds`;
- otherwise a customer seen for the first time is loaded before the quote (customers first seen
  together are read together);
- after a write by this process (a claim, an AUM report by RPC or event) the entry is dropped, or
  marked stale while all customers are held, once the write has committed, so this process's
  quotes see its own writes at once;
- writes by other replicas come through a change feed: every `ttl_seconds`, `run` asks the
  database which customers got a claim or an AUM report since the last look, reloads those it
  holds (all of them while all customers are held), and reloads the offer budgets. That bounds how
  long a quote here may miss another replica's write to about `ttl_seconds`, at a cost that does
  not grow with the customers held. The look overlaps the previous one by FEED_OVERLAP, for
  transactions that committed late and for clocks that differ between replicas; as a last resort
  an entry older than SAFETY_AGE is reloaded before its quote (while all customers are held, the
  periodic `sync` is that resort). Serving memory is safe because a quote only advises:
  ClaimBenefit decides on the rows it locks, never on this cache.

A load that raced a write (it may have read the rows before the write committed) is used by the
quotes that were waiting for it but is not kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from services.foundation.batching import MicroBatcher
from services.foundation.db import Database, utcnow
from services.foundation.money import from_cents
from services.foundation.stopping import sleep_or_stop
from services.points.benefits.quote import Usage
from services.points.benefits_store import CustomerState
from services.points.models import BenefitClaim, CustomerAum, FreeItemUsage, OfferBudget

log = logging.getLogger("alliance.points.quote_cache")

Budgets = dict[tuple[str, str], Decimal]
CustomerRow = tuple[Decimal | None, datetime | None, dict[tuple[str, str, str], int]]
_NEVER: CustomerRow = (None, None, {})
# The load time of an entry a write at this replica made stale: it is read again before its next quote.
_STALE = float("-inf")
# Customers per read (an IN list). 500 took 4 ms holding the GIL, a visible bump in quote latency;
# 100 take 1.4 ms, and the event loop runs between batches.
RELOAD_BATCH = 100
# How far each look at the change feed reaches back before the previous one: longer than any
# benefits transaction, and than the clock difference between replicas we tolerate.
FEED_OVERLAP = timedelta(seconds=30)


class QuoteCache:
    def __init__(
        self,
        db: Database,
        *,
        ttl_seconds: float,
        max_customers: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.ttl = ttl_seconds
        self.max_customers = max_customers
        self.clock = clock
        self.wall_clock = wall_clock
        self.safety_age = max(20 * ttl_seconds, 60.0)
        self._feed_since: datetime | None = None
        self._customers: dict[str, tuple[float, CustomerRow]] = {}
        self._budgets: tuple[float, Budgets] | None = None
        self._loading: dict[str, asyncio.Future[CustomerRow]] = {}  # loads under way, by customer
        self._budgets_loading: asyncio.Future[Budgets] | None = None
        # Writes that committed while loads were in flight: key -> write serial. A load that began
        # before a write to its key does not keep what it read. Emptied whenever no load is in flight.
        self._serial = 0
        self._written: dict[str, int] = {}
        self._in_flight = 0
        self.loads = 0  # database round trips, for tests
        # True while every customer on file is held: a customer not held has nothing on file, as
        # long as the change feed (or a sync) has looked recently (`_looked_at`, by `clock`).
        self.whole = False
        self._syncing = False
        self._looked_at = float("-inf")
        # Customers first seen at the same moment (opening time, a replica just started) are read
        # together: one query for all of them rather than one each, queueing for the GIL.
        self._reads: MicroBatcher[str, CustomerRow] = MicroBatcher(
            self._read_batch, name="quote-customers", max_batch=RELOAD_BATCH
        )

    # -- reading -------------------------------------------------------------------------------

    def state_now(self, customer_id: str) -> CustomerState | None:
        """The state from memory without waiting, or None when it must be loaded (then `state`)."""
        now = self.clock()
        budgets = self._budgets
        if budgets is None or now - budgets[0] >= 2 * self.ttl:
            return None
        row = self._held(customer_id, now)
        if row is None:
            return None
        aum, as_of, used = row
        return CustomerState(aum, as_of, Usage(used, budgets[1]))

    async def state(self, customer_id: str) -> CustomerState:
        now = self.clock()
        row = self._held(customer_id, now)
        if row is None:
            row = await self._load_customer(customer_id)
        budgets = self._budgets
        if budgets is None or now - budgets[0] >= 2 * self.ttl:
            spent = await self._load_budgets()
        else:
            spent = budgets[1]
        aum, as_of, used = row
        return CustomerState(aum, as_of, Usage(used, spent))

    def _held(self, customer_id: str, now: float) -> CustomerRow | None:
        """What memory says of the customer, or None when it must be read first."""
        cached = self._customers.get(customer_id)
        if cached is None:
            # A feed that stopped may be hiding new customers: then read them rather than guess.
            return _NEVER if self.whole and now - self._looked_at < 2 * self.ttl else None
        loaded_at, row = cached
        if loaded_at == _STALE or (not self.whole and now - loaded_at >= self.safety_age):
            return None
        return row

    # -- after writes (call on the event loop, once the write has committed) -------------------

    def forget_customer(self, customer_id: str) -> None:
        if self.whole or self._syncing:
            # Not dropped: while all customers are held, absence says "nothing on file", and this
            # customer now has something. Kept as stale, it is read before its next quote.
            cached = self._customers.get(customer_id)
            self._hold(customer_id, _STALE, cached[1] if cached is not None else _NEVER)
        else:
            self._customers.pop(customer_id, None)
        # A load under way may have read before the write: quotes from now on start a new one.
        self._loading.pop(customer_id, None)
        self._note_write(customer_id)

    def forget_budgets(self) -> None:
        self._budgets = None
        self._budgets_loading = None
        self._note_write(_BUDGETS)

    # -- the change feed -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Follow other replicas' writes, and hold every customer on file if they fit, until `stop`
        is set. Two loops: a sync of many customers must not hold up the feed."""
        await asyncio.gather(self._follow_feed(stop), self._hold_all_on_file(stop))

    async def _follow_feed(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.catch_up()
            except Exception:
                log.exception("following benefits changes failed; quotes keep the data they have")
            await sleep_or_stop(stop, max(self.ttl, 0.05))

    async def _hold_all_on_file(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sync()
                wait = self.safety_age
            except Exception:
                log.exception("reading every customer on file failed; first quotes read their customer meanwhile")
                wait = max(self.ttl, 0.05)
            await sleep_or_stop(stop, wait)

    async def sync(self) -> bool:
        """Read every customer on file into memory if they fit in `max_customers`; returns whether
        they did (then `whole` is set). Also the last-resort refresh while they are all held."""
        started, serial = self.clock(), self._begin_load()
        self._syncing = True
        try:
            self.loads += 1
            on_file = await self.db.read(lambda s: _customers_on_file(s, self.max_customers + 1))
            if len(on_file) > self.max_customers:
                self._stop_holding_all()
                self._trim()
                return False
            read: dict[str, tuple[float, CustomerRow]] = {}
            for first in range(0, len(on_file), RELOAD_BATCH):
                batch = on_file[first : first + RELOAD_BATCH]
                batch_started = self.clock()
                self.loads += 1
                rows = await self.db.read(lambda s, ids=batch: _read_customers(s, ids))  # type: ignore[misc]
                read.update((customer_id, (batch_started, rows[customer_id])) for customer_id in batch)
            # Checked only now, with no more waiting before the read is held: a write here while a
            # later batch was read makes an earlier one's customer stale too.
            read = {c: entry for c, entry in read.items() if self._still_valid(c, serial)}
            return self._hold_all(set(on_file), read, started)
        finally:
            self._syncing = False
            self._end_load()
            if len(self._customers) > self.max_customers:  # a sync that failed let memory run over
                self._stop_holding_all()
                self._trim()

    def _hold_all(self, on_file: set[str], read: dict[str, tuple[float, CustomerRow]], listed_at: float) -> bool:
        """Hold what the sync read, and of what was held: entries newer than the sync's (loaded by
        quotes or the feed meanwhile), stale ones, and customers new on file since the list. Not
        the customers with nothing on file, whom absence describes once all are held."""
        kept: dict[str, tuple[float, CustomerRow]] = {}
        for customer_id, entry in self._customers.items():
            fresh = read.get(customer_id)
            if fresh is not None and entry[0] <= fresh[0]:
                continue
            if fresh is None and customer_id not in on_file and entry[0] != _STALE and entry[1] == _NEVER:
                continue
            kept[customer_id] = entry
        for customer_id, fresh in read.items():
            kept.setdefault(customer_id, fresh)
        self._customers = kept
        if len(kept) > self.max_customers:
            self._stop_holding_all()
            self._trim()
            return False
        self.whole = True
        self._looked_at = max(self._looked_at, listed_at)
        return True

    async def catch_up(self) -> int:
        """Reload the offer budgets and the held customers written since the last look (all of them
        while all customers are held); returns how many customers were reloaded."""
        looked_at = self.wall_clock()
        since = self._feed_since or looked_at - FEED_OVERLAP
        started, serial = self.clock(), self._begin_load()
        feed_started = started
        try:
            self.loads += 1
            changed, budgets = await self.db.read(lambda s: (_changed_customers(s, since), _read_budgets(s)))
            if self._still_valid(_BUDGETS, serial):
                self._budgets = (started, budgets)
        finally:
            self._end_load()
        # While all customers are held (or are being read), one new on file must be held too.
        hold_all = self.whole or self._syncing
        held = [c for c in changed if hold_all or c in self._customers]
        for first in range(0, len(held), RELOAD_BATCH):
            batch = held[first : first + RELOAD_BATCH]
            started, serial = self.clock(), self._begin_load()
            try:
                self.loads += 1
                rows = await self.db.read(lambda s, ids=batch: _read_customers(s, ids))  # type: ignore[misc]
                for customer_id in batch:
                    if self._still_valid(customer_id, serial) and (hold_all or customer_id in self._customers):
                        self._hold(customer_id, started, rows.get(customer_id, _NEVER))
            finally:
                self._end_load()
        self._feed_since = looked_at - FEED_OVERLAP
        self._looked_at = max(self._looked_at, feed_started)
        return len(held)

    # -- loading -------------------------------------------------------------------------------

    # A load runs as a task of its own that every quote asking meanwhile awaits (shielded): a
    # caller that goes away (a cancelled RPC) neither cancels it nor fails the others.

    async def _load_customer(self, customer_id: str) -> CustomerRow:
        task = self._loading.get(customer_id)
        if task is None:
            task = asyncio.ensure_future(self._fetch_customer(customer_id))
            self._loading[customer_id] = task
            task.add_done_callback(lambda done: _finished(self._loading, customer_id, done))
        return await asyncio.shield(task)

    async def _fetch_customer(self, customer_id: str) -> CustomerRow:
        started, serial = self.clock(), self._begin_load()
        try:
            row = await self._reads.submit(customer_id)
            if self._still_valid(customer_id, serial):
                self._hold(customer_id, started, row)
            return row
        finally:
            self._end_load()

    async def _load_budgets(self) -> Budgets:
        task = self._budgets_loading
        if task is None:
            task = self._budgets_loading = asyncio.ensure_future(self._fetch_budgets())
            task.add_done_callback(self._budgets_fetched)
        return await asyncio.shield(task)

    async def _fetch_budgets(self) -> Budgets:
        started, serial = self.clock(), self._begin_load()
        try:
            self.loads += 1
            budgets = await self.db.read(_read_budgets)
            if self._still_valid(_BUDGETS, serial):
                self._budgets = (started, budgets)
            return budgets
        finally:
            self._end_load()

    def _budgets_fetched(self, done: asyncio.Future[Budgets]) -> None:
        if self._budgets_loading is done:
            self._budgets_loading = None
        _retrieve(done)

    async def _read_batch(self, customer_ids: Sequence[str]) -> list[CustomerRow]:
        self.loads += 1
        rows = await self.db.read(lambda s: _read_customers(s, set(customer_ids)))
        return [rows[customer_id] for customer_id in customer_ids]

    def _hold(self, customer_id: str, loaded_at: float, row: CustomerRow) -> None:
        # During a sync nobody goes (it may be a mark that a write made stale); the sync trims.
        if customer_id not in self._customers and len(self._customers) >= self.max_customers and not self._syncing:
            # Someone must go, so absence no longer says "nothing on file".
            self._stop_holding_all()
            del self._customers[next(iter(self._customers))]
        self._customers[customer_id] = (loaded_at, row)

    def _trim(self) -> None:
        """Down to `max_customers`, the longest held first (a sync lets memory run over meanwhile)."""
        while len(self._customers) > self.max_customers:
            del self._customers[next(iter(self._customers))]

    def _stop_holding_all(self) -> None:
        if self.whole:
            log.info("more customers on file than QUOTE_CACHE_CUSTOMERS: first quotes read their customer")
        self.whole = False

    def _begin_load(self) -> int:
        self._in_flight += 1
        return self._serial

    def _end_load(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._written.clear()

    def _note_write(self, key: str) -> None:
        if self._in_flight:
            self._serial += 1
            self._written[key] = self._serial

    def _still_valid(self, key: str, serial: int) -> bool:
        return self._written.get(key, 0) <= serial


def _finished(loading: dict[str, asyncio.Future[CustomerRow]], key: str, done: asyncio.Future[CustomerRow]) -> None:
    if loading.get(key) is done:
        del loading[key]
    _retrieve(done)


def _retrieve(done: asyncio.Future[Any]) -> None:
    # Mark a failure as seen: every quote that waited got it already; if all of them went away,
    # the next quote loads again. Either way asyncio need not report it.
    if not done.cancelled():
        done.exception()


_BUDGETS = "\x00budgets"  # the key of the budgets in `_written`; no customer id is empty


# Built once: constructing and coercing a statement cost about as much as running it. With the
# session's connection (Core, not the ORM's execute path) a read of one customer took 0.5 ms
# instead of 1.1 ms, measured on SQLite; it matters when many customers are first seen at once.
_AUM_OF = select(CustomerAum.customer_id, CustomerAum.aum_cents, CustomerAum.as_of).where(
    col(CustomerAum.customer_id).in_(bindparam("ids", expanding=True))
)
_FREE_ITEMS_OF = sa_select(  # sqlmodel's select is typed for at most 4 columns
    col(FreeItemUsage.customer_id),
    col(FreeItemUsage.campaign_id),
    col(FreeItemUsage.offer_id),
    col(FreeItemUsage.year),
    col(FreeItemUsage.used),
).where(col(FreeItemUsage.customer_id).in_(bindparam("ids", expanding=True)))
_BUDGETS_SPENT = select(OfferBudget.campaign_id, OfferBudget.offer_id, OfferBudget.spent_cents)


def _read_customers(session: Session, customer_ids: Iterable[str]) -> dict[str, CustomerRow]:
    ids = list(customer_ids)
    rows: dict[str, CustomerRow] = {c: (None, None, {}) for c in ids}
    connection = session.connection()
    for customer_id, aum_cents, as_of in connection.execute(_AUM_OF, {"ids": ids}):
        rows[customer_id] = (from_cents(aum_cents) if aum_cents is not None else None, as_of, rows[customer_id][2])
    for customer_id, campaign_id, offer_id, year, used in connection.execute(_FREE_ITEMS_OF, {"ids": ids}):
        rows[customer_id][2][(campaign_id, offer_id, year)] = used
    return rows


def _customers_on_file(session: Session, limit: int) -> list[str]:
    """Customers with an AUM report or free items used, at most `limit` of them."""
    reported = select(CustomerAum.customer_id)
    used = select(FreeItemUsage.customer_id)
    return list(session.connection().execute(reported.union(used).limit(limit)).scalars())


def _changed_customers(session: Session, since: datetime) -> list[str]:
    """Customers with an AUM report or a claim committed at or after `since` (by the writer's clock)."""
    reported = session.exec(select(CustomerAum.customer_id).where(CustomerAum.updated_at >= since))
    claimed = session.exec(select(BenefitClaim.customer_id).where(BenefitClaim.created_at >= since).distinct())
    return sorted({*reported, *claimed})


def _read_budgets(session: Session) -> Budgets:
    return {(c, o): from_cents(spent) for c, o, spent in session.connection().execute(_BUDGETS_SPENT)}
