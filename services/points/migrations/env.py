"""Alembic environment of the points service (see services/foundation/migrations.py)."""

from sqlmodel import SQLModel

from services.foundation import inbox, outbox  # noqa: F401 - their tables belong to every service
from services.foundation.migrations import run_env
from services.points import models  # noqa: F401 - registers the tables on SQLModel.metadata

run_env(SQLModel.metadata, lock_name="alliance-points-migrations")
