"""indexes for the quote data's change feed: claims and AUM reports by time

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("benefit_claim") as batch_op:
        batch_op.create_index(batch_op.f("ix_benefit_claim_created_at"), ["created_at"], unique=False)
    with op.batch_alter_table("customer_aum") as batch_op:
        batch_op.create_index(batch_op.f("ix_customer_aum_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("customer_aum") as batch_op:
        batch_op.drop_index(batch_op.f("ix_customer_aum_updated_at"))
    with op.batch_alter_table("benefit_claim") as batch_op:
        batch_op.drop_index(batch_op.f("ix_benefit_claim_created_at"))
