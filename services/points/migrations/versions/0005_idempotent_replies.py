"""the kit's idempotent_reply table (stored replies of idempotent commands), which every service
carries; points keeps its own replies with its transactions and claims, so it stays empty here

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from services.foundation.kit_schema import create_idempotency_tables, drop_idempotency_tables

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_idempotency_tables()


def downgrade() -> None:
    drop_idempotency_tables()
