"""ledger, lots, caps, budgets, messaging

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.foundation.db import UTCDateTime
from services.foundation.kit_schema import create_messaging_tables, drop_messaging_tables

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_messaging_tables()
    op.create_table(
        "campaign_budget",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("awarded", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    op.create_table(
        "campaign_usage",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "user_id", "window"),
    )
    op.create_table(
        "ledger_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=True),
        sa.Column("source_event", sa.String(128), nullable=True),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("rule_version", sa.String(16), nullable=True),
        sa.Column("reference_transaction_id", sa.String(32), nullable=True),
        sa.Column("description", sa.String(512), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ledger_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_entry_transaction_id"), ["transaction_id"], unique=False)
        batch_op.create_index("ix_ledger_entry_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "lot_allocation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(32), nullable=False),
        sa.Column("lot_id", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("lot_allocation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lot_allocation_lot_id"), ["lot_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_lot_allocation_transaction_id"), ["transaction_id"], unique=False)

    op.create_table(
        "point_lot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("remaining", sa.Integer(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("point_lot", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_point_lot_transaction_id"), ["transaction_id"], unique=False)
        batch_op.create_index("ix_point_lot_expiry", ["expires_at", "remaining"], unique=False)
        batch_op.create_index("ix_point_lot_user_remaining", ["user_id", "remaining"], unique=False)

    op.create_table(
        "points_account",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("balance", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "points_transaction",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("reversed_points", sa.Integer(), nullable=False),
        sa.Column("reference_id", sa.String(32), nullable=True),
        sa.Column("order_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(512), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("operation", "idempotency_key", name="uq_points_transaction_key"),
    )
    with op.batch_alter_table("points_transaction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_points_transaction_reference_id"), ["reference_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_points_transaction_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("points_transaction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_points_transaction_user_id"))
        batch_op.drop_index(batch_op.f("ix_points_transaction_reference_id"))

    op.drop_table("points_transaction")
    op.drop_table("points_account")
    with op.batch_alter_table("point_lot", schema=None) as batch_op:
        batch_op.drop_index("ix_point_lot_user_remaining")
        batch_op.drop_index("ix_point_lot_expiry")
        batch_op.drop_index(batch_op.f("ix_point_lot_transaction_id"))

    op.drop_table("point_lot")
    with op.batch_alter_table("lot_allocation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lot_allocation_transaction_id"))
        batch_op.drop_index(batch_op.f("ix_lot_allocation_lot_id"))

    op.drop_table("lot_allocation")
    with op.batch_alter_table("ledger_entry", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entry_user_id_id")
        batch_op.drop_index(batch_op.f("ix_ledger_entry_transaction_id"))

    op.drop_table("ledger_entry")
    op.drop_table("campaign_usage")
    op.drop_table("campaign_budget")
    drop_messaging_tables()
