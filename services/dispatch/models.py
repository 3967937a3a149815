"""Tables of the dispatch service: branches, managers, orders and each order's audit trail, and
the report of every cutoff run.

An order's owner is set by one conditional UPDATE (`orders.take`): whoever's statement matches
the unowned row first owns it, on SQLite and PostgreSQL alike, across replicas.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, Index, Integer, Text
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from services.foundation.db import UTCDateTime, utcnow
from services.foundation.schema import ServiceSchema


class DispatchTable(SQLModel, registry=registry()):
    """Base of the dispatch service's tables: they go on its own MetaData, nobody else's."""


SCHEMA = ServiceSchema("dispatch", DispatchTable, migrations=Path(__file__).parent / "migrations")

SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class OrderState:
    RESERVED = "reserved"  # its preferred manager's alone until pool_at
    OPEN = "open"  # in the pool
    OWNED = "owned"
    CONTACTED = "contacted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    UNOWNED = (RESERVED, OPEN)
    ACTIVE = (OWNED, CONTACTED)  # owned, not yet completed
    DONE = (SUCCEEDED, FAILED)


class Branch(DispatchTable, table=True):
    __tablename__ = "branch"

    seq: int | None = Field(default=None, sa_column=Column(SEQ_TYPE, primary_key=True, autoincrement=True))
    branch_id: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=200)
    latitude: float
    longitude: float
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Manager(DispatchTable, table=True):
    __tablename__ = "manager"
    __table_args__ = (Index("ix_manager_branch_seq", "branch_id", "seq"),)

    seq: int | None = Field(default=None, sa_column=Column(SEQ_TYPE, primary_key=True, autoincrement=True))
    manager_id: str = Field(max_length=64, unique=True)
    branch_id: str = Field(max_length=64)
    name: str = Field(max_length=200)
    products: str = Field(sa_column=Column(Text, nullable=False))  # sorted, comma-separated
    daily_capacity: int
    on_duty: bool
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    @property
    def product_set(self) -> frozenset[str]:
        return frozenset(p for p in self.products.split(",") if p)


class DispatchOrder(DispatchTable, table=True):
    __tablename__ = "dispatch_order"
    __table_args__ = (
        Index("ix_order_state_product", "state", "product"),  # the pool, the cutoff
        Index("ix_order_manager_owned", "manager_id", "owned_at"),  # a manager's count today
        Index("ix_order_state_owned", "state", "owned_at"),  # the SLA sweep
        Index("ix_order_state_pool_at", "state", "pool_at"),  # reservations ending
    )

    id: str = Field(primary_key=True, max_length=32)
    idempotency_key: str = Field(max_length=128, unique=True)
    request_hash: str = Field(max_length=64)
    customer_id: str = Field(max_length=64)
    product: str = Field(max_length=64)
    address: str = Field(max_length=500)
    latitude: float
    longitude: float
    location_source: str = Field(max_length=16)  # coordinates, district, city, fallback_branch
    district_code: str | None = Field(default=None, max_length=6)
    address_flagged: bool = False
    preferred_manager_id: str | None = Field(default=None, max_length=64)
    attributes: str = Field(sa_column=Column(Text, nullable=False))  # JSON object
    state: str = Field(max_length=16)
    manager_id: str | None = Field(default=None, max_length=64)
    taken_by: str | None = Field(default=None, max_length=16)  # grab, cutoff
    created_at: datetime = Field(sa_type=UTCDateTime)
    pool_at: datetime = Field(sa_type=UTCDateTime)
    owned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    contacted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    business_ref: str | None = Field(default=None, max_length=128)
    failure_reason: str | None = Field(default=None, max_length=500)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class OrderChange(DispatchTable, table=True):
    """The audit trail: one row per state change of an order, never updated."""

    __tablename__ = "order_change"
    __table_args__ = (Index("ix_order_change_order", "order_id", "seq"),)

    seq: int | None = Field(default=None, sa_column=Column(SEQ_TYPE, primary_key=True, autoincrement=True))
    order_id: str = Field(max_length=32)
    at: datetime = Field(sa_type=UTCDateTime)
    change: str = Field(max_length=32)
    actor: str = Field(max_length=64)
    detail: str = Field(default="", max_length=500)


class CutoffReport(DispatchTable, table=True):
    """What a cutoff run did, by run id ("<job>@<instant>"): read back when it is asked again."""

    __tablename__ = "cutoff_report"

    run_id: str = Field(primary_key=True, max_length=128)
    cutoff_at: datetime = Field(sa_type=UTCDateTime)
    products: str = Field(sa_column=Column(Text, nullable=False))  # JSON list; [] = the default group
    assigned: int
    total_distance_m: int
    skipped: int
    unplaced: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of [order, product, reason]
    assignments: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of [order, manager, metres]
    finished_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
