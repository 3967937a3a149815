"""Migration steps for the tables the kit puts in every service's database: outbox, inbox, parked
events, scheduled runs, idempotent replies.

Written out (not derived from the models) so an old migration never changes under a deployed
database: a new service's first migration calls `create_kit_tables_v1()`, which never changes.
A table the kit adds later gets a create function of its own, which every service calls in a
new migration (and new services after create_kit_tables_v1). The migration check of each
service (tests/integration/test_service_host.py) fails until they do.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from services.foundation.db import UTCDateTime


def create_kit_tables_v1() -> None:
    """The kit's tables as of December 2026."""
    create_messaging_tables()
    create_scheduled_tables()
    create_idempotency_tables()


def drop_kit_tables_v1() -> None:
    drop_idempotency_tables()
    drop_scheduled_tables()
    drop_messaging_tables()


def create_messaging_tables() -> None:
    op.create_table(
        "outbox_event",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_outbox_event_pending", "outbox_event", ["published_at", "seq"])
    op.create_table(
        "inbox_event",
        sa.Column("consumer", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "parked_event",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("consumer", sa.String(64), nullable=False, index=True),
        sa.Column("subject", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("parked_at", UTCDateTime(), nullable=False),
    )


def drop_messaging_tables() -> None:
    op.drop_table("parked_event")
    op.drop_table("inbox_event")
    op.drop_index("ix_outbox_event_pending", table_name="outbox_event")
    op.drop_table("outbox_event")


def create_scheduled_tables() -> None:
    """The lease rows of scheduled singleton jobs (`services/foundation/scheduled.py`)."""
    op.create_table(
        "scheduled_run",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("occurrence", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )


def drop_scheduled_tables() -> None:
    op.drop_table("scheduled_run")


def create_idempotency_tables() -> None:
    """Stored replies of idempotent commands (`services/foundation/idempotency.py`)."""
    op.create_table(
        "idempotent_reply",
        sa.Column("operation", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(128), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("reply", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def drop_idempotency_tables() -> None:
    op.drop_table("idempotent_reply")
