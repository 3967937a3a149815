"""Schema migrations with Alembic, one migration tree per service (`services/<name>/migrations`).

Services upgrade their schema at start (MIGRATE_ON_START) or through `alliance db upgrade NAME`.
On PostgreSQL an advisory lock makes replicas that start together take turns.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text

from services.foundation.db import Database


def alembic_config(db: Database, migrations_dir: Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database"] = db
    return config


def upgrade(db: Database, migrations_dir: Path, revision: str = "head") -> None:
    command.upgrade(alembic_config(db, migrations_dir), revision)


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def run_env(target_metadata: MetaData, lock_name: str) -> None:
    """The body of every service's migrations/env.py (online mode only: we always have the DB)."""
    db: Database = context.config.attributes["database"]
    with db.engine.connect() as connection:
        if not db.is_sqlite:
            key = zlib.crc32(lock_name.encode())
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=db.is_sqlite,  # SQLite alters tables by copy
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if not db.is_sqlite:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                connection.commit()
