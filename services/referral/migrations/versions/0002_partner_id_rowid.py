"""partner.id is SQLite's rowid

On SQLite only "INTEGER PRIMARY KEY" names the rowid; a BIGINT key got an index of its own, so
every partner found by id (each step up a chain) searched two B-trees. PostgreSQL is unchanged.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _partner_id(to: sa.types.TypeEngine[int], was: sa.types.TypeEngine[int]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite cannot change a column's type: batch mode copies the table into a new one.
    with op.batch_alter_table("partner", recreate="always") as batch_op:
        batch_op.alter_column("id", type_=to, existing_type=was, existing_nullable=False, autoincrement=False)


def upgrade() -> None:
    _partner_id(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _partner_id(sa.BigInteger(), sa.Integer())
