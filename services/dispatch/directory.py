"""Branches and managers: who may take which orders, where they are, and how many they may still
take today."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from services.dispatch.models import Branch, DispatchOrder, Manager
from services.foundation.db import utcnow
from services.foundation.errors import NotFound


@dataclass(frozen=True)
class BranchCommand:
    branch_id: str
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class ManagerCommand:
    manager_id: str
    branch_id: str
    name: str
    products: tuple[str, ...]  # sorted, unique
    daily_capacity: int
    on_duty: bool


def upsert_branch(session: Session, cmd: BranchCommand) -> tuple[Branch, bool]:
    branch = session.exec(select(Branch).where(Branch.branch_id == cmd.branch_id)).first()
    created = branch is None
    if branch is None:
        branch = Branch(branch_id=cmd.branch_id, name=cmd.name, latitude=cmd.latitude, longitude=cmd.longitude)
    else:
        branch.name, branch.latitude, branch.longitude = cmd.name, cmd.latitude, cmd.longitude
        branch.updated_at = utcnow()
    session.add(branch)
    session.flush()
    return branch, created


def upsert_manager(session: Session, cmd: ManagerCommand) -> tuple[Manager, bool]:
    if branch_of(session, cmd.branch_id) is None:
        raise NotFound(f"branch_id: no branch {cmd.branch_id} (upsert the branch first)")
    manager = find_manager(session, cmd.manager_id)
    created = manager is None
    if manager is None:
        manager = Manager(
            manager_id=cmd.manager_id,
            branch_id=cmd.branch_id,
            name=cmd.name,
            products="",
            daily_capacity=0,
            on_duty=False,
        )
    else:
        manager.updated_at = utcnow()
    manager.branch_id, manager.name, manager.products = cmd.branch_id, cmd.name, ",".join(cmd.products)
    manager.daily_capacity, manager.on_duty = cmd.daily_capacity, cmd.on_duty
    session.add(manager)
    session.flush()
    return manager, created


def branch_of(session: Session, branch_id: str) -> Branch | None:
    return session.exec(select(Branch).where(Branch.branch_id == branch_id)).first()


def find_manager(session: Session, manager_id: str, *, lock: bool = False) -> Manager | None:
    query = select(Manager).where(Manager.manager_id == manager_id)
    if lock:  # PostgreSQL: one manager's grabs queue here, so their capacity check sees each other
        query = query.with_for_update()
    return session.exec(query).first()


def lock_managers(session: Session, manager_ids: Sequence[str]) -> dict[str, Manager]:
    """The managers, locked on PostgreSQL in id order (a grab batch's capacity checks then see
    every other grab of theirs; SQLite's single writer needs no lock)."""
    query = select(Manager).where(col(Manager.manager_id).in_(list(manager_ids))).order_by(col(Manager.manager_id))
    return {m.manager_id: m for m in session.exec(query.with_for_update()).all()}


def manager_named(session: Session, manager_id: str, *, lock: bool = False) -> Manager:
    manager = find_manager(session, manager_id, lock=lock)
    if manager is None:
        raise NotFound(f"manager_id: no manager {manager_id}")
    return manager


def list_branches(session: Session, after: int | None, size: int) -> Sequence[Branch]:
    query = select(Branch).order_by(col(Branch.seq)).limit(size + 1)
    if after is not None:
        query = query.where(col(Branch.seq) > after)
    return session.exec(query).all()


def list_managers(session: Session, branch_id: str | None, after: int | None, size: int) -> Sequence[Manager]:
    query = select(Manager).order_by(col(Manager.seq)).limit(size + 1)
    if branch_id:
        query = query.where(Manager.branch_id == branch_id)
    if after is not None:
        query = query.where(col(Manager.seq) > after)
    return session.exec(query).all()


def owned_since(session: Session, manager_ids: Sequence[str], since: datetime) -> dict[str, int]:
    """Orders each manager took since `since` (the start of their local day), whatever became of
    them since: capacity is what a manager can handle in a day, and a completed order was handled."""
    if not manager_ids:
        return {}
    rows = session.exec(
        select(DispatchOrder.manager_id, func.count())
        .where(col(DispatchOrder.manager_id).in_(list(manager_ids)), col(DispatchOrder.owned_at) >= since)
        .group_by(col(DispatchOrder.manager_id))
    ).all()
    return {str(manager): int(count) for manager, count in rows}


def branch_locations(session: Session) -> dict[str, tuple[float, float]]:
    return {b.branch_id: (b.latitude, b.longitude) for b in session.exec(select(Branch)).all()}
