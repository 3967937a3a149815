"""The cutoff: at the rule file's time (17:00 Asia/Shanghai by default, per product if it says so)
every order still unowned is assigned to a qualified manager on duty, keeping the total distance
least within each manager's remaining capacity (`assignment.assign`, a min-cost flow).

Once per cutoff across replicas: each cutoff group (the default time, and each product with a time
of its own) is a kit `ScheduledJob`, and a run is its occurrence, keyed by the cutoff instant. A
replica claims the occurrence's row before running; the others see it held or done. A holder that
dies is taken over once its lease lapses, and the new attempt simply resumes: it re-reads what is
still unowned. Every assignment is the same conditional update a grab is (`orders.take`), so an
order grabbed while the cutoff runs keeps its grabber and is counted as skipped.

Why a polling tick and not `kit.daily`: the times come from a rule file that can change without a
restart, and a product can get a cutoff of its own; each replica checks every few seconds which
groups' instants have passed (within the catch-up window) and claims them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from alliance.v1 import dispatch_events_pb2 as ev
from services.dispatch import assignment, directory, orders
from services.dispatch.events import CUTOFF_COMPLETED
from services.dispatch.models import Branch, CutoffReport, DispatchOrder, Manager, OrderState
from services.dispatch.policy import CutoffGroup, Policy, PolicyBook
from services.foundation.cpu import CpuPool
from services.foundation.db import Database, utcnow
from services.foundation.ids import new_id, replica_id, ts_fields
from services.foundation.outbox import add_event, add_event_rows
from services.foundation.scheduled import SETTLED, JobContext, Outcome, ScheduledJob, catch_up_window, occurrence_key

log = logging.getLogger("alliance.dispatch.cutoff")

WRITE_BATCH = 500  # assignments per unit of work: short units, so lease renewals are not held up


@dataclass(frozen=True)
class Placed:
    order_id: str
    manager_id: str
    metres: int


@dataclass(frozen=True)
class Unplaced:
    order_id: str
    product: str
    reason: str


@dataclass
class CutoffResult:
    run_id: str
    outcome: str  # succeeded, done, held, dry_run, ...
    placed: list[Placed] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    skipped: int = 0

    @property
    def total_metres(self) -> int:
        return sum(p.metres for p in self.placed)


@dataclass(frozen=True)
class Plan:
    orders: list[assignment.Order]
    managers: list[assignment.Manager]


def run_id(group: CutoffGroup, cutoff_at: datetime) -> str:
    return f"{group.job}@{occurrence_key(cutoff_at)}"


def plan(session: Session, *, group: CutoffGroup, policy: Policy, cutoff_at: datetime) -> Plan:
    """What the cutoff sees: the group's unowned orders booked up to the cutoff, and the managers on
    duty with what they can still take on the cutoff's local day."""
    query = select(DispatchOrder.id, DispatchOrder.product, DispatchOrder.latitude, DispatchOrder.longitude).where(
        col(DispatchOrder.state).in_(OrderState.UNOWNED), col(DispatchOrder.created_at) <= cutoff_at
    )
    if group.products:
        query = query.where(col(DispatchOrder.product).in_(group.products))
    elif policy.product_cutoffs:
        query = query.where(col(DispatchOrder.product).not_in(sorted(policy.product_cutoffs)))
    found = [
        assignment.Order(id=i, product=p, lat=la, lon=lo)
        for i, p, la, lo in session.exec(query.order_by(col(DispatchOrder.created_at), col(DispatchOrder.id))).all()
    ]
    branches = {b.branch_id: b for b in session.exec(select(Branch)).all()}
    on_duty = session.exec(select(Manager).where(col(Manager.on_duty).is_(True)).order_by(col(Manager.seq))).all()
    taken = directory.owned_since(session, [m.manager_id for m in on_duty], policy.day_start(cutoff_at))
    managers = [
        assignment.Manager(
            id=m.manager_id,
            products=m.product_set,
            lat=branches[m.branch_id].latitude,
            lon=branches[m.branch_id].longitude,
            capacity=max(0, m.daily_capacity - taken.get(m.manager_id, 0)),
        )
        for m in on_duty
        if m.branch_id in branches
    ]
    return Plan(found, managers)


def solve(plan_: Plan) -> assignment.Assignment:
    """In a worker process (module level: the pool imports it by name)."""
    return assignment.assign(plan_.orders, plan_.managers)


class Cutoffs:
    def __init__(
        self, db: Database, book: PolicyBook, cpu: CpuPool, *, lease_seconds: float, catch_up: timedelta
    ) -> None:
        self.db = db
        self.book = book
        self.cpu = cpu
        self.lease_seconds = lease_seconds
        self.catch_up = catch_up
        self.replica = replica_id()
        self._jobs: dict[str, ScheduledJob] = {}
        self._settled: set[str] = set()  # run ids finished (by anyone): not claimed again

    def job(self, group: CutoffGroup) -> ScheduledJob:
        job = self._jobs.get(group.job)
        if job is None:
            tz = self.book.policy.timezone.key

            async def run(ctx: JobContext, name: str = group.job) -> None:
                await self._run(ctx, name)

            job = ScheduledJob(group.job, group.at, tz, run, lease_seconds=self.lease_seconds)
            self._jobs[group.job] = job
        return job

    async def tick(self) -> None:
        """Claim and run every cutoff whose instant has passed (within the catch-up window)."""
        policy = self.book.policy
        now = utcnow()
        for group in policy.groups():
            due, _ = catch_up_window(group.at, policy.timezone.key, now, self.catch_up)
            for instant in due:
                key = run_id(group, instant)
                if key in self._settled:
                    continue
                result = await self.job(group).run_occurrence(self.db, instant, self.replica)
                if result.outcome in SETTLED:
                    self._settled.add(key)

    async def trigger(self, cutoff_at: datetime, products: Sequence[str]) -> list[CutoffResult]:
        """Ops' run now: the groups of `products` (all groups if none) at `cutoff_at`, once each."""
        results = []
        for group in self._groups(products):
            result = await self.job(group).run_occurrence(self.db, cutoff_at, self.replica)
            key = run_id(group, cutoff_at)
            report = await self.db.read(functools.partial(_report_of, key=key))
            if result.outcome in SETTLED:
                self._settled.add(key)
            results.append(_from_report(key, result.outcome, report))
        return results

    async def dry_run(self, cutoff_at: datetime, products: Sequence[str]) -> list[CutoffResult]:
        policy = self.book.policy
        results = []
        for group in self._groups(products):
            seen = await self.db.read(functools.partial(plan, group=group, policy=policy, cutoff_at=cutoff_at))
            solved = await self.cpu.run(solve, seen)
            results.append(_result(run_id(group, cutoff_at), "dry_run", seen, solved))
        return results

    def _groups(self, products: Sequence[str]) -> list[CutoffGroup]:
        policy = self.book.policy
        if not products:
            return policy.groups()
        chosen: dict[str, CutoffGroup] = {}
        for product in products:
            group = policy.group_of((product,))
            chosen.setdefault(group.job, group if group.products else CutoffGroup(group.job, group.at))
        return list(chosen.values())

    async def _run(self, ctx: JobContext, job: str) -> None:
        policy = self.book.policy
        group = next((g for g in policy.groups() if g.job == job), CutoffGroup(job, policy.cutoff))
        cutoff_at = ctx.occurrence
        seen = await self.db.read(functools.partial(plan, group=group, policy=policy, cutoff_at=cutoff_at))
        solved = await self.cpu.run(solve, seen)
        result = _result(run_id(group, cutoff_at), Outcome.SUCCEEDED.value, seen, solved)
        await ctx.renew()
        placed = result.placed
        kept: list[Placed] = []
        for start in range(0, len(placed), WRITE_BATCH):
            chunk = placed[start : start + WRITE_BATCH]
            kept += await self.db.run(functools.partial(self._write, ctx=ctx, chunk=chunk))
        result.skipped = len(placed) - len(kept)
        result.placed = kept
        await self.db.run(lambda s: self._report(s, ctx, group, result, seen))
        log.info(
            "cutoff done",
            extra={
                "run_id": result.run_id,
                "assigned": len(kept),
                "unplaced": len(result.unplaced),
                "skipped": result.skipped,
                "attempt": ctx.attempt,
            },
        )

    def _write(self, session: Session, *, ctx: JobContext, chunk: list[Placed]) -> list[Placed]:
        ctx.guard(session)
        now = utcnow()
        products = dict(
            session.exec(
                select(DispatchOrder.id, DispatchOrder.product).where(
                    col(DispatchOrder.id).in_([p.order_id for p in chunk])
                )
            ).all()
        )
        kept: list[Placed] = []
        trail: list[dict[str, object]] = []
        events: list[dict[str, object]] = []
        for placed in chunk:
            if orders.take(session, placed.order_id, placed.manager_id, orders.CUTOFF, now, trail):
                events.append(
                    orders.taken_row(placed.order_id, products[placed.order_id], placed.manager_id, orders.CUTOFF, now)
                )
                kept.append(placed)
        orders.record_all(session, trail)
        add_event_rows(session, events)
        return kept

    def _report(self, session: Session, ctx: JobContext, group: CutoffGroup, result: CutoffResult, seen: Plan) -> None:
        ctx.guard(session)
        if session.get(CutoffReport, result.run_id) is not None:
            return  # an earlier attempt reported (and died before finishing the occurrence)
        now = utcnow()
        for u in result.unplaced:
            orders.record(session, u.order_id, "unplaced", "cutoff", now, f"{result.run_id}: {u.reason}")
        session.add(
            CutoffReport(
                run_id=result.run_id,
                cutoff_at=ctx.occurrence,
                products=json.dumps(list(group.products)),
                assigned=len(result.placed),
                total_distance_m=result.total_metres,
                skipped=result.skipped,
                unplaced=json.dumps([[u.order_id, u.product, u.reason] for u in result.unplaced], ensure_ascii=False),
                assignments=json.dumps([[p.order_id, p.manager_id, p.metres] for p in result.placed]),
            )
        )
        add_event(
            session,
            CUTOFF_COMPLETED,
            ev.CutoffCompleted(
                event_id=new_id(),
                run_id=result.run_id,
                products=list(group.products),
                assigned=len(result.placed),
                total_distance_m=result.total_metres,
                unplaced=[
                    ev.UnplacedOrderEvent(order_id=u.order_id, product=u.product, reason=u.reason)
                    for u in result.unplaced
                ],
                cutoff_at=ts_fields(ctx.occurrence),
            ),
        )


def _report_of(session: Session, key: str) -> CutoffReport | None:
    return session.get(CutoffReport, key)


def _result(key: str, outcome: str, seen: Plan, solved: assignment.Assignment) -> CutoffResult:
    product_of = {o.id: o.product for o in seen.orders}
    return CutoffResult(
        run_id=key,
        outcome=outcome,
        placed=[Placed(o, m, solved.metres[o]) for o, m in solved.placed.items()],
        unplaced=[Unplaced(o, product_of[o], why) for o, why in solved.unplaced.items()],
    )


def _from_report(key: str, outcome: str, report: CutoffReport | None) -> CutoffResult:
    """What a run did, from its stored report: the same whoever ran it and whoever asks."""
    if report is None:
        return CutoffResult(key, outcome)
    return CutoffResult(
        key,
        outcome,
        placed=[Placed(o, m, d) for o, m, d in json.loads(report.assignments)],
        unplaced=[Unplaced(o, p, r) for o, p, r in json.loads(report.unplaced)],
        skipped=report.skipped,
    )
