"""The Alembic environment of every service: the service's schema comes in the config's
attributes (see services/foundation/migrations.py), so no service writes an env.py of its own."""

from services.foundation.migrations import run_env

run_env()
