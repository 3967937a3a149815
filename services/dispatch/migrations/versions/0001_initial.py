"""branches, managers, orders and their audit trail, cutoff reports

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.foundation.db import UTCDateTime
from services.foundation.kit_schema import create_kit_tables_v1, drop_kit_tables_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_kit_tables_v1()
    op.create_table(
        "branch",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("branch_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("branch_id"),
    )
    op.create_table(
        "cutoff_report",
        sa.Column("run_id", sa.String(length=128), nullable=False),
        sa.Column("cutoff_at", UTCDateTime(), nullable=False),
        sa.Column("products", sa.Text(), nullable=False),
        sa.Column("assigned", sa.Integer(), nullable=False),
        sa.Column("total_distance_m", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("unplaced", sa.Text(), nullable=False),
        sa.Column("assignments", sa.Text(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "dispatch_order",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=500), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("location_source", sa.String(length=16), nullable=False),
        sa.Column("district_code", sa.String(length=6), nullable=True),
        sa.Column("address_flagged", sa.Boolean(), nullable=False),
        sa.Column("preferred_manager_id", sa.String(length=64), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("manager_id", sa.String(length=64), nullable=True),
        sa.Column("taken_by", sa.String(length=16), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("pool_at", UTCDateTime(), nullable=False),
        sa.Column("owned_at", UTCDateTime(), nullable=True),
        sa.Column("contacted_at", UTCDateTime(), nullable=True),
        sa.Column("escalated_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("business_ref", sa.String(length=128), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("dispatch_order", schema=None) as batch_op:
        batch_op.create_index("ix_order_manager_owned", ["manager_id", "owned_at"], unique=False)
        batch_op.create_index("ix_order_state_owned", ["state", "owned_at"], unique=False)
        batch_op.create_index("ix_order_state_pool_at", ["state", "pool_at"], unique=False)
        batch_op.create_index("ix_order_state_product", ["state", "product"], unique=False)

    op.create_table(
        "manager",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("manager_id", sa.String(length=64), nullable=False),
        sa.Column("branch_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("products", sa.Text(), nullable=False),
        sa.Column("daily_capacity", sa.Integer(), nullable=False),
        sa.Column("on_duty", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("manager_id"),
    )
    with op.batch_alter_table("manager", schema=None) as batch_op:
        batch_op.create_index("ix_manager_branch_seq", ["branch_id", "seq"], unique=False)

    op.create_table(
        "order_change",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("change", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("order_change", schema=None) as batch_op:
        batch_op.create_index("ix_order_change_order", ["order_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("order_change", schema=None) as batch_op:
        batch_op.drop_index("ix_order_change_order")

    op.drop_table("order_change")
    with op.batch_alter_table("manager", schema=None) as batch_op:
        batch_op.drop_index("ix_manager_branch_seq")

    op.drop_table("manager")
    with op.batch_alter_table("dispatch_order", schema=None) as batch_op:
        batch_op.drop_index("ix_order_state_product")
        batch_op.drop_index("ix_order_state_pool_at")
        batch_op.drop_index("ix_order_state_owned")
        batch_op.drop_index("ix_order_manager_owned")

    op.drop_table("dispatch_order")
    op.drop_table("cutoff_report")
    op.drop_table("branch")
    drop_kit_tables_v1()
