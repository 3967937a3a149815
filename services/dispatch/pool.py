"""A manager's pool: the unowned orders they may grab, nearest first.

Open orders of the products they are qualified for, and orders reserved for them. Positions are
read first (id, latitude, longitude), distances computed at once, and only the nearest page is
loaded whole, so a pool of ten thousand orders costs one narrow scan and one matrix row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import ColumnElement, and_, or_
from sqlmodel import Session, col, select

from services.dispatch import directory
from services.dispatch.assignment import distances_m
from services.dispatch.models import DispatchOrder, Manager, OrderState


@dataclass(frozen=True)
class PoolEntry:
    order: DispatchOrder
    distance_m: int


@dataclass(frozen=True)
class Pool:
    entries: list[PoolEntry]
    total: int


def visible_to(manager: Manager, now: datetime) -> ColumnElement[bool]:
    """What a manager's pool holds, as a WHERE clause."""
    return and_(
        col(DispatchOrder.product).in_(sorted(manager.product_set)),
        or_(
            col(DispatchOrder.state) == OrderState.OPEN,
            and_(
                col(DispatchOrder.state) == OrderState.RESERVED,
                or_(col(DispatchOrder.preferred_manager_id) == manager.manager_id, col(DispatchOrder.pool_at) <= now),
            ),
        ),
    )


def home_of(session: Session, manager: Manager) -> tuple[float, float]:
    branch = directory.branch_of(session, manager.branch_id)
    assert branch is not None, manager.branch_id  # upsert_manager checks it; branches are never deleted
    return branch.latitude, branch.longitude


def pool_of(session: Session, manager: Manager, now: datetime, size: int) -> Pool:
    if not manager.product_set:
        return Pool([], 0)
    rows = session.exec(
        select(DispatchOrder.id, DispatchOrder.latitude, DispatchOrder.longitude).where(visible_to(manager, now))
    ).all()
    if not rows:
        return Pool([], 0)
    ids = [r[0] for r in rows]
    lat, lon = home_of(session, manager)
    metres = distances_m(
        np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), np.array([lat]), np.array([lon])
    )[:, 0]
    nearest = np.argsort(metres, kind="stable")[:size]
    chosen = [ids[i] for i in nearest]
    loaded = {o.id: o for o in session.exec(select(DispatchOrder).where(col(DispatchOrder.id).in_(chosen))).all()}
    return Pool([PoolEntry(loaded[ids[i]], round(float(metres[i]))) for i in nearest], len(rows))


def distance_from(home: tuple[float, float], latitude: float, longitude: float) -> int:
    metres = distances_m(np.array([home[0]]), np.array([home[1]]), np.array([latitude]), np.array([longitude]))
    return round(float(metres[0, 0]))
