"""`alliance db upgrade NAME`: upgrade a service's schema (what services also do at start);
`alliance db revision NAME -m "..."`: write its next migration from its models (autogenerate)."""

from __future__ import annotations

import argparse

from alembic import command

from services.foundation import migrations
from services.foundation.db import Database
from services.registry import SERVICES


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser("db", help="database schema", description="Database schema migrations.")
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="upgrade a service's schema to the newest revision")
    upgrade.add_argument("service", choices=sorted(SERVICES))
    upgrade.add_argument("--database-url", help="default: the service's DATABASE_URL setting")
    upgrade.set_defaults(func=run_upgrade)
    revision = actions.add_parser(
        "revision",
        help="write a service's next migration from the difference between its models and its database",
        description="Upgrades the database given (default: the service's DATABASE_URL) to head, then writes "
        "services/NAME/migrations/versions/<rev>.py with what the service's models add. Review it before committing.",
    )
    revision.add_argument("service", choices=sorted(SERVICES))
    revision.add_argument("-m", "--message", required=True, help="what the migration does")
    revision.add_argument("--database-url", help="default: the service's DATABASE_URL setting")
    revision.set_defaults(func=run_revision)


def run_upgrade(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    db = Database(args.database_url or entry.settings()().database_url)
    try:
        migrations.upgrade(db, entry.load().schema)
        print(f"{args.service}: schema at revision {migrations.current_revision(db)}")
    finally:
        db.close()
    return 0


def run_revision(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    schema = entry.load().schema
    db = Database(args.database_url or entry.settings()().database_url)
    try:
        migrations.upgrade(db, schema)
        command.revision(migrations.alembic_config(db, schema), message=args.message, autogenerate=True)
    finally:
        db.close()
    return 0
