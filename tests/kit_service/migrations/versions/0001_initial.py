"""notes and the tidy job's progress, with the kit's tables

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.foundation.kit_schema import create_kit_tables_v1, drop_kit_tables_v1

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_kit_tables_v1()
    op.create_table(
        "note",
        sa.Column("text", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False),
    )
    op.create_table(
        "tidy_step",
        sa.Column("occurrence", sa.String(32), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tidy_step")
    op.drop_table("note")
    drop_kit_tables_v1()
