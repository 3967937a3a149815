"""Tables of the points service.

The ledger is append-only: `ledger_entry` rows are never updated or deleted, and the balance is
their sum. `points_account.balance` is a cache of that sum kept in the same transaction as every
entry (checked by tests under concurrency); `point_lot` tracks what is left of each earn so that
redemptions spend the oldest-expiring points first and expiry knows what to take away.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from services.foundation.db import UTCDateTime, utcnow
from services.foundation.schema import ServiceSchema


class PointsTable(SQLModel, registry=registry()):
    """Base of the points service's tables: they go on its own MetaData, nobody else's."""


SCHEMA = ServiceSchema("points", PointsTable, migrations=Path(__file__).parent / "migrations")


class EntryKind:
    EARN = "earn"
    REDEEM = "redeem"
    REVERSE_EARN = "reverse_earn"  # clawback
    REVERSE_REDEEM = "reverse_redeem"  # refund
    EXPIRE = "expire"


class PointsTransaction(PointsTable, table=True):
    """One Earn, Redeem, Reverse or expiry; the unit an idempotency key and a reversal refer to."""

    __tablename__ = "points_transaction"
    __table_args__ = (UniqueConstraint("operation", "idempotency_key", name="uq_points_transaction_key"),)

    id: str = Field(primary_key=True, max_length=32)
    operation: str = Field(max_length=16)  # earn | redeem | reverse | expire
    idempotency_key: str | None = Field(default=None, max_length=128)
    request_hash: str = Field(max_length=64)
    user_id: str = Field(max_length=64, index=True)
    points: int  # net signed change to the balance
    reversed_points: int = 0  # of an earn or redeem: how much later reversals took back (magnitude)
    reference_id: str | None = Field(default=None, max_length=32, index=True)
    order_id: str | None = Field(default=None, max_length=128)
    reason: str | None = Field(default=None, max_length=512)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # replayed on a repeated key
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LedgerEntry(PointsTable, table=True):
    __tablename__ = "ledger_entry"
    __table_args__ = (Index("ix_ledger_entry_user_id_id", "user_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: str = Field(max_length=32, index=True)
    user_id: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    points: int  # signed
    event_type: str | None = Field(default=None, max_length=64)
    source_event: str | None = Field(default=None, max_length=128)
    campaign_id: str | None = Field(default=None, max_length=64)
    rule_id: str | None = Field(default=None, max_length=64)
    rule_version: str | None = Field(default=None, max_length=16)
    reference_transaction_id: str | None = Field(default=None, max_length=32)
    description: str | None = Field(default=None, max_length=512)
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PointsAccount(PointsTable, table=True):
    __tablename__ = "points_account"

    user_id: str = Field(primary_key=True, max_length=64)
    balance: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PointLot(PointsTable, table=True):
    """What is left of one earn entry; spent oldest-expiring first."""

    __tablename__ = "point_lot"
    __table_args__ = (
        Index("ix_point_lot_user_remaining", "user_id", "remaining"),
        Index("ix_point_lot_expiry", "expires_at", "remaining"),
    )

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(max_length=64)
    transaction_id: str = Field(max_length=32, index=True)
    campaign_id: str | None = Field(default=None, max_length=64)
    points: int
    remaining: int
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LotAllocation(PointsTable, table=True):
    """Which lots a debit (redemption, clawback) took points from, so a refund can put them back."""

    __tablename__ = "lot_allocation"

    id: int | None = Field(default=None, primary_key=True)
    transaction_id: str = Field(max_length=32, index=True)
    lot_id: int = Field(index=True)
    points: int


class CampaignUsage(PointsTable, table=True):
    """Points a user got from a campaign in a cap window (day, week, campaign)."""

    __tablename__ = "campaign_usage"

    campaign_id: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(primary_key=True, max_length=64)
    window: str = Field(primary_key=True, max_length=16)  # "day:2026-11-23", "week:2026-11-23", "campaign"
    points: int = 0


class CampaignBudget(PointsTable, table=True):
    """Points a campaign has awarded net of clawbacks, checked against its budget."""

    __tablename__ = "campaign_budget"

    campaign_id: str = Field(primary_key=True, max_length=64)
    awarded: int = 0
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# -- benefits ------------------------------------------------------------------------------------
# Money is stored in cents (integers): exact on SQLite and PostgreSQL alike.


class CustomerAum(PointsTable, table=True):
    """A customer's assets at the bank as core banking last reported them; decides the tier."""

    __tablename__ = "customer_aum"

    customer_id: str = Field(primary_key=True, max_length=64)
    aum_cents: int | None = Field(default=None, sa_type=BigInteger)  # None: never reported (lowest tier)
    as_of: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)  # change feed


class BenefitClaim(PointsTable, table=True):
    __tablename__ = "benefit_claim"

    id: str = Field(primary_key=True, max_length=32)
    idempotency_key: str = Field(unique=True, max_length=128)
    request_hash: str = Field(max_length=64)
    customer_id: str = Field(max_length=64, index=True)
    merchant_id: str = Field(max_length=64)
    kind: str = Field(max_length=16)  # discount | free_item
    campaign_id: str | None = Field(default=None, max_length=64)
    offer_id: str | None = Field(default=None, max_length=64)
    amount_cents: int = Field(sa_type=BigInteger)
    discount_cents: int = Field(sa_type=BigInteger)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    claimed_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)  # change feed


class FreeItemUsage(PointsTable, table=True):
    """Free items a customer took from an offer in a calendar year (campaign time zone)."""

    __tablename__ = "free_item_usage"

    campaign_id: str = Field(primary_key=True, max_length=64)
    offer_id: str = Field(primary_key=True, max_length=64)
    customer_id: str = Field(primary_key=True, max_length=64)
    year: str = Field(primary_key=True, max_length=4)
    used: int = 0


class OfferBudget(PointsTable, table=True):
    """Discount an offer has given in total, checked against its budget."""

    __tablename__ = "offer_budget"

    campaign_id: str = Field(primary_key=True, max_length=64)
    offer_id: str = Field(primary_key=True, max_length=64)
    spent_cents: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
