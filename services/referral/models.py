"""Tables of the referral service.

The tree is a parent pointer per partner plus counters kept up the ancestor chain: every link
adds its subtree's totals to each ancestor, so a subtree's size, depth and conversions are one
row read however big it is, and the path to the root is one recursive query over the integer
parent pointer. (Measured against a closure table: README, "Referral tree storage".)

Invariants (checked by tests/unit/test_referral_tree.py and the integration tests):
- `descendants` of a partner = the number of partners below it through active or flagged links;
- `height` = the length of the longest path down from it (0 for a leaf);
- `partner_product.below` = conversions by partners below it, per product; `own` = its own;
- `points_below` = referral points earned by partners below it; `points_own` = its own.
The counters are kept in `partner_counter`, a row per partner (see `PartnerCounter`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from services.foundation.db import UTCDateTime, utcnow
from services.foundation.schema import ServiceSchema


class ReferralTable(SQLModel, registry=registry()):
    """Base of the referral service's tables: they go on its own MetaData, nobody else's."""


SCHEMA = ServiceSchema("referral", ReferralTable, migrations=Path(__file__).parent / "migrations")


class LinkState:
    NONE = "none"  # a root: nobody referred this user
    ACTIVE = "active"
    REVIEW = "review"  # flagged by a velocity rule: in the tree, its conversions held
    REJECTED = "rejected"  # out of the tree; the user cannot be linked again


ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class Partner(ReferralTable, table=True):
    """A user who has a code, was referred, or referred someone: a node of the referral forest,
    with the link that put it under its referrer."""

    __tablename__ = "partner"
    __table_args__ = (
        Index("ix_partner_referrer_seq", "referrer", "link_seq"),  # direct referrals, newest first
        Index("ix_partner_state_seq", "link_state", "link_seq"),  # the review queue, oldest first
        Index("ix_partner_link_seq", "link_seq"),  # the next link's number: max(link_seq)
        Index("ix_partner_device_linked", "device_hash", "linked_at"),
        Index("ix_partner_phone_linked", "phone_hash", "linked_at"),
        Index("ix_partner_referrer_linked", "referrer", "linked_at"),
    )

    # Assigned in order under the link lock: a compact key for the parent pointer and pages. On
    # SQLite it is the rowid itself ("INTEGER PRIMARY KEY"): a partner found by id is one B-tree
    # search, not a search of a separate key index and then of the table (every step of a chain).
    id: int = Field(sa_column=Column(ID_TYPE, primary_key=True, autoincrement=False))
    user_id: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=16)  # customer | employee
    code: str | None = Field(default=None, max_length=16)  # the active code
    referrer: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # The link: state, how it came, and its review.
    link_state: str = Field(default=LinkState.NONE, max_length=16)
    linked_referrer_id: str | None = Field(default=None, max_length=64)  # kept after a rejection
    link_code: str | None = Field(default=None, max_length=16)
    link_source: str | None = Field(default=None, max_length=160)  # register | import:<source>/<batch>
    # Links in the order they were made (assigned under the link lock): pages of referrals and reviews.
    link_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    linked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    device_hash: str | None = Field(default=None, max_length=128)
    phone_hash: str | None = Field(default=None, max_length=128)
    flagged_by: str | None = Field(default=None, max_length=64)
    flag_reason: str | None = Field(default=None, max_length=256)
    reviewed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reviewed_by: str | None = Field(default=None, max_length=64)
    review_note: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PartnerCounter(ReferralTable, table=True):
    """The counters of a partner and the subtree below it (see the module's invariants); every
    partner has one row, written with it.

    They are a table of their own because they are what links write: each link rewrites them
    for every partner above it. Five integers pack a few hundred to a page where whole partner
    rows pack about ten, so a batch of Register calls on a million-partner tree writes 40% fewer
    pages (each written to the WAL and copied back by a checkpoint)."""

    __tablename__ = "partner_counter"

    id: int = Field(sa_column=Column(ID_TYPE, ForeignKey("partner.id"), primary_key=True, autoincrement=False))
    descendants: int = 0
    direct: int = 0
    height: int = 0
    points_own: int = 0
    points_below: int = 0


class ReferralCode(ReferralTable, table=True):
    """Every code ever issued, so a revoked one is refused as revoked, not unknown."""

    __tablename__ = "referral_code"

    code: str = Field(primary_key=True, max_length=16)
    user_id: str = Field(max_length=64, index=True)
    active: bool = True
    issued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoke_reason: str | None = Field(default=None, max_length=256)


class PartnerProduct(ReferralTable, table=True):
    """Conversions per partner and product: its own, and those of everyone below it."""

    __tablename__ = "partner_product"

    partner: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    product: str = Field(primary_key=True, max_length=64)
    own: int = 0
    below: int = 0


class ConversionState:
    REWARDED = "rewarded"
    HELD = "held"
    UNATTRIBUTED = "unattributed"
    REVOKED = "revoked"


class Conversion(ReferralTable, table=True):
    """A business completed by a referred user; one per business reference."""

    __tablename__ = "conversion"
    __table_args__ = (Index("ix_conversion_user_state", "user_id", "state"),)

    id: str = Field(primary_key=True, max_length=32)
    business_ref: str = Field(max_length=128, unique=True)
    request_hash: str = Field(max_length=64)
    user_id: str = Field(max_length=64)
    product: str = Field(max_length=64)
    state: str = Field(max_length=16)
    source: str = Field(max_length=64)  # api | the consumed event's subject
    attributes: str = Field(default="{}", sa_type=Text)  # JSON, passed on in the events
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ConversionReward(ReferralTable, table=True):
    """One level of a rewarded conversion: the referral.v1.converted event that pays it."""

    __tablename__ = "conversion_reward"
    __table_args__ = (UniqueConstraint("event_id", name="uq_conversion_reward_event"),)

    conversion_id: str = Field(primary_key=True, max_length=32)
    level: int = Field(primary_key=True, index=True)  # max(level): how deep a rejection must look
    referrer_id: str = Field(max_length=64, index=True)
    event_id: str = Field(max_length=64)
    revoked: bool = False
    points: int = 0  # what the points service awarded for it (points.v1.awarded)
    points_transaction_id: str | None = Field(default=None, max_length=32, index=True)
    # Level 1: {"kind", "boards": [[period key, campaign], ...]} it was counted on, to take back exactly.
    counted: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LeaderboardCount(ReferralTable, table=True):
    """Direct conversions per partner, period and campaign ("" for all conversions)."""

    __tablename__ = "leaderboard_count"
    __table_args__ = (Index("ix_leaderboard_rank", "period_key", "campaign", "kind", "conversions"),)

    period_key: str = Field(primary_key=True, max_length=16)  # 2026-12-02, 2026-W49, 2026-12, 2026, all
    campaign: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    user_id: str = Field(primary_key=True, max_length=64)
    conversions: int = 0


class LinkRefusal(ReferralTable, table=True):
    """A registration event refused (no caller to tell): for ops and fraud analysis."""

    __tablename__ = "link_refusal"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    user_id: str = Field(max_length=64, index=True)
    referrer_id: str | None = Field(default=None, max_length=64)
    code: str | None = Field(default=None, max_length=32)
    reason: str = Field(max_length=32)
    message: str = Field(max_length=512)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
