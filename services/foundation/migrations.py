"""Schema migrations with Alembic, one migration tree per service (`services/<name>/migrations/versions`).

The environment (env.py, the revision template) is the foundation's, shared by every service; the
service's `ServiceSchema` says which MetaData its migrations must build. Services upgrade their
schema at start (MIGRATE_ON_START) or through `alliance db upgrade NAME`; `alliance db revision
NAME -m ...` autogenerates the next migration from the service's models and nothing else.
On PostgreSQL an advisory lock makes replicas that start together take turns.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from services.foundation.db import Database
from services.foundation.schema import ServiceSchema

ENV_DIR = Path(__file__).parent / "migration_env"


def alembic_config(db: Database, schema: ServiceSchema) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ENV_DIR))
    config.set_main_option("version_locations", str(schema.versions))
    config.set_main_option("path_separator", "os")
    config.attributes["database"] = db
    config.attributes["schema"] = schema
    return config


def upgrade(db: Database, schema: ServiceSchema, revision: str = "head") -> None:
    command.upgrade(alembic_config(db, schema), revision)


def check(db: Database, schema: ServiceSchema) -> None:
    """Raise if the database at head differs from the service's models (a model changed without
    a migration, or a migration built something the models do not have)."""
    command.check(alembic_config(db, schema))


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def run_env() -> None:
    """The body of the shared env.py (online mode only: we always have the database)."""
    db: Database = context.config.attributes["database"]
    schema: ServiceSchema = context.config.attributes["schema"]
    key = zlib.crc32(f"alliance-{schema.service}-migrations".encode())
    with db.engine.connect() as connection:
        if not db.is_sqlite:
            # Held until the migrations' transaction ends, so a replica waiting for it sees them
            # committed; a transaction lock also cannot be stranded behind a pooler.
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        context.configure(
            connection=connection,
            target_metadata=schema.complete_metadata(),
            render_as_batch=db.is_sqlite,  # SQLite alters tables by copy
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
