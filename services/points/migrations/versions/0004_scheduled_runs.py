"""the kit's scheduled_run table (scheduled singleton jobs), which every service carries

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

from services.foundation.kit_schema import create_scheduled_tables, drop_scheduled_tables

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_scheduled_tables()


def downgrade() -> None:
    drop_scheduled_tables()
