"""benefits: customer AUM, claims, free-item quotas, offer budgets

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.foundation.db import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "benefit_claim",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("offer_id", sa.String(64), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("discount_cents", sa.BigInteger(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("benefit_claim", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_benefit_claim_customer_id"), ["customer_id"], unique=False)

    op.create_table(
        "customer_aum",
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("aum_cents", sa.BigInteger(), nullable=True),
        sa.Column("as_of", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id"),
    )
    op.create_table(
        "free_item_usage",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("year", sa.String(4), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "offer_id", "customer_id", "year"),
    )
    op.create_table(
        "offer_budget",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("offer_id", sa.String(64), nullable=False),
        sa.Column("spent_cents", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "offer_id"),
    )


def downgrade() -> None:
    op.drop_table("offer_budget")
    op.drop_table("free_item_usage")
    op.drop_table("customer_aum")
    with op.batch_alter_table("benefit_claim", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benefit_claim_customer_id"))

    op.drop_table("benefit_claim")
