"""An order's life: booked (reserved for its preferred manager, or open), taken (a grab or the
cutoff), contacted, completed; escalated when the SLA runs out. Every change adds a row to the
audit trail and, where others care, an event, in the same transaction.

Exactly one owner: `take` is one conditional UPDATE, "set the owner where the order is still
unowned (and, while reserved, the taker is its preferred manager)". The database applies it to the
row once: on PostgreSQL a second writer waits for the first one's row lock, then re-checks the
condition against the committed row and matches nothing; on SQLite writers are serialised. So
there is no window between a read and a write for two replicas to both see "unowned", and no lock
is held across a round trip to the client. (A SELECT ... FOR UPDATE then UPDATE would also be
correct, at two statements and a held lock per grab; an optimistic version column the same
statement with one more column.)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Update, and_, bindparam, or_, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from alliance.v1 import dispatch_events_pb2 as ev
from services.dispatch import directory
from services.dispatch.events import ORDER_COMPLETED, ORDER_ESCALATED, ORDER_OPENED, ORDER_TAKEN
from services.dispatch.models import DispatchOrder, Manager, OrderChange, OrderState
from services.dispatch.policy import Policy
from services.foundation.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound
from services.foundation.idempotency import command_hash
from services.foundation.ids import new_id, ts_fields
from services.foundation.outbox import add_event, add_event_rows, event_row
from services.foundation.schema import table_of

GRAB, CUTOFF = "grab", "cutoff"
SWEEP_BATCH = 500


@dataclass(frozen=True)
class OrderCommand:
    idempotency_key: str
    customer_id: str
    product: str
    address: str
    coordinates: tuple[float, float] | None  # given by the caller
    preferred_manager_id: str | None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def request_hash(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "idempotency_key"}
        return command_hash("create_order", {**fields, "attributes": dict(self.attributes)})


@dataclass(frozen=True)
class Placement:
    """Where the order is, and how that was found."""

    latitude: float
    longitude: float
    source: str  # coordinates, district, city, fallback_branch
    district_code: str | None = None

    @property
    def flagged(self) -> bool:
        return self.source == "fallback_branch"


_ORDER = table_of(DispatchOrder)
_CHANGE = table_of(OrderChange)


def record(session: Session, order_id: str, change: str, actor: str, now: datetime, detail: str = "") -> None:
    record_all(session, [change_row(order_id, change, actor, now, detail)])


def change_row(order_id: str, change: str, actor: str, now: datetime, detail: str = "") -> dict[str, object]:
    return {"order_id": order_id, "at": now, "change": change, "actor": actor, "detail": detail[:500]}


def record_all(session: Session, rows: list[dict[str, object]]) -> None:
    # Core: the trail is written, never read back in this unit (no ORM objects to track).
    if rows:
        session.connection().execute(_CHANGE.insert(), rows)


def get(session: Session, order_id: str) -> DispatchOrder:
    order = session.get(DispatchOrder, order_id)
    if order is None:
        raise NotFound(f"order_id: no order {order_id}")
    return order


def changes_of(session: Session, order_id: str) -> Sequence[OrderChange]:
    return session.exec(
        select(OrderChange).where(OrderChange.order_id == order_id).order_by(col(OrderChange.seq))
    ).all()


# -- booking ---------------------------------------------------------------------------------------


def find_replay(session: Session, cmd: OrderCommand) -> DispatchOrder | None:
    """The order an earlier request with this key made; ALREADY_EXISTS if it asked for another."""
    existing = session.exec(select(DispatchOrder).where(DispatchOrder.idempotency_key == cmd.idempotency_key)).first()
    if existing is not None and existing.request_hash != cmd.request_hash:
        raise AlreadyExists(f"idempotency_key: already used for a different order ({existing.id})")
    return existing


def create(
    session: Session, cmd: OrderCommand, placement: Placement, policy: Policy, now: datetime
) -> tuple[DispatchOrder, bool]:
    existing = find_replay(session, cmd)
    if existing is not None:
        return existing, True
    preferred, note = None, ""
    if cmd.preferred_manager_id:
        manager = directory.manager_named(session, cmd.preferred_manager_id)
        if cmd.product not in manager.product_set:
            note = f"preferred manager {manager.manager_id} is not qualified for {cmd.product}: pooled at once"
        elif policy.preferred_window:
            preferred = manager.manager_id
    order = DispatchOrder(
        id=new_id(),
        idempotency_key=cmd.idempotency_key,
        request_hash=cmd.request_hash,
        customer_id=cmd.customer_id,
        product=cmd.product,
        address=cmd.address,
        latitude=placement.latitude,
        longitude=placement.longitude,
        location_source=placement.source,
        district_code=placement.district_code,
        address_flagged=placement.flagged,
        preferred_manager_id=cmd.preferred_manager_id,
        attributes=json.dumps(dict(cmd.attributes), ensure_ascii=False, sort_keys=True),
        state=OrderState.RESERVED if preferred else OrderState.OPEN,
        created_at=now,
        pool_at=now + policy.preferred_window if preferred else now,
        updated_at=now,
    )
    session.add(order)
    detail = f"located by {placement.source}" + (" (address not placed: flagged)" if placement.flagged else "")
    record(session, order.id, "created", "customer", now, f"{detail}; {note}" if note else detail)
    if preferred:
        record(session, order.id, "reserved", "system", now, f"for {preferred} until {order.pool_at.isoformat()}")
    _opened(session, order, "booked", now, preferred=preferred)
    return order, False


def _opened(
    session: Session, order: DispatchOrder, reason: str, now: datetime, *, preferred: str | None = None
) -> None:
    add_event(
        session,
        ORDER_OPENED,
        ev.OrderOpened(
            event_id=new_id(),
            order_id=order.id,
            product=order.product,
            latitude=order.latitude,
            longitude=order.longitude,
            reason=reason,
            occurred_at=ts_fields(now),
            preferred_manager_id=preferred or "",
            customer_id=order.customer_id,
            address=order.address,
            location_source=order.location_source,
            district_code=order.district_code or "",
            address_flagged=order.address_flagged,
            created_at=ts_fields(order.created_at),
            pool_at=ts_fields(order.pool_at),
            attributes=json.loads(order.attributes),
        ),
    )


# -- taking ----------------------------------------------------------------------------------------


def take(
    session: Session, order_id: str, manager_id: str, via: str, now: datetime, trail: list[dict[str, object]]
) -> bool:
    """Make `manager_id` the owner if the order is still unowned (see the module's notes). The
    change goes on `trail`, for the caller to record with the others of its unit (`record_all`)."""
    statement = _ASSIGN if via == CUTOFF else _GRAB
    params = {"order_id": order_id, "manager": manager_id, "via": via, "now": now}
    won = session.connection().execute(statement, params).first() is not None
    if won:
        trail.append(
            change_row(
                order_id,
                "grabbed" if via == GRAB else "assigned",
                manager_id if via == GRAB else via,
                now,
                "" if via == GRAB else f"to {manager_id}",
            )
        )
    return won


def _take_statement(unowned: ColumnElement[bool]) -> Update:
    # Built once, run with parameters: a grab's cost is the statement, not building it. Core, not an
    # ORM update: no session to synchronise; the caller sets what it holds (`set_committed_value`).
    c = _ORDER.c
    return (
        _ORDER.update()
        .where(c.id == bindparam("order_id"), unowned)
        .values(
            state=OrderState.OWNED,
            manager_id=bindparam("manager"),
            taken_by=bindparam("via"),
            owned_at=bindparam("now"),
            escalated_at=None,  # a new owner has an SLA of their own
            updated_at=bindparam("now"),
        )
        .returning(c.id)
    )


_GRAB = _take_statement(
    or_(
        _ORDER.c.state == OrderState.OPEN,
        and_(
            _ORDER.c.state == OrderState.RESERVED,
            or_(_ORDER.c.preferred_manager_id == bindparam("manager"), _ORDER.c.pool_at <= bindparam("now")),
        ),
    )
)
_ASSIGN = _take_statement(_ORDER.c.state.in_(OrderState.UNOWNED))  # the cutoff places reserved orders too


def _taken_values(manager_id: str, via: str, now: datetime) -> dict[str, object]:
    # escalated_at cleared: a new owner has an SLA of their own.
    return {
        "state": OrderState.OWNED,
        "manager_id": manager_id,
        "taken_by": via,
        "owned_at": now,
        "escalated_at": None,
        "updated_at": now,
    }


def taken_row(order_id: str, product: str, manager_id: str, via: str, now: datetime) -> dict[str, object]:
    """dispatch.v1.order_taken as an outbox row (`add_event_rows`: one insert for a unit's events)."""
    return event_row(ORDER_TAKEN, _taken_message(order_id, product, manager_id, via, now))


def _taken_message(order_id: str, product: str, manager_id: str, via: str, now: datetime) -> ev.OrderTaken:
    return ev.OrderTaken(
        event_id=new_id(),
        order_id=order_id,
        manager_id=manager_id,
        taken_by=via,
        occurred_at=ts_fields(now),
        product=product,
    )


def grab_many(
    session: Session, grabs: Sequence[tuple[str, str]], policy: Policy, now: datetime
) -> list[DispatchOrder | DomainError]:
    """Grabs (order, manager) sharing one transaction, each with its order or its refusal. A
    refusal is decided before its grab writes anything, so it never undoes another's.

    On PostgreSQL the managers are locked first (their capacity checks see each other), then the
    orders are taken in id order: two replicas' batches lock in the same order, so they queue and
    never deadlock."""
    managers = directory.lock_managers(session, sorted({manager for _, manager in grabs}))
    taken_today = Counter(directory.owned_since(session, list(managers), policy.day_start(now)))
    # One read of every order in the batch (then each grab finds its order in the session) and
    # one insert of every event at the end: per-grab statements are what the writer pays for.
    loaded = {  # held here: the session's identity map keeps objects only while someone does
        o.id: o
        for o in session.exec(select(DispatchOrder).where(col(DispatchOrder.id).in_(sorted({o for o, _ in grabs}))))
    }
    events: list[dict[str, object]] = []
    trail: list[dict[str, object]] = []
    results: dict[int, DispatchOrder | DomainError] = {}
    for i in sorted(range(len(grabs)), key=lambda i: grabs[i][0]):
        order_id, manager_id = grabs[i]
        try:
            manager = managers.get(manager_id)
            if manager is None:
                raise NotFound(f"manager_id: no manager {manager_id}")
            order = loaded.get(order_id)
            if order is None:
                raise NotFound(f"order_id: no order {order_id}")
            results[i] = _grab(session, order, manager, taken_today, now, events, trail)
        except DomainError as refused:
            results[i] = refused
    add_event_rows(session, events)
    record_all(session, trail)
    return [results[i] for i in range(len(grabs))]


def grab(session: Session, order_id: str, manager_id: str, policy: Policy, now: datetime) -> DispatchOrder:
    [result] = grab_many(session, [(order_id, manager_id)], policy, now)
    if isinstance(result, DomainError):
        raise result
    return result


def _grab(
    session: Session,
    order: DispatchOrder,
    manager: Manager,
    taken_today: Counter[str],
    now: datetime,
    events: list[dict[str, object]],
    trail: list[dict[str, object]],
) -> DispatchOrder:
    manager_id, order_id = manager.manager_id, order.id
    if order.manager_id == manager_id and order.state not in OrderState.UNOWNED:
        return order  # the winner asking again: the same answer
    refuse_unqualified(manager, order.product)
    if order.state not in OrderState.UNOWNED:
        raise _too_late(order)
    if order.state == OrderState.RESERVED and order.preferred_manager_id != manager_id and order.pool_at > now:
        raise FailedPrecondition(
            f"reserved: order {order_id} is held for its preferred manager until {order.pool_at.isoformat()}"
        )
    taken = taken_today[manager_id]
    if taken >= manager.daily_capacity:
        raise FailedPrecondition(
            f"over capacity: manager {manager_id} has taken {taken} of {manager.daily_capacity} orders today"
        )
    if not take(session, order_id, manager_id, GRAB, now, trail):
        session.refresh(order)
        raise _too_late(order)
    taken_today[manager_id] += 1
    events.append(taken_row(order_id, order.product, manager_id, GRAB, now))
    for name, value in _taken_values(manager_id, GRAB, now).items():  # as the row now is, not dirty
        set_committed_value(order, name, value)
    return order


def refuse_unqualified(manager: Manager, product: str) -> None:
    if not manager.on_duty:
        raise FailedPrecondition(f"off duty: manager {manager.manager_id} is not on duty")
    if product not in manager.product_set:
        raise FailedPrecondition(f"not qualified: manager {manager.manager_id} is not qualified for {product}")


def _too_late(order: DispatchOrder) -> FailedPrecondition:
    when = order.owned_at.isoformat() if order.owned_at else "earlier"
    return FailedPrecondition(f"too late: order {order.id} was taken by {order.manager_id} ({order.taken_by}, {when})")


# -- after taking ----------------------------------------------------------------------------------


def _owned_by(session: Session, order_id: str, manager_id: str) -> DispatchOrder:
    order = get(session, order_id)
    if order.manager_id != manager_id:
        owner = order.manager_id or "nobody"
        raise FailedPrecondition(f"manager_id: order {order_id} is owned by {owner}, not {manager_id}")
    return order


def contact(session: Session, order_id: str, manager_id: str, now: datetime) -> DispatchOrder:
    order = _owned_by(session, order_id, manager_id)
    if order.state == OrderState.OWNED:
        order.state, order.contacted_at, order.updated_at = OrderState.CONTACTED, now, now
        session.add(order)
        record(session, order_id, "contacted", manager_id, now)
    elif order.state != OrderState.CONTACTED:
        raise FailedPrecondition(f"order_id: order {order_id} is already {order.state}")
    return order


def complete(
    session: Session, order_id: str, manager_id: str, business_ref: str | None, failure: str | None, now: datetime
) -> tuple[DispatchOrder, bool]:
    order = _owned_by(session, order_id, manager_id)
    if order.state in OrderState.DONE:
        if (order.business_ref, order.failure_reason) == (business_ref, failure):
            return order, True
        raise FailedPrecondition(f"order_id: order {order_id} was already completed as {order.state}")
    order.state = OrderState.SUCCEEDED if business_ref else OrderState.FAILED
    order.business_ref, order.failure_reason = business_ref, failure
    order.completed_at = order.updated_at = now
    session.add(order)
    record(session, order_id, order.state, manager_id, now, business_ref or failure or "")
    add_event(
        session,
        ORDER_COMPLETED,
        ev.OrderCompleted(
            event_id=new_id(),
            order_id=order.id,
            customer_id=order.customer_id,
            product=order.product,
            manager_id=manager_id,
            success=business_ref is not None,
            business_ref=business_ref or "",
            failure_reason=failure or "",
            occurred_at=ts_fields(now),
            attributes=json.loads(order.attributes),
        ),
    )
    return order, False


# -- sweeps (every replica, every few seconds; each change made by one conditional update) ----------


def open_ended_reservations(session: Session, now: datetime) -> int:
    """Reservations whose window has ended join the pool (once, whichever replica gets there)."""
    due = session.exec(
        select(DispatchOrder)
        .where(DispatchOrder.state == OrderState.RESERVED, col(DispatchOrder.pool_at) <= now)
        .limit(SWEEP_BATCH)
    ).all()
    opened = 0
    for order in due:
        moved = session.execute(
            update(DispatchOrder)
            .where(col(DispatchOrder.id) == order.id, col(DispatchOrder.state) == OrderState.RESERVED)
            .values(state=OrderState.OPEN, updated_at=now)
            .returning(col(DispatchOrder.id))
        ).first()
        if moved is not None:
            record(session, order.id, "opened", "system", now, "the preferred manager's window ended")
            _opened(session, order, "window_ended", now)
            opened += 1
    return opened


def escalate_overdue(session: Session, policy: Policy, now: datetime) -> int:
    """Owned orders not contacted within the SLA: escalated once, and returned to the pool if the
    rule says so."""
    if policy.contact_within is None:
        return 0
    overdue = session.exec(
        select(DispatchOrder)
        .where(
            DispatchOrder.state == OrderState.OWNED,
            col(DispatchOrder.owned_at) <= now - policy.contact_within,
            col(DispatchOrder.escalated_at).is_(None),
        )
        .limit(SWEEP_BATCH)
    ).all()
    escalated = 0
    for order in overdue:
        values: dict[str, object] = {"escalated_at": now, "updated_at": now}
        if policy.return_to_pool:
            values.update(state=OrderState.OPEN, manager_id=None, taken_by=None, owned_at=None, pool_at=now)
        moved = session.execute(
            update(DispatchOrder)
            .where(
                col(DispatchOrder.id) == order.id,
                col(DispatchOrder.state) == OrderState.OWNED,
                col(DispatchOrder.manager_id) == order.manager_id,
                col(DispatchOrder.escalated_at).is_(None),
            )
            .values(**values)
            .returning(col(DispatchOrder.id))
        ).first()
        if moved is None:
            continue
        escalated += 1
        within = policy.contact_within
        record(session, order.id, "escalated", "sla", now, f"{order.manager_id} did not contact within {within}")
        add_event(
            session,
            ORDER_ESCALATED,
            ev.OrderEscalated(
                event_id=new_id(),
                order_id=order.id,
                manager_id=order.manager_id or "",
                owned_at=ts_fields(order.owned_at),
                occurred_at=ts_fields(now),
                returned_to_pool=policy.return_to_pool,
            ),
        )
        if policy.return_to_pool:
            record(session, order.id, "opened", "sla", now, "returned to the pool")
            session.expire(order)
            _opened(session, get(session, order.id), "sla_returned", now)
    return escalated
